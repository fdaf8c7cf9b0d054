"""Local mode: `queueproxy --local [flags]` runs without a Knative environment. Each flag
stands for the variable Knative's reconciler would set (`LOCAL_FLAGS`); `local_environ` turns
the flags into that environment, which `config.load` then parses as in a pod.

Loaded by `config.load` only when there are arguments: argparse and textwrap (with gettext) and
the wrapped help text cost ~2 ms of every pod's start.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from queueproxy.config import (
    LOCALHOST,
    OUR_VARIABLES,
    REQUIRED_VARIABLES,
    ConfigError,
    Parser,
    parse_count,
    parse_listen_address,
    parse_log_level,
    parse_port,
    parse_positive,
    parse_probes,
    parse_seconds,
)


def _flag(parse: Parser) -> Parser:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _probe_json(text: str) -> str:
    parse_probes(text, user_port=1)  # shape check only; the real port is known later
    return text


_EPILOG_PARAGRAPHS = (
    "Without arguments, queueproxy is Knative's queue-proxy sidecar and reads the "
    f"environment the Knative reconciler sets. Required: {', '.join(REQUIRED_VARIABLES)}.",
    "Optional: SERVING_SERVICE, SYSTEM_NAMESPACE, REVISION_RESPONSE_START_TIMEOUT_SECONDS, "
    "REVISION_IDLE_TIMEOUT_SECONDS, SERVING_READINESS_PROBE, ENABLE_HTTP2_AUTO_DETECTION, "
    "ENABLE_HTTP_FULL_DUPLEX, ENABLE_MULTI_CONTAINER_PROBES, QUEUE_PROXY_TLS_*, and either "
    "OBSERVABILITY_CONFIG (v1.19+) or the v1.18 SERVING_REQUEST_*, SERVING_ENABLE_*, "
    "ENABLE_PROFILING and TRACING_CONFIG_* variables.",
    f"In both modes {', '.join(name for _, name, _, _ in OUR_VARIABLES)} apply; "
    "in local mode a flag wins over its variable.",
)
_METAVARS = {"--bind": "ADDRESS", "--drain-quiet-period": "SECONDS", "--readiness-probe": "JSON"}

# Local mode's drain ends after this long without a request (pod mode: Knative's 30 s). Nobody
# needs to be taken out of a load balancer's rotation, so Ctrl-C stops in about a second, and
# requests still arriving keep it draining as they do in a pod.
LOCAL_QUIET_PERIOD = 1.0

# (flag, the variable it stands for, parser, default, help). A flag without a default falls back
# to its QUEUEPROXY_* variable, then to that variable's default.
# fmt: off
LOCAL_FLAGS: tuple[tuple[str, str, Parser, Any, str], ...] = (
    ("--port", "QUEUE_SERVING_PORT", parse_port, 8012, "serving port"),
    ("--upstream-port", "USER_PORT", parse_port, 8080, "the application's port on 127.0.0.1"),
    ("--concurrency", "CONTAINER_CONCURRENCY", parse_count, 0,
     "max requests in flight to the application, 0 = unlimited"),
    ("--timeout", "REVISION_TIMEOUT_SECONDS", parse_positive, 300, "request timeout, seconds"),
    ("--response-start-timeout", "REVISION_RESPONSE_START_TIMEOUT_SECONDS", parse_count, 0,
     "seconds until the first response byte, 0 = off"),
    ("--idle-timeout", "REVISION_IDLE_TIMEOUT_SECONDS", parse_count, 0,
     "seconds without response bytes, 0 = off"),
    ("--bind", "QUEUEPROXY_BIND_ADDRESS", parse_listen_address, None,
     'listen address, "" = all interfaces (default: $QUEUEPROXY_BIND_ADDRESS or 127.0.0.1)'),
    ("--admin-port", "QUEUEPROXY_ADMIN_PORT", parse_port, None,
     "port for health checks and drain (default: $QUEUEPROXY_ADMIN_PORT or 8022)"),
    ("--metrics-port", "QUEUEPROXY_METRICS_PORT", parse_port, None,
     "port for the autoscaler's metrics (default: $QUEUEPROXY_METRICS_PORT or 9090)"),
    ("--user-metrics-port", "QUEUEPROXY_USER_METRICS_PORT", parse_port, None,
     "port for user request metrics (default: $QUEUEPROXY_USER_METRICS_PORT or 9091)"),
    ("--drain-quiet-period", "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS", parse_seconds, None,
     "seconds without requests that end a drain "
     f"(default: $QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS or {LOCAL_QUIET_PERIOD:g}; "
     "Knative's 30 in pod mode)"),
    ("--readiness-probe", "SERVING_READINESS_PROBE", _probe_json, '{"tcpSocket":{}}',
     "Kubernetes probe JSON or a JSON array of them; no port = the upstream port; "
     "'' = always ready"),
    ("--log-level", "SERVING_LOGGING_LEVEL", parse_log_level, "info", "debug, info, warn, error"),
    ("--pod", "SERVING_POD", str, "local", "pod name, for logs and metrics"),
    ("--revision", "SERVING_REVISION", str, "local", "revision name, for logs and metrics"),
    ("--namespace", "SERVING_NAMESPACE", str, "default", "namespace, for logs and metrics"),
    ("--service", "SERVING_SERVICE", str, "", "service name, for logs and metrics"),
    ("--configuration", "SERVING_CONFIGURATION", str, "", "configuration name"),
)
# fmt: on


def _local_parser() -> argparse.ArgumentParser:
    class _ArgumentParser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise ConfigError(message)

    parser = _ArgumentParser(
        prog="queueproxy",
        description="Knative's queue-proxy in Python. With any argument it runs in local mode, "
        "which needs no Knative environment: `queueproxy --local` uses all defaults.",
        epilog="\n\n".join(textwrap.fill(paragraph, 88) for paragraph in _EPILOG_PARAGRAPHS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--local", action="store_true", help="local mode, defaults for the rest")
    for flag, name, parse, default, text in LOCAL_FLAGS:
        parser.add_argument(
            flag,
            dest=name,
            metavar=_METAVARS.get(flag, flag.split("-")[-1].upper()),
            type=_flag(parse),
            default=default,
            help=text if default is None else f"{text} (default: {default!r})",
        )
    parser.add_argument(
        "--user-metrics",
        choices=("none", "prometheus", "v1.18"),
        default="prometheus",
        help="user request metrics: none, Prometheus with the OpenTelemetry-era (v1.19+) names, "
        "or Prometheus with the v1.18 names (default: 'prometheus')",
    )
    parser.add_argument(
        "--request-log", action="store_true", help="write one JSON line per request to stdout"
    )
    return parser


def local_environ(argv: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment Knative would have set for these flags (`argv`, without the program
    name); `environ` supplies the QUEUEPROXY_* variables a flag left unset. Raises ConfigError
    for a bad flag or value, naming it."""
    args = _local_parser().parse_args(list(argv))
    env = {
        "QUEUEPROXY_BIND_ADDRESS": LOCALHOST,
        "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS": str(LOCAL_QUIET_PERIOD),
        "QUEUEPROXY_LIVE": "1",  # nobody else can reach 127.0.0.1: the live page is on
        "QUEUE_SERVING_TLS_PORT": "8112",
        "SERVING_POD_IP": LOCALHOST,
        "SERVING_LOGGING_CONFIG": "",
    }
    env |= {name: environ[name] for _, name, _, _ in OUR_VARIABLES if environ.get(name)}
    env |= {
        name: str(value)
        for name, value in vars(args).items()
        if name.isupper() and value is not None
    }
    if args.user_metrics == "v1.18":
        env["SERVING_REQUEST_METRICS_BACKEND"] = "prometheus"
        env["SERVING_ENABLE_REQUEST_LOG"] = str(args.request_log)
    else:
        metrics = {"protocol": args.user_metrics}
        env["OBSERVABILITY_CONFIG"] = json.dumps(
            {"requestMetrics": metrics, "enableRequestLog": args.request_log}
        )
    return env
