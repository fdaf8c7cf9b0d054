"""User-facing request metrics served on :9091 (docs/contract.md#request-metrics).

Two shapes, chosen once from the configuration era (uvicorn's "config settles choices once"):

- `RevisionMetrics` (v1.18, OpenCensus): `revision_request_count`, `revision_request_latencies`
  (outer: includes queueing), `revision_app_request_count`, `revision_app_request_latencies`
  (inner: the proxy call only), `revision_queue_depth` (CC > 0). Latencies are whole milliseconds,
  as Knative records `float64(latency.Milliseconds())`.
- `OtelMetrics` (v1.19+, OpenTelemetry via its Prometheus exporter):
  `kn_serving_invocation_duration_seconds` (inner), `kn_serving_queue_depth` (CC > 0),
  `http_server_request_duration_seconds` (outer, like otelhttp's), and `target_info` carrying
  the resource attributes.

Why not prometheus-client's `Counter`/`Histogram`: measured here, five of their labelled-child
operations per request cost ~2.2 µs (each takes a lock and scans the buckets linearly); the
series below cost ~0.5 µs for the same work, since the event loop is the only writer and needs no
lock. And prometheus-client always names a counter `*_total`, while OpenCensus exported
`revision_request_count` without the suffix, which is what existing dashboards query. So the
series are plain Python objects and `render()` writes the Prometheus text format (0.0.4) itself;
the tests parse it with prometheus-client's parser.

The hot path (`observe`, once per request for both measurements) is one dict lookup per series
(cached per status code and route tag) and one `bisect` into the bucket bounds, inlined rather
than a method call per histogram. Request counts are the histograms' counts, so they cost
nothing; all text is written at scrape.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from queueproxy.gofloat import format_go_float
from queueproxy.statwire import escape_label_value

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# v1.18 `defaultLatencyDistribution`, milliseconds.
LATENCY_BUCKETS_MS = (5, 10, 20, 40, 60, 80, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600,
                      700, 800, 900, 1000, 2000, 5000, 10000, 20000, 50000, 100000)  # fmt: skip
# The same as floats for the hot path: bisecting a float among floats is cheaper than among ints.
_LATENCY_BOUNDS_MS = tuple(float(bound) for bound in LATENCY_BUCKETS_MS)
# v1.19+ `latencyBounds` of kn.serving.invocation.duration, seconds; OpenTelemetry's HTTP
# semantic conventions recommend the same boundaries for http.server.request.duration.
DURATION_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                            7.5, 10.0)  # fmt: skip

# Route tags come from a request header, so a client could invent any number of them; past this
# many distinct tags, new ones are recorded under OVERFLOW_LABEL to keep the series bounded.
MAX_ROUTE_TAGS = 100
OVERFLOW_LABEL = "_OTHER"
# The whole-request family multiplies the client's route tag (101 values) and method (10) by the
# app's status codes: with an app whose client picks the status (the sample app's `?status=`),
# 400 codes made 404,000 series, 230 MiB and a 15 s, 878 MiB scrape. Past this many series, a
# new combination is recorded with route tag (and, in v1.19+, method) `_OTHER`: at most this
# many plus one per status code, and every request is still counted under its status.
MAX_SERIES = 1000

# OpenTelemetry's http.request.method rule: known methods as-is, anything else "_OTHER".
_STANDARD_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT",
                     "TRACE")  # fmt: skip
_METHOD_LABELS: dict[str | bytes, str] = {
    **{m: m for m in _STANDARD_METHODS},
    **{m.encode(): m for m in _STANDARD_METHODS},
}


def _whole_milliseconds(seconds: float) -> int:
    # Go truncates integer nanoseconds; the nanosecond of slack keeps 0.57 s (570 ms) from
    # becoming 569 through float rounding.
    return int(seconds * 1000.0 + 1e-6)


class Histogram:
    """One labelled histogram series. `counts[i]` is the number of observations in bucket i
    (non-cumulative, the last one is +Inf); Prometheus' cumulative counts are made at render."""

    __slots__ = ("bounds", "counts", "sum", "labels")

    def __init__(self, bounds: tuple[float, ...], labels: str) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.labels = labels  # prebuilt `name="value",...` text

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, since a Prometheus bucket is `le` (<=).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)


def _histogram_lines(name: str, help_text: str, series: Iterable[Histogram]) -> list[str]:
    lines = [f"# HELP {name} {help_text}\n# TYPE {name} histogram\n"]
    for histogram in series:
        labels, cumulative = histogram.labels, 0
        separator = "," if labels else ""
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            cumulative += count
            le = format_go_float(float(bound))
            lines.append(f'{name}_bucket{{{labels}{separator}le="{le}"}} {cumulative}\n')
        cumulative += histogram.counts[-1]
        lines.append(f'{name}_bucket{{{labels}{separator}le="+Inf"}} {cumulative}\n')
        lines.append(f"{name}_sum{{{labels}}} {format_go_float(histogram.sum)}\n")
        lines.append(f"{name}_count{{{labels}}} {cumulative}\n")
    return lines


