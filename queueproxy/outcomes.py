"""What the sidecar answered by itself, and how long requests waited vs spent at the app
(docs/contract.md#our-own-metrics).

Sans-IO: `Outcomes` counts and decides, the caller reads the breaker and writes logs. Every rule
that reads time takes it from the injected `clock` (float seconds, monotonic).

- Reasons: every answer the sidecar gives instead of the app (or a connection it cuts) is counted
  under one reason, so a `503 pending request queue full` is never mixed with a 503 from the app.
- Histograms: for requests that reached the app, the seconds from arrival until they were sent to
  the app (waiting for a breaker slot, and for a connection) and the seconds from then until the
  response was complete. Requests that never reached the app are counted by reason instead.
- Log lines, rate-limited per reason: the first answer of a reason is logged at once; later ones
  within `log_interval` seconds are only counted, and the first line after the interval (or the
  tick that notices the interval has passed, see `summaries`) says how many were left out.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable

from queueproxy.gofloat import format_go_float

QUEUE_FULL = "queue_full"
TIMEOUT = "timeout"
UPSTREAM_UNREACHABLE = "upstream_unreachable"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_MALFORMED = "upstream_malformed"
DRAINING = "draining"
BAD_REQUEST = "bad_request"
REASONS = (
    QUEUE_FULL,
    TIMEOUT,
    UPSTREAM_UNREACHABLE,
    UPSTREAM_RESET,
    UPSTREAM_MALFORMED,
    DRAINING,
    BAD_REQUEST,
)
# Status 0: no answer could be given (the response had begun), the connection was cut.
CUT = 0

# Seconds; from 1 ms (a slot free at once) to the 5-minute default revision timeout.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0, 60.0, 300.0)  # fmt: skip
# One line per reason at most this often (seconds).
LOG_INTERVAL = 10.0


def upstream_failure_reason(error: str) -> str:
    """The reason for a 502 from its Go error text (`upstream.dial_error` / `read_error`)."""
    if error.startswith(("dial tcp", "timed out dialing")):
        return UPSTREAM_UNREACHABLE
    if error.startswith("malformed"):
        return UPSTREAM_MALFORMED
    return UPSTREAM_RESET


class SecondsHistogram:
    """Non-cumulative bucket counts (the last is +Inf) and the sum, in seconds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = WAIT_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def lines(self, name: str, help_text: str) -> list[str]:
        """Prometheus text (0.0.4) for this histogram, without labels."""
        lines = [f"# HELP {name} {help_text}\n# TYPE {name} histogram\n"]
        cumulative = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{format_go_float(bound)}"}} {cumulative}\n')
        cumulative += self.counts[-1]
        lines.append(f'{name}_bucket{{le="+Inf"}} {cumulative}\n')
        lines.append(f"{name}_sum {format_go_float(self.sum)}\n{name}_count {cumulative}\n")
        return lines


class _Limiter:
    """One reason's log budget."""

    __slots__ = ("next_at", "suppressed", "since")

    def __init__(self) -> None:
        self.next_at = 0.0  # before this, lines are only counted
        self.suppressed = 0
        self.since = 0.0  # when the last line was written


class Outcomes:
    """Counts by reason, the wait/app histograms and the per-reason log budget."""

    def __init__(self, clock: Callable[[], float], log_interval: float = LOG_INTERVAL) -> None:
        if log_interval < 0:
            raise ValueError(f"log interval must not be negative, got {log_interval}")
        self.clock = clock
        self.log_interval = log_interval
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.wait = SecondsHistogram()
        self.app = SecondsHistogram()
        self._limits = {reason: _Limiter() for reason in REASONS}

    def rejected(self, reason: str, status: int, detail: str) -> str | None:
        """Count one answer (or cut) of `reason`; return the log message to write now, or None
        when this reason already had its line within the interval. Raises KeyError for an
        unknown reason."""
        self.counts[reason] += 1
        limit = self._limits[reason]
        now = self.clock()
        if now < limit.next_at:
            limit.suppressed += 1
            return None
        message = self._message(reason, status, detail)
        if limit.suppressed:
            message += f" ({self._left_out(limit, now)})"
        limit.next_at = now + self.log_interval
        limit.suppressed = 0
        limit.since = now
        return message

    def summaries(self) -> list[str]:
        """Lines for reasons whose interval is over with answers left out (call once a second):
        without it, a burst's count would wait for the next answer of the same reason."""
        now = self.clock()
        lines = []
        for reason, limit in self._limits.items():
            if limit.suppressed and now >= limit.next_at:
                lines.append(f"sidecar answered {reason}: {self._left_out(limit, now)}")
                limit.suppressed = 0
                limit.next_at = now + self.log_interval
                limit.since = now
        return lines

    @staticmethod
    def _left_out(limit: _Limiter, now: float) -> str:
        return (
            f"{limit.suppressed} more in the last {now - limit.since:.1f}s not logged, "
            f"one line per reason per interval"
        )

    @staticmethod
    def _message(reason: str, status: int, detail: str) -> str:
        what = f"{status}" if status != CUT else "connection cut after the response began"
        detail = detail.strip()
        return f"sidecar answered {reason}: {what}" + (f": {detail}" if detail else "")

    def observe(self, wait: float, app: float) -> None:
        """A request that reached the app: `wait` seconds before, `app` seconds at it."""
        # `SecondsHistogram.observe`, inlined: this runs for every request. A request that found
        # a free slot and a pooled connection waited well under the first bound: no bisect.
        histogram = self.wait
        bounds = histogram.bounds
        histogram.counts[0 if wait <= bounds[0] else bisect_left(bounds, wait)] += 1
        histogram.sum += wait
        histogram = self.app
        histogram.counts[bisect_left(histogram.bounds, app)] += 1
        histogram.sum += app

    def render(self, at_app: int, queued: int, container_concurrency: int, capacity: int) -> bytes:
        """Our metrics in Prometheus text (0.0.4); gauges as passed in (read them live)."""
        lines = []
        for name, value, help_text in (
            ("queueproxy_requests_at_app", at_app, "Requests sent to the app and not finished"),
            ("queueproxy_requests_queued", queued, "Requests waiting for a concurrency slot"),
            (
                "queueproxy_container_concurrency",
                container_concurrency,
                "Requests the app may have at once (containerConcurrency, 0 = unlimited)",
            ),
            ("queueproxy_queue_capacity", capacity, "Waiting places before queue_full (10 x CC)"),
        ):
            lines.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value}\n")
        name = "queueproxy_rejected_requests_total"
        lines.append(
            f"# HELP {name} Requests the sidecar answered itself (or cut), by reason\n"
            f"# TYPE {name} counter\n"
        )
        lines += [f'{name}{{reason="{r}"}} {count}\n' for r, count in self.counts.items()]
        lines += self.wait.lines(
            "queueproxy_request_wait_seconds",
            "Time from arrival until sent to the app (queue and connection)",
        )
        lines += self.app.lines(
            "queueproxy_request_app_seconds", "Time from sent to the app until the response ended"
        )
        return "".join(lines).encode()


def quantile(samples: list[float], q: float) -> float | None:
    """The `q` quantile (0..1) of `samples` by nearest rank; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]
