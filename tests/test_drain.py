"""Drain (contract §8): the pure DrainTimer with explicit times, then the asyncio Drainer."""

from __future__ import annotations

import asyncio

import pytest

from queueproxy.drain import DEFAULT_QUIET_PERIOD, Drainer, DrainTimer

# --- DrainTimer -----------------------------------------------------------------------------


def test_defaults_to_knative_quiet_period() -> None:
    assert DEFAULT_QUIET_PERIOD == 30.0
    assert DrainTimer().quiet_period == 30.0


def test_not_draining_until_started() -> None:
    timer = DrainTimer(30)
    assert not timer.is_draining
    assert timer.deadline is None
    assert not timer.is_done(1000)
    timer.touch(5)  # requests before a drain change nothing
    timer.start(10)
    assert timer.is_draining
    assert timer.deadline == 40


def test_done_after_quiet_period_without_requests() -> None:
    timer = DrainTimer(30)
    timer.start(10)
    assert not timer.is_done(39.999)
    assert timer.is_done(40)


def test_requests_restart_the_quiet_period() -> None:
    timer = DrainTimer(30)
    timer.start(0)
    timer.touch(20)
    assert timer.deadline == 50
    assert not timer.is_done(40)
    timer.touch(45)
    assert not timer.is_done(70)
    assert timer.is_done(75)


def test_start_is_idempotent() -> None:
    timer = DrainTimer(30)
    timer.start(0)
    timer.start(25)  # a second caller (SIGTERM after preStop) joins the running drain
    assert timer.deadline == 30
    assert timer.is_done(30)


def test_out_of_order_touch_does_not_shorten() -> None:
    timer = DrainTimer(30)
    timer.start(0)
    timer.touch(20)
    timer.touch(10)
    assert timer.deadline == 50


def test_done_is_final_until_reset() -> None:
    timer = DrainTimer(30)
    timer.start(0)
    assert timer.is_done(31)
    timer.touch(32)  # Knative's fired timer is not restarted by later requests
    assert timer.is_done(33)
    assert timer.is_draining


def test_reset_undoes_and_allows_a_new_drain() -> None:
    timer = DrainTimer(30)
    timer.start(0)
    timer.reset()
    assert not timer.is_draining
    assert timer.deadline is None
    assert not timer.is_done(100)
    timer.start(100)
    assert not timer.is_done(129)
    assert timer.is_done(130)


def test_reset_after_done() -> None:
    timer = DrainTimer(1)
    timer.start(0)
    assert timer.is_done(1)
    timer.reset()
    assert not timer.is_done(2)


def test_negative_quiet_period_rejected() -> None:
    with pytest.raises(ValueError, match="quiet period"):
        DrainTimer(-1)


# --- Drainer --------------------------------------------------------------------------------

QUIET = 0.2


async def test_drain_returns_after_quiet_period() -> None:
    drainer = Drainer(QUIET)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not drainer.draining
    assert await asyncio.wait_for(drainer.drain(), 5) is True
    assert loop.time() - started >= QUIET
    assert drainer.draining  # stays draining: the process is about to stop


async def test_touches_extend_the_drain() -> None:
    drainer = Drainer(QUIET)
    loop = asyncio.get_running_loop()
    waiter = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(0)
    assert drainer.draining
    last_touch = loop.time()
    for _ in range(5):
        await asyncio.sleep(QUIET / 2)
        assert not waiter.done()
        drainer.touch()
        last_touch = loop.time()
    assert await asyncio.wait_for(waiter, 5) is True
    assert loop.time() - last_touch >= QUIET


async def test_touch_when_not_draining_is_a_no_op() -> None:
    drainer = Drainer(QUIET)
    drainer.touch()
    assert not drainer.draining


async def test_several_awaiters_share_one_drain() -> None:
    drainer = Drainer(QUIET)
    first = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(QUIET / 2)
    deadline = drainer.deadline
    assert deadline is not None
    second = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(0)
    assert drainer.deadline == deadline  # the second caller joined without restarting the period
    results = await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert results == [True, True]
    assert await asyncio.wait_for(drainer.drain(), 1) is True  # finished drains return at once


async def test_cancelled_waiter_does_not_end_the_drain_for_others() -> None:
    drainer = Drainer(QUIET)
    first = asyncio.ensure_future(drainer.drain())
    second = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.wait_for(second, 5) is True


async def test_reset_releases_waiters_and_readiness_returns() -> None:
    drainer = Drainer(30.0)
    waiters = [asyncio.ensure_future(drainer.drain()) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert drainer.draining
    drainer.reset()
    assert not drainer.draining
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [False, False, False]


async def test_drain_again_after_reset() -> None:
    drainer = Drainer(QUIET)
    waiter = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(0)
    drainer.reset()
    assert await waiter is False
    assert await asyncio.wait_for(drainer.drain(), 5) is True


async def test_touches_rearm_one_timer_lazily() -> None:
    drainer = Drainer(QUIET)
    waiter = asyncio.ensure_future(drainer.drain())
    await asyncio.sleep(0)
    handle = drainer._handle
    for _ in range(100):
        drainer.touch()
    assert drainer._handle is handle  # touches only store a time; no timer per request
    await asyncio.wait_for(waiter, 5)
