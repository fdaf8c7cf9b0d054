"""Process logs as JSON lines in the shape Knative's zap logger prints
(docs/contract.md#request-logs).

A line looks like real queue-proxy output (e.g. the logs quoted in knative/serving#13377):

    {"severity":"INFO","timestamp":"2025-08-29T09:48:57.328515Z","logger":"queueproxy",
     "caller":"queueproxy/main.py:42","message":"...","knative.dev/key":"ns/rev",
     "knative.dev/pod":"rev-deployment-abc"}

`severity` uses zap's capital level names (DEBUG, INFO, WARN, ERROR, FATAL); `timestamp` is
RFC 3339 in UTC with the fraction Go's RFC3339Nano would print (trailing zeros dropped);
`caller` is zap's short form `directory/file:line`. Fields passed with `extra={...}` follow the
fixed ones; an exception adds `error` and `stacktrace`, as zap does for errors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

LOGGER_NAME = "queueproxy"

# SERVING_LOGGING_LEVEL takes zap's level names.
_LEVELS = {
    "": logging.INFO,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_SEVERITIES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "FATAL",
}
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_PLAIN_RECORD = logging.LogRecord("", 0, "", 0, "", None, None)
_RECORD_ATTRIBUTES = frozenset(vars(_PLAIN_RECORD)) | {"message", "asctime", "taskName"}


def _timestamp(created: float) -> str:
    seconds, microseconds = divmod(round(created * 1_000_000), 1_000_000)
    fraction = f"{microseconds:06d}".rstrip("0")
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{fraction}Z" if fraction else f"{base}Z"


class ZapJsonFormatter(logging.Formatter):
    """Formats a record as one zap-style JSON object (no trailing newline)."""

    def __init__(self, namespace: str, revision: str, pod: str) -> None:
        super().__init__()
        self._context = {"knative.dev/key": f"{namespace}/{revision}", "knative.dev/pod": pod}

    def format(self, record: logging.LogRecord) -> str:
        directory = os.path.basename(os.path.dirname(record.pathname))
        caller = f"{directory}/{record.filename}" if directory else record.filename
        entry: dict[str, object] = {
            "severity": _SEVERITIES.get(record.levelno, record.levelname),
            "timestamp": _timestamp(record.created),
            "logger": record.name,
            "caller": f"{caller}:{record.lineno}",
            "message": record.getMessage(),
            **self._context,
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES:
                entry[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = str(record.exc_info[1])
            entry["stacktrace"] = self.formatException(record.exc_info)
        elif record.stack_info:
            entry["stacktrace"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str, separators=(",", ":"))


class _LineHandler(logging.Handler):
    """Writes each formatted record as one line to a text stream or a bytes sink."""

    def __init__(self, stream: TextIO | None, sink: Callable[[bytes], None] | None) -> None:
        super().__init__()
        self._stream = stream
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self._sink is not None:
                self._sink(line.encode("utf-8", "backslashreplace"))
            elif self._stream is not None:
                self._stream.write(line)
                self._stream.flush()
        except Exception:
            self.handleError(record)


def parse_level(level: str) -> int:
    """A zap level name (SERVING_LOGGING_LEVEL) as a `logging` level."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown logging level {level!r}") from None


def setup_logging(
    level: str,
    namespace: str,
    revision: str,
    pod: str,
    stream: TextIO | None = None,
    *,
    sink: Callable[[bytes], None] | None = None,
) -> logging.Logger:
    """Configure and return the `queueproxy` logger. Lines go to `sink` if given (pass
    `LineWriter.write` to keep slow stdout off the event loop), else to `stream` (default
    `sys.stdout`). Calling it again replaces the previous configuration."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = _LineHandler(stream if stream is not None or sink is not None else sys.stdout, sink)
    handler.setFormatter(ZapJsonFormatter(namespace, revision, pod))
    logger.addHandler(handler)
    logger.setLevel(parse_level(level))
    logger.propagate = False
    return logger
