"""The sample app's settings, parsed once at start: flags, with the environment as defaults.

In a container the app is started without arguments and configured by its environment (`TARGET`,
`PORT`, ...), like Knative's helloworld samples. Locally the same settings are flags in the
sidecar's style (`sampleapp --port 8080 --target Knative`); a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


class ConfigError(Exception):
    """A flag or variable has a value the app cannot use; the message names both."""


@dataclass(frozen=True)
class Settings:
    target: str  # TARGET: who the greeting greets
    host: str  # HOST: bind address
    port: int  # PORT: 0 picks a free port (the listening line tells which)
    startup_delay: float  # STARTUP_DELAY_SECONDS: sleep before listening
    ready_after: float  # READY_AFTER_SECONDS: /healthz is 503 this long after listening
    keepalive_timeout: float  # KEEPALIVE_TIMEOUT_SECONDS: idle keep-alive connections close after
    shutdown_grace: float  # SHUTDOWN_GRACE_SECONDS: in-flight requests may run this long on SIGTERM
    protocol: str = "http"  # SAMPLEAPP_PROTOCOL: "http" (aiohttp) or "grpc" (grpcio, h2c)


PROTOCOLS = ("http", "grpc")


def _port(raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError("expected a port number in 0..65535")
    return port


def _protocol(raw: str) -> str:
    if raw not in PROTOCOLS:
        raise ValueError(f"expected one of {', '.join(PROTOCOLS)}")
    return raw


def _seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError("expected a number of seconds >= 0")
    return seconds


# (field, flag, variable, parser, default, help), in the order `--help` lists them.
# fmt: off
SETTINGS: tuple[tuple[str, str, str, Callable[[str], Any], Any, str], ...] = (
    ("port", "--port", "PORT", _port, 8080, "port to listen on, 0 = any free port"),
    ("host", "--host", "HOST", str, "0.0.0.0", "address to listen on"),
    ("target", "--target", "TARGET", str, "World", "who `GET /` greets: Hello TARGET!"),
    ("startup_delay", "--startup-delay", "STARTUP_DELAY_SECONDS", _seconds, 0.0,
     "seconds to wait before listening (a slow start)"),
    ("ready_after", "--ready-after", "READY_AFTER_SECONDS", _seconds, 0.0,
     "seconds after listening during which /healthz answers 503"),
    # 75 s is nginx's default (aiohttp's own is 3630 s). Set it low to show a proxy reusing a
    # connection the app has just closed (knative/serving#12414).
    ("keepalive_timeout", "--keepalive-timeout", "KEEPALIVE_TIMEOUT_SECONDS", _seconds, 75.0,
     "seconds before an idle keep-alive connection is closed"),
    ("shutdown_grace", "--shutdown-grace", "SHUTDOWN_GRACE_SECONDS", _seconds, 30.0,
     "seconds in-flight requests may run after SIGTERM or Ctrl-C"),
    ("protocol", "--protocol", "SAMPLEAPP_PROTOCOL", _protocol, "http",
     "http, or grpc: the gRPC services of sampleapp/protos/hello.proto over h2c"),
)
# fmt: on


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _flag(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        try:
            return parse(raw)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{raw!r}: {error}") from None

    return convert


def parser() -> argparse.ArgumentParser:
    result = _ArgumentParser(
        prog="sampleapp",
        # No prefixes: `--prot` must stay an unknown flag, not quietly become `--protocol`.
        allow_abbrev=False,
        description="Hello {TARGET}! with knobs for load tests (see the README). Every flag "
        "defaults to its environment variable, then to the value shown.",
    )
    for field, flag, variable, parse, default, text in SETTINGS:
        result.add_argument(
            flag,
            dest=field,
            metavar="SECONDS" if parse is _seconds else variable,
            type=_flag(parse),
            default=None,
            help=f"{text} (default: ${variable} or {default!r})",
        )
    result.add_argument(
        "--grpc", dest="protocol", action="store_const", const="grpc", help="--protocol grpc"
    )
    return result


def load(environ: Mapping[str, str], argv: Sequence[str] = ()) -> Settings:
    """Settings from flags, else environment variables, else defaults.

    Raises ConfigError on the first bad value; `--help` exits (SystemExit 0) after printing.
    """
    flags = vars(parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    for field, _, variable, parse, default, _ in SETTINGS:
        raw = environ.get(variable, "")
        if flags[field] is not None:
            values[field] = flags[field]
        elif raw == "":
            values[field] = default
        else:
            try:
                values[field] = parse(raw)
            except ValueError as error:
                raise ConfigError(f"{variable}={raw!r}: {error}") from None
    return Settings(**values)
