"""queueproxy.config: Knative environment (§2), probes (§7.2), eras (§10), local mode."""

from __future__ import annotations

import dataclasses
import json

import pytest

from queueproxy.config import (
    DEFAULT_REQUEST_LOG_TEMPLATE,
    V118_REQUEST_LOG_TEMPLATE,
    Config,
    ConfigError,
    Observability,
    ProbeSpec,
    load,
)
from tests.contract import HEAD_TEMPLATE, V118_TEMPLATE

# What the reconciler sets (queue_test.go `defaultEnv`, plus the downward-API variables).
KNATIVE_ENV = {
    "CONTAINER_CONCURRENCY": "0",
    "ENABLE_HTTP2_AUTO_DETECTION": "false",
    "ENABLE_HTTP_FULL_DUPLEX": "false",
    "QUEUE_SERVING_PORT": "8012",
    "QUEUE_SERVING_TLS_PORT": "8112",
    "REVISION_TIMEOUT_SECONDS": "45",
    "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0",
    "REVISION_IDLE_TIMEOUT_SECONDS": "0",
    "SERVING_CONFIGURATION": "",
    "SERVING_LOGGING_CONFIG": "",
    "SERVING_LOGGING_LEVEL": "",
    "SERVING_NAMESPACE": "foo",
    "SERVING_REVISION": "bar",
    "SERVING_SERVICE": "",
    "SERVING_POD": "bar-deployment-7c9d-x2x9z",
    "SERVING_POD_IP": "10.244.1.17",
    "HOST_IP": "172.18.0.3",
    "SYSTEM_NAMESPACE": "knative-serving",
    "USER_PORT": "8080",
    "ROOT_CA": "",
    "QUEUE_PROXY_TLS_MIN_VERSION": "",
    "QUEUE_PROXY_TLS_MAX_VERSION": "",
    "QUEUE_PROXY_TLS_CIPHER_SUITES": "",
    "QUEUE_PROXY_TLS_CURVE_PREFERENCES": "",
    "ENABLE_MULTI_CONTAINER_PROBES": "false",
    "SERVING_READINESS_PROBE": (
        '{"tcpSocket":{"port":8080,"host":"127.0.0.1"},"successThreshold":1}'
    ),
    "OBSERVABILITY_CONFIG": '{"tracing":{},"metrics":{},"runtime":{},"requestMetrics":{}}',
}

V119_DEFAULTS = Observability(
    era="v1.19",
    request_metrics_protocol="none",
    enable_request_log=False,
    request_log_template=DEFAULT_REQUEST_LOG_TEMPLATE,
    enable_probe_request_log=False,
    profiling_enabled=False,
    tracing_protocol="none",
    tracing_endpoint="",
    tracing_sample_rate=0.0,
)

EXPECTED = Config(
    serving_namespace="foo",
    serving_service="",
    serving_configuration="",
    serving_revision="bar",
    queue_serving_port=8012,
    queue_serving_tls_port=8112,
    container_concurrency=0,
    revision_timeout_seconds=45,
    revision_response_start_timeout_seconds=0,
    revision_idle_timeout_seconds=0,
    serving_pod="bar-deployment-7c9d-x2x9z",
    serving_pod_ip="10.244.1.17",
    serving_logging_config="",
    serving_logging_level="info",
    user_port=8080,
    system_namespace="knative-serving",
    readiness_probes=(ProbeSpec("tcp", "127.0.0.1", 8080),),
    enable_http2_auto_detection=False,
    enable_http_full_duplex=False,
    enable_multi_container_probes=False,
    tls_min_version="1.3",
    tls_max_version="",
    tls_cipher_suites=(),
    tls_curve_preferences=(),
    observability=V119_DEFAULTS,
    bind_address="",
    admin_port=8022,
    metrics_port=9090,
    user_metrics_port=9091,
    drain_quiet_period=30.0,
    certs_dir="/var/lib/knative/certs",
    cert_reload_seconds=60.0,
    read_header_timeout=60.0,
)


def knative(**changes: str | None) -> Config:
    """Load KNATIVE_ENV with some variables changed (None removes one)."""
    env = dict(KNATIVE_ENV)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return load([], env)


def error_of(**changes: str | None) -> str:
    with pytest.raises(ConfigError) as raised:
        knative(**changes)
    return str(raised.value)


# --- The Knative environment ---------------------------------------------------------------


def test_reconciler_environment_parses_to_the_expected_config() -> None:
    assert knative() == EXPECTED


