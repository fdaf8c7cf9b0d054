"""The live page's state (`queueproxy.live.LiveState`) with explicit ticks, and the bounds of
its event streams (`LiveFeed`, `endpoints.StreamWriter`) with a transport that records writes."""

from __future__ import annotations

import json
import math
from collections import deque

import pytest

from queueproxy.endpoints import STREAM_BUFFER_LIMIT, StreamWriter
from queueproxy.live import (
    DRAINING,
    HISTORY_SECONDS,
    LATENCY_WINDOW,
    MAX_REPLAYS_PER_TICK,
    MAX_TARGETS,
    MAX_VIEWERS,
    NOT_READY,
    READY,
    WATCH_LINGER,
    Busy,
    LiveFeed,
    LiveState,
    Tick,
    parse_target,
)
from queueproxy.outcomes import REASONS
from queueproxy.stats import StatsReport

WALL = 1_800_000_000.0


class Sampling:
    """Stands in for `RequestObserver.samples`."""

    def __init__(self) -> None:
        self.samples: deque | None = None
        self.calls = 0

    def __call__(self, samples: deque | None) -> None:
        self.samples = samples
        self.calls += 1


def make_state(cc: int = 2) -> tuple[LiveState, Sampling]:
    sampling = Sampling()
    return LiveState(cc, 10 * cc, 30.0, sampling), sampling


def tick(
    second: int,
    concurrency: float = 0.0,
    requests: int = 0,
    at_app: int = 0,
    queued: int = 0,
    state: str = READY,
    drain_left: float | None = None,
    **rejected: int,
) -> Tick:
    return Tick(
        now=1000.0 + second,
        wall=WALL + second,
        uptime=float(second),
        report=StatsReport(concurrency, 0.0, requests, 0),
        at_app=at_app,
        queued=queued,
        state=state,
        drain_left=drain_left,
        rejected=dict.fromkeys(REASONS, 0) | rejected,
    )


def test_history_keeps_the_autoscalers_numbers_second_by_second_and_is_bounded() -> None:
    state, _ = make_state()
    for second in range(HISTORY_SECONDS + 20):
        state.record(tick(second, concurrency=second % 7, requests=3, at_app=2, queued=1))
    assert len(state.history) == HISTORY_SECONDS
    last = state.history[-1]
    second = HISTORY_SECONDS + 19
    assert last.row() == [WALL + second, float(second % 7), 0.0, 3.0, 2, 1, 0]
    assert state.history[0].wall == WALL + 20


def test_rejections_per_second_and_events() -> None:
    state, _ = make_state()
    state.record(tick(0))
    state.record(tick(1, queue_full=3))
    state.record(tick(2, queue_full=3, timeout=1))
    state.record(tick(3, queue_full=3, timeout=1, state=DRAINING, drain_left=29.5))
    assert [p.rejected for p in state.history] == [0, 3, 1, 0]
    texts = [text for _, text in state.events]
    assert texts == [
        "page started: ready",
        "queue_full × 3",
        "timeout × 1",
        "ready → draining (drain started, quiet period 30s)",
    ]
    state.record(tick(4, state=NOT_READY))
    assert state.events[-1][1] == "draining → not ready"


def test_sampling_only_while_watched() -> None:
    state, sampling = make_state()
    state.record(tick(0))
    assert sampling.samples is None and state.samples is None
    state.asked(1000.5)  # /live.json
    assert sampling.samples is not None and sampling.samples is state.samples
    state.record(tick(1))
    assert sampling.samples is not None
    state.record(tick(math.ceil(WATCH_LINGER) + 1))
    assert sampling.samples is None  # nobody asked for a minute
    state.viewers = 1  # an event stream
    state.record(tick(100))
    assert sampling.samples is not None
    state.viewers = 0
    state.record(tick(101))
    assert sampling.samples is None
    assert sampling.calls == 4


def test_latency_quantiles_cover_the_last_minute_of_samples() -> None:
    state, _ = make_state()
    state.asked(1000.0)
    assert state.samples is not None
    state.samples.append((1000.0 - LATENCY_WINDOW - 1, 99.0, 99.0))  # too old
    for index in range(100):
        state.samples.append((1000.0, index / 1000, 1.0 + index / 100))
    latency = state.latency(1000.0)
    assert latency["requests"] == 100
    assert latency["wait"] == {"p50": 0.049, "p99": 0.098}
    assert latency["app"] == {"p50": 1.49, "p99": 1.98}
    state.samples.clear()
    assert state.latency(1000.0)["wait"] == {"p50": None, "p99": None}


def test_kpa_view_for_this_pod_with_cc_and_with_a_target() -> None:
    state, _ = make_state(cc=2)
    state.viewers = 1
    for second in range(10):
        state.record(tick(second, concurrency=10.0))
    view = json.loads(state.snapshot(None, history=False))["kpa"]
    # CC 2 x 70% = 1.4 per pod; 10 / 1.4 -> 8 pods, far over 2x one ready pod: panic.
    assert (view["total"], view["target"]) == (2.0, 1.4)
    assert (view["stable"], view["panic"], view["desired"]) == (10.0, 10.0, 8)
    assert view["panicking"] is True
    assert "panic" in view["why"]
    # An annotation above CC is capped at CC (`ResolveMetricTarget`); below it, it counts.
    assert json.loads(state.snapshot(50.0, history=False))["kpa"]["target"] == 1.4
    low = json.loads(state.snapshot(1.0, history=False))["kpa"]
    assert (low["target"], low["desired"]) == (0.7, 15)
    # Unlimited CC: the default 100 x 70%.
    state, _ = make_state(cc=0)
    state.viewers = 1
    for second in range(70):
        state.record(tick(second, concurrency=10.0))
    view = json.loads(state.snapshot(None, history=False))["kpa"]
    assert (view["target"], view["desired"], view["panicking"]) == (70.0, 1, False)


