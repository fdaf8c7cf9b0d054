"""The KPA model (`queueproxy.kpa`) and the sans-IO parts of `queueproxy kpa` (`kpacli`), with
explicit times and no sockets.

Times are seconds on the model's clock. The scenario helper records one aggregated stat per
second at `s + 0.25` (as Knative's 1 s scrape ticker does) and decides every 2 s at `s + 0.5`
(Knative's decider tick, `pkg/autoscaler/scaling/multiscaler.go` `tickInterval`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from types import ModuleType

import pytest

from queueproxy import kpacli
from queueproxy.kpa import (
    WEIGHTED_EXPONENTIAL,
    Decision,
    KpaConfig,
    KpaModel,
    Stat,
    TimedBuckets,
    WeightedBuckets,
)
from queueproxy.main import main
from queueproxy.stats import StatsReport
from queueproxy.statwire import encode_stat

# -- config --------------------------------------------------------------------------------------


def test_defaults_are_config_autoscaler_defaults() -> None:
    config = KpaConfig()
    assert (config.stable_window, config.panic_window_percentage) == (60.0, 10.0)
    assert config.panic_threshold_percentage == 200.0
    assert (config.max_scale_up_rate, config.max_scale_down_rate) == (1000.0, 2.0)
    assert config.container_concurrency_target_percentage == 70.0
    assert config.container_concurrency_target_default == 100.0
    assert config.target_burst_capacity == 211.0
    assert config.scale_to_zero_grace_period == 30.0
    assert config.activator_capacity == 100.0
    assert config.enable_scale_to_zero is True
    assert (config.panic_window, config.panic_threshold) == (6, 2.0)
    assert (config.total, config.target_value) == (100.0, 70.0)


@pytest.mark.parametrize(
    ("settings", "total", "target"),
    [
        ({}, 100.0, 70.0),  # CC = 0: the 100 default
        ({"container_concurrency": 10}, 10.0, 7.0),
        ({"container_concurrency": 1}, 1.0, 0.7),
        ({"target": 50.0}, 50.0, 35.0),  # the target annotation replaces the default
        ({"target": 50.0, "container_concurrency": 10}, 10.0, 7.0),  # ... capped at CC
        ({"target": 5.0, "container_concurrency": 10}, 5.0, 3.5),
        ({"container_concurrency_target_percentage": 100.0}, 100.0, 100.0),
        ({"container_concurrency_target_percentage": 0.5}, 100.0, 50.0),  # legacy fraction
        ({"target": 0.01}, 0.01, 0.01),  # never below TargetMin
    ],
)
def test_target_resolution(settings: dict, total: float, target: float) -> None:
    config = KpaConfig(**settings)
    assert config.total == total
    assert config.target_value == pytest.approx(target)


@pytest.mark.parametrize(
    ("stable", "percentage", "panic"),
    [(60, 10, 6), (6, 10, 1), (15, 10, 2), (25, 10, 3), (60, 1, 1), (60, 100, 60), (120, 5, 6)],
)
def test_panic_window_rounds_to_whole_seconds_at_least_one(
    stable: float, percentage: float, panic: int
) -> None:
    assert KpaConfig(stable_window=stable, panic_window_percentage=percentage).panic_window == panic


@pytest.mark.parametrize(
    "settings",
    [
        {"stable_window": 5},
        {"stable_window": 60.5},
        {"stable_window": 3601},
        {"panic_window_percentage": 0.5},
        {"panic_window_percentage": 101},
        {"max_scale_up_rate": 1.0},
        {"max_scale_down_rate": 0.5},
        {"container_concurrency_target_percentage": 0},
        {"container_concurrency_target_percentage": 101},
        {"target_burst_capacity": -2},
        {"scale_to_zero_grace_period": 0},
        {"container_concurrency": -1},
        {"aggregation_algorithm": "median"},
    ],
)
def test_invalid_config_is_refused(settings: dict) -> None:
    with pytest.raises(ValueError):
        KpaConfig(**settings)


# -- linear buckets (bucketing.go TimedFloat64Buckets) ------------------------------------------


def test_linear_average_over_a_partial_window() -> None:
    buckets = TimedBuckets(60)
    for second, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        buckets.record(100 + second + 0.3, value)
    assert buckets.average(103.9) == 2.5  # four valid buckets, not sixty


def test_linear_samples_in_one_second_add_up() -> None:
    buckets = TimedBuckets(60)
    buckets.record(10.1, 3.0)
    buckets.record(10.9, 4.0)
    assert buckets.average(10.95) == 7.0


def test_linear_gap_shorter_than_the_window_counts_as_zero() -> None:
    buckets = TimedBuckets(10)
    buckets.record(0.0, 10.0)
    buckets.record(2.0, 10.0)
    assert buckets.average(2.0) == round(20 / 3, 6)  # rounded to 6 digits like Knative


def test_linear_no_recent_data_drops_stale_ring_slots() -> None:
    buckets = TimedBuckets(5)
    for second in range(1, 8):  # seconds 1..7 hold 1..7; the ring keeps 3..7
        buckets.record(second, float(second))
    assert buckets.average(7.5) == 5.0
    # Two seconds without a write: seconds 8 and 9 would be the slots of 3 and 4.
    assert buckets.average(9.0) == 6.0  # mean of 5, 6, 7
    assert buckets.average(11.0) == 7.0
    assert buckets.average(12.0) == 0.0  # a whole window without data
    assert not buckets.is_empty(12.0) and buckets.is_empty(12.001 + 1)


def test_linear_window_resets_after_a_window_of_silence() -> None:
    buckets = TimedBuckets(5)
    buckets.record(0, 100.0)
    buckets.record(5, 1.0)  # exactly a window later: starts afresh
    assert buckets.average(5) == 1.0
    buckets.record(6, 3.0)
    assert buckets.average(6) == 2.0


def test_linear_late_writes() -> None:
    buckets = TimedBuckets(5)
    buckets.record(10, 1.0)
    buckets.record(12, 1.0)
    buckets.record(11, 4.0)  # late but inside the window: counted
    assert buckets.average(12) == 2.0
    buckets.record(7, 100.0)  # a window older than the newest write: dropped
    assert buckets.average(12) == 2.0
    buckets.record(8.5, 3.0)  # inside the window, before the first write: extends it
    assert buckets.average(12) == pytest.approx(9 / 5)


def test_linear_empty_buckets() -> None:
    buckets = TimedBuckets(60)
    assert buckets.is_empty(0.0)
    assert buckets.average(0.0) == 0.0


# -- weighted buckets (bucketing.go WeightedFloat64Buckets) -------------------------------------


def test_weighted_coefficient() -> None:
    assert WeightedBuckets(60).coefficient == 0.2  # the minimum exponent
    assert WeightedBuckets(6).coefficient == pytest.approx(1 - 0.0001 ** (1 / 6))


def test_weighted_average_matches_knatives_example() -> None:
    # bucketing.go's comment: [10, 10, 5, 5] (newest last) with exponent 0.6 gives 5.544.
    buckets = WeightedBuckets(4)
    buckets.coefficient = 0.6
    for second, value in enumerate([10.0, 10.0, 5.0, 5.0]):
        buckets.record(second, value)
    assert buckets.average(3) == pytest.approx(5.544)
    reverse = WeightedBuckets(4)
    reverse.coefficient = 0.6
    for second, value in enumerate([5.0, 5.0, 10.0, 10.0]):
        reverse.record(second, value)
    assert reverse.average(3) == pytest.approx(9.072)


def test_weighted_skips_seconds_since_the_last_write() -> None:
    buckets = WeightedBuckets(4)
    buckets.coefficient = 0.5
    for second in range(4):
        buckets.record(second, 8.0)
    # Newest-first weights 0.5, 0.25, 0.125, 0.0625; one second later the newest bucket weighs
    # 0.25 and only three buckets remain.
    assert buckets.average(3) == pytest.approx(8 * 0.9375)
    assert buckets.average(4) == pytest.approx(8 * (0.25 + 0.125 + 0.0625))
    assert buckets.average(9) == 0.0


def test_weighted_steady_load_converges() -> None:
    buckets = WeightedBuckets(60)
    for second in range(60):
        buckets.record(second, 35.0)
    assert buckets.average(59) == pytest.approx(35.0, abs=1e-3)


# -- the decider -----------------------------------------------------------------------------


Load = Callable[[int], float]


def run(
    model: KpaModel, load: Load, until: int, ready: int | Callable[[int], int] = 1
) -> dict[float, Decision]:
    """Seconds 0..until: record `load(s)` at s + 0.25, decide at s + 0.5 on even seconds."""
    decisions = {}
    for second in range(until + 1):
        model.record(second + 0.25, Stat(average_concurrent_requests=load(second)))
        if second % 2 == 0:
            pods = ready(second) if callable(ready) else ready
            decisions[second + 0.5] = model.decide(second + 0.5, pods)
    return decisions


def test_steady_load_one_pod() -> None:
    decisions = run(KpaModel(), lambda s: 35.0, 120)
    for decision in decisions.values():
        assert decision.valid and not decision.panicking
        assert (decision.stable_concurrency, decision.panic_concurrency) == (35.0, 35.0)
        assert decision.desired_pods == decision.desired_stable_pods == 1
        assert decision.excess_burst_capacity == math.floor(100 - 211 - 35)
        assert decision.activator_in_path  # 1 pod cannot absorb a 211 burst
        assert decision.activators == 4  # ceil((100 + 211) / 100)
        assert decision.why.startswith("stable mode")


@pytest.mark.parametrize(
    ("config", "load", "ready", "desired", "ebc", "activator"),
    [
        (KpaConfig(), 140.0, 2, 2, math.floor(200 - 211 - 140), True),
        (KpaConfig(), 141.0, 3, 3, math.floor(300 - 211 - 141), True),
        (KpaConfig(), 100.0, 5, 2, None, None),  # scale-down limit: floor(5/2) = 2
        (KpaConfig(), 100.0, 8, 4, math.floor(800 - 211 - 100), False),
        (KpaConfig(container_concurrency=10), 21.0, 3, 3, math.floor(30 - 211 - 21), True),
        (KpaConfig(target_burst_capacity=0), 35.0, 1, 1, 0, False),
        (KpaConfig(target_burst_capacity=-1), 35.0, 50, 25, -1, True),
    ],
)
def test_steady_load_table(
    config: KpaConfig,
    load: float,
    ready: int,
    desired: int,
    ebc: int | None,
    activator: bool | None,
) -> None:
    decision = run(KpaModel(config), lambda s: load, 70, ready)[70.5]
    assert decision.desired_pods == desired
    assert not decision.panicking
    if ebc is not None:
        assert decision.excess_burst_capacity == ebc
        assert decision.activator_in_path is activator


def test_activator_count() -> None:
    five = run(KpaModel(), lambda s: 100.0, 4, 5)[4.5]
    assert five.activators == math.ceil((500 + 211) / 100)
    assert run(KpaModel(KpaConfig(target_burst_capacity=0)), lambda s: 1.0, 0)[0.5].activators == 2
    assert run(KpaModel(), lambda s: 1.0, 0, 0)[0.5].activators == 3  # ceil(211 / 100)


def test_proxied_concurrency_is_left_to_the_activator() -> None:
    model = KpaModel()
    stat = Stat("p", 10.0, 4.0, request_count=7.0, proxied_request_count=2.0)
    model.record(0.25, stat)
    decision = model.decide(0.5, 1)
    assert (decision.stable_concurrency, decision.panic_concurrency) == (6.0, 6.0)
    assert (decision.stable_rps, decision.panic_rps) == (5.0, 5.0)


def burst(second: int) -> float:
    return 350.0 if 60 <= second < 64 else 35.0


# The burst against one ready pod that does not grow (pods pending). Panic window = 6 s:
# at 60.5 the panic average is (5*35 + 350)/6 = 87.5 -> 2 pods = 2x the 1 ready: panic.
# Over the threshold until 68.5 ((350 + 5*35)/6 -> 2); from 70.5 under it. Panic is left at the
# first decision more than a stable window after the last one over it: 128.5 + 2 = 130.5.
BURST_TABLE = [
    # time, panicking, desired, panic average, why starts with
    (58.5, False, 1, 35.0, "stable mode"),
    (60.5, True, 2, 87.5, "entered panic"),
    (62.5, True, 3, 192.5, "panicking: panic wants 3/1"),
    (64.5, True, 4, 245.0, "panicking: panic wants 4/1"),
    (66.5, True, 4, 192.5, "panicking: panic wants 3/1"),
    (68.5, True, 4, 87.5, "panicking: panic wants 2/1"),
    (70.5, True, 4, 35.0, "panicking: under 2x, 58s until it may leave"),
    (128.5, True, 4, 35.0, "panicking: under 2x, 0s until it may leave"),
    (130.5, False, 1, 35.0, "left panic"),
    (132.5, False, 1, 35.0, "stable mode"),
]


@pytest.mark.parametrize(("time", "panicking", "desired", "panic", "why"), BURST_TABLE)
def test_burst_enters_and_leaves_panic(
    time: float, panicking: bool, desired: int, panic: float, why: str
) -> None:
    decision = run(KpaModel(), burst, 140)[time]
    assert decision.panicking is panicking
    assert decision.desired_pods == desired
    assert decision.panic_concurrency == panic
    assert decision.why.startswith(why), decision.why


def test_panic_never_scales_down_and_holds_the_maximum() -> None:
    decisions = run(KpaModel(), burst, 140)
    in_panic = [d.desired_pods for t, d in sorted(decisions.items()) if 60 <= t <= 128.5]
    assert in_panic == sorted(in_panic)  # never decreasing
    held = decisions[70.5]
    assert held.desired_panic_pods == 1 and held.desired_pods == 4
    assert "never scaling down in panic, holding 4" in held.why
    # The stable average took the burst in, but stays under the 70 target.
    assert decisions[64.5].stable_concurrency == pytest.approx((56 * 35 + 4 * 350) / 60)


def test_burst_with_pods_following_the_decision() -> None:
    model = KpaModel()
    ready, trajectory = 1, {}
    for second in range(0, 130):
        model.record(second + 0.25, Stat(average_concurrent_requests=burst(second)))
        if second % 2 == 0:
            decision = model.decide(second + 0.5, ready)
            trajectory[second + 0.5] = (ready, decision.desired_pods, decision.panicking)
            ready = decision.desired_pods  # the deployment keeps up at once
    # Only 60.5 is over the threshold (2 wanted / 1 ready); at 62.5 3 wanted / 2 ready = 1.5x.
    # Panic still never scales down and ends 60 s after 60.5; the 4 pods then halve per tick.
    assert [trajectory[t] for t in (58.5, 60.5, 62.5, 64.5, 66.5, 120.5)] == [
        (1, 1, False),
        (1, 2, True),
        (2, 3, True),
        (3, 4, True),
        (4, 4, True),
        (4, 4, True),
    ]
    assert [trajectory[t] for t in (122.5, 124.5, 126.5)] == [
        (4, 2, False),
        (2, 1, False),
        (1, 1, False),
    ]


def test_autoscaler_start_with_several_pods_starts_in_panic() -> None:
    model = KpaModel(now=0.0, ready_pods=10)
    decisions = run(model, lambda s: 35.0, 70, 10)
    # Holds the 10 pods it found until a stable window of data has come in.
    assert all(decisions[t].panicking and decisions[t].desired_pods == 10 for t in (0.5, 58.5))
    assert decisions[60.5].panicking is False
    assert decisions[60.5].desired_pods == 5  # the scale-down rate now applies


def test_scale_down_limited_by_the_rate() -> None:
    model = KpaModel()
    for second in range(61):
        model.record(second + 0.25, Stat(average_concurrent_requests=35.0))
    steps = []
    ready = 10
    for now in (60.5, 62.5, 64.5, 66.5, 68.5):
        decision = model.decide(now, ready)
        steps.append((ready, decision.desired_pods, decision.desired_stable_pods))
        ready = decision.desired_pods
    assert steps == [(10, 5, 5), (5, 2, 2), (2, 1, 1), (1, 1, 1), (1, 1, 1)]
    assert "limited by max-scale-down-rate 2" in model.decide(68.5, 9).why


@pytest.mark.parametrize(
    ("rate", "ready", "desired"), [(1000.0, 0, 10), (2.0, 1, 2), (2.0, 3, 6), (1.5, 1, 2)]
)
def test_scale_up_limited_by_the_rate(rate: float, ready: int, desired: int) -> None:
    model = KpaModel(KpaConfig(max_scale_up_rate=rate))
    model.record(0.25, Stat(average_concurrent_requests=700.0))
    decision = model.decide(0.5, ready)
    assert decision.desired_pods == desired
    assert decision.desired_stable_pods == desired
    if desired < 10:
        assert "limited by max-scale-up-rate" in decision.why


def test_unreachable_revision_drops_the_scale_down_limit() -> None:
    decision = run(KpaModel(KpaConfig(reachable=False)), lambda s: 35.0, 2, 10)[2.5]
    assert decision.desired_pods == 1


def test_zero_traffic_scales_to_zero_after_the_grace_period() -> None:
    decisions = run(KpaModel(), lambda s: 0.0, 40)
    first = decisions[0.5]
    assert first.desired_pods == 0 and first.activator_in_path and not first.scale_to_zero
    assert "0 pods wanted for 0s (grace period 30s)" in first.why
    assert not decisions[28.5].scale_to_zero
    assert decisions[30.5].scale_to_zero and "may scale to zero" in decisions[30.5].why
    assert decisions[30.5].excess_burst_capacity == math.floor(100 - 211)


def test_traffic_that_stops_goes_to_zero_once_it_leaves_the_stable_window() -> None:
    decisions = run(KpaModel(), lambda s: 35.0 if s < 10 else 0.0, 110)
    # Second 9 leaves the 60-bucket ring at second 69: the first 0 decision is at 70.5.
    assert decisions[68.5].desired_pods == 1
    assert decisions[68.5].stable_concurrency == pytest.approx(35 / 60, abs=1e-6)
    assert decisions[70.5].desired_pods == 0
    assert not decisions[98.5].scale_to_zero
    assert decisions[100.5].scale_to_zero


def test_two_idle_pods_go_to_one_then_zero() -> None:
    model = KpaModel()
    model.record(0.25, Stat())
    assert model.decide(0.5, 2).desired_pods == 1  # floor(2 / 2)
    assert model.decide(0.5, 1).desired_pods == 0


def test_traffic_resets_the_grace_period() -> None:
    model = KpaModel()
    model.record(0.25, Stat())
    assert model.decide(0.5, 1).desired_pods == 0
    model.record(20.25, Stat(average_concurrent_requests=1.0))
    assert model.decide(20.5, 1).desired_pods == 1
    assert model.zero_since is None


def test_scale_to_zero_disabled() -> None:
    decisions = run(KpaModel(KpaConfig(enable_scale_to_zero=False)), lambda s: 0.0, 40)
    assert decisions[40.5].desired_pods == 0 and not decisions[40.5].scale_to_zero
    assert "scale to zero disabled" in decisions[40.5].why


def test_no_data_for_a_window_means_no_decision() -> None:
    model = KpaModel()
    assert not model.decide(0.0, 1).valid  # nothing recorded yet
    model.record(0.25, Stat(average_concurrent_requests=35.0))
    assert model.decide(59.5, 1).stable_concurrency == 35.0
    at_window = model.decide(60.9, 1)  # 60 s after the write: valid, the average has aged out
    assert at_window.valid and at_window.stable_concurrency == 0.0
    stale = model.decide(61.0, 1)
    assert not stale.valid and stale.why.startswith("no data")
    assert stale.desired_pods == 0 and not stale.scale_to_zero


def test_weighted_algorithm_in_the_model() -> None:
    config = KpaConfig(aggregation_algorithm=WEIGHTED_EXPONENTIAL)
    decisions = run(KpaModel(config), burst, 66)
    assert decisions[58.5].stable_concurrency == pytest.approx(35.0, abs=1e-3)
    # The newest buckets weigh most: the weighted stable average reacts faster than the mean.
    assert decisions[64.5].stable_concurrency > (56 * 35 + 4 * 350) / 60
    assert decisions[64.5].panicking


# -- the scraper side (kpacli, no sockets) ------------------------------------------------------


def test_decode_what_statwire_encodes() -> None:
    report = StatsReport(2.5, 0.5, 7, 3)
    stat = kpacli.decode_stat(encode_stat("pod-a", report, 12.0))
    assert stat == Stat("pod-a", 2.5, 0.5, 7.0, 3.0, 12.0)
    assert kpacli.decode_stat(encode_stat("pod-a", None, 0.0)) == Stat("pod-a")
    assert kpacli.decode_stat(b"") == Stat()


def test_decode_what_protobuf_encodes(stat_pb2: ModuleType) -> None:
    message = stat_pb2.Stat(
        pod_name="p\u00e9",
        average_concurrent_requests=1.25,
        average_proxied_concurrent_requests=0.25,
        request_count=4.0,
        proxied_request_count=1.0,
        process_uptime=99.5,
        timestamp=1_700_000_000,
    )
    stat = kpacli.decode_stat(message.SerializeToString())
    assert stat == Stat("p\u00e9", 1.25, 0.25, 4.0, 1.0, 99.5)
    # Unknown fields of every wire type are skipped.
    unknown = bytes([8 << 3 | 0, 5, 9 << 3 | 5, 1, 2, 3, 4, 10 << 3 | 2, 1, 0x41])
    assert kpacli.decode_stat(message.SerializeToString() + unknown) == stat


@pytest.mark.parametrize(
    "body",
    [
        bytes([2 << 3 | 1, 0, 0]),  # short double
        bytes([1 << 3 | 2, 5, 0x41]),  # short string
        bytes([0x80]),  # unfinished varint
        bytes([11 << 3 | 3]),  # group wire type
        bytes([8 << 3 | 5, 1]),  # short fixed32
    ],
)
def test_decode_truncated_or_unsupported_raises(body: bytes) -> None:
    with pytest.raises(ValueError):
        kpacli.decode_stat(body)


@pytest.mark.parametrize(
    ("population", "sample"), [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (10, 7), (100, 14)]
)
def test_sample_size(population: int, sample: int) -> None:
    assert kpacli.sample_size(population) == sample


def test_aggregate_scales_the_sample_to_the_ready_pods() -> None:
    stats = [Stat("a", 2.0, 1.0, 10.0, 4.0, 5.0), Stat("b", 4.0, 0.0, 6.0, 0.0, 9.0)]
    assert kpacli.aggregate(stats, 2) == Stat("service-scraper", 6.0, 1.0, 16.0, 4.0, 0.0)
    assert kpacli.aggregate(stats, 4) == Stat("service-scraper", 12.0, 2.0, 32.0, 8.0, 0.0)


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("http://10.0.0.1:9090/metrics", "http://10.0.0.1:9090/metrics"),
        ("http://10.0.0.1:9090", "http://10.0.0.1:9090/metrics"),
        ("10.0.0.1:9090", "http://10.0.0.1:9090/metrics"),
        ("http://h:1/other", "http://h:1/other"),
    ],
)
def test_metrics_url(given: str, url: str) -> None:
    assert kpacli.metrics_url(given) == url


def test_report_formats() -> None:
    decision = run(KpaModel(), burst, 60)[60.5]
    line = kpacli.format_decision(decision, 1, 1)
    assert "desired 2" in line and "panic YES" in line and "entered panic" in line
    results: list[object] = [Stat("a", 87.5), ConnectionRefusedError("refused")]
    data = json.loads(kpacli.report_json(decision, ["u1", "u2"], results))
    assert data["panicking"] is True and data["desired_pods"] == 2 and data["now"] == 60.5
    assert kpacli.describe(TimeoutError()) == "TimeoutError"
    assert (
        data["pods"][0]["pod_name"] == "a"
        and data["pods"][1]["error"] == "ConnectionRefusedError: refused"
    )
    no_data = KpaModel().decide(0.0, 1)
    assert "no data" in kpacli.format_decision(no_data, 0, 1)


def test_kpa_subcommand_is_routed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["kpa", "--help"])
    assert exit_info.value.code == 0
    assert "--count" in capsys.readouterr().out
    for bad in (["kpa"], ["kpa", "--count", "0", "h:1"], ["kpa", "--stable-window", "5", "h:1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2
