"""The counting rules of `queueproxy.outcomes`, with an explicit clock."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queueproxy.outcomes import (
    BAD_REQUEST,
    CUT,
    QUEUE_FULL,
    REASONS,
    TIMEOUT,
    UPSTREAM_MALFORMED,
    UPSTREAM_RESET,
    UPSTREAM_UNREACHABLE,
    Outcomes,
    SecondsHistogram,
    quantile,
    upstream_failure_reason,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def families(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_counts_by_reason_start_at_zero_for_every_reason() -> None:
    outcomes = Outcomes(Clock())
    parsed = families(outcomes.render(0, 0, 2, 20))
    rejected = parsed["queueproxy_rejected_requests"]  # the parser drops `_total`
    assert {s.labels["reason"]: s.value for s in rejected.samples} == dict.fromkeys(REASONS, 0)


def test_each_reason_is_counted_apart() -> None:
    outcomes = Outcomes(Clock())
    for _ in range(3):
        outcomes.rejected(QUEUE_FULL, 503, "pending request queue full")
    outcomes.rejected(TIMEOUT, 504, "request timeout")
    outcomes.rejected(TIMEOUT, CUT, "request timeout")
    assert outcomes.counts[QUEUE_FULL] == 3
    assert outcomes.counts[TIMEOUT] == 2
    assert sum(outcomes.counts.values()) == 5
    with pytest.raises(KeyError):
        outcomes.rejected("made_up", 500, "")


def test_gauges_and_limits_are_rendered_as_passed() -> None:
    parsed = families(Outcomes(Clock()).render(2, 18, 2, 20))
    values = {name: f.samples[0].value for name, f in parsed.items() if f.type == "gauge"}
    assert values == {
        "queueproxy_requests_at_app": 2,
        "queueproxy_requests_queued": 18,
        "queueproxy_container_concurrency": 2,
        "queueproxy_queue_capacity": 20,
    }


def test_wait_and_app_histograms_are_separate() -> None:
    outcomes = Outcomes(Clock())
    outcomes.observe(0.0001, 1.0)
    outcomes.observe(2.0, 1.0)
    parsed = families(outcomes.render(0, 0, 0, 0))
    wait = {
        s.labels["le"]: s.value
        for s in parsed["queueproxy_request_wait_seconds"].samples
        if s.name.endswith("_bucket")
    }
    app = {
        s.labels["le"]: s.value
        for s in parsed["queueproxy_request_app_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert wait["0.001"] == 1 and wait["2.5"] == 2 and wait["+Inf"] == 2
    assert app["0.5"] == 0 and app["1"] == 2  # `le` is inclusive
    assert outcomes.wait.sum == pytest.approx(2.0001)


def test_histogram_overflow_goes_to_inf() -> None:
    histogram = SecondsHistogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 3.0, 1e9):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 2]
    assert histogram.count == 5


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("dial tcp 127.0.0.1:8080: connect: connection refused", UPSTREAM_UNREACHABLE),
        ("timed out dialing 127.0.0.1:8080", UPSTREAM_UNREACHABLE),
        ("EOF", UPSTREAM_RESET),
        ("read tcp 127.0.0.1:8080: read: connection reset by peer", UPSTREAM_RESET),
        ("malformed HTTP response from the app: bad status line", UPSTREAM_MALFORMED),
    ],
)
def test_upstream_failures_are_told_apart_by_their_error_text(error: str, reason: str) -> None:
    assert upstream_failure_reason(error) == reason


def test_first_line_per_reason_is_written_then_suppressed_for_the_interval() -> None:
    clock = Clock()
    outcomes = Outcomes(clock, log_interval=10.0)
    first = outcomes.rejected(QUEUE_FULL, 503, "pending request queue full\n")
    assert first == "sidecar answered queue_full: 503: pending request queue full"
    clock.now += 1
    assert outcomes.rejected(QUEUE_FULL, 503, "pending request queue full") is None
    assert outcomes.rejected(QUEUE_FULL, 503, "pending request queue full") is None
    # Another reason has its own budget.
    assert outcomes.rejected(BAD_REQUEST, 400, "Bad Request") is not None
    clock.now += 5
    assert outcomes.summaries() == []  # the interval is not over yet
    clock.now += 5  # 11 s after the first line
    again = outcomes.rejected(QUEUE_FULL, 503, "pending request queue full")
    assert again is not None
    assert "2 more in the last 11.0s not logged" in again
    assert outcomes.counts[QUEUE_FULL] == 4  # counting never stops


def test_summary_line_when_no_further_answer_comes() -> None:
    clock = Clock()
    outcomes = Outcomes(clock, log_interval=2.0)
    outcomes.rejected(TIMEOUT, 504, "request timeout")
    for _ in range(5):
        clock.now += 0.1
        outcomes.rejected(TIMEOUT, 504, "request timeout")
    clock.now = 102.0
    [line] = outcomes.summaries()
    assert line == (
        "sidecar answered timeout: 5 more in the last 2.0s not logged, "
        "one line per reason per interval"
    )
    assert outcomes.summaries() == []  # said once
    # The summary started a new interval: the next answer within it is suppressed again.
    clock.now += 1.0
    assert outcomes.rejected(TIMEOUT, 504, "request timeout") is None
    clock.now += 1.0
    assert outcomes.summaries() != []


def test_interval_zero_logs_every_answer() -> None:
    clock = Clock()
    outcomes = Outcomes(clock, log_interval=0.0)
    lines = [outcomes.rejected(QUEUE_FULL, 503, "full") for _ in range(5)]
    assert all(line is not None for line in lines)
    assert outcomes.summaries() == []


def test_a_cut_says_so() -> None:
    outcomes = Outcomes(Clock())
    line = outcomes.rejected(UPSTREAM_RESET, CUT, "EOF")
    assert line == "sidecar answered upstream_reset: connection cut after the response began: EOF"


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        Outcomes(Clock(), log_interval=-1)


def test_quantile_nearest_rank() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0], 0.99) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile(values, 1.0) == 100.0
    assert quantile(list(reversed(values)), 0.0) == 1.0
