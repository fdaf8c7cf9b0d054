"""What the autoscaler and Prometheus scrape, end to end (contract §4, §6): a real sidecar process
in front of an aiohttp app in the test's loop, driven by the test's own traffic.

:9090 bodies are decoded with the `protobuf` package against docs/stat.proto, text bodies are
parsed with prometheus-client's parser. The 1 s windows are cut by the sidecar's own ticker, so
the tests watch every window go by (a scrape every 50 ms, windows told apart by their
`process_uptime`) and reason about whole windows, never about when a window starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    Process,
    free_port,
    knative_env,
    running,
    serve_app,
    start_sidecar,
    until,
    wait_for_port,
)

POD = "hello-00001-deployment-5f7c9d8b6c-x7k2p"
# The autoscaler reads at most this many bytes of a scrape (§5.1).
SCRAPER_BODY_LIMIT = 336
HEALTH_CHECK = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
NETWORK_PROBE = {"K-Network-Probe": "probe", "K-Network-Hash": "e2e"}
ACTIVATOR = {"K-Proxy-Request": "activator"}
SCRAPE_INTERVAL = 0.05

pytestmark = pytest.mark.timeout(30)


class App:
    """The user container: `/work?sleep=S&status=N`, or `/work?wait=1` until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.active = 0
        self.requests = 0
        self.cancelled = 0

    async def work(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.active += 1
        try:
            if "wait" in request.query:
                await self.release.wait()
            else:
                await asyncio.sleep(float(request.query.get("sleep", "0")))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        return web.Response(status=int(request.query.get("status", "200")), text="ok\n")


@contextlib.asynccontextmanager
async def stack(cc: int = 0, **env: str) -> AsyncIterator[tuple[Process, App]]:
    app = App()
    web_app = web.Application()
    web_app.router.add_route("*", "/work", app.work)
    async with serve_app(web_app) as app_port:
        try:
            settings = knative_env(
                app_port, free_port(), CONTAINER_CONCURRENCY=str(cc), SERVING_POD=POD, **env
            )
            sidecar = await asyncio.to_thread(start_sidecar, settings)
            with running(sidecar):
                metrics_port = sidecar.port_of("QUEUEPROXY_METRICS_PORT")
                await asyncio.to_thread(wait_for_port, metrics_port, 10.0, sidecar.proc)
                yield sidecar, app
        finally:
            app.release.set()


def decode(stat_pb2: ModuleType, body: bytes) -> Any:
    stat = stat_pb2.Stat()
    stat.ParseFromString(body)
    return stat


class Windows:
    """Every completed window the sidecar publishes on :9090, in order, as decoded `Stat`s."""

    def __init__(self, client: aiohttp.ClientSession, sidecar: Process, stat_pb2: ModuleType):
        self.client = client
        self.url = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_METRICS_PORT')}/metrics"
        self.stat_pb2 = stat_pb2
        self.seen: list[Any] = []

    async def scrape(self) -> Any:
        accept = {"Accept": "application/protobuf"}
        async with self.client.get(self.url, headers=accept) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/protobuf"
            body = await response.read()
        assert len(body) <= SCRAPER_BODY_LIMIT
        stat = decode(self.stat_pb2, body)
        assert stat.pod_name == POD
        return stat

    async def watch(self) -> None:
        while True:
            stat = await self.scrape()
            if stat.process_uptime and (
                not self.seen or stat.process_uptime != self.seen[-1].process_uptime
            ):
                self.seen.append(stat)
            await asyncio.sleep(SCRAPE_INTERVAL)

    async def next(self, count: int = 1) -> list[Any]:
        """Wait for `count` windows cut after now; return them."""
        start = len(self.seen)
        await until(lambda: len(self.seen) >= start + count, timeout=count + 3.0)
        return self.seen[start : start + count]

    async def quiet(self) -> list[Any]:
        """Two windows cut after everything so far: the second one saw no earlier event."""
        # Let the watcher see any window cut just before now, so the next two are really new.
        await asyncio.sleep(4 * SCRAPE_INTERVAL)
        return await self.next(2)

    def since(self, mark: int) -> list[Any]:
        windows = self.seen[mark:]
        # A window the watcher missed would make the sums below wrong for the wrong reason.
        uptimes = [w.process_uptime for w in self.seen[max(mark - 1, 0) :]]
        gaps = [b - a for a, b in zip(uptimes, uptimes[1:], strict=False)]
        assert all(gap < 1.9 for gap in gaps), f"a window was missed: uptimes {uptimes}"
        return windows


@contextlib.asynccontextmanager
async def watching(
    client: aiohttp.ClientSession, sidecar: Process, stat_pb2: ModuleType
) -> AsyncIterator[Windows]:
    windows = Windows(client, sidecar, stat_pb2)
    task = asyncio.ensure_future(windows.watch())
    try:
        await windows.next()  # the first window after the watcher started
        yield windows
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a failed scrape check raises here


async def get(client: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    async with client.get(url, headers=headers) as response:
        return response.status, await response.text()


# -- :9090 -------------------------------------------------------------------------------------


async def test_scrape_is_a_small_protobuf_stat_of_this_pod(stat_pb2: ModuleType) -> None:
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        windows = Windows(client, sidecar, stat_pb2)
        first = await windows.scrape()  # checks content type, size and pod name
        await asyncio.sleep(1.2)
        second = await windows.scrape()
    assert second.process_uptime > 0
    assert second.process_uptime - first.process_uptime >= 1.0
    assert second.timestamp == 0  # queue-proxy never sets it


async def test_held_requests_give_time_weighted_concurrency(stat_pb2: ModuleType) -> None:
    async with (
        stack() as (sidecar, app),
        aiohttp.ClientSession() as client,
        watching(client, sidecar, stat_pb2) as windows,
    ):
        mark = len(windows.seen)
        url = f"{sidecar.url}/work?sleep=2.5"
        held = [get(client, url, **ACTIVATOR) for _ in range(2)]
        held += [get(client, url) for _ in range(2)]
        results = await asyncio.gather(*held)
        await windows.quiet()  # the window the requests ended in, then an idle one
        seen = windows.since(mark)
    assert [status for status, _ in results] == [200] * 4
    assert app.requests == 4
    averages = [w.average_concurrent_requests for w in seen]
    proxied = [w.average_proxied_concurrent_requests for w in seen]
    # 2.5 s of 4 requests holds at least one whole 1 s window: its time-weighted average is 4.
    assert any(abs(a - 4.0) <= 0.3 for a in averages), averages
    assert max(averages) <= 4.0 + 1e-9
    # The two activator requests count in the proxied figures as well as the totals.
    full = [p for a, p in zip(averages, proxied, strict=True) if abs(a - 4.0) <= 0.3]
    assert all(abs(p - 2.0) <= 0.15 for p in full), proxied
    assert sum(w.request_count for w in seen) == 4
    assert sum(w.proxied_request_count for w in seen) == 2
    assert seen[-1].average_concurrent_requests == 0.0
    assert seen[-1].request_count == 0.0
    uptimes = [w.process_uptime for w in seen]
    assert uptimes == sorted(uptimes) and len(set(uptimes)) == len(uptimes)


async def test_steady_sequential_load_gives_its_rate(stat_pb2: ModuleType) -> None:
    rate, seconds = 20, 3.2
    async with (
        stack() as (sidecar, _),
        aiohttp.ClientSession() as client,
        watching(client, sidecar, stat_pb2) as windows,
    ):
        mark = len(windows.seen)
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = proxied = 0
        while (due := start + sent / rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            headers = ACTIVATOR if sent % 4 == 0 else {}
            status, _ = await get(client, f"{sidecar.url}/work", **headers)
            assert status == 200
            sent += 1
            proxied += sent % 4 == 1
        await windows.next(2)
        seen = windows.since(mark)
    counts = [w.request_count for w in seen]
    assert sum(counts) == sent == 64
    assert sum(w.proxied_request_count for w in seen) == proxied == 16
    busy = [index for index, count in enumerate(counts) if count]
    # Windows strictly between the first and the last busy one lie wholly inside the load.
    inside = counts[busy[0] + 1 : busy[-1]]
    assert len(inside) >= 2, counts
    assert all(rate * 0.6 <= count <= rate * 1.4 for count in inside), counts


async def test_aborted_clients_bring_concurrency_back_to_zero(stat_pb2: ModuleType) -> None:
    async with (
        stack(cc=1) as (sidecar, app),
        aiohttp.ClientSession() as client,
        watching(client, sidecar, stat_pb2) as windows,
    ):
        mark = len(windows.seen)
        sockets = []
        for index in range(3):  # one at the app, two waiting for its single slot
            sock = socket.create_connection(("127.0.0.1", sidecar.port))
            sock.sendall(f"GET /work?wait=1&id={index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sockets.append(sock)
        await until(lambda: app.active == 1, timeout=10.0)

        # A whole window with all three in flight: waiting requests are concurrency too.
        def three_in_flight() -> bool:
            return any(abs(w.average_concurrent_requests - 3) < 1e-6 for w in windows.seen[mark:])

        await until(three_in_flight, timeout=10.0)
        for sock in reversed(sockets):  # waiters first, so none is handed the slot meanwhile
            sock.close()
        await until(lambda: app.active == 0, timeout=10.0)
        abort_mark = len(windows.seen)
        after = await windows.quiet()
        # The slot and the queue places are free again.
        assert await get(client, f"{sidecar.url}/work") == (200, "ok\n")
        seen = windows.since(mark)
    assert app.cancelled >= 1  # the app saw the active request cut off
    assert sum(w.request_count for w in seen[: abort_mark - mark]) == 3
    assert [w.average_concurrent_requests for w in after[1:]] == [0.0]
    assert after[-1].request_count == 0.0


async def test_probes_are_never_counted(stat_pb2: ModuleType) -> None:
    async with (
        stack() as (sidecar, app),
        aiohttp.ClientSession() as client,
        watching(client, sidecar, stat_pb2) as windows,
    ):
        mark = len(windows.seen)
        for _ in range(10):
            assert await get(client, sidecar.url, **HEALTH_CHECK) == (200, "queue")
            async with client.get(sidecar.url, headers=NETWORK_PROBE) as response:
                assert response.status == 200
                assert response.headers["K-Network-Hash"] == "e2e"
            # The legacy kubelet header goes to the app but skips the statistics.
            kubelet = {"K-Kubelet-Probe": "queue"}
            assert await get(client, f"{sidecar.url}/work", **kubelet) == (200, "ok\n")
            await asyncio.sleep(0.1)
        # Two ordinary requests prove the window counts what it should.
        for _ in range(2):
            assert await get(client, f"{sidecar.url}/work") == (200, "ok\n")
        await windows.next(2)
        seen = windows.since(mark)
    assert app.requests == 12
    assert sum(w.request_count for w in seen) == 2
    assert sum(w.proxied_request_count for w in seen) == 0


async def test_text_form_without_protobuf_accept() -> None:
    labels = {
        "destination_namespace": "default",
        "destination_configuration": "hello",
        "destination_revision": "hello-00001",
        "destination_pod": POD,
    }
    gauges = {
        "queue_requests_per_second",
        "queue_proxied_operations_per_second",
        "queue_average_concurrent_requests",
        "queue_average_proxied_concurrent_requests",
        "process_uptime",
    }
    windows: dict[float, dict[str, float]] = {}

    async def scrape(client: aiohttp.ClientSession, url: str) -> None:
        async with client.get(url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        values = {}
        ours = set()
        for family in text_string_to_metric_families(text):
            if family.name.startswith("queueproxy_"):
                ours.add(family.name)  # our own, beside Knative's (tests/test_outcomes_e2e.py)
                continue
            assert family.type == "gauge"
            [sample] = family.samples
            assert sample.labels == labels
            values[family.name] = sample.value
        assert set(values) == gauges
        assert {"queueproxy_requests_at_app", "queueproxy_requests_queued"} <= ours
        windows[values["process_uptime"]] = values

    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        url = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_METRICS_PORT')}/metrics"
        await scrape(client, url)
        first_uptime = max(windows)
        for index in range(6):
            headers = ACTIVATOR if index < 2 else {}
            assert await get(client, f"{sidecar.url}/work", **headers) == (200, "ok\n")
        for _ in range(int(2.5 / SCRAPE_INTERVAL)):
            await scrape(client, url)
            await asyncio.sleep(SCRAPE_INTERVAL)
    later = [windows[uptime] for uptime in sorted(windows) if uptime > first_uptime]
    assert len(later) >= 2
    assert sum(w["queue_requests_per_second"] for w in later) == 6
    assert sum(w["queue_proxied_operations_per_second"] for w in later) == 2
    assert later[-1]["process_uptime"] > 1.0


# -- :9091 -------------------------------------------------------------------------------------


async def send_known_load(client: aiohttp.ClientSession, sidecar: Process) -> None:
    """5 x 200 (50 ms each), 3 x 503 from the app, and probes that must not count."""
    for _ in range(5):
        assert await get(client, f"{sidecar.url}/work?sleep=0.05") == (200, "ok\n")
    for _ in range(3):
        assert (await get(client, f"{sidecar.url}/work?status=503"))[0] == 503
    for _ in range(3):
        assert await get(client, sidecar.url, **HEALTH_CHECK) == (200, "queue")
        assert (await get(client, sidecar.url, **NETWORK_PROBE))[0] == 200
    # Any K-Network-Probe value marks a request as a probe for metrics, even one the app answers.
    assert await get(client, f"{sidecar.url}/work", **{"K-Network-Probe": "e2e"}) == (200, "ok\n")


async def scrape_user_metrics(client: aiohttp.ClientSession, sidecar: Process) -> dict:
    port = sidecar.port_of("QUEUEPROXY_USER_METRICS_PORT")
    await asyncio.to_thread(wait_for_port, port, 10.0, sidecar.proc)
    async with client.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "", **labels: str) -> list[Any]:
    return [
        s
        for s in family.samples
        if s.name == family.name + suffix and labels.items() <= s.labels.items()
    ]


def only(family: Any, suffix: str = "", **labels: str) -> Any:
    [sample] = samples(family, suffix, **labels)
    return sample


async def test_v118_revision_metrics_count_a_known_load() -> None:
    async with (
        stack(cc=2, SERVING_REQUEST_METRICS_BACKEND="prometheus") as (sidecar, _),
        aiohttp.ClientSession() as client,
    ):
        before = await scrape_user_metrics(client, sidecar)
        await send_known_load(client, sidecar)
        families = await scrape_user_metrics(client, sidecar)
    assert "revision_request_count" not in before  # nothing observed yet
    base = {
        "namespace_name": "default",
        "service_name": "hello",
        "configuration_name": "hello",
        "revision_name": "hello-00001",
        "pod_name": POD,
        "container_name": "queue-proxy",
    }
    assert {"revision_request_count", "revision_request_latencies"} <= families.keys()
    assert {"revision_app_request_count", "revision_app_request_latencies"} <= families.keys()
    for name, tag in (("revision_request_count", True), ("revision_app_request_count", False)):
        family = families[name]
        assert family.type == "counter"
        for code, count in (("200", 5), ("503", 3)):
            sample = only(family, "_total", response_code=code)
            expected = {**base, "response_code": code, "response_code_class": code[0] + "xx"}
            if tag:
                expected["route_tag"] = "DISABLED"
            assert sample.labels == expected
            assert sample.value == count
    for name in ("revision_request_latencies", "revision_app_request_latencies"):
        family = families[name]
        assert family.type == "histogram"
        assert only(family, "_count", response_code="200").value == 5
        assert only(family, "_count", response_code="503").value == 3
        # Milliseconds: each 200 took at least 50 ms, so none is in the 40 ms bucket.
        assert only(family, "_bucket", response_code="200", le="40").value == 0
        assert only(family, "_bucket", response_code="200", le="+Inf").value == 5
        assert only(family, "_sum", response_code="200").value >= 250
    depth = families["revision_queue_depth"]
    assert depth.type == "gauge"
    # The last request was alone in the breaker: Knative's InFlight() counts it.
    assert only(depth).labels == base
    assert only(depth).value == 1


async def test_v119_otel_metrics_count_a_known_load() -> None:
    config = '{"requestMetrics":{"protocol":"prometheus"}}'
    async with (
        stack(cc=1, OBSERVABILITY_CONFIG=config) as (sidecar, _),
        aiohttp.ClientSession() as client,
    ):
        await send_known_load(client, sidecar)
        families = await scrape_user_metrics(client, sidecar)
    invocations = families["kn_serving_invocation_duration_seconds"]
    assert invocations.type == "histogram"
    code = "http_response_status_code"
    assert only(invocations, "_count", **{code: "200"}).value == 5
    assert only(invocations, "_count", **{code: "503"}).value == 3
    assert len(samples(invocations, "_count")) == 2
    # Seconds: each 200 took at least 50 ms.
    assert only(invocations, "_bucket", **{code: "200", "le": "0.025"}).value == 0
    assert only(invocations, "_sum", **{code: "200"}).value >= 0.25
    assert only(families["kn_serving_queue_depth"]).value == 1
    server = families["http_server_request_duration_seconds"]
    assert server.type == "histogram"
    ok = only(server, "_count", **{code: "200"})
    assert ok.value == 5
    assert ok.labels == {
        "http_request_method": "GET",
        "http_response_status_code": "200",
        "kn_route_tag": "kn:disabled",
    }
    assert only(server, "_count", **{code: "503"}).value == 3
    info = only(families["target_info"])
    assert info.labels["k8s_pod_name"] == POD
    assert info.labels["kn_revision_name"] == "hello-00001"


@pytest.mark.parametrize(
    "env",
    [{}, {"OBSERVABILITY_CONFIG": '{"requestMetrics":{"protocol":"none"}}'}],
    ids=["v1.18-unset", "v1.19-none"],
)
async def test_user_metrics_port_is_closed_when_metrics_are_off(env: dict[str, str]) -> None:
    async with stack(**env) as (sidecar, _), aiohttp.ClientSession() as client:
        assert await get(client, f"{sidecar.url}/work") == (200, "ok\n")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(
                ("127.0.0.1", sidecar.port_of("QUEUEPROXY_USER_METRICS_PORT")), 1.0
            ).close()
