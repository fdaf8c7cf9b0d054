"""Whether `/healthz` reports ready: a switch tests can flip, and a delay after listening."""

from __future__ import annotations


class Readiness:
    """Ready when switched on and `ready_after` seconds have passed since `listening_at`.

    Times are the caller's clock (the event loop's), passed in, so the rule needs no I/O.
    """

    def __init__(self, ready_after: float) -> None:
        self._ready_after = ready_after
        self._ready_at: float | None = None  # unknown until the app listens
        self.switched_on = True

    def listening(self, now: float) -> None:
        self._ready_at = now + self._ready_after

    def is_ready(self, now: float) -> bool:
        return self.switched_on and self._ready_at is not None and now >= self._ready_at
