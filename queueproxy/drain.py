"""Draining before shutdown (docs/contract.md#drain-and-shutdown; Knative's
`vendor/knative.dev/pkg/network/handlers/drain.go`).

Once a drain starts, health checks answer `503 shutting down` so Kubernetes takes the pod out of
rotation, while requests keep being served. The drain is over when a quiet period (Knative's
`drainSleepDuration`, 30 s) has passed without a non-probe request; every request restarts it.
Once over it stays over, as Knative's fired timer does, until `reset()`. `reset()` undoes a drain:
`/wait-for-drain` calls it when no SIGTERM follows the preStop hook within 1 s, because then the
app container restarted and the pod is not going away.

`DrainTimer` is the pure state; `Drainer` puts it on the event loop with one lazily re-armed timer
(aiohttp's keep-alive pattern): a request only stores its arrival time, and the timer, when it
fires early because of those, re-arms itself for the remainder.
"""

from __future__ import annotations

import asyncio

# Knative's drainSleepDuration: "to give networking a little bit more time" to drop the pod.
DEFAULT_QUIET_PERIOD = 30.0


class DrainTimer:
    """Draining flag and quiet-period deadline; times are passed in."""

    __slots__ = ("quiet_period", "is_draining", "last_request", "_done")

    def __init__(self, quiet_period: float = DEFAULT_QUIET_PERIOD) -> None:
        if quiet_period < 0:
            raise ValueError(f"drain quiet period must not be negative, got {quiet_period}")
        self.quiet_period = quiet_period
        self.is_draining = False
        self.last_request = 0.0
        self._done = False

    def start(self, now: float) -> None:
        """Start draining; a second call leaves the running drain as it is."""
        if not self.is_draining:
            self.is_draining = True
            self.last_request = now
            self._done = False

    def touch(self, now: float) -> None:
        """A non-probe request arrived: restart the quiet period (while it is still running)."""
        if self.is_draining and not self._done and now > self.last_request:
            self.last_request = now

    def reset(self) -> None:
        """Undo the drain: health checks pass again."""
        self.is_draining = False
        self._done = False

    @property
    def deadline(self) -> float | None:
        """When the drain ends if no request comes first; None when not draining."""
        return self.last_request + self.quiet_period if self.is_draining else None

    def is_done(self, now: float) -> bool:
        if not self._done and self.is_draining:
            self._done = now >= self.last_request + self.quiet_period
        return self._done


class Drainer:
    """`DrainTimer` on the event loop. `drain()` may be awaited by several callers at once."""

    def __init__(
        self,
        quiet_period: float = DEFAULT_QUIET_PERIOD,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._timer = DrainTimer(quiet_period)
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self._finished: asyncio.Future[bool] | None = None

    @property
    def draining(self) -> bool:
        return self._timer.is_draining

    @property
    def quiet_period(self) -> float:
        return self._timer.quiet_period

    @property
    def deadline(self) -> float | None:
        """Loop time at which the drain ends unless a request comes first."""
        return self._timer.deadline

    def touch(self) -> None:
        """Called for every non-probe request; only reads the clock while draining."""
        if self._timer.is_draining:
            self._timer.touch(self._get_loop().time())

    async def drain(self) -> bool:
        """Start draining (if not already) and wait until the quiet period has passed.

        Returns True when the drain completed, False when `reset()` undid it.
        """
        loop = self._get_loop()
        if self._finished is None:
            self._finished = loop.create_future()
        finished = self._finished
        if not self._timer.is_draining:
            self._timer.start(loop.time())
            self._arm()
        # Shielded: one waiter giving up must not end the drain for the others.
        return await asyncio.shield(finished)

    def reset(self) -> None:
        """Undo the drain; current `drain()` callers return False."""
        self._timer.reset()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._finished is not None:
            if not self._finished.done():
                self._finished.set_result(False)
            self._finished = None

    def _arm(self) -> None:
        deadline = self._timer.deadline
        assert deadline is not None
        self._handle = self._get_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        if not self._timer.is_done(self._get_loop().time()):
            self._arm()  # requests came in meanwhile: wait out the rest of the new period
        elif self._finished is not None and not self._finished.done():
            self._finished.set_result(True)

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop
