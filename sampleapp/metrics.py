"""The app's own request metrics on `/metrics`, so the sidecar's latency minus the app's is the
time a request spent queued in front of it.

The sample app is also the benchmark target, so measuring must cost it next to nothing: a request
adds to plain numbers in a dict (no locks, no label look-up), and `prometheus-client` turns them
into its text format only when `/metrics` is scraped (a custom collector in a registry of the
app's own). Scrapes of `/metrics` are not counted: the numbers stay about the app's work.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from itertools import accumulate

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

METRICS_PATH = "/metrics"
# From a bare greeting (about a millisecond through the loop) to the knobs' long sleeps.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LE = tuple(repr(bound) for bound in BUCKETS) + ("+Inf",)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestMetrics:
    """Count, latency and in-progress requests by route and status code.

    `series[(path, code)]` is `[sum of seconds, count in bucket 0, ..., count in +Inf]`, the
    buckets not yet cumulative (Prometheus's `le` buckets are built at scrape time).
    """

    __slots__ = ("in_progress", "series")

    def __init__(self) -> None:
        self.in_progress = 0
        self.series: dict[tuple[str, int], list[float]] = {}

    def observe(self, path: str, code: int, seconds: float) -> None:
        counts = self.series.get((path, code))
        if counts is None:
            counts = self.series[path, code] = [0.0] * (len(BUCKETS) + 2)
        counts[0] += seconds
        # bisect_left: a value equal to a bound belongs to that bound's bucket (`le`).
        counts[bisect_left(BUCKETS, seconds) + 1] += 1

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector protocol: the metric families as of now."""
        requests = CounterMetricFamily(
            "sampleapp_requests",
            "Requests answered, by route and status code.",
            labels=("path", "code"),
        )
        latency = HistogramMetricFamily(
            "sampleapp_request_duration_seconds",
            "Time from the handler's start until it returned (a stream's last byte, a"
            " websocket's close), by route and status code.",
            labels=("path", "code"),
        )
        for (path, code), counts in sorted(self.series.items()):
            labels = [path, str(code)]
            cumulative = list(accumulate(counts[1:]))
            requests.add_metric(labels, cumulative[-1])
            latency.add_metric(labels, list(zip(_LE, cumulative, strict=True)), counts[0])
        yield requests
        yield latency
        yield GaugeMetricFamily(
            "sampleapp_requests_in_progress", "Requests being handled now.", self.in_progress
        )


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def install(app: web.Application, metrics: RequestMetrics) -> None:
    """Serve `metrics` on `GET /metrics` of `app`."""
    registry = app[REGISTRY] = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    app.router.add_get(METRICS_PATH, exposition)


def measured(path: str, handler: Handler, metrics: RequestMetrics) -> Handler:
    """`handler`, counted in `metrics` under the route's declared `path` (never the client's,
    so label values stay bounded).

    A wrapper per route rather than an aiohttp middleware: a middleware costs every request about
    8 µs of CPU in aiohttp's machinery (measured on the bare greeting, about 40 µs), the wrapper
    about 1 µs. Requests no route takes (the router's 404 and 405) are therefore not counted:
    they never reach the app's code.
    """

    async def counted(request: web.Request) -> web.StreamResponse:
        metrics.in_progress += 1
        started = time.perf_counter()
        # What aiohttp answers when a handler raises anything else (or is cancelled at shutdown).
        code = 500
        try:
            # Handlers write streamed bodies before they return, and a websocket's returns once
            # closed, so the time below covers the whole exchange.
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as error:
            code = error.status
            raise
        finally:
            metrics.in_progress -= 1
            metrics.observe(path, code, time.perf_counter() - started)

    return counted


async def exposition(request: web.Request) -> web.Response:
    """`GET /metrics`: the Prometheus text format."""
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
