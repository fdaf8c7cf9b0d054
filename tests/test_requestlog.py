"""Request logs (contract §10): template input, fallback line, and the non-blocking writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from queueproxy.requestlog import LineWriter, RequestLogger, canonical_header_name
from tests.contract import HEAD_TEMPLATE, V118_TEMPLATE

REVISION = {
    "revision": "hello-00001",
    "namespace": "default",
    "service": "hello",
    "configuration": "hello-cfg",
    "pod_name": "hello-00001-deployment-abc",
    "pod_ip": "10.1.2.3",
}


def make_logger(template: str, **options: Any) -> tuple[RequestLogger, list[bytes]]:
    lines: list[bytes] = []
    logger = RequestLogger(template, sink=lines.append, **{**REVISION, **options})
    return logger, lines


def request(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "method": b"GET",
        "target": b"/hello?name=world&x=1",
        "proto": "HTTP/1.1",
        "headers": [
            (b"Host", b"hello.default.example.com"),
            (b"User-Agent", b"hey/0.0.1"),
            (b"Referer", b"https://example.com/"),
        ],
        "remote_addr": "10.0.0.7:51234",
        "content_length": 0,
        "status": 200,
        "size": 13,
        "latency": 0.0125,
    }
    return {**values, **overrides}


def test_head_default_template_line() -> None:
    logger, lines = make_logger(HEAD_TEMPLATE)
    logger.log(**request())
    [line] = lines
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert b'"requestUrl": "/hello?name\\u003Dworld\\u0026x\\u003D1"' in line
    assert json.loads(line) == {
        "httpRequest": {
            "requestMethod": "GET",
            "requestUrl": "/hello?name=world&x=1",
            "requestSize": "0",
            "status": 200,
            "responseSize": "13",
            "userAgent": "hey/0.0.1",
            "remoteIp": "10.0.0.7:51234",
            "serverIp": "10.1.2.3",
            "referer": "https://example.com/",
            "latency": "0.0125s",
            "protocol": "HTTP/1.1",
        },
        "traceId": "",
    }


def test_v118_default_template_prints_the_header_slice() -> None:
    logger, lines = make_logger(V118_TEMPLATE)
    logger.log(**request(headers=[(b"x-b3-traceid", b"80f198ee56343ba8")]))
    logger.log(**request(headers=[]))
    assert [json.loads(line)["traceId"] for line in lines] == ["[80f198ee56343ba8]", "[]"]


@pytest.mark.parametrize(
    ("headers", "trace_id"),
    [
        ([(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
         "4bf92f3577b34da6a3ce929d0e0e4736"),
        ([(b"X-B3-TraceId", b"463ac35c9f6413ad")], "463ac35c9f6413ad"),
        ([(b"X-B3-TraceId", b"463ac35c9f6413ad"),
          (b"Traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
         "0af7651916cd43dd8448eb211c80319c"),
        ([(b"traceparent", b"garbage"), (b"x-b3-traceid", b"b3wins")], "b3wins"),
        ([], ""),
    ],
)  # fmt: skip
def test_trace_id_from_traceparent_else_b3(headers: list, trace_id: str) -> None:
    logger, lines = make_logger("{{.TraceID}}")
    logger.log(**request(headers=headers))
    assert lines == [f"{trace_id}\n".encode()]


def test_request_fields() -> None:
    template = (
        "{{.Request.Method}}|{{.Request.RequestURI}}|{{.Request.URL}}|{{.Request.URL.Path}}|"
        "{{.Request.URL.RawQuery}}|{{.Request.Host}}|{{.Request.ContentLength}}|"
        '{{index .Request.Header "X-Multi"}}|{{index .Request.Header "Host"}}|'
        "{{.Request.Header.Missing}}|{{.Response.Code}} {{.Response.Size}} {{.Response.Latency}}\n"
    )
    logger, lines = make_logger(template)
    headers = [(b"host", b"example.com"), (b"x-multi", b"a"), (b"X-MULTI", b"b")]
    logger.log(**request(method="PUT", target="/p?q=1", headers=headers, content_length=-1,
                         status=504, size=0, latency=0.00001))  # fmt: skip
    assert lines == [b"PUT|/p?q=1|/p?q=1|/p|q=1|example.com|-1|[a b]|[]|<no value>|504 0 1e-05\n"]


def test_revision_fields() -> None:
    logger, lines = make_logger(
        "{{.Revision.Name}}, {{.Revision.Namespace}}, {{.Revision.Service}}, "
        "{{.Revision.Configuration}}, {{.Revision.PodName}}, {{.Revision.PodIP}}"
    )
    logger.log(**request())
    assert lines == [
        b"hello-00001, default, hello, hello-cfg, hello-00001-deployment-abc, 10.1.2.3\n"
    ]


def test_an_empty_template_logs_nothing() -> None:
    logger, lines = make_logger("")
    logger.log(**request())
    assert (logger.enabled, lines) == (False, [])


def test_a_newline_is_added_only_when_missing() -> None:
    logger, lines = make_logger("{{.Response.Code}}\n")
    logger.log(**request())
    assert lines == [b"200\n"]


def test_undecodable_bytes_pass_through() -> None:
    logger, lines = make_logger("{{.Request.UserAgent}}|{{js .Request.UserAgent}}")
    logger.log(**request(headers=[(b"user-agent", b"caf\xc3\xa9 \xff")]))
    assert lines == [b"caf\xc3\xa9 \xff|caf\xc3\xa9 \xff\n"]


def test_template_that_does_not_parse_logs_the_fallback_line() -> None:
    logger, lines = make_logger("{{if .Request}}{{end}}")
    assert logger.template_error is not None and "if" in logger.template_error
    logger.log(**request(method=b"POST", target=b"/x", status=503, latency=0.5))
    logger.log(**request(latency=2.0))
    assert lines == [
        b"Invalid request log template: method: POST, response code: 503, latency: 0.5, url: /x\n",
        b"Invalid request log template: method: GET, response code: 200, latency: 2, "
        b"url: /hello?name=world&x=1\n",
    ]


def test_template_that_fails_to_render_logs_the_fallback_line() -> None:
    logger, lines = make_logger("{{.Request.Something}}")
    assert logger.template_error is None
    logger.log(**request())
    assert lines[0].startswith(b"Invalid request log template: method: GET, response code: 200")


@pytest.mark.parametrize(("enabled", "logged"), [(False, 0), (True, 1)])
def test_probe_requests_are_logged_only_when_enabled(enabled: bool, logged: int) -> None:
    logger, lines = make_logger("{{.Request.Method}}", enable_probe_request_log=enabled)
    logger.log(**request(), probe=True)
    assert len(lines) == logged
    logger.log(**request())
    assert len(lines) == logged + 1


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("x-b3-traceid", "X-B3-Traceid"), ("USER-AGENT", "User-Agent"), ("host", "Host"),
     ("x_under", "X_under"), ("with space", "with space")],
)  # fmt: skip
def test_canonical_header_name(name: str, canonical: str) -> None:
    assert canonical_header_name(name) == canonical


# ---- LineWriter --------------------------------------------------------------------------------


def read_all(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 65536):
        into += chunk


def test_line_writer_writes_lines_in_order() -> None:
    read_fd, write_fd = os.pipe()
    received = bytearray()
    reader = threading.Thread(target=read_all, args=(read_fd, received))
    reader.start()
    writer = LineWriter(write_fd)
    for i in range(1000):
        writer.write(b"line %d\n" % i)
    assert writer.close(timeout=10)
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    assert received.splitlines() == [b"line %d" % i for i in range(1000)]
    assert writer.dropped_lines == 0


@pytest.mark.timeout(30)  # a blocking write would hang here, not fail an assertion
def test_line_writer_never_blocks_on_a_reader_that_does_not_read() -> None:
    read_fd, write_fd = os.pipe()
    writer = LineWriter(write_fd, max_pending_bytes=64 * 1024)
    line = b"x" * 99 + b"\n"
    written = 20_000  # 2 MB: far beyond the pipe buffer plus the pending limit
    for _ in range(written):
        writer.write(line)
    assert writer.dropped_lines > 0

    # Now let the pipe drain: every line was either written whole or counted as dropped.
    received = bytearray()
    reader = threading.Thread(target=read_all, args=(read_fd, received))
    reader.start()
    assert writer.close(timeout=10)
    os.close(write_fd)
    reader.join(10)
    os.close(read_fd)
    assert len(received) % len(line) == 0
    assert len(received) // len(line) + writer.dropped_lines == written


def test_line_writer_counts_lines_it_could_not_write() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # nobody will ever read: writes fail with EPIPE
    writer = LineWriter(write_fd)
    writer.write(b"lost\n")
    assert writer.close(timeout=10)
    os.close(write_fd)
    assert (writer.write_errors, writer.dropped_lines) == (1, 1)


def test_line_writer_drops_lines_after_close() -> None:
    read_fd, write_fd = os.pipe()
    writer = LineWriter(write_fd)
    assert writer.close(timeout=10)
    writer.write(b"too late\n")
    assert writer.dropped_lines == 1
    os.close(write_fd)
    os.close(read_fd)


def test_the_template_engine_loads_only_with_a_request_logger() -> None:
    # Request logs are off by default: a pod that never builds a logger never pays the import.
    code = (
        "import sys\n"
        "import queueproxy.server, queueproxy.main\n"
        "print('queueproxy.gotemplate' in sys.modules)\n"
        "from queueproxy.requestlog import RequestLogger\n"
        "RequestLogger('{{.Request.Method}}', sink=print)\n"
        "print('queueproxy.gotemplate' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
