"""What the data path tells the rest of the sidecar about each request: the autoscaler's
statistics window, the user metrics and the request log (docs/contract.md#counting,
docs/contract.md#request-metrics, docs/contract.md#request-logs).

Built once at start-up with only the parts the configuration turns on, so a request pays for
nothing that is off.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from queueproxy.breaker import Breaker
from queueproxy.exchange import Exchange
from queueproxy.outcomes import Outcomes
from queueproxy.requestlog import RequestLogger
from queueproxy.stats import RequestStats
from queueproxy.usermetrics import UserMetrics


class RequestObserver:
    """Implements the data path's `Observer` protocol."""

    def __init__(
        self,
        clock: Callable[[], float],
        stats: RequestStats,
        metrics: UserMetrics | None,
        request_log: RequestLogger | None,
        breaker: Breaker | None,
        era: str,
        outcomes: Outcomes | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.clock = clock
        self.stats = stats
        self.metrics = metrics
        self.request_log = request_log if request_log is not None and request_log.enabled else None
        self.breaker = breaker
        self.route_tags = route_tag_names(era)
        self.outcomes = outcomes if outcomes is not None else Outcomes(clock)
        self.logger = log if log is not None else logging.getLogger("queueproxy")
        # (finished at, wait, app) of recent requests, kept only while the live page is watched.
        self.samples: deque[tuple[float, float, float]] | None = None

    def request_started(self, exchange: Exchange) -> None:
        """Called before the breaker sees the request."""
        self.stats.request_in(exchange.started_at, exchange.proxied)
        metrics = self.metrics
        breaker = self.breaker
        if metrics is not None and breaker is not None:
            # Knative records `InFlight()` once the breaker has taken the request in, so the
            # request itself counts; one the breaker will turn away records nothing.
            in_flight = breaker.in_flight
            if in_flight < breaker.capacity + breaker.queue_depth:
                metrics.set_queue_depth(in_flight + 1)

    def request_finished(self, exchange: Exchange) -> None:
        now = self.clock()
        self.stats.request_out(now, exchange.proxied)
        status = exchange.status or self._abandoned_status(exchange)
        if exchange.network_probe is not None:
            # Any `K-Network-Probe` value makes a request a probe (Knative's `IsProbe`): counted
            # for the autoscaler, but kept out of user metrics and (by default) request logs.
            if self.request_log is not None:
                self.log(exchange, now, status, probe=True)
            return
        dispatched_at = exchange.dispatched_at
        app: float | None = None
        if dispatched_at:
            wait, app = dispatched_at - exchange.started_at, now - dispatched_at
            self.outcomes.observe(wait, app)
            if self.samples is not None:
                self.samples.append((now, wait, app))
        metrics = self.metrics
        if metrics is not None:
            fields = exchange.knative_fields
            # Neither routing field (the common case) needs no look-up.
            route_tag = self.route_tags[0] if fields is None else self._route_tag(fields)
            metrics.observe(status, now - exchange.started_at, app, route_tag, exchange.method)
        if self.request_log is not None:
            self.log(exchange, now, status, probe=False)

    def probe_answered(self, exchange: Exchange) -> None:
        """Probes never count; they are logged only when probe request logging is on."""
        if self.request_log is not None:
            self.log(exchange, self.clock(), exchange.status, probe=True)

    def rejected(self, reason: str, status: int, detail: bytes) -> None:
        """Counted always; logged at most once per reason per interval (`outcomes.Outcomes`)."""
        message = self.outcomes.rejected(reason, status, detail.decode("latin-1"))
        if message is not None:
            self.logger.warning(message, extra={"reason": reason, "status": status})

    def _abandoned_status(self, exchange: Exchange) -> int:
        """The code Knative records for a request whose client left before any response: its
        response recorder starts at 200 and the proxy writes nothing for a cancelled request,
        but `ProxyHandler` answers 500 when the wait for the breaker is cancelled. (A request
        that had its slot but no app connection yet is taken for a waiting one.)"""
        if self.breaker is not None and not exchange.dispatched_at:
            return 500
        return 200

    def log(self, exchange: Exchange, now: float, status: int, probe: bool) -> None:
        assert self.request_log is not None
        if exchange.body_chunked:
            content_length = -1
        else:
            content_length = max(exchange.request_length, 0)
        self.request_log.log(
            method=exchange.method,
            target=exchange.target,
            proto="HTTP/" + exchange.version.decode(),
            headers=exchange.headers,
            remote_addr=exchange.conn.remote_addr.decode(),
            content_length=content_length,
            status=status,
            size=exchange.response_bytes,
            latency=now - exchange.started_at,
            probe=probe,
        )

    def _route_tag(self, fields: dict[bytes, bytes]) -> str:
        """Knative's `GetRouteTagNameFromRequest`, for the route tag metric label, from the
        request's Knative fields (`Exchange.knative_fields`)."""
        disabled, default, undefined = self.route_tags
        tag = fields.get(b"knative-serving-tag")
        default_route = fields.get(b"knative-serving-default-route")
        # Go's `Header.Get` gives "" for an absent field: an empty value is no value.
        if not tag:
            return default if default_route else disabled
        if default_route == b"true":
            return undefined
        return tag.decode("latin-1")


def route_tag_names(era: str) -> tuple[str, str, str]:
    """(disabled, default, undefined) as each era names them."""
    if era == "v1.18":
        return ("DISABLED", "DEFAULT", "UNDEFINED")
    return ("kn:disabled", "kn:default", "kn:undefined")
