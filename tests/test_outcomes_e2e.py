"""Our own gauges and reasons end to end: a real sidecar with CC = 2 in front of an app in the
test's loop that holds requests until the test lets them go, scraped on :9091 (both eras of
names) and in the :9090 text form, and its log lines read from its stdout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Process, free_port, knative_env, running, serve_app, start_sidecar, until

pytestmark = pytest.mark.timeout(60)

ERAS = {
    "v1.19": {"OBSERVABILITY_CONFIG": '{"requestMetrics":{"protocol":"prometheus"}}'},
    "v1.18": {"SERVING_REQUEST_METRICS_BACKEND": "prometheus"},
}


class App:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.active = 0

    async def work(self, request: web.Request) -> web.Response:
        self.active += 1
        try:
            if "hold" in request.query:
                await self.release.wait()
        finally:
            self.active -= 1
        return web.Response(status=int(request.query.get("status", "200")), text="ok\n")


@contextlib.asynccontextmanager
async def stack(**env: str) -> AsyncIterator[tuple[Process, App]]:
    app = App()
    web_app = web.Application()
    web_app.router.add_route("*", "/work", app.work)
    async with serve_app(web_app) as app_port:
        try:
            settings = knative_env(app_port, free_port(), **env)
            sidecar = await asyncio.to_thread(start_sidecar, settings)
            with running(sidecar):
                yield sidecar, app
        finally:
            app.release.set()


async def scrape(client: aiohttp.ClientSession, sidecar: Process, port_name: str) -> dict:
    url = f"http://127.0.0.1:{sidecar.port_of(port_name)}/metrics"
    async with client.get(url) as response:
        assert response.status == 200
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def ours(families: dict) -> dict[str, Any]:
    """Our gauges as numbers, the reasons as a dict, the histograms' counts."""
    values: dict[str, Any] = {
        name: family.samples[0].value
        for name, family in families.items()
        if name.startswith("queueproxy_") and family.type == "gauge"
    }
    values["rejected"] = {
        s.labels["reason"]: s.value for s in families["queueproxy_rejected_requests"].samples
    }
    for name in ("wait", "app"):
        family = families[f"queueproxy_request_{name}_seconds"]
        values[name] = next(s.value for s in family.samples if s.name.endswith("_count"))
    return values


@pytest.mark.parametrize("era", ERAS)
async def test_gauges_follow_a_held_load_and_queue_full_is_its_own_reason(era: str) -> None:
    async with (
        stack(
            CONTAINER_CONCURRENCY="2", QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS="1.5", **ERAS[era]
        ) as (sidecar, app),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
    ):

        async def get(query: str) -> tuple[int, str]:
            async with client.get(f"{sidecar.url}/work?{query}") as response:
                return response.status, await response.text()

        # Two 503s from the app itself.
        assert [await get("status=503") for _ in range(2)] == [(503, "ok\n")] * 2
        held = [asyncio.ensure_future(get("hold=1")) for _ in range(20)]
        await until(lambda: app.active == 2)
        seen: dict[str, dict[str, Any]] = {}

        async def loaded() -> bool:
            for port in ("QUEUEPROXY_USER_METRICS_PORT", "QUEUEPROXY_METRICS_PORT"):
                seen[port] = ours(await scrape(client, sidecar, port))
            return all(v["queueproxy_requests_queued"] == 18 for v in seen.values())

        for _ in range(200):
            if await loaded():
                break
            await asyncio.sleep(0.02)
        for values in seen.values():
            assert values["queueproxy_requests_at_app"] == 2
            assert values["queueproxy_requests_queued"] == 18
            assert values["queueproxy_container_concurrency"] == 2
            assert values["queueproxy_queue_capacity"] == 20
        # The queue holds 20: 18 waiting + 2 more fill it, the next 3 are turned away.
        extra = [asyncio.ensure_future(get("hold=1")) for _ in range(2)]
        for _ in range(200):
            queued = ours(await scrape(client, sidecar, "QUEUEPROXY_METRICS_PORT"))
            if queued["queueproxy_requests_queued"] == 20:
                break
            await asyncio.sleep(0.02)
        assert extra and queued["queueproxy_requests_queued"] == 20
        full = [await get("hold=1") for _ in range(3)]
        assert full == [(503, "pending request queue full\n")] * 3
        app.release.set()
        results = await asyncio.gather(*held, *extra)
        assert results == [(200, "ok\n")] * 22
        after = ours(await scrape(client, sidecar, "QUEUEPROXY_USER_METRICS_PORT"))
        knative = await scrape(client, sidecar, "QUEUEPROXY_USER_METRICS_PORT")
        await asyncio.sleep(2.0)  # the rate limit's interval passes: the summary line
        assert await asyncio.to_thread(sidecar.terminate) == 0
        output = sidecar.proc.stdout.read()
    assert after["queueproxy_requests_at_app"] == 0
    assert after["queueproxy_requests_queued"] == 0
    assert after["rejected"] == {
        "queue_full": 3,
        "timeout": 0,
        "upstream_unreachable": 0,
        "upstream_reset": 0,
        "upstream_malformed": 0,
        "draining": 0,
        "bad_request": 0,
    }
    assert after["app"] == 24  # 22 held + the app's own two 503s; never the sidecar's
    assert after["wait"] == 24
    # Knative's series count every 503 alike (kept unchanged): 2 from the app + 3 from us.
    if era == "v1.19":
        server = knative["http_server_request_duration_seconds"]
        label = "http_response_status_code"
    else:
        server = knative["revision_request_latencies"]
        label = "response_code"
    counts = [
        s.value for s in server.samples if s.name.endswith("_count") and s.labels[label] == "503"
    ]
    assert counts == [5]
    lines = [json.loads(line) for line in output.splitlines()]
    answered = [e for e in lines if e["message"].startswith("sidecar answered queue_full")]
    assert len(answered) == 2, answered  # the first, then the summary of the other two
    assert answered[0]["message"] == "sidecar answered queue_full: 503: pending request queue full"
    assert (answered[0]["reason"], answered[0]["status"], answered[0]["severity"]) == (
        "queue_full",
        503,
        "WARN",
    )
    assert answered[1]["message"].startswith("sidecar answered queue_full: 2 more in the last ")


async def test_timeouts_unreachable_app_and_bad_requests_have_their_reasons() -> None:
    async with (
        stack(CONTAINER_CONCURRENCY="2", REVISION_TIMEOUT_SECONDS="1") as (sidecar, app),
        aiohttp.ClientSession() as client,
    ):
        async with client.get(f"{sidecar.url}/work?hold=1") as response:
            assert response.status == 504
        with socket.create_connection(("127.0.0.1", sidecar.port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        values = ours(await scrape(client, sidecar, "QUEUEPROXY_METRICS_PORT"))
    assert values["rejected"]["timeout"] == 1
    assert values["rejected"]["bad_request"] == 1
    assert values["app"] == 1  # it reached the app: its time there is counted
    # Nothing listens on the app port any more: 502, counted as unreachable.
    unreachable = knative_env(free_port(), free_port(), CONTAINER_CONCURRENCY="2")
    sidecar = await asyncio.to_thread(start_sidecar, unreachable)
    with running(sidecar):
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{sidecar.url}/") as response:
                assert response.status == 502
            values = ours(await scrape(client, sidecar, "QUEUEPROXY_METRICS_PORT"))
    assert values["rejected"]["upstream_unreachable"] == 1
    assert sum(values["rejected"].values()) == 1
