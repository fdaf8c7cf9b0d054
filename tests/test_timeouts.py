"""Timeout rules (contract §9.1, v1.19+ semantics) as timed scripts in seconds from arrival."""

from __future__ import annotations

import subprocess
import sys

import pytest

from queueproxy.timeouts import Expired, RequestTimer, TimeoutRules


def run(rules: TimeoutRules, writes: list[float], until: float) -> tuple[float, Expired] | None:
    """Drive a timer the way the proxy does, with one timer re-armed at `next_deadline()`.

    Writes happen at the given times; returns (time fired, expiry) or None if nothing fired by
    `until`.
    """
    timer = RequestTimer(rules)
    timer.start(0.0)
    pending = sorted(writes)
    while True:
        deadline = timer.next_deadline()
        if pending and (deadline is None or pending[0] < deadline):
            timer.wrote(pending.pop(0))
            continue
        if deadline is None or deadline > until:
            return None
        expired = timer.check(deadline)
        if expired is not None:
            return deadline, expired


SCRIPTS = [
    pytest.param(TimeoutRules(10), [], 20, (10, "total", False), id="total, nothing written"),
    pytest.param(TimeoutRules(10), [1, 5, 9.5], 20, (10, "total", True), id="total mid-stream"),
    pytest.param(TimeoutRules(10), [1], 9.9, None, id="total not yet"),
    pytest.param(
        TimeoutRules(10, response_start=2), [], 20, (2, "response_start", False), id="no first byte"
    ),
    pytest.param(
        TimeoutRules(10, response_start=2), [1.9], 20, (10, "total", True), id="first byte in time"
    ),
    pytest.param(
        TimeoutRules(10, response_start=2),
        [2.5],
        20,
        (2, "response_start", False),
        id="first byte late",
    ),
    pytest.param(TimeoutRules(10, idle=3), [], 20, (3, "idle", False), id="idle bounds the start"),
    pytest.param(
        TimeoutRules(10, idle=3), [2, 4, 6, 8], 20, (10, "total", True), id="idle kept alive"
    ),
    pytest.param(TimeoutRules(10, idle=3), [1, 2], 20, (5, "idle", True), id="idle mid-stream"),
    pytest.param(
        TimeoutRules(100, response_start=5, idle=3), [], 20, (3, "idle", False), id="idle < start"
    ),
    pytest.param(
        TimeoutRules(100, response_start=2, idle=3),
        [1, 3.5],
        20,
        (6.5, "idle", True),
        id="response start met, then idle",
    ),
    pytest.param(TimeoutRules(0), [], 1e9, None, id="everything off"),
    pytest.param(TimeoutRules(0, idle=4), [3], 20, (7, "idle", True), id="only idle"),
]


@pytest.mark.parametrize(("rules", "writes", "until", "want"), SCRIPTS)
def test_scripts(
    rules: TimeoutRules,
    writes: list[float],
    until: float,
    want: tuple[float, str, bool] | None,
) -> None:
    got = run(rules, writes, until)
    if want is None:
        assert got is None
    else:
        at, reason, started = want
        assert got == (at, Expired(reason, started))


def test_same_instant_reports_total_first() -> None:
    timer = RequestTimer(TimeoutRules(5, response_start=5, idle=5))
    timer.start(0.0)
    assert timer.next_deadline() == 5
    assert timer.check(5) == Expired("total", False)


def test_response_start_wins_over_idle_at_same_instant() -> None:
    timer = RequestTimer(TimeoutRules(60, response_start=5, idle=5))
    timer.start(0.0)
    assert timer.check(5) == Expired("response_start", False)


def test_early_fire_returns_none_and_next_deadline_moves() -> None:
    timer = RequestTimer(TimeoutRules(100, idle=3))
    timer.start(10.0)
    assert timer.next_deadline() == 13
    timer.wrote(12.0)
    assert timer.check(13.0) is None
    assert timer.next_deadline() == 15
    assert timer.check(14.999) is None
    assert timer.check(15.0) == Expired("idle", True)


def test_queue_time_counts_toward_total() -> None:
    # start() is called at arrival, before the breaker admits the request.
    timer = RequestTimer(TimeoutRules(3))
    timer.start(100.0)
    assert timer.check(102.9) is None
    assert timer.check(103.0) == Expired("total", False)


def test_expiry_ends_the_timer() -> None:
    timer = RequestTimer(TimeoutRules(1))
    timer.start(0.0)
    assert timer.check(2) is not None
    assert timer.check(3) is None
    assert timer.next_deadline() is None


def test_stop_disarms() -> None:
    timer = RequestTimer(TimeoutRules(1, response_start=1, idle=1))
    timer.start(0.0)
    timer.stop()
    assert timer.next_deadline() is None
    assert timer.check(50) is None


def test_restart_for_next_request_forgets_previous_writes() -> None:
    timer = RequestTimer(TimeoutRules(10, response_start=2))
    timer.start(0.0)
    timer.wrote(1.0)
    assert timer.response_started
    timer.stop()
    timer.start(20.0)
    assert not timer.response_started
    assert timer.next_deadline() == 22
    assert timer.check(22) == Expired("response_start", False)


def test_response_start_deadline_dropped_after_first_write() -> None:
    timer = RequestTimer(TimeoutRules(30, response_start=2))
    timer.start(0.0)
    assert timer.next_deadline() == 2
    timer.wrote(0.5)
    assert timer.next_deadline() == 30


def test_timeout_rules_are_sans_io() -> None:
    code = "import sys, queueproxy.timeouts; sys.exit('asyncio' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
