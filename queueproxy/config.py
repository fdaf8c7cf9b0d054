"""Configuration, parsed once: the Knative environment or local-mode flags.

The variables and their rules: docs/contract.md#variables.

`load([], environ)` reads the variables the Knative reconciler sets, with the rules of the Go
binary's `envconfig`: a required variable must be *present* (it may be empty when it is a string),
an optional typed variable that is present must parse. `load(argv, environ)` with arguments is
local mode: no Knative variables, every setting has a default and a flag (`localflags.py` turns
the flags into that environment). In both modes our own `QUEUEPROXY_*` variables apply (flags
win). Nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

# Knative's `pkg/observability/config.go` DefaultRequestLogTemplate (v1.19+).
DEFAULT_REQUEST_LOG_TEMPLATE = (
    '{"httpRequest": {"requestMethod": "{{.Request.Method}}", '
    '"requestUrl": "{{js .Request.RequestURI}}", "requestSize": "{{.Request.ContentLength}}", '
    '"status": {{.Response.Code}}, "responseSize": "{{.Response.Size}}", '
    '"userAgent": "{{js .Request.UserAgent}}", "remoteIp": "{{js .Request.RemoteAddr}}", '
    '"serverIp": "{{.Revision.PodIP}}", "referer": "{{js .Request.Referer}}", '
    '"latency": "{{.Response.Latency}}s", "protocol": "{{.Request.Proto}}"}, '
    '"traceId": "{{.TraceID}}"}'
)
# v1.18 took the trace id from the B3 header instead.
V118_REQUEST_LOG_TEMPLATE = DEFAULT_REQUEST_LOG_TEMPLATE.replace(
    "{{.TraceID}}", '{{index .Request.Header "X-B3-Traceid"}}'
)

LOCALHOST = "127.0.0.1"
DEFAULT_CERTS_DIR = "/var/lib/knative/certs"
LOG_LEVELS = ("debug", "info", "warn", "error", "dpanic", "panic", "fatal")
METRICS_PROTOCOLS = ("none", "prometheus", "grpc", "http/protobuf")
TRACING_PROTOCOLS = ("none", "grpc", "http/protobuf", "stdout")
# Go's crypto/tls CipherSuites() and knative.dev/pkg/network/tls curve names.
TLS_VERSIONS = ("1.2", "1.3")
TLS_CIPHER_SUITES = frozenset(
    "TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256 "
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA "
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA "
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 "
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 "
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 "
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256".split()
)
TLS_CURVES = frozenset(
    "CurveP256 CurveP384 CurveP521 X25519 X25519MLKEM768 P-256 P-384 P-521".split()
)


class ConfigError(Exception):
    """A setting is missing or unparsable; the message names it and shows the bad value."""


# The parts inside `Config` are NamedTuples: as immutable and equal by value (`_replace` makes a
# changed copy), and cheaper to define at every start than frozen dataclasses (~0.4 ms each).
class ProbeSpec(NamedTuple):
    """One readiness probe of the user container, after the reconciler's rewrite
    (docs/contract.md#probing-the-app)."""

    kind: str  # "tcp" | "http" | "grpc"
    host: str
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    grpc_service: str = ""
    period_seconds: int = 0
    timeout_seconds: int = 0
    success_threshold: int = 1
    failure_threshold: int = 3


class Observability(NamedTuple):
    """Request metrics, request logs, profiling and tracing, from OBSERVABILITY_CONFIG (v1.19+)
    or the v1.18 variables."""

    era: str  # "v1.19" (OBSERVABILITY_CONFIG) or "v1.18" (SERVING_* / TRACING_* variables)
    request_metrics_protocol: str
    enable_request_log: bool
    request_log_template: str
    enable_probe_request_log: bool
    profiling_enabled: bool
    tracing_protocol: str
    tracing_endpoint: str
    tracing_sample_rate: float


@dataclass(frozen=True)
class Config:
    """Everything the sidecar is configured with, from `load`. Frozen: `dataclasses.replace`
    makes a changed copy. Ports are TCP ports, durations seconds."""

    serving_namespace: str
    serving_service: str
    serving_configuration: str
    serving_revision: str
    queue_serving_port: int
    queue_serving_tls_port: int
    container_concurrency: int
    revision_timeout_seconds: int
    revision_response_start_timeout_seconds: int
    revision_idle_timeout_seconds: int
    serving_pod: str
    serving_pod_ip: str
    serving_logging_config: str
    serving_logging_level: str
    user_port: int
    system_namespace: str
    readiness_probes: tuple[ProbeSpec, ...]
    enable_http2_auto_detection: bool
    enable_http_full_duplex: bool
    enable_multi_container_probes: bool
    tls_min_version: str
    tls_max_version: str  # "" = the TLS library's maximum
    tls_cipher_suites: tuple[str, ...]
    tls_curve_preferences: tuple[str, ...]
    observability: Observability
    bind_address: str
    admin_port: int
    metrics_port: int
    user_metrics_port: int
    drain_quiet_period: float
    certs_dir: str
    cert_reload_seconds: float  # QUEUEPROXY_CERT_RELOAD_SECONDS: how often TLS files are re-read
    # QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS: Go's ReadHeaderTimeout, on every port
    read_header_timeout: float
    # QUEUEPROXY_LIVE: the live page on the admin port (off in a pod, on in local mode)
    live: bool = False
    # QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS: one line per reason per interval at most
    rejection_log_interval: float = 10.0
    local: bool = False  # started with arguments (local mode): see `load`


# --- Scalar parsers: text -> value, or ValueError whose message shows the text ---------------


Parser = Callable[[str], Any]


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# strconv.ParseInt(s, 0, 64): decimal, 0x/0o/0b prefixes, a bare leading 0 means octal,
# underscores only between digits.
_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[bB](?:_?[01])+|0[oO](?:_?[0-7])+|0(?:_?[0-7])*|[1-9](?:_?[0-9])*)"
)
_GO_BOOLS = dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True) | dict.fromkeys(
    ("0", "f", "F", "FALSE", "false", "False"), False
)