def test_config_is_frozen_and_uses_tuples() -> None:
    config = knative(
        QUEUE_PROXY_TLS_CIPHER_SUITES="TLS_AES_128_GCM_SHA256",
        SERVING_READINESS_PROBE='[{"tcpSocket":{}}]',
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.user_port = 1  # type: ignore[misc]
    # The parts inside are immutable too.
    with pytest.raises(AttributeError):
        config.readiness_probes[0].port = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        config.observability.enable_request_log = True  # type: ignore[misc]
    assert isinstance(config.readiness_probes, tuple)
    assert isinstance(config.tls_cipher_suites, tuple)


def test_unknown_variables_are_ignored() -> None:
    assert knative(SOME_OTHER_THING="x", K_SERVICE="hello", ROOT_CA="pem") == EXPECTED


REQUIRED = [
    "SERVING_NAMESPACE",
    "SERVING_CONFIGURATION",
    "SERVING_REVISION",
    "QUEUE_SERVING_PORT",
    "QUEUE_SERVING_TLS_PORT",
    "CONTAINER_CONCURRENCY",
    "REVISION_TIMEOUT_SECONDS",
    "SERVING_POD",
    "SERVING_POD_IP",
    "SERVING_LOGGING_CONFIG",
    "SERVING_LOGGING_LEVEL",
    "USER_PORT",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_variable_missing_is_an_error_naming_it(name: str) -> None:
    message = error_of(**{name: None})
    assert message.startswith(f"{name}:")
    assert "not set" in message


@pytest.mark.parametrize(
    "name",
    [
        "SERVING_SERVICE",
        "SYSTEM_NAMESPACE",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
        "REVISION_IDLE_TIMEOUT_SECONDS",
        "ENABLE_HTTP2_AUTO_DETECTION",
        "ENABLE_HTTP_FULL_DUPLEX",
        "ENABLE_MULTI_CONTAINER_PROBES",
        "SERVING_READINESS_PROBE",
        "OBSERVABILITY_CONFIG",
        "QUEUE_PROXY_TLS_MIN_VERSION",
    ],
)
def test_optional_variables_may_be_absent(name: str) -> None:
    knative(**{name: None})


def test_required_strings_may_be_empty() -> None:
    config = knative(SERVING_CONFIGURATION="", SERVING_LOGGING_CONFIG="", SERVING_LOGGING_LEVEL="")
    assert (config.serving_configuration, config.serving_logging_config) == ("", "")
    assert config.serving_logging_level == "info"


def test_values_are_read() -> None:
    config = knative(
        CONTAINER_CONCURRENCY="10",
        REVISION_TIMEOUT_SECONDS="600",
        REVISION_RESPONSE_START_TIMEOUT_SECONDS="30",
        REVISION_IDLE_TIMEOUT_SECONDS="20",
        SERVING_SERVICE="hello",
        SERVING_CONFIGURATION="hello",
        SERVING_LOGGING_LEVEL="DEBUG",
        SERVING_LOGGING_CONFIG='{"level":"info"}',
        QUEUE_SERVING_PORT="8013",
        ENABLE_HTTP2_AUTO_DETECTION="true",
        ENABLE_HTTP_FULL_DUPLEX="T",
        ENABLE_MULTI_CONTAINER_PROBES="1",
    )
    assert config.container_concurrency == 10
    assert config.revision_timeout_seconds == 600
    assert config.revision_response_start_timeout_seconds == 30
    assert config.revision_idle_timeout_seconds == 20
    assert (config.serving_service, config.serving_configuration) == ("hello", "hello")
    assert config.serving_logging_level == "debug"
    assert config.serving_logging_config == '{"level":"info"}'
    assert config.queue_serving_port == 8013
    assert config.enable_http2_auto_detection
    assert config.enable_http_full_duplex
    assert config.enable_multi_container_probes


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("t", True), ("T", True), ("TRUE", True), ("true", True), ("True", True),
     ("0", False), ("f", False), ("F", False), ("FALSE", False), ("false", False),
     ("False", False)],
)  # fmt: skip
def test_booleans_parse_like_go_strconv(text: str, value: bool) -> None:
    assert knative(ENABLE_HTTP_FULL_DUPLEX=text).enable_http_full_duplex is value


@pytest.mark.parametrize(
    ("text", "value"),
    [("17", 17), ("+17", 17), ("0x11", 17), ("021", 17), ("0o21", 17), ("0b10001", 17),
     ("1_7", 17), ("0", 0)],
)  # fmt: skip
def test_integers_parse_like_go_strconv_base_0(text: str, value: int) -> None:
    assert knative(CONTAINER_CONCURRENCY=text).container_concurrency == value


