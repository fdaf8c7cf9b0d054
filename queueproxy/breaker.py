"""The concurrency limiter: at most `capacity` requests at the app, a bounded FIFO queue of
waiters behind them, immediate rejection beyond (docs/contract.md#the-concurrency-limit).

Sans-IO: the breaker knows nothing of sockets, HTTP or time. A waiter is any hashable object the
caller uses to resume a queued request; `release` hands the freed slot straight to the oldest
waiter and returns it, so the caller can start that request without a second look-up.

Knative's breaker (`pkg/queue/breaker.go`) gives no order among waiters; we serve them in arrival
order, which makes queueing predictable for the people load-testing it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from enum import Enum

# Knative sizes the queue at 10 x containerConcurrency "to allow the autoscaler time to react".
QUEUE_DEPTH_FACTOR = 10


class Admission(Enum):
    ADMITTED = "admitted"
    QUEUED = "queued"
    REJECTED = "rejected"


class Breaker:
    """`capacity` active slots plus `queue_depth` waiting places."""

    __slots__ = ("capacity", "queue_depth", "in_use", "_waiters")

    def __init__(self, capacity: int, queue_depth: int) -> None:
        if capacity < 1:
            raise ValueError(f"breaker capacity must be at least 1, got {capacity}")
        if queue_depth < 0:
            raise ValueError(f"breaker queue depth must not be negative, got {queue_depth}")
        self.capacity = capacity
        self.queue_depth = queue_depth
        self.in_use = 0
        # OrderedDict: FIFO pop and O(1) removal of a waiter whose client went away.
        self._waiters: OrderedDict[Hashable, None] = OrderedDict()

    @classmethod
    def for_container_concurrency(cls, container_concurrency: int) -> Breaker | None:
        """Knative's policy: no breaker at all when CC is 0 (unlimited)."""
        if container_concurrency < 1:
            return None
        return cls(container_concurrency, QUEUE_DEPTH_FACTOR * container_concurrency)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        """Active plus waiting: Knative's `InFlight()`, the queue-depth metric."""
        return self.in_use + len(self._waiters)

    def try_acquire(self, waiter: Hashable) -> Admission:
        """Take a slot now, or queue `waiter`, or reject when every place is taken."""
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return Admission.ADMITTED
        if len(self._waiters) >= self.queue_depth:
            return Admission.REJECTED
        self._waiters[waiter] = None
        return Admission.QUEUED

    def release(self) -> Hashable | None:
        """Free a slot; if someone waits, the slot passes to the oldest waiter, returned."""
        if self.in_use <= 0:
            raise RuntimeError("breaker released more often than acquired")
        if self._waiters:
            waiter, _ = self._waiters.popitem(last=False)
            return waiter
        self.in_use -= 1
        return None

    def cancel(self, waiter: Hashable) -> bool:
        """Remove a waiter that no longer wants its slot; False if it was not waiting."""
        return self._waiters.pop(waiter, False) is None