def _gauge_lines(name: str, help_text: str, labels: str, value: float) -> list[str]:
    label_block = f"{{{labels}}}" if labels else ""
    return [
        f"# HELP {name} {help_text}\n# TYPE {name} gauge\n",
        f"{name}{label_block} {format_go_float(float(value))}\n",
    ]


class _RouteTags:
    """Caps the number of distinct route tags (see MAX_ROUTE_TAGS)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def bounded(self, tag: str) -> str:
        if tag in self._seen:
            return tag
        if len(self._seen) >= MAX_ROUTE_TAGS:
            return OVERFLOW_LABEL
        self._seen.add(tag)
        return tag


class RevisionMetrics:
    """v1.18 (OpenCensus) metrics."""

    content_type = CONTENT_TYPE

    def __init__(
        self,
        *,
        namespace: str,
        service: str,
        configuration: str,
        revision: str,
        pod: str,
        container_concurrency: int,
    ) -> None:
        self._base = [
            ("namespace_name", namespace),
            ("service_name", service or "unknown"),
            ("configuration_name", configuration),
            ("revision_name", revision),
            ("pod_name", pod),
            ("container_name", "queue-proxy"),
        ]
        self._requests: dict[tuple[int, str], Histogram] = {}
        self._app_requests: dict[int, Histogram] = {}
        self._route_tags = _RouteTags()
        self._reports_queue_depth = container_concurrency > 0
        self._queue_depth: int | None = None

    def observe(
        self,
        status: int,
        seconds: float,
        app_seconds: float | None,
        route_tag: str,
        method: str | bytes,
    ) -> None:
        """Both measurements of one finished request (seconds; `app_seconds` None when it never
        reached the app). The histograms are updated inline: the data path calls this once per
        request, and each Python call it saves is ~10% of its cost."""
        series = self._requests.get((status, route_tag))
        if series is None:
            series = self._new_request_series(status, route_tag)
        # `_whole_milliseconds` inlined, as a float: `// 1.0` truncates like `int()` for the
        # non-negative latencies of a monotonic clock, and the sum is a float either way.
        ms = (seconds * 1000.0 + 1e-6) // 1.0
        series.counts[bisect_left(_LATENCY_BOUNDS_MS, ms)] += 1
        series.sum += ms
        if app_seconds is not None:
            series = self._app_requests.get(status)
            if series is None:
                series = self._new_app_series(status)
            ms = (app_seconds * 1000.0 + 1e-6) // 1.0
            series.counts[bisect_left(_LATENCY_BOUNDS_MS, ms)] += 1
            series.sum += ms

    def observe_request(
        self, status: int, seconds: float, route_tag: str, method: str | bytes
    ) -> None:
        """Outer measurement: whole request including time queued. `method` is unused in v1.18."""
        series = self._requests.get((status, route_tag))
        if series is None:
            series = self._new_request_series(status, route_tag)
        series.observe(_whole_milliseconds(seconds))

    def observe_app_request(self, status: int, seconds: float) -> None:
        """Inner measurement: the proxy call to the user container only."""
        series = self._app_requests.get(status)
        if series is None:
            series = self._new_app_series(status)
        series.observe(_whole_milliseconds(seconds))

    def _new_app_series(self, status: int) -> Histogram:
        series = self._app_requests[status] = Histogram(
            LATENCY_BUCKETS_MS, _label_text(self._base + self._response_pairs(status))
        )
        return series

    def set_queue_depth(self, depth: int) -> None:
        """In-flight requests (active + waiting) when a request reaches the app; CC > 0 only."""
        if self._reports_queue_depth:
            self._queue_depth = depth

    def _new_request_series(self, status: int, route_tag: str) -> Histogram:
        if len(self._requests) >= MAX_SERIES:
            bounded_tag = OVERFLOW_LABEL
        else:
            bounded_tag = self._route_tags.bounded(route_tag)
        pairs = self._base + self._response_pairs(status) + [("route_tag", bounded_tag)]
        series = Histogram(LATENCY_BUCKETS_MS, _label_text(pairs))
        if bounded_tag == route_tag:
            self._requests[(status, route_tag)] = series
        else:  # share the overflow series per status instead of caching each invented tag
            series = self._requests.setdefault((status, OVERFLOW_LABEL), series)
        return series

    @staticmethod
    def _response_pairs(status: int) -> list[tuple[str, str]]:
        return [("response_code", str(status)), ("response_code_class", f"{status // 100}xx")]

    def render(self) -> bytes:
        lines: list[str] = []
        requests = list(self._requests.values())
        apps = list(self._app_requests.values())
        if requests:
            lines.append(
                "# HELP revision_request_count The number of requests that are routed to "
                "queue-proxy\n# TYPE revision_request_count counter\n"
            )
            lines += [f"revision_request_count{{{s.labels}}} {s.count}\n" for s in requests]
            lines += _histogram_lines(
                "revision_request_latencies", "The response time in millisecond", requests
            )
        if apps:
            lines.append(
                "# HELP revision_app_request_count The number of requests that are routed to "
                "user-container\n# TYPE revision_app_request_count counter\n"
            )
            lines += [f"revision_app_request_count{{{s.labels}}} {s.count}\n" for s in apps]
            lines += _histogram_lines(
                "revision_app_request_latencies", "The response time in millisecond", apps
            )
        if self._queue_depth is not None:
            lines += _gauge_lines(
                "revision_queue_depth",
                "The number of items queued at this queue proxy.",
                _label_text(self._base),
                self._queue_depth,
            )
        return "".join(lines).encode()


class OtelMetrics:
    """v1.19+ (OpenTelemetry) metrics as its Prometheus exporter names them."""

    content_type = CONTENT_TYPE

    def __init__(
        self,
        *,
        namespace: str,
        service: str,
        configuration: str,
        revision: str,
        pod: str,
        container_concurrency: int,
    ) -> None:
        resource = [
            ("k8s_container_name", "queue-proxy"),
            ("k8s_namespace_name", namespace),
            ("k8s_pod_name", pod),
            ("service_name", service or configuration or revision or pod),
            ("service_instance_id", pod),
        ]
        resource += [
            (name, value)
            for name, value in (
                ("kn_service_name", service),
                ("kn_configuration_name", configuration),
                ("kn_revision_name", revision),
            )
            if value
        ]
        self._target_info = _gauge_lines("target_info", "Target metadata", _label_text(resource), 1)
        self._server: dict[tuple[str, int, str], Histogram] = {}
        self._invocations: dict[int, Histogram] = {}
        self._route_tags = _RouteTags()
        self._reports_queue_depth = container_concurrency > 0
        self._queue_depth: int | None = None

    def observe(
        self,
        status: int,
        seconds: float,
        app_seconds: float | None,
        route_tag: str,
        method: str | bytes,
    ) -> None:
        """Both measurements of one finished request, as `RevisionMetrics.observe`."""
        method_label = _METHOD_LABELS.get(method, OVERFLOW_LABEL)
        series = self._server.get((method_label, status, route_tag))
        if series is None:
            series = self._new_server_series(method_label, status, route_tag)
        series.counts[bisect_left(DURATION_BUCKETS_SECONDS, seconds)] += 1
        series.sum += seconds
        if app_seconds is not None:
            series = self._invocations.get(status)
            if series is None:
                series = self._new_invocation_series(status)
            series.counts[bisect_left(DURATION_BUCKETS_SECONDS, app_seconds)] += 1
            series.sum += app_seconds

    def observe_request(
        self, status: int, seconds: float, route_tag: str, method: str | bytes
    ) -> None:
        """Outer measurement (otelhttp's server duration): includes time queued."""
        method_label = _METHOD_LABELS.get(method, OVERFLOW_LABEL)
        series = self._server.get((method_label, status, route_tag))
        if series is None:
            series = self._new_server_series(method_label, status, route_tag)
        series.observe(seconds)

    def observe_app_request(self, status: int, seconds: float) -> None:
        """Inner measurement (kn.serving.invocation.duration): the proxy call only."""
        series = self._invocations.get(status)
        if series is None:
            series = self._new_invocation_series(status)
        series.observe(seconds)

    def _new_invocation_series(self, status: int) -> Histogram:
        labels = _label_text([("http_response_status_code", str(status))])
        series = self._invocations[status] = Histogram(DURATION_BUCKETS_SECONDS, labels)
        return series

    def set_queue_depth(self, depth: int) -> None:
        if self._reports_queue_depth:
            self._queue_depth = depth

    def _new_server_series(self, method: str, status: int, route_tag: str) -> Histogram:
        if len(self._server) >= MAX_SERIES:
            method = bounded_tag = OVERFLOW_LABEL
        else:
            bounded_tag = self._route_tags.bounded(route_tag)
        labels = _label_text(
            [
                ("http_request_method", method),
                ("http_response_status_code", str(status)),
                ("kn_route_tag", bounded_tag),
            ]
        )
        series = self._server.setdefault(
            (method, status, bounded_tag), Histogram(DURATION_BUCKETS_SECONDS, labels)
        )
        return series

    def render(self) -> bytes:
        lines = list(self._target_info)
        if self._invocations:
            lines += _histogram_lines(
                "kn_serving_invocation_duration_seconds",
                "The duration of task execution",
                self._invocations.values(),
            )
        if self._queue_depth is not None:
            lines += _gauge_lines(
                "kn_serving_queue_depth",
                "Number of current requests in the queue",
                "",
                self._queue_depth,
            )
        if self._server:
            lines += _histogram_lines(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests.",
                self._server.values(),
            )
        return "".join(lines).encode()


UserMetrics = RevisionMetrics | OtelMetrics


def build_user_metrics(
    *,
    era: str,
    namespace: str,
    service: str,
    configuration: str,
    revision: str,
    pod: str,
    container_concurrency: int,
) -> UserMetrics:
    """The metrics object for a configuration era ("v1.18" or "v1.19")."""
    kind = RevisionMetrics if era == "v1.18" else OtelMetrics
    return kind(
        namespace=namespace,
        service=service,
        configuration=configuration,
        revision=revision,
        pod=pod,
        container_concurrency=container_concurrency,
    )
