"""The :9090 payloads (contract §4.2, §4.3, §5.1): the hand-written protobuf is decoded with the
`protobuf` package against docs/stat.proto; the text form is parsed with prometheus-client."""

from __future__ import annotations

import struct
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queueproxy.stats import StatsReport
from queueproxy.statwire import (
    PROTOBUF_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    StatSnapshot,
    encode_stat,
    prometheus_text,
    wants_protobuf,
)

# The autoscaler reads at most this many bytes of a scrape (6*10 + 256 + 20, §5.1).
SCRAPER_BODY_LIMIT = 336


def decode(stat_pb2: ModuleType, body: bytes):  # type: ignore[no-untyped-def]
    message = stat_pb2.Stat()
    message.ParseFromString(body)
    return message


REPORT = StatsReport(
    average_concurrency=3.75,
    average_proxied_concurrency=1.25,
    request_count=42,
    proxied_request_count=7,
)


def test_round_trip_of_every_field(stat_pb2: ModuleType) -> None:
    stat = decode(stat_pb2, encode_stat("hello-00001-deployment-5f7c9-abcde", REPORT, 123.5))
    assert stat.pod_name == "hello-00001-deployment-5f7c9-abcde"
    assert stat.average_concurrent_requests == 3.75
    assert stat.average_proxied_concurrent_requests == 1.25
    assert stat.request_count == 42.0
    assert stat.proxied_request_count == 7.0
    assert stat.process_uptime == 123.5
    assert stat.timestamp == 0


def test_counts_are_divided_by_the_reporting_period(stat_pb2: ModuleType) -> None:
    stat = decode(stat_pb2, encode_stat("pod", REPORT, 1.0, reporting_period=2.0))
    assert (stat.request_count, stat.proxied_request_count) == (21.0, 3.5)
    assert stat.average_concurrent_requests == 3.75  # a concurrency is not a rate


def test_zero_fields_are_omitted_like_proto3() -> None:
    idle = StatsReport(0.0, 0.0, 0, 0)
    body = encode_stat("pod-a", idle, 2.0)
    # Only the pod name (key 0x0a, length 5) and process_uptime (field 6, wire type 1).
    assert body == b"\x0a\x05pod-a" + b"\x31" + struct.pack("<d", 2.0)


def test_matches_the_protobuf_library_byte_for_byte(stat_pb2: ModuleType) -> None:
    for report, uptime in [(REPORT, 99.25), (StatsReport(0.5, 0.0, 1, 0), 0.0)]:
        reference = stat_pb2.Stat(
            pod_name="pod-b",
            average_concurrent_requests=report.average_concurrency,
            average_proxied_concurrent_requests=report.average_proxied_concurrency,
            request_count=report.request_count,
            proxied_request_count=report.proxied_request_count,
            process_uptime=uptime,
        )
        assert encode_stat("pod-b", report, uptime) == reference.SerializeToString()


def test_before_the_first_window_only_the_pod_name(stat_pb2: ModuleType) -> None:
    body = encode_stat("pod-c", None, 5.0)
    assert body == b"\x0a\x05pod-c"
    assert decode(stat_pb2, body).process_uptime == 0.0


def test_long_pod_name_needs_a_multi_byte_length(stat_pb2: ModuleType) -> None:
    name = "p" * 200  # length 200 > 127: two varint bytes
    assert decode(stat_pb2, encode_stat(name, REPORT, 1.0)).pod_name == name


def test_a_63_character_pod_name_fits_the_scraper_limit(stat_pb2: ModuleType) -> None:
    name = "hello-world-00001-deployment-7d9f8b6c5d-x2k4p".ljust(63, "q")
    busy = StatsReport(1e9 / 3, 1e9 / 7, 10**9, 10**8)
    body = encode_stat(name, busy, 1e7 + 0.123)
    assert len(name) == 63
    assert len(body) <= SCRAPER_BODY_LIMIT
    assert decode(stat_pb2, body[:SCRAPER_BODY_LIMIT]).pod_name == name


def families(text: bytes) -> dict:  # type: ignore[type-arg]
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def test_text_form_names_labels_and_values() -> None:
    text = prometheus_text(
        namespace="default",
        configuration="hello",
        revision="hello-00001",
        pod="hello-00001-deployment-abc",
        report=REPORT,
        process_uptime=12.5,
    )
    parsed = families(text)
    expected = {
        "queue_requests_per_second": 42.0,
        "queue_proxied_operations_per_second": 7.0,
        "queue_average_concurrent_requests": 3.75,
        "queue_average_proxied_concurrent_requests": 1.25,
        "process_uptime": 12.5,
    }
    assert set(parsed) == set(expected)
    for name, value in expected.items():
        family = parsed[name]
        assert family.type == "gauge"
        assert family.documentation
        [sample] = family.samples
        assert sample.value == value
        assert sample.labels == {
            "destination_namespace": "default",
            "destination_configuration": "hello",
            "destination_revision": "hello-00001",
            "destination_pod": "hello-00001-deployment-abc",
        }


def test_text_label_values_are_escaped() -> None:
    text = prometheus_text(
        namespace='we"ird\\ns',
        configuration="c",
        revision="r",
        pod="p",
        report=None,
        process_uptime=0.0,
    )
    [sample] = families(text)["queue_requests_per_second"].samples
    assert sample.labels["destination_namespace"] == 'we"ird\\ns'
    assert sample.value == 0.0


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/protobuf", True),
        ("text/plain, application/protobuf;q=0.9", True),
        (b"application/protobuf", True),
        ("text/plain", False),
        ("*/*", False),
        ("", False),
        (None, False),
    ],
)
def test_wants_protobuf(accept: str | bytes | None, expected: bool) -> None:
    assert wants_protobuf(accept) is expected


def test_snapshot_serves_the_last_window_until_the_next_update(stat_pb2: ModuleType) -> None:
    snapshot = StatSnapshot(namespace="ns", configuration="cfg", revision="rev", pod="pod-d")
    body, content_type = snapshot.body_for("application/protobuf")
    assert content_type == PROTOBUF_CONTENT_TYPE
    assert decode(stat_pb2, body).pod_name == "pod-d"
    assert decode(stat_pb2, body).request_count == 0.0

    snapshot.update(REPORT, process_uptime=3.0)
    first = snapshot.protobuf
    assert snapshot.body_for(b"application/protobuf") == (first, PROTOBUF_CONTENT_TYPE)
    assert decode(stat_pb2, first).request_count == 42.0
    text, content_type = snapshot.body_for("text/plain")
    assert content_type == TEXT_CONTENT_TYPE
    [sample] = families(text)["queue_average_concurrent_requests"].samples
    assert sample.value == 3.75

    snapshot.update(StatsReport(0.5, 0.0, 1, 0), process_uptime=4.0)
    assert snapshot.protobuf != first
    second = decode(stat_pb2, snapshot.protobuf)
    assert (second.request_count, second.process_uptime) == (1.0, 4.0)