@pytest.mark.parametrize(
    ("name", "bad", "reason"),
    [
        ("CONTAINER_CONCURRENCY", "ten", "invalid integer"),
        ("CONTAINER_CONCURRENCY", "", "invalid integer"),
        ("CONTAINER_CONCURRENCY", " 1", "invalid integer"),
        ("CONTAINER_CONCURRENCY", "1.5", "invalid integer"),
        ("CONTAINER_CONCURRENCY", "09", "invalid integer"),
        ("CONTAINER_CONCURRENCY", "1__0", "invalid integer"),
        ("CONTAINER_CONCURRENCY", "-1", ">= 0"),
        ("CONTAINER_CONCURRENCY", "9223372036854775808", "out of range"),
        ("REVISION_TIMEOUT_SECONDS", "0", ">= 1"),
        ("REVISION_TIMEOUT_SECONDS", "5m", "invalid integer"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "-5", ">= 0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "x", "invalid integer"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "", "invalid integer"),
        ("QUEUE_SERVING_PORT", "0", "invalid port"),
        ("QUEUE_SERVING_PORT", "65536", "invalid port"),
        ("QUEUE_SERVING_PORT", "http", "invalid port"),
        ("QUEUE_SERVING_TLS_PORT", "-8112", "invalid port"),
        ("USER_PORT", "", "invalid port"),
        ("ENABLE_HTTP2_AUTO_DETECTION", "yes", "invalid boolean"),
        ("ENABLE_HTTP_FULL_DUPLEX", "", "invalid boolean"),
        ("ENABLE_MULTI_CONTAINER_PROBES", "tRuE", "invalid boolean"),
        ("SERVING_LOGGING_LEVEL", "verbose", "unknown log level"),
        ("SERVING_READINESS_PROBE", "{bad", "invalid JSON"),
        ("OBSERVABILITY_CONFIG", "{bad", "invalid JSON"),
        ("QUEUE_PROXY_TLS_MIN_VERSION", "1.1", "unsupported TLS version"),
        ("QUEUE_PROXY_TLS_MAX_VERSION", "TLS1.3", "unsupported TLS version"),
        ("QUEUE_PROXY_TLS_CIPHER_SUITES", "TLS_RSA_WITH_RC4_128_SHA", "unknown cipher suite"),
        ("QUEUE_PROXY_TLS_CURVE_PREFERENCES", "X448", "unknown curve"),
        ("QUEUEPROXY_ADMIN_PORT", "99999", "invalid port"),
        ("QUEUEPROXY_METRICS_PORT", "abc", "invalid port"),
        ("QUEUEPROXY_USER_METRICS_PORT", "0", "invalid port"),
        ("QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS", "-1", ">= 0"),
        ("QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS", "soon", "invalid number"),
        ("QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS", "inf", ">= 0"),
        ("QUEUEPROXY_BIND_ADDRESS", "[::1]", "without brackets"),
        ("QUEUEPROXY_BIND_ADDRESS", "127.0.0.1:8012", "invalid listen address"),
        ("QUEUEPROXY_BIND_ADDRESS", "garbage!!", "invalid listen address"),
        ("QUEUEPROXY_BIND_ADDRESS", " 127.0.0.1", "invalid listen address"),
        ("QUEUEPROXY_BIND_ADDRESS", "fe80::1%", "invalid listen address"),
        ("QUEUEPROXY_BIND_ADDRESS", "-host", "invalid listen address"),
        ("QUEUEPROXY_BIND_ADDRESS", "a" * 64 + ".example", "invalid listen address"),
    ],
)
def test_bad_values_name_the_variable_and_show_the_value(name: str, bad: str, reason: str) -> None:
    message = error_of(**{name: bad})
    assert message.startswith(f"{name}:")
    assert json.dumps(bad) in message
    assert reason in message


@pytest.mark.parametrize(
    "address", ["", "127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1%lo", "localhost", "pod.local."]
)
def test_listen_addresses_that_parse(address: str) -> None:
    assert knative(QUEUEPROXY_BIND_ADDRESS=address).bind_address == address


def test_message_example_from_the_brief() -> None:
    assert error_of(CONTAINER_CONCURRENCY="ten") == 'CONTAINER_CONCURRENCY: invalid integer "ten"'


def test_tls_settings() -> None:
    config = knative(
        QUEUE_PROXY_TLS_MIN_VERSION="1.2",
        QUEUE_PROXY_TLS_MAX_VERSION="1.3",
        QUEUE_PROXY_TLS_CIPHER_SUITES=(
            " TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,,TLS_AES_256_GCM_SHA384"
        ),
        QUEUE_PROXY_TLS_CURVE_PREFERENCES="X25519,P-256",
    )
    assert (config.tls_min_version, config.tls_max_version) == ("1.2", "1.3")
    assert config.tls_cipher_suites == (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
    )
    assert config.tls_curve_preferences == ("X25519", "P-256")


def test_tls_max_below_min_is_an_error() -> None:
    message = error_of(QUEUE_PROXY_TLS_MAX_VERSION="1.2")
    assert "QUEUE_PROXY_TLS_MAX_VERSION" in message and '"1.2"' in message


# --- Our QUEUEPROXY_* additions ----------------------------------------------------------------


def test_our_variables_override_defaults() -> None:
    config = knative(
        QUEUEPROXY_BIND_ADDRESS="127.0.0.1",
        QUEUEPROXY_ADMIN_PORT="18022",
        QUEUEPROXY_METRICS_PORT="19090",
        QUEUEPROXY_USER_METRICS_PORT="19091",
        QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="0.5",
        QUEUEPROXY_CERTS_DIR="/tmp/certs",
    )
    assert config.bind_address == "127.0.0.1"
    assert (config.admin_port, config.metrics_port, config.user_metrics_port) == (
        18022,
        19090,
        19091,
    )
    assert config.drain_quiet_period == 0.5
    assert config.certs_dir == "/tmp/certs"


def test_certificate_reload_interval_is_ours_and_positive() -> None:
    assert knative(QUEUEPROXY_CERT_RELOAD_SECONDS="0.2").cert_reload_seconds == 0.2
    with pytest.raises(ConfigError, match='QUEUEPROXY_CERT_RELOAD_SECONDS.*"0"'):
        knative(QUEUEPROXY_CERT_RELOAD_SECONDS="0")


def test_empty_our_variables_mean_default() -> None:
    assert knative(QUEUEPROXY_ADMIN_PORT="", QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="") == EXPECTED


# --- Readiness probes (§7.2) ---------------------------------------------------------------


def probes(text: str, **changes: str) -> tuple[ProbeSpec, ...]:
    return knative(SERVING_READINESS_PROBE=text, **changes).readiness_probes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("[]", ()),
        ('{"tcpSocket":{}}', (ProbeSpec("tcp", "127.0.0.1", 8080),)),
        ('{"tcpSocket":{"port":9000,"host":"10.0.0.1"}}', (ProbeSpec("tcp", "10.0.0.1", 9000),)),
        ('{"tcpSocket":{"port":"9000"}}', (ProbeSpec("tcp", "127.0.0.1", 9000),)),
        ('{"tcpSocket":{"port":0}}', (ProbeSpec("tcp", "127.0.0.1", 8080),)),
        (
            '{"httpGet":{"path":"/","port":8080,"host":"127.0.0.1","scheme":"HTTP"},'
            '"timeoutSeconds":10,"periodSeconds":1}',
            (ProbeSpec("http", "127.0.0.1", 8080, period_seconds=1, timeout_seconds=10),),
        ),
        (
            '{"httpGet":{"path":"healthz","port":8081,"scheme":"HTTPS","httpHeaders":'
            '[{"name":"X-A","value":"1"},{"name":"Host","value":"example.com"}]}}',
            (
                ProbeSpec(
                    "http",
                    "127.0.0.1",
                    8081,
                    path="/healthz",
                    scheme="HTTPS",
                    headers=(("X-A", "1"), ("Host", "example.com")),
                ),
            ),
        ),
        ('{"httpGet":{}}', (ProbeSpec("http", "127.0.0.1", 8080),)),
        (
            '{"exec":{"command":["true"]},"periodSeconds":5}',
            (ProbeSpec("tcp", "127.0.0.1", 8080, period_seconds=5, timeout_seconds=1),),
        ),
        (
            '{"grpc":{"port":50051,"service":"health"},"successThreshold":2,"failureThreshold":5}',
            (
                ProbeSpec(
                    "grpc",
                    "127.0.0.1",
                    50051,
                    grpc_service="health",
                    success_threshold=2,
                    failure_threshold=5,
                ),
            ),
        ),
        ('{"grpc":{}}', (ProbeSpec("grpc", "127.0.0.1", 8080),)),
        (
            '[{"tcpSocket":{"port":8080}},{"httpGet":{"port":9091,"path":"/ready"}},'
            '{"exec":{"command":["x"]}}]',
            (
                ProbeSpec("tcp", "127.0.0.1", 8080),
                ProbeSpec("http", "127.0.0.1", 9091, path="/ready"),
                ProbeSpec("tcp", "127.0.0.1", 8080),
            ),
        ),
    ],
)
def test_probe_variants(text: str, expected: tuple[ProbeSpec, ...]) -> None:
    assert probes(text) == expected


