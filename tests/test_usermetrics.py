"""User metrics on :9091 (contract §6), parsed back with prometheus-client's parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from queueproxy.usermetrics import (
    DURATION_BUCKETS_SECONDS,
    LATENCY_BUCKETS_MS,
    MAX_ROUTE_TAGS,
    MAX_SERIES,
    OtelMetrics,
    RevisionMetrics,
    build_user_metrics,
)

IDENTITY = {
    "namespace": "default",
    "service": "hello",
    "configuration": "hello",
    "revision": "hello-00001",
    "pod": "hello-00001-deployment-abc",
}
V118_BASE_LABELS = {
    "namespace_name": "default",
    "service_name": "hello",
    "configuration_name": "hello",
    "revision_name": "hello-00001",
    "pod_name": "hello-00001-deployment-abc",
    "container_name": "queue-proxy",
}


def parse(text: bytes) -> dict[str, list[Sample]]:
    """Family name -> samples, failing on anything the Prometheus parser would reject.
    The parser reports counter samples as `<name>_total` even when the text has no suffix."""
    return {f.name: f.samples for f in text_string_to_metric_families(text.decode())}


def types(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


def only(samples: list[Sample], name: str, **labels: str) -> Sample:
    found = [
        s
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, f"{name} {labels}: {found}"
    return found[0]


def buckets(samples: list[Sample], name: str, **labels: str) -> dict[str, float]:
    return {
        s.labels["le"]: s.value
        for s in samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    }


# ---- v1.18 -------------------------------------------------------------------------------------


def v118(container_concurrency: int = 10, **overrides: str) -> RevisionMetrics:
    identity = {**IDENTITY, **overrides}
    metrics = build_user_metrics(
        era="v1.18", container_concurrency=container_concurrency, **identity
    )
    assert isinstance(metrics, RevisionMetrics)
    return metrics


def test_v118_request_count_latencies_and_labels() -> None:
    metrics = v118()
    # Knative records whole milliseconds (latency.Milliseconds()), so 5.9 ms counts as 5.
    for seconds in (0.004, 0.005, 0.0059, 0.150, 0.151, 200.0):
        metrics.observe_request(200, seconds, "DEFAULT", b"GET")
    metrics.observe_request(503, 0.020, "DEFAULT", b"GET")
    text = metrics.render()
    parsed = parse(text)
    assert types(text) == {
        "revision_request_count": "counter",
        "revision_request_latencies": "histogram",
    }

    ok = {**V118_BASE_LABELS, "response_code": "200", "response_code_class": "2xx",
          "route_tag": "DEFAULT"}  # fmt: skip
    count = only(parsed["revision_request_count"], "revision_request_count_total", **ok)
    assert (count.labels, count.value) == (ok, 6)
    latencies = parsed["revision_request_latencies"]
    got = buckets(latencies, "revision_request_latencies", response_code="200")
    assert [got[le] for le in ("5", "10", "100", "150", "200", "100000", "+Inf")] == [
        3, 3, 3, 4, 5, 5, 6
    ]  # fmt: skip
    assert len(got) == len(LATENCY_BUCKETS_MS) + 1
    assert only(latencies, "revision_request_latencies_sum", response_code="200").value == (
        4 + 5 + 5 + 150 + 151 + 200000
    )
    assert only(latencies, "revision_request_latencies_count", response_code="200").value == 6

    failed = only(
        parsed["revision_request_count"], "revision_request_count_total", response_code="503"
    )
    assert (failed.labels["response_code_class"], failed.value) == ("5xx", 1)


def test_v118_counter_has_no_total_suffix() -> None:
    metrics = v118()
    metrics.observe_request(200, 0.01, "DEFAULT", b"GET")
    # OpenCensus exported the counter under its view name, which dashboards query.
    assert b"\nrevision_request_count{" in metrics.render()
    assert b"revision_request_count_total" not in metrics.render()


def test_v118_app_metrics_have_no_route_tag() -> None:
    metrics = v118()
    metrics.observe_app_request(200, 0.012)
    metrics.observe_app_request(200, 0.047)
    metrics.observe_app_request(502, 0.001)
    parsed = parse(metrics.render())
    count = only(parsed["revision_app_request_count"], "revision_app_request_count_total",
                 response_code="200")  # fmt: skip
    assert count.value == 2
    assert count.labels == {**V118_BASE_LABELS, "response_code": "200",
                            "response_code_class": "2xx"}  # fmt: skip
    got = buckets(parsed["revision_app_request_latencies"], "revision_app_request_latencies",
                  response_code="200")  # fmt: skip
    assert (got["10"], got["20"], got["40"], got["60"], got["+Inf"]) == (0, 1, 1, 2, 2)
    assert "revision_request_count" not in parsed  # only the inner measurement was made


def test_v118_unknown_service_name() -> None:
    metrics = v118(service="")
    metrics.observe_app_request(200, 0.01)
    [sample] = parse(metrics.render())["revision_app_request_count"]
    assert sample.labels["service_name"] == "unknown"


def test_v118_queue_depth_only_with_container_concurrency() -> None:
    limited = v118(container_concurrency=2)
    assert "revision_queue_depth" not in parse(limited.render())  # nothing recorded yet
    limited.set_queue_depth(7)
    limited.set_queue_depth(5)
    [sample] = parse(limited.render())["revision_queue_depth"]
    assert sample.value == 5
    assert sample.labels == V118_BASE_LABELS
    assert types(limited.render())["revision_queue_depth"] == "gauge"

    unlimited = v118(container_concurrency=0)
    unlimited.set_queue_depth(7)
    unlimited.observe_app_request(200, 0.01)
    assert "revision_queue_depth" not in parse(unlimited.render())


def test_route_tags_are_bounded() -> None:
    metrics = v118()
    for i in range(MAX_ROUTE_TAGS + 20):
        metrics.observe_request(200, 0.01, f"tag-{i}", b"GET")
    samples = parse(metrics.render())["revision_request_count"]
    tags = {s.labels["route_tag"]: s.value for s in samples}
    assert len(tags) == MAX_ROUTE_TAGS + 1
    assert tags["_OTHER"] == 20
    assert tags["tag-0"] == 1


# ---- v1.19+ ------------------------------------------------------------------------------------


def v119(container_concurrency: int = 10, **overrides: str) -> OtelMetrics:
    identity = {**IDENTITY, **overrides}
    metrics = build_user_metrics(
        era="v1.19", container_concurrency=container_concurrency, **identity
    )
    assert isinstance(metrics, OtelMetrics)
    return metrics


def test_v119_invocation_duration() -> None:
    metrics = v119()
    for seconds in (0.003, 0.005, 0.3, 0.3, 11.0):
        metrics.observe_app_request(200, seconds)
    metrics.observe_app_request(500, 0.02)
    text = metrics.render()
    parsed = parse(text)
    assert types(text)["kn_serving_invocation_duration_seconds"] == "histogram"
    samples = parsed["kn_serving_invocation_duration_seconds"]
    got = buckets(
        samples, "kn_serving_invocation_duration_seconds", http_response_status_code="200"
    )
    assert len(got) == len(DURATION_BUCKETS_SECONDS) + 1
    assert (got["0.005"], got["0.25"], got["0.5"], got["10"], got["+Inf"]) == (2, 2, 4, 4, 5)
    total = only(samples, "kn_serving_invocation_duration_seconds_sum",
                 http_response_status_code="200")  # fmt: skip
    assert total.value == pytest.approx(0.003 + 0.005 + 0.3 + 0.3 + 11.0)
    count = only(samples, "kn_serving_invocation_duration_seconds_count",
                 http_response_status_code="500")  # fmt: skip
    assert count.value == 1
    assert set(count.labels) == {"http_response_status_code"}  # resource labels: target_info


def test_v119_server_duration_labels_are_bounded() -> None:
    metrics = v119()
    metrics.observe_request(200, 0.2, "kn:default", b"GET")
    metrics.observe_request(200, 0.3, "kn:default", "GET")
    metrics.observe_request(404, 0.01, "kn:disabled", b"BREW")
    metrics.observe_request(404, 0.01, "kn:disabled", b"get")
    samples = parse(metrics.render())["http_server_request_duration_seconds"]
    get = only(samples, "http_server_request_duration_seconds_count", http_request_method="GET")
    assert get.value == 2
    assert get.labels == {"http_request_method": "GET", "http_response_status_code": "200",
                          "kn_route_tag": "kn:default"}  # fmt: skip
    other = only(samples, "http_server_request_duration_seconds_count",
                 http_request_method="_OTHER")  # fmt: skip
    assert other.value == 2
    assert other.labels["kn_route_tag"] == "kn:disabled"


def test_v119_queue_depth_only_with_container_concurrency() -> None:
    limited = v119(container_concurrency=1)
    limited.set_queue_depth(11)
    [sample] = parse(limited.render())["kn_serving_queue_depth"]
    assert (sample.value, sample.labels) == (11, {})

    unlimited = v119(container_concurrency=0)
    unlimited.set_queue_depth(11)
    assert "kn_serving_queue_depth" not in parse(unlimited.render())


def test_v119_target_info_carries_the_resource() -> None:
    [sample] = parse(v119(service="").render())["target_info"]
    assert sample.labels == {
        "k8s_container_name": "queue-proxy",
        "k8s_namespace_name": "default",
        "k8s_pod_name": "hello-00001-deployment-abc",
        "service_name": "hello",  # first of service, configuration, revision, pod
        "service_instance_id": "hello-00001-deployment-abc",
        "kn_configuration_name": "hello",
        "kn_revision_name": "hello-00001",
    }


def test_bucket_bounds_print_like_go() -> None:
    old, new = v118(), v119()
    old.observe_app_request(200, 0.01)
    new.observe_app_request(200, 0.01)
    # Prometheus 2.x keeps `le` as written; Go writes 5 and 0.005, not 5.0.
    assert b'le="5"' in old.render() and b'le="100000"' in old.render()
    assert b'le="0.005"' in new.render() and b'le="1"' in new.render()
    assert b'le="5.0"' not in old.render()


def test_v118_milliseconds_survive_float_rounding() -> None:
    metrics = v118()
    metrics.observe_app_request(200, 0.57)  # 0.57 * 1000 == 569.9999999999999 in floats
    samples = parse(metrics.render())["revision_app_request_latencies"]
    assert only(samples, "revision_app_request_latencies_sum").value == 570


@pytest.mark.parametrize(
    ("era", "family", "status_label"),
    [
        ("v1.18", "revision_request_count", "response_code"),
        ("v1.19", "http_server_request_duration_seconds", "http_response_status_code"),
    ],
)
def test_series_stay_bounded_when_clients_multiply_tags_methods_and_statuses(
    era: str, family: str, status_label: str
) -> None:
    """A client picks the route tag and the method, and with some apps the status too (the
    sample app's `?status=`): their product must not become the number of series."""
    metrics = v118() if era == "v1.18" else v119()
    statuses = range(200, 240)
    methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "BREW"]
    for status in statuses:
        for tag in range(MAX_ROUTE_TAGS + 1):
            for method in methods:
                metrics.observe_request(status, 0.01, f"tag-{tag}", method)
    parsed = parse(metrics.render())
    samples = [s for s in parsed[family] if era == "v1.18" or s.name.endswith("_count")]
    assert len(samples) <= MAX_SERIES + len(statuses)
    # Every request is still counted, under its own status.
    per_status = {status: 0.0 for status in statuses}
    for sample in samples:
        per_status[int(sample.labels[status_label])] += sample.value
    assert set(per_status.values()) == {(MAX_ROUTE_TAGS + 1) * len(methods)}