def parse_int(text: str) -> int:
    if not _GO_INT.fullmatch(text):
        raise ValueError(f"invalid integer {_q(text)}")
    digits = text.lstrip("+-").replace("_", "")
    octal = len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbBoO"
    value = int(digits, 8) if octal else int(digits, 0)
    value = -value if text.startswith("-") else value
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"integer out of range {_q(text)}")
    return value


def parse_bool(text: str) -> bool:
    if text not in _GO_BOOLS:
        raise ValueError(f"invalid boolean {_q(text)}")
    return _GO_BOOLS[text]


def parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or text != text.strip() or "_" in text:  # Python allows both, Go doesn't
        raise ValueError(f"invalid number {_q(text)}")
    return value


def _int_at_least(minimum: int) -> Parser:
    def parse(text: str) -> int:
        value = parse_int(text)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}, got {_q(text)}")
        return value

    return parse


def _float_within(low: float, high: float) -> Parser:
    def parse(text: str) -> float:
        value = parse_float(text)
        if not (math.isfinite(value) and low <= value <= high):
            bounds = f">= {low:g}" if high == math.inf else f"within {low:g}..{high:g}"
            raise ValueError(f"must be {bounds}, got {_q(text)}")
        return value

    return parse


parse_count = _int_at_least(0)
parse_positive = _int_at_least(1)
parse_seconds = _float_within(0.0, math.inf)
parse_sample_rate = _float_within(0.0, 1.0)


def parse_port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid port {_q(text)} (want 1..65535)")
    return int(text)


# A DNS name: RFC 1123 §2.1 labels, dot-separated, an optional final dot.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _is_address(text: str) -> bool:
    """An IPv4 or IPv6 address literal, IPv6 with an optional zone (`fe80::1%eth0`)."""
    import socket  # asyncio loads it anyway; here only when a bind address is set

    address, percent, zone = text.partition("%")
    for family in (socket.AF_INET, socket.AF_INET6):
        if percent and (family == socket.AF_INET or not zone):
            continue
        try:
            socket.inet_pton(family, address)
        except OSError:
            continue
        return True
    return False


