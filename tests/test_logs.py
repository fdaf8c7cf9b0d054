"""Process logs in Knative's zap JSON shape (contract §10)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from queueproxy.logs import parse_level, setup_logging


@pytest.fixture(autouse=True)
def restore_queueproxy_logger() -> Iterator[None]:
    logger = logging.getLogger("queueproxy")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def entries(stream: io.StringIO) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_knatives_keys() -> None:
    stream = io.StringIO()
    logger = setup_logging("info", "default", "hello-00001", "hello-00001-deployment-abc", stream)
    logger.info("Starting queue-proxy on %d", 8012)
    [entry] = entries(stream)
    assert list(entry)[:7] == [
        "severity",
        "timestamp",
        "logger",
        "caller",
        "message",
        "knative.dev/key",
        "knative.dev/pod",
    ]
    assert entry["severity"] == "INFO"
    assert entry["logger"] == "queueproxy"
    assert entry["message"] == "Starting queue-proxy on 8012"
    assert entry["knative.dev/key"] == "default/hello-00001"
    assert entry["knative.dev/pod"] == "hello-00001-deployment-abc"
    assert re.fullmatch(r"tests/test_logs\.py:\d+", entry["caller"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z", entry["timestamp"])


def test_level_filtering_and_severity_names() -> None:
    stream = io.StringIO()
    logger = setup_logging("info", "ns", "rev", "pod", stream)
    logger.debug("hidden at info")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    assert [(e["severity"], e["message"]) for e in entries(stream)] == [
        ("INFO", "i"),
        ("WARN", "w"),
        ("ERROR", "e"),
    ]

    debug_stream = io.StringIO()
    logger = setup_logging("debug", "ns", "rev", "pod", debug_stream)
    logger.debug("shown at debug")
    assert [e["severity"] for e in entries(debug_stream)] == ["DEBUG"]
    assert stream.getvalue().count("\n") == 3  # the earlier handler was replaced, not kept


def test_extra_fields_and_child_loggers() -> None:
    stream = io.StringIO()
    setup_logging("warn", "ns", "rev", "pod", stream)
    child = logging.getLogger("queueproxy.probe")
    child.info("below warn")
    child.warning("probe failed", extra={"target": "127.0.0.1:8080", "attempt": 3})
    [entry] = entries(stream)
    assert entry["logger"] == "queueproxy.probe"
    assert (entry["target"], entry["attempt"]) == ("127.0.0.1:8080", 3)


def test_exceptions_add_error_and_stacktrace() -> None:
    stream = io.StringIO()
    logger = setup_logging("info", "ns", "rev", "pod", stream)
    try:
        raise ConnectionRefusedError("connect refused")
    except ConnectionRefusedError:
        logger.exception("error reverse proxying request")
    [entry] = entries(stream)
    assert entry["severity"] == "ERROR"
    assert entry["error"] == "connect refused"
    assert "ConnectionRefusedError" in entry["stacktrace"]


def test_lines_can_go_to_a_bytes_sink() -> None:
    lines: list[bytes] = []
    logger = setup_logging("info", "ns", "rev", "pod", sink=lines.append)
    logger.info("héllo")
    [line] = lines
    assert line.endswith(b"\n")
    assert json.loads(line)["message"] == "héllo"


@pytest.mark.parametrize(
    ("name", "level"),
    [("", logging.INFO), ("debug", logging.DEBUG), ("WARN", logging.WARNING),
     ("error", logging.ERROR), ("fatal", logging.CRITICAL)],
)  # fmt: skip
def test_parse_level(name: str, level: int) -> None:
    assert parse_level(name) == level


def test_unknown_level_is_an_error() -> None:
    with pytest.raises(ValueError, match="verbose"):
        parse_level("verbose")