@pytest.mark.parametrize("era", ["v1.18", "v1.19"])
def test_one_call_per_request_renders_like_the_two_measurements(era: str) -> None:
    """`observe` (what the data path calls) inlines the histograms and, in v1.18, truncates to
    milliseconds with float arithmetic: its scrape must be byte-identical to the two separate
    measurements', at bucket edges, float-rounding cases and past the route-tag cap too."""
    one, two = (v118(), v118()) if era == "v1.18" else (v119(), v119())
    values = [0.0, 0.0003, 0.004999, 0.005, 0.0050001, 0.0059999, 0.006, 0.01, 0.57, 0.999,
              1.0, 2.5, 10.0, 99.9999, 100.0, 100.001, 1234.5678]  # fmt: skip
    statuses = [200, 201, 404, 500, 503]
    methods = [b"GET", "POST", b"BREW", b"get"]
    i = 0
    for seconds in values:
        for app in [*values[:4], None]:
            for status in statuses:
                method = methods[i % len(methods)]
                tag = f"tag-{i % (MAX_ROUTE_TAGS + 30)}"
                i += 1
                one.observe(status, seconds, app, tag, method)
                two.observe_request(status, seconds, tag, method)
                if app is not None:
                    two.observe_app_request(status, app)
    assert i > MAX_ROUTE_TAGS
    assert one.render() == two.render()
    assert parse(one.render())  # and it is valid exposition text