def test_probe_defaults_follow_user_port() -> None:
    assert probes('{"tcpSocket":{}}', USER_PORT="3000") == (ProbeSpec("tcp", "127.0.0.1", 3000),)


@pytest.mark.parametrize(
    ("period", "timeout", "expected_timeout"),
    [(0, 0, 0), (1, 0, 1), (10, 0, 1), (1, 5, 5), (0, 5, 5)],
)
def test_period_seconds_forces_a_timeout_of_at_least_one(
    period: int, timeout: int, expected_timeout: int
) -> None:
    text = json.dumps({"tcpSocket": {}, "periodSeconds": period, "timeoutSeconds": timeout})
    (probe,) = probes(text)
    assert (probe.period_seconds, probe.timeout_seconds) == (period, expected_timeout)


def test_probe_thresholds_default_to_kubernetes_values() -> None:
    (probe,) = probes('{"tcpSocket":{},"successThreshold":0}')
    assert (probe.success_threshold, probe.failure_threshold) == (1, 3)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("{bad", "{bad"),
        ('{"tcpSocket":{"port":"http"}}', '"http"'),
        ('{"httpGet":{"port":"h2c"}}', '"h2c"'),
        ('{"tcpSocket":{"port":70000}}', '"70000"'),
        ('{"tcpSocket":{"port":-1}}', '"-1"'),
        ('{"tcpSocket":{"port":true}}', "true"),
        ('{"tcpSocket":{"port":8080.5}}', "8080.5"),
        ('{"periodSeconds":1}', '"periodSeconds": 1'),
        ('{"tcpSocket":{},"httpGet":{}}', '"httpGet"'),
        ('{"foo":{}}', '"foo"'),
        ('{"httpGet":{"scheme":"FTP"}}', '"FTP"'),
        ('{"tcpSocket":{},"periodSeconds":"1"}', '"1"'),
        ('{"tcpSocket":{},"timeoutSeconds":1.5}', "1.5"),
        ('{"tcpSocket":{},"periodSeconds":-1}', '"periodSeconds": -1'),
        ('{"tcpSocket":{},"successThreshold":true}', "true"),
        ('{"httpGet":{"httpHeaders":[1]}}', "1"),
        ('{"httpGet":{"httpHeaders":[{"name":5}]}}', "5"),
        ('{"tcpSocket":[]}', "[]"),
        ("42", "42"),
        ("[null]", "null"),
    ],
)
def test_bad_probes_name_the_variable_and_show_the_value(text: str, shown: str) -> None:
    message = error_of(SERVING_READINESS_PROBE=text)
    assert message.startswith("SERVING_READINESS_PROBE:")
    assert shown in message