def parse_listen_address(text: str) -> str:
    """Where the sidecar listens: "" (every interface), an IPv4 or IPv6 address (no brackets)
    or a host name. Only the syntax is checked here; an address the machine does not have fails
    when it is bound, naming it."""
    if text and not (_is_address(text) or (len(text) <= 253 and _HOST_NAME.fullmatch(text))):
        hint = " (an IPv6 address goes without brackets)" if text.startswith("[") else ""
        raise ValueError(f"invalid listen address {_q(text)}{hint}")
    return text


def parse_log_level(text: str) -> str:
    level = text.strip().lower() or "info"
    level = "warn" if level == "warning" else level
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {_q(text)} (want one of {', '.join(LOG_LEVELS)})")
    return level


def parse_tls_version(text: str) -> str:
    if text not in TLS_VERSIONS:
        raise ValueError(f'unsupported TLS version {_q(text)} (want "1.2" or "1.3")')
    return text


def _names_from(allowed: frozenset[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        for name in names:
            if name not in allowed:
                raise ValueError(f"unknown {what} {_q(name)}")
        return names

    return parse


# --- JSON settings: readiness probes and OBSERVABILITY_CONFIG ------------------------------


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"invalid JSON ({error.msg} at char {error.pos}) in {_q(text)}") from None


def _member(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """obj[key] checked against a JSON type; absent or null gives the default (Go's json)."""
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{key}: unexpected JSON value {json.dumps(value)}")
    return value


def _probe_port(value: Any, user_port: int) -> int:
    """An IntOrString port; absent or 0 means the user port, as the reconciler rewrites it."""
    if value is None or (value == 0 and not isinstance(value, bool)):
        return user_port
    if isinstance(value, str) and not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"port {_q(value)}: named ports are not supported, use a number")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"port: unexpected JSON value {json.dumps(value)}")
    return parse_port(str(value))


def _probe(obj: Any, user_port: int) -> ProbeSpec:
    if not isinstance(obj, dict):
        raise ValueError(f"a probe must be a JSON object, got {json.dumps(obj)}")
    handlers = [key for key in ("httpGet", "tcpSocket", "grpc", "exec") if obj.get(key) is not None]
    if len(handlers) != 1:
        raise ValueError(f"want one handler of httpGet, tcpSocket, grpc, exec in {json.dumps(obj)}")
    handler = handlers[0]
    action = _member(obj, handler, dict, {})
    timing = {
        "period_seconds": _member(obj, "periodSeconds", int, 0),
        "timeout_seconds": _member(obj, "timeoutSeconds", int, 0),
        "success_threshold": _member(obj, "successThreshold", int, 0) or 1,
        "failure_threshold": _member(obj, "failureThreshold", int, 0) or 3,
    }
    if min(timing.values()) < 0:
        raise ValueError(f"negative timing in {json.dumps(obj)}")
    if timing["period_seconds"] > 0 and timing["timeout_seconds"] < 1:
        timing["timeout_seconds"] = 1
    if handler == "exec":  # kubelet still runs the exec probe; we check the port
        return ProbeSpec("tcp", LOCALHOST, user_port, **timing)
    port = _probe_port(action.get("port"), user_port)
    if handler == "grpc":  # Knative always dials gRPC probes on localhost
        service = _member(action, "service", str, "")
        return ProbeSpec("grpc", LOCALHOST, port, grpc_service=service, **timing)
    host = _member(action, "host", str, "") or LOCALHOST
    if handler == "tcpSocket":
        return ProbeSpec("tcp", host, port, **timing)
    path = _member(action, "path", str, "")
    scheme = _member(action, "scheme", str, "").upper() or "HTTP"
    if scheme not in ("HTTP", "HTTPS"):
        raise ValueError(f"scheme: unsupported {_q(scheme)} (want HTTP or HTTPS)")
    headers = []
    for header in _member(action, "httpHeaders", list, []):
        if not isinstance(header, dict):
            raise ValueError(f"httpHeaders: unexpected JSON value {json.dumps(header)}")
        headers.append((_member(header, "name", str, ""), _member(header, "value", str, "")))
    return ProbeSpec(
        "http",
        host,
        port,
        path if path.startswith("/") else "/" + path,
        scheme,
        tuple(headers),
        **timing,
    )


