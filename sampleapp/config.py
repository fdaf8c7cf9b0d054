"""The sample app's settings: its environment, parsed once at start."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(Exception):
    """A variable is set to a value the app cannot use; the message names both."""


@dataclass(frozen=True)
class Settings:
    target: str  # TARGET: who the greeting greets
    host: str  # HOST: bind address
    port: int  # PORT: 0 picks a free port (the listening line tells which)
    startup_delay: float  # STARTUP_DELAY_SECONDS: sleep before listening
    ready_after: float  # READY_AFTER_SECONDS: /healthz is 503 this long after listening
    keepalive_timeout: float  # KEEPALIVE_TIMEOUT_SECONDS: idle keep-alive connections close after
    shutdown_grace: float  # SHUTDOWN_GRACE_SECONDS: in-flight requests may run this long on SIGTERM


def load(environ: Mapping[str, str]) -> Settings:
    """Settings from environment variables; raises ConfigError on the first bad one."""
    return Settings(
        target=environ.get("TARGET", "World"),
        host=environ.get("HOST", "0.0.0.0"),
        port=_port(environ, "PORT", 8080),
        startup_delay=_seconds(environ, "STARTUP_DELAY_SECONDS", 0.0),
        ready_after=_seconds(environ, "READY_AFTER_SECONDS", 0.0),
        # 75 s is nginx's default (aiohttp's own is 3630 s). Set it low to show a proxy reusing a
        # connection the app has just closed (knative/serving#12414).
        keepalive_timeout=_seconds(environ, "KEEPALIVE_TIMEOUT_SECONDS", 75.0),
        shutdown_grace=_seconds(environ, "SHUTDOWN_GRACE_SECONDS", 30.0),
    )


def _port(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}={raw!r}: expected a port number in 0..65535")
    return port


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds >= 0")
    return seconds