# --- Observability eras (§2.1, §2.2, §10) ----------------------------------------------------

V118_ENV = {name: value for name, value in KNATIVE_ENV.items() if name != "OBSERVABILITY_CONFIG"}


def v118(**changes: str) -> Observability:
    return load([], {**V118_ENV, **changes}).observability


def v119(doc: dict) -> Observability:
    return knative(OBSERVABILITY_CONFIG=json.dumps(doc)).observability


def test_default_templates_are_the_contract_templates() -> None:
    assert DEFAULT_REQUEST_LOG_TEMPLATE == HEAD_TEMPLATE
    assert V118_REQUEST_LOG_TEMPLATE == V118_TEMPLATE


def test_v119_full_document() -> None:
    doc = {
        "tracing": {"protocol": "grpc", "endpoint": "otel:4317", "samplingRate": 0.25},
        "metrics": {"protocol": "prometheus"},
        "runtime": {"profiling": "enabled", "exportInterval": 15000000000},
        "requestMetrics": {"protocol": "http/protobuf", "endpoint": "otel:4318"},
        "enableRequestLog": True,
        "requestLogTemplate": "{{.Request.Method}}",
        "enableProbeRequestLog": True,
    }
    assert v119(doc) == Observability(
        era="v1.19",
        request_metrics_protocol="http/protobuf",
        enable_request_log=True,
        request_log_template="{{.Request.Method}}",
        enable_probe_request_log=True,
        profiling_enabled=True,
        tracing_protocol="grpc",
        tracing_endpoint="otel:4317",
        tracing_sample_rate=0.25,
    )


@pytest.mark.parametrize(
    "doc",
    [{}, {"requestLogTemplate": ""}, {"requestMetrics": None}, {"runtime": {"profiling": ""}}],
)
def test_v119_omitted_fields_keep_defaults(doc: dict) -> None:
    assert v119(doc) == V119_DEFAULTS


def test_v119_request_log_with_default_template() -> None:
    observability = v119({"enableRequestLog": True, "requestMetrics": {"protocol": "prometheus"}})
    assert observability.enable_request_log
    assert observability.request_log_template == DEFAULT_REQUEST_LOG_TEMPLATE
    assert observability.request_metrics_protocol == "prometheus"


@pytest.mark.parametrize(
    ("doc", "shown"),
    [
        ({"requestMetrics": {"protocol": "opencensus"}}, '"opencensus"'),
        ({"tracing": {"protocol": "zipkin"}}, '"zipkin"'),
        ({"tracing": {"samplingRate": 2}}, "2"),
        ({"tracing": {"samplingRate": "0.5"}}, '"0.5"'),
        ({"runtime": {"profiling": "on"}}, '"on"'),
        ({"enableRequestLog": "true"}, '"true"'),
        ({"requestLogTemplate": 5}, "5"),
        ({"requestMetrics": []}, "[]"),
    ],
)
def test_v119_bad_values(doc: dict, shown: str) -> None:
    message = error_of(OBSERVABILITY_CONFIG=json.dumps(doc))
    assert message.startswith("OBSERVABILITY_CONFIG:")
    assert shown in message


