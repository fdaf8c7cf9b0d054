"""Time-weighted request statistics for the autoscaler (docs/contract.md#counting).

Sans-IO, like Knative's `networking/pkg/http/stats/request.go`: every call takes `now` (float
seconds from one monotonic clock) and nothing here reads a clock. The data path calls
`request_in` when a request arrives (before the limiter, so queued requests count as concurrency)
and `request_out` when its response is complete; a 1 s ticker calls `report`.

How the window is integrated. Knative adds `concurrency * dt` on every event. We keep the same
integral with fewer operations per event: over a window [S, E] the area under the concurrency
curve is

    concurrency(E) * (E - S)  -  sum(t_in - S)  +  sum(t_out - S)

(each arrival inside the window removes the part of the window before it, each departure adds
it back). So an event costs one clamp, one subtraction and one addition, and `report` finishes
the sum. Offsets from S keep the running sums small, so no precision is lost on a long-lived
clock. Knative ignores a step back in time (dt <= 0), which is the same as treating the event as
if it happened at the latest time seen; the clamp on `_last` does exactly that.
"""

from __future__ import annotations

from typing import NamedTuple


class StatsReport(NamedTuple):  # not a dataclass: its generated code costs ~1 ms of each start
    """One completed window. Counts are raw counts for the window, not yet per second."""

    average_concurrency: float
    average_proxied_concurrency: float
    request_count: int
    proxied_request_count: int


class RequestStats:
    """Concurrency and request counts over reporting windows. `proxied` requests (those with
    `K-Proxy-Request: activator`) are counted in the totals as well as in the proxied figures."""

    __slots__ = (
        "concurrency",
        "proxied_concurrency",
        "_last",
        "_window_start",
        "_offsets",
        "_proxied_offsets",
        "_request_count",
        "_proxied_count",
    )

    def __init__(self, now: float) -> None:
        # Instantaneous state, carried across windows.
        self.concurrency = 0
        self.proxied_concurrency = 0
        self._last = now
        # Window state, reset by report().
        self._window_start = now
        self._offsets = 0.0  # sum(t_out - S) - sum(t_in - S) for all requests
        self._proxied_offsets = 0.0  # the same for proxied requests only
        self._request_count = 0
        self._proxied_count = 0

    def request_in(self, now: float, proxied: bool) -> None:
        if now > self._last:
            self._last = now
        else:
            now = self._last
        self._offsets -= now - self._window_start
        self.concurrency += 1
        self._request_count += 1
        if proxied:
            self._proxied_offsets -= now - self._window_start
            self.proxied_concurrency += 1
            self._proxied_count += 1

    def request_out(self, now: float, proxied: bool) -> None:
        if now > self._last:
            self._last = now
        else:
            now = self._last
        self._offsets += now - self._window_start
        self.concurrency -= 1
        if proxied:
            self._proxied_offsets += now - self._window_start
            self.proxied_concurrency -= 1

    def report(self, now: float) -> StatsReport:
        """Close the current window at `now`, return its figures and start the next one."""
        if now > self._last:
            self._last = now
        end = self._last
        seconds = end - self._window_start
        if seconds > 0.0:
            average = (self.concurrency * seconds + self._offsets) / seconds
            proxied = (self.proxied_concurrency * seconds + self._proxied_offsets) / seconds
        else:
            average = proxied = 0.0
        report = StatsReport(average, proxied, self._request_count, self._proxied_count)
        self._window_start = end
        self._offsets = self._proxied_offsets = 0.0
        self._request_count = self._proxied_count = 0
        return report
