"""Request timeouts (docs/contract.md#timeouts; Knative v1.19+
`pkg/http/handler/timeout.go`).

Three rules, all measured from the request's arrival, so time spent queued in the breaker counts:

- total (`REVISION_TIMEOUT_SECONDS`): always armed; fires whether or not the response has started
  (since knative-v1.19.0; before that it was ignored once a byte had been written);
- response start (`REVISION_RESPONSE_START_TIMEOUT_SECONDS`, 0 = off): fires only if no response
  byte has been written by then;
- idle (`REVISION_IDLE_TIMEOUT_SECONDS`, 0 = off): fires when nothing has been written for that
  long; before the first byte it counts from arrival, so it bounds the response start too.

`RequestTimer` is the per-request state, sans-IO. The proxy keeps ONE loop timer per connection,
never one per request: `start(now)` at arrival, `wrote(now)` on every response write (a float
store, nothing more), `call_at(next_deadline())`, and in the callback `check(loop.time())`. A
`None` from `check` means the timer fired early (a write moved the idle deadline): re-arm at
`next_deadline()`. `stop()` when the response is complete. `Alarm` is that one loop timer, mixed
into both connection classes (HTTP/1 and HTTP/2).

How the proxy must react to `Expired` (Knative's `timeoutWriter`):

- `response_started` False: answer `504` with body `request timeout` (TIMEOUT_BODY, no newline,
  `text/plain; charset=utf-8`), abort the upstream request and free its breaker slot;
- `response_started` True: the status line is gone, so append `request timeout` to the body as
  sent so far (as a chunk if the response is chunked; Go drops it if it would overrun a
  Content-Length), then cut the stream: close the client connection without a last chunk (the
  issue asks for a cut; Go would end a chunked body cleanly, hiding the truncation), abort the
  upstream request, free the slot. Upgraded (websocket) connections are simply closed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    import asyncio

TIMEOUT_STATUS = 504
TIMEOUT_BODY = b"request timeout"

Reason = Literal["total", "response_start", "idle"]


# NamedTuples, not frozen dataclasses: as immutable and equal by value, and defining one costs
# a fraction of a dataclass's generated code at every start.
class TimeoutRules(NamedTuple):
    """Seconds; 0 (or less) turns a rule off. Knative always sets `total` (default 300)."""

    total: float
    response_start: float = 0.0
    idle: float = 0.0


class Expired(NamedTuple):
    reason: Reason
    response_started: bool


class RequestTimer:
    """Deadlines of one request. Reusable: `start` again for the connection's next request."""

    __slots__ = ("rules", "started_at", "last_write", "active", "total_only")

    def __init__(self, rules: TimeoutRules) -> None:
        self.rules = rules
        self.started_at = 0.0
        self.last_write: float | None = None  # None until the first response byte
        self.active = False
        # Knative's default, only the total timeout: its seconds, read per request from a slot
        # (a NamedTuple field costs a generic attribute look-up each time). None otherwise.
        self.total_only = (
            rules.total
            if rules.total > 0 and rules.response_start <= 0 and rules.idle <= 0
            else None
        )

    def start(self, now: float) -> float | None:
        """Start timing a request at `now`; returns `next_deadline()`."""
        self.started_at = now
        self.last_write = None
        self.active = True
        total = self.total_only
        if total is not None:  # next_deadline's usual case, inlined
            return now + total
        return self.next_deadline()

    def wrote(self, now: float) -> None:
        self.last_write = now

    def stop(self) -> None:
        """The response is complete (or the request was cut): no more deadlines."""
        self.active = False

    @property
    def response_started(self) -> bool:
        return self.last_write is not None

    def next_deadline(self) -> float | None:
        """The earliest time `check` could report expiry, or None when nothing is armed."""
        if not self.active:
            return None
        rules = self.rules
        if rules.response_start <= 0 and rules.idle <= 0:
            # Knative's default: only the total timeout, no list to build per request.
            return self.started_at + rules.total if rules.total > 0 else None
        deadlines = []
        if rules.total > 0:
            deadlines.append(self.started_at + rules.total)
        if rules.response_start > 0 and self.last_write is None:
            deadlines.append(self.started_at + rules.response_start)
        if rules.idle > 0:
            deadlines.append(self._idle_since() + rules.idle)
        return min(deadlines, default=None)

    def check(self, now: float) -> Expired | None:
        """The rule that has expired at `now`, if any (total first, then response start, idle).

        An expiry ends the timer: later calls return None until the next `start`.
        """
        if not self.active:
            return None
        rules = self.rules
        reason: Reason
        if rules.total > 0 and now >= self.started_at + rules.total:
            reason = "total"
        elif (
            rules.response_start > 0
            and self.last_write is None
            and now >= self.started_at + rules.response_start
        ):
            reason = "response_start"
        elif rules.idle > 0 and now >= self._idle_since() + rules.idle:
            reason = "idle"
        else:
            return None
        self.active = False
        return Expired(reason, self.last_write is not None)

    def _idle_since(self) -> float:
        return self.started_at if self.last_write is None else self.last_write


class Alarm:
    """A connection's one loop timer, armed for the earliest deadline any of its requests (or
    its header timeout) has: a later deadline leaves it alone, an earlier one re-arms it. Mixed
    into `proxy.ClientConnection` and `h2server.H2ServerConnection`, which set `timer_handle`
    to None and `timer_at` in `__init__` and provide `loop` and `_on_timer` (which must clear
    `timer_handle` first). It uses only the given loop: this module still imports no asyncio."""

    loop: asyncio.AbstractEventLoop
    timer_handle: asyncio.TimerHandle | None
    timer_at: float

    if TYPE_CHECKING:  # provided by the connection class

        def _on_timer(self) -> None: ...

    def _arm(self, deadline: float | None) -> None:
        """Make sure the timer fires no later than `deadline`; an earlier firing re-arms."""
        if deadline is None:
            return
        handle = self.timer_handle
        if handle is not None:
            if self.timer_at <= deadline:
                return
            handle.cancel()
        self.timer_at = deadline
        self.timer_handle = self.loop.call_at(deadline, self._on_timer)

    def _disarm(self) -> None:
        if self.timer_handle is not None:
            self.timer_handle.cancel()
            self.timer_handle = None