def parse_probes(text: str, user_port: int) -> tuple[ProbeSpec, ...]:
    """SERVING_READINESS_PROBE: one probe object or an array of them; empty = always ready."""
    if not text:
        return ()
    decoded = _decode_json(text)
    return tuple(
        _probe(item, user_port) for item in (decoded if isinstance(decoded, list) else [decoded])
    )


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what}: unsupported {_q(value)} (want one of {', '.join(allowed)})")
    return value


def parse_observability(text: str) -> Observability:
    """OBSERVABILITY_CONFIG (v1.19+): JSON of config-observability; omitted fields keep defaults."""
    doc = _decode_json(text)
    if not isinstance(doc, dict):
        raise ValueError(f"want a JSON object, got {_q(text)}")
    metrics = _member(doc, "requestMetrics", dict, {})
    tracing = _member(doc, "tracing", dict, {})
    runtime = _member(doc, "runtime", dict, {})
    profiling = _member(runtime, "profiling", str, "") or "disabled"
    rate = _member(tracing, "samplingRate", (int, float), 0)
    if not 0 <= rate <= 1:
        raise ValueError(f"tracing.samplingRate: must be within 0..1, got {rate}")
    protocol = _member(metrics, "protocol", str, "") or "none"
    return Observability(
        era="v1.19",
        request_metrics_protocol=_choice(protocol, METRICS_PROTOCOLS, "requestMetrics.protocol"),
        enable_request_log=_member(doc, "enableRequestLog", bool, False),
        request_log_template=_member(doc, "requestLogTemplate", str, "")
        or DEFAULT_REQUEST_LOG_TEMPLATE,
        enable_probe_request_log=_member(doc, "enableProbeRequestLog", bool, False),
        profiling_enabled=_choice(profiling, ("enabled", "disabled"), "runtime.profiling")
        == "enabled",
        tracing_protocol=_choice(
            _member(tracing, "protocol", str, "") or "none", TRACING_PROTOCOLS, "tracing.protocol"
        ),
        tracing_endpoint=_member(tracing, "endpoint", str, ""),
        tracing_sample_rate=float(rate),
    )


# v1.18 variables: backend names as the reconciler wrote them -> our protocol names.
_V118_METRICS_BACKENDS = {
    "": "none",
    "none": "none",
    "prometheus": "prometheus",
    "opencensus": "grpc",
}
_V118_TRACING_BACKENDS = {"": "none", "none": "none", "zipkin": "zipkin"}