def test_v119_not_an_object() -> None:
    assert '"[1]"' in error_of(OBSERVABILITY_CONFIG="[1]")


def test_empty_observability_config_means_v118() -> None:
    assert knative(OBSERVABILITY_CONFIG="").observability.era == "v1.18"


def test_v118_defaults() -> None:
    assert v118() == Observability(
        era="v1.18",
        request_metrics_protocol="none",
        enable_request_log=False,
        request_log_template=V118_REQUEST_LOG_TEMPLATE,
        enable_probe_request_log=False,
        profiling_enabled=False,
        tracing_protocol="none",
        tracing_endpoint="",
        tracing_sample_rate=0.0,
    )


def test_v118_reconciler_variables() -> None:
    observability = v118(
        SERVING_REQUEST_LOG_TEMPLATE="{{.Response.Code}}",
        SERVING_ENABLE_REQUEST_LOG="true",
        SERVING_ENABLE_PROBE_REQUEST_LOG="true",
        SERVING_REQUEST_METRICS_BACKEND="prometheus",
        SERVING_REQUEST_METRICS_REPORTING_PERIOD_SECONDS="5",
        METRICS_COLLECTOR_ADDRESS="",
        METRICS_DOMAIN="knative.dev/internal/serving",
        TRACING_CONFIG_BACKEND="zipkin",
        TRACING_CONFIG_ZIPKIN_ENDPOINT="http://zipkin:9411/api/v2/spans",
        TRACING_CONFIG_DEBUG="false",
        TRACING_CONFIG_SAMPLE_RATE="0.1",
        ENABLE_PROFILING="true",
    )
    assert observability == Observability(
        era="v1.18",
        request_metrics_protocol="prometheus",
        enable_request_log=True,
        request_log_template="{{.Response.Code}}",
        enable_probe_request_log=True,
        profiling_enabled=True,
        tracing_protocol="zipkin",
        tracing_endpoint="http://zipkin:9411/api/v2/spans",
        tracing_sample_rate=0.1,
    )


@pytest.mark.parametrize(
    ("backend", "protocol"), [("prometheus", "prometheus"), ("opencensus", "grpc"), ("", "none"),
                              ("none", "none")]
)  # fmt: skip
def test_v118_metrics_backends(backend: str, protocol: str) -> None:
    assert v118(SERVING_REQUEST_METRICS_BACKEND=backend).request_metrics_protocol == protocol


def test_v118_empty_template_means_v118_default() -> None:
    observability = v118(SERVING_REQUEST_LOG_TEMPLATE="", SERVING_ENABLE_REQUEST_LOG="true")
    assert observability.request_log_template == V118_REQUEST_LOG_TEMPLATE


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("SERVING_ENABLE_REQUEST_LOG", "yes"),
        ("SERVING_ENABLE_PROBE_REQUEST_LOG", "on"),
        ("ENABLE_PROFILING", "enabled"),
        ("TRACING_CONFIG_DEBUG", "no"),
        ("TRACING_CONFIG_SAMPLE_RATE", "often"),
        ("TRACING_CONFIG_SAMPLE_RATE", "1.5"),
        ("TRACING_CONFIG_SAMPLE_RATE", "nan"),
        ("SERVING_REQUEST_METRICS_REPORTING_PERIOD_SECONDS", "5s"),
        ("SERVING_REQUEST_METRICS_BACKEND", "stackdriver"),
        ("TRACING_CONFIG_BACKEND", "jaeger"),
    ],
)
def test_v118_bad_values(name: str, bad: str) -> None:
    with pytest.raises(ConfigError) as raised:
        v118(**{name: bad})
    assert str(raised.value).startswith(f"{name}:")
    assert json.dumps(bad) in str(raised.value)


def test_v118_variables_are_ignored_in_the_v119_era() -> None:
    assert knative(SERVING_ENABLE_REQUEST_LOG="yes", ENABLE_PROFILING="true") == EXPECTED


# --- Local mode --------------------------------------------------------------------------------

LOCAL_DEFAULTS = dataclasses.replace(
    EXPECTED,
    serving_namespace="default",
    serving_revision="local",
    serving_pod="local",
    serving_pod_ip="127.0.0.1",
    revision_timeout_seconds=300,
    system_namespace="",
    bind_address="127.0.0.1",
    observability=V119_DEFAULTS._replace(request_metrics_protocol="prometheus"),
    drain_quiet_period=1.0,  # local mode's own: Ctrl-C stops after a second without requests
    live=True,  # the live page: opt-in in a pod, on by default on 127.0.0.1
    local=True,
)


