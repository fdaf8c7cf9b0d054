"""What the autoscaler scrapes on :9090 (docs/contract.md#statistics-for-the-autoscaler).

`encode_stat` writes the proto3 `Stat` message by hand (it is seven scalar fields; no protobuf
runtime is needed on the data path). `prometheus_text` writes the Prometheus gauges that queue-proxy
served up to Knative v1.5 when the scraper did not ask for protobuf. `StatSnapshot` encodes both
once per reporting window, so a scrape only hands out prebuilt bytes, as Knative's
`ProtobufStatsReporter` does.
"""

from __future__ import annotations

import struct

from queueproxy.gofloat import format_go_float
from queueproxy.stats import StatsReport

PROTOBUF_CONTENT_TYPE = "application/protobuf"
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Knative reports every second and divides the window's counts by this nominal period, even when
# the ticker fires late.
REPORTING_PERIOD_SECONDS = 1.0

# Stat field numbers (docs/stat.proto). Key byte = field number << 3 | wire type.
_WIRE_FIXED64 = 1
_WIRE_LENGTH_DELIMITED = 2
_POD_NAME_KEY = bytes([1 << 3 | _WIRE_LENGTH_DELIMITED])
_DOUBLE_KEYS = {
    name: bytes([number << 3 | _WIRE_FIXED64])
    for number, name in enumerate(
        (
            "average_concurrent_requests",
            "average_proxied_concurrent_requests",
            "request_count",
            "proxied_request_count",
            "process_uptime",
        ),
        start=2,
    )
}
_pack_double = struct.Struct("<d").pack


class WireError(ValueError):
    """Bytes that are not a well-formed protobuf encoding (or gRPC message, `grpcwire`); says
    what is wrong."""


def encode_varint(value: int) -> bytes:
    """A protobuf base-128 varint, least significant group first; ValueError if negative (our
    fields are lengths and enums, never negative)."""
    if value < 0:
        raise ValueError("only unsigned varints are encoded here")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, offset after it); WireError if truncated or longer than 10 bytes."""
    value = 0
    for index in range(10):  # 64 bits, 7 per byte
        if offset + index >= len(data):
            raise WireError("truncated varint")
        byte = data[offset + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value & 0xFFFF_FFFF_FFFF_FFFF, offset + index + 1
    raise WireError("varint longer than 10 bytes")


def _stat_values(
    report: StatsReport | None, process_uptime: float, reporting_period: float
) -> dict[str, float]:
    if report is None:
        return dict.fromkeys(_DOUBLE_KEYS, 0.0)
    return {
        "average_concurrent_requests": report.average_concurrency,
        "average_proxied_concurrent_requests": report.average_proxied_concurrency,
        "request_count": report.request_count / reporting_period,
        "proxied_request_count": report.proxied_request_count / reporting_period,
        "process_uptime": process_uptime,
    }


def encode_stat(
    pod_name: str,
    report: StatsReport | None,
    process_uptime: float,
    reporting_period: float = REPORTING_PERIOD_SECONDS,
) -> bytes:
    """The `Stat` message. `report=None` is the state before the first window: only the pod name,
    as Knative stores before its first tick. Zero fields are omitted (proto3); `timestamp` (7) is
    never set by queue-proxy."""
    parts = []
    if pod_name:
        name = pod_name.encode()
        parts += (_POD_NAME_KEY, encode_varint(len(name)), name)
    if report is not None:
        for field, value in _stat_values(report, process_uptime, reporting_period).items():
            if value != 0.0:
                parts += (_DOUBLE_KEYS[field], _pack_double(value))
    return b"".join(parts)


_TEXT_GAUGES = (
    ("queue_requests_per_second", "Number of requests per second", "request_count"),
    (
        "queue_proxied_operations_per_second",
        "Number of proxied requests per second",
        "proxied_request_count",
    ),
    (
        "queue_average_concurrent_requests",
        "Number of requests currently being handled by this pod",
        "average_concurrent_requests",
    ),
    (
        "queue_average_proxied_concurrent_requests",
        "Number of proxied requests currently being handled by this pod",
        "average_proxied_concurrent_requests",
    ),
    ("process_uptime", "The number of seconds that the process has been up", "process_uptime"),
)


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(
    *,
    namespace: str,
    configuration: str,
    revision: str,
    pod: str,
    report: StatsReport | None,
    process_uptime: float,
    reporting_period: float = REPORTING_PERIOD_SECONDS,
) -> bytes:
    """The ≤ v1.5 text form: five gauges labelled with the destination revision and pod."""
    labels = ",".join(
        f'{name}="{escape_label_value(value)}"'
        for name, value in (
            ("destination_configuration", configuration),
            ("destination_namespace", namespace),
            ("destination_pod", pod),
            ("destination_revision", revision),
        )
    )
    values = _stat_values(report, process_uptime, reporting_period)
    lines = []
    for name, help_text, field in _TEXT_GAUGES:
        lines.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n")
        lines.append(f"{name}{{{labels}}} {format_go_float(values[field])}\n")
    return "".join(lines).encode()


def wants_protobuf(accept: str | bytes | None) -> bool:
    """Knative ≤ v1.5 served protobuf when `Accept` contained `application/protobuf`."""
    if accept is None:
        return False
    if isinstance(accept, bytes):
        return b"application/protobuf" in accept
    return "application/protobuf" in accept


class StatSnapshot:
    """The last completed window, encoded once in both forms.

    Call `update` from the 1 s report tick; a scrape reads `protobuf` or `text` and never
    computes anything."""

    __slots__ = ("_labels", "_reporting_period", "protobuf", "text")

    def __init__(
        self,
        *,
        namespace: str,
        configuration: str,
        revision: str,
        pod: str,
        reporting_period: float = REPORTING_PERIOD_SECONDS,
    ) -> None:
        self._labels = {
            "namespace": namespace,
            "configuration": configuration,
            "revision": revision,
            "pod": pod,
        }
        self._reporting_period = reporting_period
        self.protobuf = encode_stat(pod, None, 0.0)
        self.text = prometheus_text(**self._labels, report=None, process_uptime=0.0)

    def update(self, report: StatsReport, process_uptime: float) -> None:
        period = self._reporting_period
        self.protobuf = encode_stat(self._labels["pod"], report, process_uptime, period)
        self.text = prometheus_text(
            **self._labels, report=report, process_uptime=process_uptime, reporting_period=period
        )

    def body_for(self, accept: str | bytes | None) -> tuple[bytes, str]:
        """(body, content type) for a scrape with this `Accept` header (the ≤ v1.5 rule)."""
        if wants_protobuf(accept):
            return self.protobuf, PROTOBUF_CONTENT_TYPE
        return self.text, TEXT_CONTENT_TYPE