def _mapped(table: Mapping[str, str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip().lower() not in table:
            known = ", ".join(_q(name) for name in table)
            raise ValueError(f"unsupported backend {_q(text)} (want one of {known})")
        return table[text.strip().lower()]

    return parse


# --- Reading the environment ------------------------------------------------------------------

_REQUIRED: Any = object()


def _parse(name: str, parse: Parser, text: str) -> Any:
    try:
        return parse(text)
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


def _env(environ: Mapping[str, str], name: str, parse: Parser, default: Any) -> Any:
    """envconfig's rule: absent -> default (or an error if required); present -> must parse."""
    if name not in environ:
        if default is _REQUIRED:
            raise ConfigError(f"{name}: required variable is not set")
        return default
    return _parse(name, parse, environ[name])


def _env_nonempty(environ: Mapping[str, str], name: str, parse: Parser, default: Any) -> Any:
    """os.Getenv's rule (TLS, OBSERVABILITY_CONFIG, ours): empty counts as unset."""
    text = environ.get(name, "")
    return _parse(name, parse, text) if text else default


# (Config field = the lower-cased name, parser, default or _REQUIRED), from Knative's
# `pkg/queue/sharedmain/main.go` `config` struct.
KNATIVE_VARIABLES: tuple[tuple[str, Parser, Any], ...] = (
    ("SERVING_NAMESPACE", str, _REQUIRED),
    ("SERVING_SERVICE", str, ""),
    ("SERVING_CONFIGURATION", str, _REQUIRED),
    ("SERVING_REVISION", str, _REQUIRED),
    ("QUEUE_SERVING_PORT", parse_port, _REQUIRED),
    ("QUEUE_SERVING_TLS_PORT", parse_port, _REQUIRED),
    ("CONTAINER_CONCURRENCY", parse_count, _REQUIRED),
    ("REVISION_TIMEOUT_SECONDS", parse_positive, _REQUIRED),
    ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", parse_count, 0),
    ("REVISION_IDLE_TIMEOUT_SECONDS", parse_count, 0),
    ("SERVING_POD", str, _REQUIRED),
    ("SERVING_POD_IP", str, _REQUIRED),
    ("SERVING_LOGGING_CONFIG", str, _REQUIRED),
    ("SERVING_LOGGING_LEVEL", parse_log_level, _REQUIRED),
    ("USER_PORT", parse_port, _REQUIRED),
    ("SYSTEM_NAMESPACE", str, ""),
    ("ENABLE_HTTP2_AUTO_DETECTION", parse_bool, False),
    ("ENABLE_HTTP_FULL_DUPLEX", parse_bool, False),
    ("ENABLE_MULTI_CONTAINER_PROBES", parse_bool, False),
)
REQUIRED_VARIABLES = tuple(name for name, _, default in KNATIVE_VARIABLES if default is _REQUIRED)

# knative.dev/pkg/network/tls DefaultConfigFromEnv("QUEUE_PROXY_").
# fmt: off
TLS_VARIABLES: tuple[tuple[str, str, Parser, Any], ...] = (
    ("tls_min_version", "QUEUE_PROXY_TLS_MIN_VERSION", parse_tls_version, "1.3"),
    ("tls_max_version", "QUEUE_PROXY_TLS_MAX_VERSION", parse_tls_version, ""),
    ("tls_cipher_suites", "QUEUE_PROXY_TLS_CIPHER_SUITES",
     _names_from(TLS_CIPHER_SUITES, "cipher suite"), ()),
    ("tls_curve_preferences", "QUEUE_PROXY_TLS_CURVE_PREFERENCES",
     _names_from(TLS_CURVES, "curve"), ()),
)
# fmt: on

# Ours, in both modes: (field, variable, parser, default). Local mode binds 127.0.0.1 by default.
OUR_VARIABLES: tuple[tuple[str, str, Parser, Any], ...] = (
    ("bind_address", "QUEUEPROXY_BIND_ADDRESS", parse_listen_address, ""),
    ("admin_port", "QUEUEPROXY_ADMIN_PORT", parse_port, 8022),
    ("metrics_port", "QUEUEPROXY_METRICS_PORT", parse_port, 9090),
    ("user_metrics_port", "QUEUEPROXY_USER_METRICS_PORT", parse_port, 9091),
    ("drain_quiet_period", "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS", parse_seconds, 30.0),
    ("certs_dir", "QUEUEPROXY_CERTS_DIR", str, DEFAULT_CERTS_DIR),
    ("cert_reload_seconds", "QUEUEPROXY_CERT_RELOAD_SECONDS", _float_within(0.01, math.inf), 60.0),
    (
        "read_header_timeout",
        "QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS",
        _float_within(0.01, math.inf),
        60.0,
    ),
    ("live", "QUEUEPROXY_LIVE", parse_bool, False),
    ("rejection_log_interval", "QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS", parse_seconds, 10.0),
)


def _v118_observability(environ: Mapping[str, str]) -> Observability:
    def env(name: str, parse: Parser, default: Any) -> Any:
        return _env(environ, name, parse, default)

    # Typed but unused by us: still validated, as the Go binary would refuse them.
    env("SERVING_REQUEST_METRICS_REPORTING_PERIOD_SECONDS", parse_int, 0)
    env("TRACING_CONFIG_DEBUG", parse_bool, False)
    return Observability(
        era="v1.18",
        request_metrics_protocol=env(
            "SERVING_REQUEST_METRICS_BACKEND", _mapped(_V118_METRICS_BACKENDS), "none"
        ),
        enable_request_log=env("SERVING_ENABLE_REQUEST_LOG", parse_bool, False),
        request_log_template=env("SERVING_REQUEST_LOG_TEMPLATE", str, "")
        or V118_REQUEST_LOG_TEMPLATE,
        enable_probe_request_log=env("SERVING_ENABLE_PROBE_REQUEST_LOG", parse_bool, False),
        profiling_enabled=env("ENABLE_PROFILING", parse_bool, False),
        tracing_protocol=env("TRACING_CONFIG_BACKEND", _mapped(_V118_TRACING_BACKENDS), "none"),
        tracing_endpoint=env("TRACING_CONFIG_ZIPKIN_ENDPOINT", str, ""),
        tracing_sample_rate=env("TRACING_CONFIG_SAMPLE_RATE", parse_sample_rate, 0.0),
    )


def _load_knative(environ: Mapping[str, str], labels: Mapping[str, str] | None = None) -> Config:
    values = {
        name.lower(): _env(environ, name, parse, default)
        for name, parse, default in KNATIVE_VARIABLES
    }
    values["readiness_probes"] = _parse(
        "SERVING_READINESS_PROBE",
        lambda text: parse_probes(text, values["user_port"]),
        environ.get("SERVING_READINESS_PROBE", ""),
    )
    for field, name, parse, default in TLS_VARIABLES + OUR_VARIABLES:
        values[field] = _env_nonempty(environ, name, parse, default)
    if values["tls_max_version"] and values["tls_max_version"] < values["tls_min_version"]:
        raise ConfigError(
            f"QUEUE_PROXY_TLS_MAX_VERSION: {_q(values['tls_max_version'])} is below "
            f"QUEUE_PROXY_TLS_MIN_VERSION {_q(values['tls_min_version'])}"
        )
    observability = _env_nonempty(environ, "OBSERVABILITY_CONFIG", parse_observability, None)
    values["observability"] = observability or _v118_observability(environ)
    _check_ports(values, labels or {})
    return Config(**values)


# The sidecar's own ports: (Config field, variable, what it is). Knative's API validation refuses
# its default ports as the user container's port (`pkg/apis/serving/k8s_validation.go`,
# `reservedPorts`); we check the ports actually configured, which local mode and our variables
# can move.
SIDECAR_PORTS: tuple[tuple[str, str, str], ...] = (
    ("queue_serving_port", "QUEUE_SERVING_PORT", "serving port"),
    ("queue_serving_tls_port", "QUEUE_SERVING_TLS_PORT", "TLS port"),
    ("admin_port", "QUEUEPROXY_ADMIN_PORT", "admin port"),
    ("metrics_port", "QUEUEPROXY_METRICS_PORT", "metrics port"),
    ("user_metrics_port", "QUEUEPROXY_USER_METRICS_PORT", "user metrics port"),
)


def _check_ports(values: Mapping[str, Any], labels: Mapping[str, str]) -> None:
    """USER_PORT must not be one of the sidecar's ports: the first request would loop back into
    the sidecar for ever. Nor may two of the sidecar's own ports be the same. `labels` renames
    variables in the message (local mode names its flags)."""

    def label(name: str) -> str:
        return labels.get(name, name)

    seen: dict[int, str] = {}
    for field, name, what in SIDECAR_PORTS:
        port = values[field]
        if port == values["user_port"]:
            raise ConfigError(
                f"{label('USER_PORT')}: {port} is also the sidecar's {what} ({label(name)}); "
                "requests to the app would loop back into the sidecar"
            )
        if port in seen:
            raise ConfigError(f"{label(name)}: {port} is also {label(seen[port])}")
        seen[port] = name


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """The whole configuration: the Knative environment if `argv` is empty, else local mode."""
    if argv:
        # Local mode's flags and help (with argparse) load only for local mode.
        from queueproxy.localflags import LOCAL_FLAGS, local_environ

        env = local_environ(argv, environ)
        flags = {name: flag for flag, name, *_ in LOCAL_FLAGS}
        return dataclasses.replace(_load_knative(env, flags), local=True)
    return _load_knative(environ)