def test_live_page_is_opt_in_in_a_pod_and_default_in_local_mode() -> None:
    assert knative().live is False
    assert knative(QUEUEPROXY_LIVE="1").live is True
    assert knative(QUEUEPROXY_LIVE="false").live is False
    assert load(["--local"], {"QUEUEPROXY_LIVE": "0"}).live is False
    assert "QUEUEPROXY_LIVE" in error_of(QUEUEPROXY_LIVE="yes")


def test_rejection_log_interval() -> None:
    assert knative().rejection_log_interval == 10.0
    assert knative(QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS="0").rejection_log_interval == 0.0
    assert "QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS" in error_of(
        QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS="-1"
    )


def test_local_mode_defaults_need_no_environment() -> None:
    assert load(["--local"], {}) == LOCAL_DEFAULTS


def test_local_mode_ignores_knative_variables() -> None:
    assert load(["--local"], KNATIVE_ENV) == LOCAL_DEFAULTS


def test_local_mode_flags() -> None:
    config = load(
        [
            "--port=9012",
            "--upstream-port=9080",
            "--concurrency=4",
            "--timeout=60",
            "--response-start-timeout=5",
            "--idle-timeout=7",
            "--bind=0.0.0.0",
            "--admin-port=9022",
            "--metrics-port=9190",
            "--user-metrics-port=9191",
            "--drain-quiet-period=1.5",
            "--readiness-probe",
            '{"httpGet":{"path":"ready"}}',
            "--user-metrics=none",
            "--request-log",
            "--log-level=warn",
            "--pod=p",
            "--revision=r",
            "--namespace=n",
            "--service=s",
            "--configuration=c",
        ],
        {},
    )
    assert config == dataclasses.replace(
        LOCAL_DEFAULTS,
        queue_serving_port=9012,
        user_port=9080,
        container_concurrency=4,
        revision_timeout_seconds=60,
        revision_response_start_timeout_seconds=5,
        revision_idle_timeout_seconds=7,
        bind_address="0.0.0.0",
        admin_port=9022,
        metrics_port=9190,
        user_metrics_port=9191,
        drain_quiet_period=1.5,
        readiness_probes=(ProbeSpec("http", "127.0.0.1", 9080, path="/ready"),),
        observability=V119_DEFAULTS._replace(enable_request_log=True),
        serving_logging_level="warn",
        serving_pod="p",
        serving_revision="r",
        serving_namespace="n",
        serving_service="s",
        serving_configuration="c",
    )


def test_local_default_probe_follows_upstream_port() -> None:
    config = load(["--upstream-port", "3000"], {})
    assert config.readiness_probes == (ProbeSpec("tcp", "127.0.0.1", 3000),)


def test_local_empty_probe_means_always_ready() -> None:
    assert load(["--readiness-probe", ""], {}).readiness_probes == ()


def test_local_bind_all_interfaces() -> None:
    assert load(["--bind", ""], {}).bind_address == ""


def test_local_empty_our_variable_means_local_default() -> None:
    assert load(["--local"], {"QUEUEPROXY_BIND_ADDRESS": ""}).bind_address == "127.0.0.1"


def test_local_v118_user_metrics() -> None:
    observability = load(["--user-metrics", "v1.18", "--request-log"], {}).observability
    assert observability.era == "v1.18"
    assert observability.request_metrics_protocol == "prometheus"
    assert observability.enable_request_log
    assert observability.request_log_template == V118_REQUEST_LOG_TEMPLATE


OURS_ENV = {
    "QUEUEPROXY_BIND_ADDRESS": "::1",
    "QUEUEPROXY_ADMIN_PORT": "18022",
    "QUEUEPROXY_METRICS_PORT": "19090",
    "QUEUEPROXY_USER_METRICS_PORT": "19091",
    "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS": "2",
    "QUEUEPROXY_CERTS_DIR": "/certs",
}


def test_local_mode_reads_our_variables() -> None:
    config = load(["--local"], OURS_ENV)
    assert (config.bind_address, config.admin_port, config.metrics_port) == ("::1", 18022, 19090)
    assert (config.user_metrics_port, config.drain_quiet_period) == (19091, 2.0)
    assert config.certs_dir == "/certs"


def test_local_flags_win_over_our_variables() -> None:
    broken = {**OURS_ENV, "QUEUEPROXY_ADMIN_PORT": "not-a-port"}
    config = load(["--admin-port", "7022", "--bind", "127.0.0.2", "--drain-quiet-period=0"], broken)
    assert (config.admin_port, config.bind_address, config.drain_quiet_period) == (
        7022,
        "127.0.0.2",
        0.0,
    )
    assert config.metrics_port == 19090


