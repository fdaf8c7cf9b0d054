"""Request logs and process logs on the sidecar's stdout, end to end (contract §10).

A real sidecar process in front of an aiohttp app in the test's loop. The harness gives the
sidecar a pipe for stdout; each test stops the sidecar (SIGTERM: it drains, flushes its line
writer and exits) and then reads everything it wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.harness import Process, free_port, knative_env, running, serve_app, start_sidecar

POD = "hello-00001-deployment-5f7c9d8b6c-x7k2p"
POD_IP = "10.0.3.7"
HEALTH_CHECK = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
NETWORK_PROBE = {"K-Network-Probe": "probe", "K-Network-Hash": "e2e"}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B3_TRACE_ID = "463ac35c9f6413ad48485a3953bb6124"
# Go's %v of a float64 of seconds, e.g. 0.051234567 or 5.1e-05, then the template's "s".
GO_SECONDS = re.compile(r"^\d+(\.\d+)?(e-\d+)?s$")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

pytestmark = pytest.mark.timeout(30)


async def work(request: web.Request) -> web.Response:
    await request.read()
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    return web.Response(status=int(request.query.get("status", "200")), text="ok\n")


@contextlib.asynccontextmanager
async def stack(**env: str) -> AsyncIterator[Process]:
    web_app = web.Application()
    web_app.router.add_route("*", "/work", work)
    async with serve_app(web_app) as app_port:
        settings = knative_env(app_port, free_port(), SERVING_POD=POD, SERVING_POD_IP=POD_IP, **env)
        sidecar = await asyncio.to_thread(start_sidecar, settings)
        with running(sidecar):
            yield sidecar


async def run_and_collect(
    traffic: Callable[[aiohttp.ClientSession, Process], Coroutine[Any, Any, None]], **env: str
) -> tuple[list[str], str]:
    """Start a sidecar, run `traffic` through it, stop it; return its stdout lines and stderr."""
    async with stack(**env) as sidecar:
        async with aiohttp.ClientSession() as client:
            await traffic(client, sidecar)
        assert await asyncio.to_thread(sidecar.terminate) == 0
        assert sidecar.proc.stdout is not None and sidecar.proc.stderr is not None
        return sidecar.proc.stdout.read().splitlines(), sidecar.proc.stderr.read()


def json_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines]


def request_entries(lines: list[str]) -> list[dict[str, Any]]:
    return [entry for entry in json_lines(lines) if "httpRequest" in entry]


async def fetch(
    client: aiohttp.ClientSession, url: str, data: bytes | None = None, **headers: str
) -> tuple[int, str]:
    method = "POST" if data is not None else "GET"
    async with client.request(method, url, data=data, headers=headers) as response:
        return response.status, await response.text()


async def ordinary_and_probe_traffic(client: aiohttp.ClientSession, sidecar: Process) -> None:
    headers = {
        "User-Agent": "e2e-client/1.0",
        "Referer": "http://ref.example/page",
        "traceparent": TRACEPARENT,
        "X-B3-TraceId": B3_TRACE_ID,
    }
    url = f"{sidecar.url}/work?sleep=0.05&q=a%20b"
    assert await fetch(client, url, data=b"hello", **headers) == (200, "ok\n")
    assert (await fetch(client, f"{sidecar.url}/work?status=503"))[0] == 503
    for _ in range(3):
        assert await fetch(client, sidecar.url, **HEALTH_CHECK) == (200, "queue")
        assert (await fetch(client, sidecar.url, **NETWORK_PROBE))[0] == 200


def check_ordinary_entries(
    entries: list[dict[str, Any]], trace_id: str, no_trace_id: str = ""
) -> None:
    post, failed = entries
    request = post["httpRequest"]
    assert request["requestMethod"] == "POST"
    # The template escapes with `js` (& and = become \\u0026, \\u003D): still the same URL.
    assert request["requestUrl"] == "/work?sleep=0.05&q=a%20b"
    assert request["requestSize"] == "5"
    assert request["status"] == 200
    assert request["responseSize"] == "3"
    assert request["userAgent"] == "e2e-client/1.0"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", request["remoteIp"])
    assert request["serverIp"] == POD_IP
    assert request["referer"] == "http://ref.example/page"
    assert GO_SECONDS.match(request["latency"])
    assert float(request["latency"][:-1]) >= 0.05  # the app slept 50 ms
    assert request["protocol"] == "HTTP/1.1"
    assert post["traceId"] == trace_id
    assert failed["httpRequest"]["requestMethod"] == "GET"
    assert failed["httpRequest"]["requestUrl"] == "/work?status=503"
    assert failed["httpRequest"]["status"] == 503
    assert failed["httpRequest"]["requestSize"] == "0"
    assert failed["traceId"] == no_trace_id


async def test_v119_request_log_one_line_per_request_without_probes() -> None:
    lines, stderr = await run_and_collect(
        ordinary_and_probe_traffic, OBSERVABILITY_CONFIG='{"enableRequestLog":true}'
    )
    entries = request_entries(lines)  # every stdout line must be JSON
    assert len(entries) == 2, lines
    check_ordinary_entries(entries, trace_id=TRACEPARENT.split("-")[1])
    assert stderr == ""


async def test_v118_request_log_with_probe_logging() -> None:
    lines, stderr = await run_and_collect(
        ordinary_and_probe_traffic,
        SERVING_ENABLE_REQUEST_LOG="true",
        SERVING_ENABLE_PROBE_REQUEST_LOG="true",
    )
    entries = request_entries(lines)
    # v1.18's template prints `index .Request.Header "X-B3-Traceid"`, a Go []string: brackets.
    check_ordinary_entries(entries[:2], trace_id=f"[{B3_TRACE_ID}]", no_trace_id="[]")
    probes = entries[2:]
    assert len(probes) == 6
    agents = [p["httpRequest"]["userAgent"] for p in probes]
    assert agents.count("kube-probe/1.30") == 3  # health checks; the rest are network probes
    assert [p["httpRequest"]["status"] for p in probes] == [200] * 6
    assert stderr == ""


async def test_request_log_off_writes_no_request_lines() -> None:
    lines, _ = await run_and_collect(ordinary_and_probe_traffic)
    assert request_entries(lines) == []


@pytest.mark.parametrize(
    "env",
    [
        {"SERVING_ENABLE_REQUEST_LOG": "true", "SERVING_REQUEST_LOG_TEMPLATE": "{{.Request.Method"},
        {"OBSERVABILITY_CONFIG": json.dumps(
            {"enableRequestLog": True, "requestLogTemplate": "{{.Request.NoSuchField}}"}
        )},
    ],
    ids=["does-not-parse", "fails-to-execute"],
)  # fmt: skip
async def test_broken_template_logs_the_fallback_line_and_keeps_serving(env: dict) -> None:
    async def traffic(client: aiohttp.ClientSession, sidecar: Process) -> None:
        for index in range(3):
            assert await fetch(client, f"{sidecar.url}/work?i={index}") == (200, "ok\n")

    lines, stderr = await run_and_collect(traffic, **env)
    fallback = [line for line in lines if line.startswith("Invalid request log template:")]
    assert len(fallback) == 3
    for index, line in enumerate(fallback):
        match = re.fullmatch(
            r"Invalid request log template: method: GET, response code: 200, "
            r"latency: (\S+), url: (\S+)",
            line,
        )
        assert match, line
        float(match.group(1))
        assert match.group(2) == f"/work?i={index}"
    others = json_lines([line for line in lines if line not in fallback])
    if "SERVING_REQUEST_LOG_TEMPLATE" in env:  # known at start-up: said once, as an error
        assert any(
            e["severity"] == "ERROR" and "Invalid request log template" in e["message"]
            for e in others
        )
    assert stderr == ""


def check_process_entry(entry: dict[str, Any]) -> None:
    assert list(entry)[:5] == ["severity", "timestamp", "logger", "caller", "message"]
    assert entry["logger"] == "queueproxy"
    assert ISO_UTC.match(entry["timestamp"])
    assert re.fullmatch(r"queueproxy/\w+\.py:\d+", entry["caller"])
    assert entry["knative.dev/key"] == "default/hello-00001"
    assert entry["knative.dev/pod"] == POD


async def one_request(client: aiohttp.ClientSession, sidecar: Process) -> None:
    assert await fetch(client, f"{sidecar.url}/work") == (200, "ok\n")


@pytest.mark.parametrize(
    ("level", "severities"),
    [
        ("debug", {"DEBUG", "INFO", "ERROR"}),
        ("info", {"INFO", "ERROR"}),
        ("error", {"ERROR"}),
    ],
)
async def test_process_logs_are_zap_json_at_the_configured_level(
    level: str, severities: set[str]
) -> None:
    # A template that does not parse gives an ERROR line, so every level has something to show.
    lines, stderr = await run_and_collect(
        one_request,
        SERVING_LOGGING_LEVEL=level,
        SERVING_ENABLE_REQUEST_LOG="true",
        SERVING_REQUEST_LOG_TEMPLATE="{{",
    )
    entries = json_lines([line for line in lines if not line.startswith("Invalid request log")])
    assert entries
    for entry in entries:
        check_process_entry(entry)
    assert {entry["severity"] for entry in entries} == severities
    messages = [entry["message"] for entry in entries]
    if level != "error":
        assert any(message.startswith("queue-proxy serving on") for message in messages)
        assert "shutdown complete" in messages
    if level == "debug":
        assert "request log off" not in messages
        assert "user metrics off (request metrics protocol none)" in messages
    assert stderr == ""


async def test_a_stdout_nobody_reads_does_not_stall_the_proxy() -> None:
    # ~1.1 KB per request line, 400 requests: far more than a pipe holds (64 KiB), and the test
    # reads the pipe only after the sidecar has exited.
    url_tail = "a" * 1000
    statuses: list[int] = []

    async def traffic(client: aiohttp.ClientSession, sidecar: Process) -> None:
        async def worker() -> None:
            for _ in range(50):
                statuses.append((await fetch(client, f"{sidecar.url}/work?{url_tail}"))[0])

        async with asyncio.timeout(20):  # a liveness bound, not a speed target
            await asyncio.gather(*(worker() for _ in range(8)))
        # Process logs share the writer: the sidecar must still answer and shut down.
        assert await fetch(client, sidecar.url, **HEALTH_CHECK) == (200, "queue")

    lines, _ = await run_and_collect(traffic, OBSERVABILITY_CONFIG='{"enableRequestLog":true}')
    assert statuses == [200] * 400
    written = request_entries(lines[:-1])  # the last line may have been cut by the full pipe
    assert 0 < len(written) < 400
    assert written[0]["httpRequest"]["requestUrl"] == f"/work?{url_tail}"