def test_a_new_target_replays_the_history() -> None:
    state, _ = make_state(cc=0)
    for second in range(30):  # nobody watching: no models, only history
        state.record(tick(second, concurrency=20.0))
    decision = state.decision(10.0)
    assert decision is not None and decision.valid
    assert decision.stable_concurrency == pytest.approx(20.0)
    assert decision.desired_pods == 3  # 20 / 7


def test_kpa_models_and_replays_are_bounded() -> None:
    state, _ = make_state(cc=0)
    state.viewers = 1
    state.record(tick(0, concurrency=1.0))
    asked = 0
    for second in range(1, 6):
        state.record(tick(second, concurrency=1.0))
        for _ in range(MAX_REPLAYS_PER_TICK):
            asked += 1
            state.decision(float(asked))
        with pytest.raises(Busy):  # a new target per request cannot make a tick unbounded
            state.decision(1000.0 + second)
        state.decision(float(asked))  # a known target is still answered
    assert len(state._models) == MAX_TARGETS
    view = json.loads(state.snapshot(5000.0, history=False))["kpa"]
    assert view["valid"] is False and "too many new targets" in view["why"]


def test_snapshot_has_history_only_when_asked_and_is_built_once_per_tick() -> None:
    state, _ = make_state()
    assert json.loads(state.snapshot(None, history=False)) == {"state": "starting"}
    state.record(tick(0))
    state.record(tick(1, at_app=2, queued=8, state=DRAINING, drain_left=12.34))
    full = json.loads(state.snapshot(None, history=True))
    assert len(full["history"]) == 2
    assert full["drain"] == {"quiet_period": 30.0, "left": 12.3}
    assert (full["cc"], full["queue_capacity"], full["at_app"], full["queued"]) == (2, 20, 2, 8)
    brief = state.snapshot(None, history=False)
    assert "history" not in json.loads(brief)
    assert state.snapshot(None, history=False) is brief  # cached until the next tick
    state.record(tick(2))
    assert state.snapshot(None, history=False) is not brief


def test_snapshot_carries_no_request_data() -> None:
    state, _ = make_state()
    state.record(tick(0))
    data = json.loads(state.snapshot(None, history=True))
    assert set(data) == {
        "time", "uptime", "state", "drain", "cc", "queue_capacity", "at_app", "queued", "stat",
        "rejected", "latency", "events", "kpa", "point", "history",
    }  # fmt: skip


@pytest.mark.parametrize(
    "text", ["abc", "0", "-1", "nan", "inf", "1e9", "0.001", "<script>x</script>", "1\x00", "\r\nX"]
)
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_target(text)
    # The 400 says what is wanted and never echoes the client's text.
    assert str(raised.value) == "target must be a number in [0.01, 100000]"


def test_good_targets() -> None:
    assert parse_target("") is None
    assert parse_target("5") == 5.0
    assert parse_target("0.01") == 0.01


class Transport:
    """Records writes; `buffered` plays the bytes the client has not read yet."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0
        self.aborted = self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.closed = True


def test_a_reader_too_far_behind_is_cut_not_buffered_for() -> None:
    transport = Transport()
    writer = StreamWriter(transport)  # type: ignore[arg-type]
    ended = []
    writer.on_close = lambda: ended.append(True)
    assert writer.write(b"x" * 100)
    transport.buffered = STREAM_BUFFER_LIMIT - 50
    assert not writer.write(b"x" * 100)
    assert transport.aborted and not writer.open and ended == [True]
    assert not writer.write(b"more")  # nothing after the cut
    assert len(transport.written) == 1
    writer.ended()
    assert ended == [True]  # on_close once


def test_feed_sends_history_first_then_points_and_forgets_closed_viewers() -> None:
    state, _ = make_state()
    feed = LiveFeed(state)
    state.record(tick(0))
    transports = [Transport() for _ in range(MAX_VIEWERS)]
    writers = [StreamWriter(t) for t in transports]  # type: ignore[arg-type]
    for writer in writers:
        assert not feed.full
        feed.attach(writer, None)
    assert feed.full and state.viewers == MAX_VIEWERS
    first = transports[0].written[0]
    assert first.startswith(b"retry: 1000\ndata: {") and first.endswith(b"\n\n")
    assert "history" in json.loads(first.split(b"data: ", 1)[1])
    state.record(tick(1))
    feed.publish()
    later = json.loads(transports[0].written[1].removeprefix(b"data: "))
    assert "history" not in later and later["point"][0] == WALL + 1
    writers[0].ended()  # the client went away
    assert not feed.full and state.viewers == MAX_VIEWERS - 1
    feed.close()
    assert all(t.closed for t in transports[1:]) and state.viewers == 0
