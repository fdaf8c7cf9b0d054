"""The limiter without a network: admission, FIFO hand-over, cancellation, accounting."""

from __future__ import annotations

import pytest

from queueproxy.breaker import Admission, Breaker


def test_no_breaker_when_concurrency_is_unlimited():
    assert Breaker.for_container_concurrency(0) is None
    assert Breaker.for_container_concurrency(-1) is None


def test_knative_sizes_the_queue_at_ten_times_cc():
    breaker = Breaker.for_container_concurrency(3)
    assert breaker is not None
    assert (breaker.capacity, breaker.queue_depth) == (3, 30)


@pytest.mark.parametrize("capacity, depth", [(0, 0), (-1, 10), (1, -1)])
def test_invalid_parameters_are_refused(capacity, depth):
    with pytest.raises(ValueError):
        Breaker(capacity, depth)


def test_admits_up_to_capacity_then_queues_then_rejects():
    breaker = Breaker(2, 3)
    outcomes = [breaker.try_acquire(f"r{i}") for i in range(6)]
    assert outcomes == [Admission.ADMITTED] * 2 + [Admission.QUEUED] * 3 + [Admission.REJECTED]
    assert (breaker.in_use, breaker.waiting, breaker.in_flight) == (2, 3, 5)


def test_release_hands_the_slot_to_the_oldest_waiter():
    breaker = Breaker(1, 10)
    assert breaker.try_acquire("first") is Admission.ADMITTED
    for name in ("a", "b", "c"):
        assert breaker.try_acquire(name) is Admission.QUEUED
    order = [breaker.release() for _ in range(3)]
    assert order == ["a", "b", "c"]
    assert breaker.in_use == 1  # the slot moved, it was never free
    assert breaker.release() is None
    assert (breaker.in_use, breaker.waiting) == (0, 0)


def test_cancelled_waiter_leaves_the_queue_and_is_skipped():
    breaker = Breaker(1, 2)
    breaker.try_acquire("active")
    breaker.try_acquire("gone")
    breaker.try_acquire("stays")
    assert breaker.cancel("gone") is True
    assert breaker.cancel("gone") is False
    assert breaker.cancel("never-queued") is False
    assert breaker.try_acquire("new") is Admission.QUEUED  # the place was freed
    assert breaker.release() == "stays"
    assert breaker.release() == "new"
    assert breaker.release() is None
    assert breaker.in_flight == 0


def test_zero_queue_depth_rejects_as_soon_as_slots_are_full():
    breaker = Breaker(1, 0)
    assert breaker.try_acquire("a") is Admission.ADMITTED
    assert breaker.try_acquire("b") is Admission.REJECTED


def test_release_without_acquire_is_an_error():
    with pytest.raises(RuntimeError):
        Breaker(1, 1).release()


def test_any_mix_of_aborts_returns_to_empty():
    breaker = Breaker(3, 30)
    admitted: list[str] = []
    queued: list[str] = []
    for index in range(33):
        name = f"r{index}"
        outcome = breaker.try_acquire(name)
        (admitted if outcome is Admission.ADMITTED else queued).append(name)
    assert len(admitted) == 3 and len(queued) == 30
    for name in queued[::2]:
        assert breaker.cancel(name)
    remaining = [name for name in queued if name not in queued[::2]]
    handed = []
    for _ in range(len(remaining)):
        waiter = breaker.release()
        if waiter is not None:
            handed.append(waiter)
    assert handed == remaining
    assert (breaker.in_use, breaker.waiting, breaker.in_flight) == (3, 0, 3)
    for _ in range(3):
        assert breaker.release() is None
    assert breaker.in_flight == 0
