"""The observer between the data path and the statistics, user metrics and request log
(contract §4.1, §6, §10), driven with hand-made exchanges and an explicit clock."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from queueproxy.breaker import Breaker
from queueproxy.exchange import NOTED_FIELDS, Exchange, note_field
from queueproxy.h1 import parse_request_head
from queueproxy.observer import RequestObserver
from queueproxy.requestlog import RequestLogger
from queueproxy.stats import RequestStats
from queueproxy.usermetrics import RevisionMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_observer(
    breaker: Breaker | None = None, log_probes: bool = False
) -> tuple[RequestObserver, Clock, RevisionMetrics, list[bytes]]:
    clock = Clock()
    metrics = RevisionMetrics(
        namespace="ns",
        service="svc",
        configuration="cfg",
        revision="rev",
        pod="pod",
        container_concurrency=breaker.capacity if breaker else 0,
    )
    lines: list[bytes] = []
    request_log = RequestLogger(
        "{{.Request.Method}} {{.Response.Code}}",
        sink=lines.append,
        enable_probe_request_log=log_probes,
    )
    observer = RequestObserver(clock, RequestStats(clock()), metrics, request_log, breaker, "v1.18")
    return observer, clock, metrics, lines


def exchange(started_at: float, **fields: object) -> Exchange:
    conn = SimpleNamespace(remote_addr=b"127.0.0.1:40000")
    ex = Exchange(conn, parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))  # type: ignore[arg-type]
    ex.started_at = started_at
    for name, value in fields.items():
        setattr(ex, name, value)
    # What the data path's one pass over the fields notes for the observer.
    for name, value in ex.headers:
        if name.lower() in NOTED_FIELDS:
            note_field(ex, name.lower(), value)
    return ex


def families(metrics: RevisionMetrics) -> dict:
    text = metrics.render().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def counts(metrics: RevisionMetrics, name: str = "revision_request_count") -> dict[str, float]:
    found = families(metrics).get(name)
    if found is None:
        return {}
    return {sample.labels["response_code"]: sample.value for sample in found.samples}


def test_a_request_counts_in_stats_metrics_and_log() -> None:
    observer, clock, metrics, lines = make_observer()
    ex = exchange(clock.now)
    observer.request_started(ex)
    ex.dispatched_at, ex.status = clock.now, 201
    clock.now += 0.5
    observer.request_finished(ex)
    report = observer.stats.report(clock.now + 0.5)
    assert (report.request_count, report.average_concurrency) == (1, 0.5)
    assert counts(metrics) == {"201": 1}
    assert counts(metrics, "revision_app_request_count") == {"201": 1}
    assert lines == [b"GET 201\n"]


def test_queue_depth_counts_the_request_itself_like_knatives_in_flight() -> None:
    breaker = Breaker(capacity=1, queue_depth=1)
    observer, clock, metrics, _ = make_observer(breaker)
    first = exchange(clock.now)
    observer.request_started(first)
    breaker.try_acquire(first)
    assert families(metrics)["revision_queue_depth"].samples[0].value == 1
    second = exchange(clock.now)
    observer.request_started(second)
    breaker.try_acquire(second)  # queued behind the first
    assert families(metrics)["revision_queue_depth"].samples[0].value == 2
    # A third is turned away by the breaker: Knative never reaches the metrics handler.
    observer.request_started(exchange(clock.now))
    assert families(metrics)["revision_queue_depth"].samples[0].value == 2


def test_any_network_probe_value_is_kept_out_of_metrics_and_request_log() -> None:
    observer, clock, metrics, lines = make_observer()
    ex = exchange(clock.now, network_probe=b"custom", status=200)
    observer.request_started(ex)
    ex.dispatched_at = clock.now
    observer.request_finished(ex)
    assert observer.stats.report(clock.now + 1).request_count == 1  # the autoscaler sees it
    assert counts(metrics) == {} and lines == []


def test_network_probe_is_logged_when_probe_logging_is_on() -> None:
    observer, clock, _, lines = make_observer(log_probes=True)
    ex = exchange(clock.now, network_probe=b"custom", status=204)
    observer.request_started(ex)
    observer.request_finished(ex)
    assert lines == [b"GET 204\n"]


def test_answered_probes_are_never_counted_and_logged_only_on_request() -> None:
    for log_probes, expected in ((False, []), (True, [b"GET 200\n"])):
        observer, clock, metrics, lines = make_observer(log_probes=log_probes)
        observer.probe_answered(exchange(clock.now, status=200, network_probe=b"queue"))
        assert observer.stats.report(clock.now + 1).request_count == 0
        assert counts(metrics) == {}
        assert lines == expected


def test_abandoned_requests_get_knatives_codes() -> None:
    observer, clock, metrics, lines = make_observer(Breaker(capacity=1, queue_depth=10))
    at_app = exchange(clock.now, dispatched_at=clock.now)  # client left mid-response-wait
    waiting = exchange(clock.now)  # client left while queued for the breaker
    for ex in (at_app, waiting):
        observer.request_started(ex)
        observer.request_finished(ex)
    assert counts(metrics) == {"200": 1, "500": 1}
    assert counts(metrics, "revision_app_request_count") == {"200": 1}
    assert lines == [b"GET 200\n", b"GET 500\n"]


def test_route_tag_label_follows_knative_rules() -> None:
    observer, clock, metrics, _ = make_observer()
    cases = [
        [],
        [(b"Knative-Serving-Default-Route", b"true")],
        [(b"Knative-Serving-Tag", b"canary")],
        [(b"Knative-Serving-Tag", b"canary"), (b"Knative-Serving-Default-Route", b"true")],
    ]
    for headers in cases:
        ex = exchange(clock.now, headers=headers, status=200)
        observer.request_started(ex)
        observer.request_finished(ex)
    tags = [s.labels["route_tag"] for s in families(metrics)["revision_request_count"].samples]
    assert tags == ["DISABLED", "DEFAULT", "canary", "UNDEFINED"]


def test_noted_fields_count_by_their_first_value() -> None:
    # The one rule both protocols' field passes apply (`exchange.note_field`).
    ex = exchange(0.0)
    for name, value in (
        (b"k-proxy-request", b"other"),
        (b"k-proxy-request", b"activator"),
        (b"k-network-probe", b"queue"),
        (b"k-network-probe", b"probe"),
        (b"user-agent", b"kube-probe/1.30"),
        (b"user-agent", b"curl"),
        (b"knative-serving-tag", b"blue"),
        (b"knative-serving-tag", b"green"),
    ):
        note_field(ex, name, value)
    assert ex.proxied is False
    assert ex.network_probe == b"queue"
    assert ex.user_agent == b"kube-probe/1.30"
    assert ex.knative_fields == {b"k-proxy-request": b"other", b"knative-serving-tag": b"blue"}
    proxied = exchange(0.0)
    note_field(proxied, b"k-proxy-request", b"activator")
    note_field(proxied, b"k-proxy-request", b"other")
    assert proxied.proxied is True


def test_an_empty_routing_field_counts_as_absent_for_the_route_tag() -> None:
    # `GetRouteTagNameFromRequest` compares `Header.Get` with "": an empty field is no field,
    # and the first value is the one read.
    observer, clock, metrics, _ = make_observer()
    cases = [
        [(b"Knative-Serving-Tag", b"")],
        [(b"Knative-Serving-Default-Route", b"")],
        [(b"Knative-Serving-Tag", b""), (b"Knative-Serving-Default-Route", b"true")],
        [(b"Knative-Serving-Tag", b"blue"), (b"Knative-Serving-Default-Route", b"")],
        [(b"Knative-Serving-Tag", b""), (b"Knative-Serving-Tag", b"green")],
    ]
    for headers in cases:
        ex = exchange(clock.now, headers=headers, status=200)
        observer.request_started(ex)
        observer.request_finished(ex)
    samples = families(metrics)["revision_request_count"].samples
    assert {s.labels["route_tag"]: s.value for s in samples} == {
        "DISABLED": 3,
        "DEFAULT": 1,
        "blue": 1,
    }