def test_local_mode_bad_variable_is_still_reported() -> None:
    with pytest.raises(ConfigError, match='QUEUEPROXY_METRICS_PORT: invalid port "x"'):
        load(["--local"], {"QUEUEPROXY_METRICS_PORT": "x"})


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--port", "0"], ("--port", '"0"')),
        (["--port", "http"], ("--port", '"http"')),
        (["--concurrency", "-1"], ("--concurrency", '"-1"')),
        (["--timeout", "0"], ("--timeout", '"0"')),
        (["--drain-quiet-period", "-2"], ("--drain-quiet-period", '"-2"')),
        (["--log-level", "loud"], ("--log-level", '"loud"')),
        (["--readiness-probe", "{"], ("--readiness-probe", '"{"')),
        (["--readiness-probe", '{"tcpSocket":{"port":"http"}}'], ("--readiness-probe", '"http"')),
        (["--user-metrics", "statsd"], ("--user-metrics", "statsd")),
        (["--no-such-flag"], ("--no-such-flag",)),
        (["positional"], ("positional",)),
        (["--port"], ("--port",)),
    ],
)
def test_local_mode_bad_flags_are_config_errors(argv: list[str], shown: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as raised:
        load(argv, {})
    for text in shown:
        assert text in str(raised.value)


def test_help_documents_flags_and_the_knative_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as raised:
        load(["--help"], {})
    assert raised.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--port", "--upstream-port", "--concurrency", "--readiness-probe", "--local",
                 "--user-metrics", "--request-log", "--drain-quiet-period", "--bind"):  # fmt: skip
        assert flag in text
    assert "Without arguments" in text
    for name in REQUIRED + ["OBSERVABILITY_CONFIG", "QUEUEPROXY_ADMIN_PORT"]:
        assert name in text


def test_read_header_timeout_is_ours_and_positive() -> None:
    assert knative().read_header_timeout == 60.0
    assert knative(QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS="1.5").read_header_timeout == 1.5
    with pytest.raises(ConfigError, match='QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS.*"0"'):
        knative(QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS="0")


# --- The app's port must not be one of the sidecar's -----------------------------------------


@pytest.mark.parametrize(
    ("variable", "what"),
    [
        ("QUEUE_SERVING_PORT", "serving port"),
        ("QUEUE_SERVING_TLS_PORT", "TLS port"),
        ("QUEUEPROXY_ADMIN_PORT", "admin port"),
        ("QUEUEPROXY_METRICS_PORT", "metrics port"),
        ("QUEUEPROXY_USER_METRICS_PORT", "user metrics port"),
    ],
)
def test_user_port_on_a_sidecar_port_is_refused(variable: str, what: str) -> None:
    with pytest.raises(ConfigError) as error:
        knative(**{variable: "7000", "USER_PORT": "7000"})
    assert str(error.value) == (
        f"USER_PORT: 7000 is also the sidecar's {what} ({variable}); "
        "requests to the app would loop back into the sidecar"
    )


def test_user_port_on_knatives_default_ports_is_refused() -> None:
    for port in ("8012", "8112", "8022", "9090", "9091"):
        with pytest.raises(ConfigError, match=f"^USER_PORT: {port} is also the sidecar's"):
            knative(USER_PORT=port)


def test_two_sidecar_ports_may_not_be_the_same() -> None:
    with pytest.raises(
        ConfigError, match="^QUEUEPROXY_METRICS_PORT: 8022 is also QUEUEPROXY_ADMIN"
    ):
        knative(QUEUEPROXY_METRICS_PORT="8022")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--upstream-port", "8012"],
            "--upstream-port: 8012 is also the sidecar's serving port (--port)",
        ),
        (
            ["--upstream-port=9000", "--admin-port=9000"],
            "--upstream-port: 9000 is also the sidecar's admin port (--admin-port)",
        ),
        (
            ["--upstream-port", "9091"],
            "--upstream-port: 9091 is also the sidecar's user metrics port",
        ),
        (
            ["--upstream-port", "8112"],
            "--upstream-port: 8112 is also the sidecar's TLS port (QUEUE_SERVING_TLS_PORT)",
        ),
        (["--port=9000", "--metrics-port=9000"], "--metrics-port: 9000 is also --port"),
    ],
)
def test_local_mode_names_the_clashing_flags(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(argv, {})
    assert str(error.value).startswith(message)


def test_local_mode_clash_with_a_port_from_our_variable() -> None:
    with pytest.raises(ConfigError, match="admin port"):
        load(["--upstream-port", "7001"], {"QUEUEPROXY_ADMIN_PORT": "7001"})


def test_pod_mode_keeps_knatives_quiet_period_and_is_not_local() -> None:
    config = load([], KNATIVE_ENV)
    assert (config.drain_quiet_period, config.local) == (30.0, False)
