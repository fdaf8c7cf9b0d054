"""A pod's lifecycle end to end (issue 4, contract §7 and §8): readiness, probe answers, drain.

Real sidecar processes between real clients and either an aiohttp app in the test's own loop
(`AppDouble`, which records everything that reaches it) or the sample app as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
from aiohttp import web

from sampleapp.protos import hello_pb2, hello_pb2_grpc
from tests.harness import (
    Process,
    free_port,
    knative_env,
    running,
    serve_app,
    start_sampleapp,
    start_sidecar,
    until,
)

HEALTH_CHECK = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
SHUTTING_DOWN = "shutting down\n"
MISSING_HASH = 'a probe request must contain a non-empty "K-Network-Hash" header\n'


class AppDouble:
    """The user container: records every request and answers /healthz with a settable status."""

    def __init__(self) -> None:
        self.seen: list[str] = []  # path and query of every request but /healthz
        self.health_status = 200
        self.health_hits = 0
        self.health_headers: dict[str, str] = {}
        self.active = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/healthz":
            self.health_hits += 1
            self.health_headers = dict(request.headers)
            return web.Response(status=self.health_status, text="health\n")
        self.seen.append(request.path_qs)
        if request.path == "/hold":
            self.active += 1
            try:
                await self.release.wait()
            finally:
                self.active -= 1
        return web.Response(text="app\n")


@contextlib.asynccontextmanager
async def app_double(app: AppDouble) -> AsyncIterator[int]:
    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", app.handle)
    async with serve_app(application) as port:
        try:
            yield port
        finally:
            app.release.set()


@contextlib.asynccontextmanager
async def stack(app: AppDouble, **env: str) -> AsyncIterator[Process]:
    async with app_double(app) as app_port:
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port(), **env))
        with running(sidecar):
            yield sidecar


def http_probe(
    port: int, path: str = "/healthz", headers: dict[str, str] | None = None, **fields: object
) -> str:
    handler: dict[str, object] = {"path": path, "port": port, "host": "127.0.0.1", "scheme": "HTTP"}
    if headers:
        handler["httpHeaders"] = [{"name": name, "value": value} for name, value in headers.items()]
    return json.dumps({"httpGet": handler, **fields})


def tcp_probe(port: int, **fields: object) -> str:
    return json.dumps({"tcpSocket": {"port": port, "host": "127.0.0.1"}, **fields})


async def ask(
    client: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    timeout: float = 5.0,
) -> tuple[int, str, dict[str, str]]:
    async with client.request(
        method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        return response.status, await response.text(), dict(response.headers)


async def exit_code(process: Process, timeout: float = 10.0) -> int:
    return await asyncio.to_thread(process.proc.wait, timeout)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except ConnectionRefusedError:
        return True
    return False


# -- Probe answers (§7.1) ---------------------------------------------------------------------


async def test_every_probe_answer_and_none_reaches_the_app() -> None:
    app = AppDouble()
    async with stack(app) as sidecar, aiohttp.ClientSession() as client:
        url = sidecar.url
        for agent in ("kube-probe/1.30", "Knative-Activator-Probe", "Knative-Autoscaling-Probe/x"):
            for method, path in (("GET", "/healthz"), ("POST", "/any/path?x=1"), ("HEAD", "/")):
                status, body, headers = await ask(
                    client, url + path, {"User-Agent": agent, "K-Network-Probe": "queue"}, method
                )
                assert status == 200, (agent, method, path)
                assert body == ("" if method == "HEAD" else "queue")
        # A health check must say what it wants; the autoscaler's `activator` value is refused.
        for agent in ("kube-probe/1.30", "Knative-Autoscaling-Probe"):
            status, body, _ = await ask(
                client, url + "/", {"User-Agent": agent, "K-Network-Probe": "activator"}
            )
            assert (status, body) == (400, "unexpected probe header value: activator\n")
        status, body, _ = await ask(client, url + "/", {"User-Agent": "kube-probe/1.30"})
        assert (status, body) == (400, "unexpected probe header value: \n")
        # Network probes (any User-Agent): the hash comes back.
        status, body, headers = await ask(
            client, url + "/x", {"K-Network-Probe": "probe", "K-Network-Hash": "abc123"}
        )
        assert (status, body, headers["K-Network-Hash"]) == (200, "", "abc123")
        for missing in ({}, {"K-Network-Hash": ""}):
            status, body, _ = await ask(client, url + "/", {"K-Network-Probe": "probe", **missing})
            assert (status, body) == (400, MISSING_HASH)
        assert app.seen == []
        # Without a health-check User-Agent, `K-Network-Probe: queue` is an ordinary request.
        status, body, _ = await ask(client, url + "/plain", {"K-Network-Probe": "queue"})
        assert (status, body) == (200, "app\n")
        assert app.seen == ["/plain"]


async def test_probes_skip_the_limiter_when_every_slot_and_queue_place_is_taken() -> None:
    app = AppDouble()
    async with stack(app, CONTAINER_CONCURRENCY="1") as sidecar:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            url = sidecar.url
            held = [asyncio.ensure_future(ask(client, f"{url}/hold?id={i}")) for i in range(11)]
            await until(lambda: app.active == 1)
            await asyncio.sleep(0.2)  # the other 10 fill the queue (10 x CC)
            status, body, _ = await ask(client, url + "/hold?id=overflow")
            assert (status, body) == (503, "pending request queue full\n")
            for _ in range(5):
                assert (await ask(client, url + "/", HEALTH_CHECK))[:2] == (200, "queue")
                network = {"K-Network-Probe": "probe", "K-Network-Hash": "h"}
                assert (await ask(client, url + "/", network))[0] == 200
            assert app.active == 1 and not any(task.done() for task in held)
            app.release.set()
            assert [status for status, _, _ in await asyncio.gather(*held)] == [200] * 11
    assert app.seen == [f"/hold?id={i}" for i in range(11)]


# -- Probing the app (§7.2) -------------------------------------------------------------------


async def test_readiness_is_gated_on_an_app_that_starts_late() -> None:
    app_port = free_port()
    # periodSeconds > 0: one try per health check, so "not ready" is answered at once.
    periodic = await asyncio.to_thread(
        start_sidecar,
        knative_env(
            app_port,
            free_port(),
            SERVING_READINESS_PROBE=tcp_probe(app_port, periodSeconds=1, timeoutSeconds=1),
        ),
    )
    # periodSeconds 0 (Knative's default): a health check polls the app for up to 10 s.
    aggressive = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
    with running(periodic), running(aggressive):
        async with aiohttp.ClientSession() as client:
            started = time.monotonic()
            app_starting = asyncio.ensure_future(
                asyncio.to_thread(start_sampleapp, PORT=str(app_port), STARTUP_DELAY_SECONDS="1.5")
            )
            held_check = asyncio.ensure_future(ask(client, aggressive.url, HEALTH_CHECK))
            answers = []
            while not app_starting.done():
                answers.append(await ask(client, periodic.url, HEALTH_CHECK))
                await asyncio.sleep(0.1)
            with running(await app_starting):
                status, body, _ = await held_check
                waited = time.monotonic() - started
                assert (status, body) == (200, "queue")
                assert waited >= 1.4  # held until the app listened, not answered early
                assert (await ask(client, periodic.url, HEALTH_CHECK))[:2] == (200, "queue")
                # Requests are proxied before readiness too; now they reach the app.
                assert (await ask(client, periodic.url + "/"))[1] == "Hello World!\n"
    assert len(answers) >= 5
    # Before the app listened, every answer was "not ready" (the last may have raced it).
    assert {(status, body) for status, body, _ in answers[:-1]} == {(503, "")}


async def test_http_readiness_path_flips_between_failing_and_passing() -> None:
    app = AppDouble()
    async with app_double(app) as app_port:
        probe = http_probe(
            app_port,
            periodSeconds=1,
            timeoutSeconds=1,
            headers={"X-Probe": "yes"},
        )
        sidecar = await asyncio.to_thread(
            start_sidecar, knative_env(app_port, free_port(), SERVING_READINESS_PROBE=probe)
        )
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                # 200-399 pass, anything else fails; each health check asks the app afresh.
                outcomes = []
                for app_status in (200, 500, 503, 200, 399, 400, 302, 500, 200):
                    app.health_status = app_status
                    hits = app.health_hits
                    for _ in range(3):
                        status, body, _ = await ask(client, sidecar.url, HEALTH_CHECK)
                        outcomes.append((app_status, status, body))
                    assert app.health_hits == hits + 3
                assert app.health_headers["User-Agent"] == "kube-probe//"
                assert app.health_headers["X-Probe"] == "yes"
            sidecar.terminate()
            log = sidecar.output()
    for app_status, status, body in outcomes:
        expected = (200, "queue") if 200 <= app_status < 400 else (503, "")
        assert (status, body) == expected, app_status
    assert app.seen == []  # only the readiness probe's own GET /healthz reached the app
    # One log line per transition (ready, not ready x3 ...), not one per failed try.
    messages = [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]
    assert [m.split(":")[0] for m in messages if "ready" in m.split(":")[0]] == [
        "ready",
        "not ready",
        "ready",
        "not ready",
        "ready",
        "not ready",
        "ready",
    ]


async def test_sample_app_healthz_switch_drives_readiness() -> None:
    app_port = free_port()
    with running(await asyncio.to_thread(start_sampleapp, PORT=str(app_port))) as sampleapp:
        probe = http_probe(app_port, periodSeconds=1, timeoutSeconds=1)
        sidecar = await asyncio.to_thread(
            start_sidecar, knative_env(app_port, free_port(), SERVING_READINESS_PROBE=probe)
        )
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (200, "queue")
                for ready, expected in (("0", (503, "")), ("1", (200, "queue"))):
                    await ask(client, f"{sampleapp.url}/healthz?ready={ready}", method="POST")
                    status, body, _ = await ask(client, sidecar.url, HEALTH_CHECK)
                    assert (status, body) == expected


async def test_aggressive_probe_is_shared_and_answers_once_the_app_recovers() -> None:
    app = AppDouble()
    async with app_double(app) as app_port:
        sidecar = await asyncio.to_thread(
            start_sidecar,
            knative_env(app_port, free_port(), SERVING_READINESS_PROBE=http_probe(app_port)),
        )
        with running(sidecar):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
                app.health_status = 500
                started = time.monotonic()
                checks = [
                    asyncio.ensure_future(ask(client, sidecar.url, HEALTH_CHECK)) for _ in range(5)
                ]
                await asyncio.sleep(0.6)
                assert not any(check.done() for check in checks)
                app.health_status = 200
                results = await asyncio.gather(*checks)
                elapsed = time.monotonic() - started
    assert [(status, body) for status, body, _ in results] == [(200, "queue")] * 5
    # One poll every 50 ms shared by all five checks, not five polls.
    assert app.health_hits <= elapsed / 0.05 + 3, (app.health_hits, elapsed)


def set_serving(port: int, serving: bool) -> None:
    """Flip the gRPC sample app's grpc.health.v1 status (hello.Readiness/Set)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        switch = hello_pb2_grpc.ReadinessStub(channel)
        switch.Set(hello_pb2.SetReadinessRequest(serving=serving), timeout=5)


async def test_a_grpc_probe_makes_the_sidecar_ready_only_while_the_app_is_serving() -> None:
    with running(start_sampleapp(SAMPLEAPP_PROTOCOL="grpc")) as app:
        await asyncio.to_thread(set_serving, app.port, False)
        probes = json.dumps(
            [
                {"grpc": {"port": app.port, "service": "hello.Greeter"}, "periodSeconds": 1},
                {"exec": {"command": ["true"]}, "periodSeconds": 1},  # TCP on USER_PORT
            ]
        )
        env = knative_env(app.port, free_port(), SERVING_READINESS_PROBE=probes)
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (503, "")
                await asyncio.to_thread(set_serving, app.port, True)
                assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (200, "queue")
                await asyncio.to_thread(set_serving, app.port, False)
                assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (503, "")
            sidecar.terminate()
            log = sidecar.output()
    assert "gRPC health check status NOT_SERVING" in log


async def test_a_grpc_probe_in_aggressive_mode_answers_once_the_app_serves() -> None:
    # Knative's default periodSeconds 0: the kubelet's check waits while the sidecar polls.
    with running(start_sampleapp(SAMPLEAPP_PROTOCOL="grpc", READY_AFTER_SECONDS="1")) as app:
        probe = json.dumps({"grpc": {"port": app.port, "service": ""}})
        env = knative_env(app.port, free_port(), SERVING_READINESS_PROBE=probe)
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                status, body, _ = await ask(client, sidecar.url, HEALTH_CHECK)
    assert (status, body) == (200, "queue")


async def test_grpc_and_exec_probes_of_dead_ports_are_not_ready() -> None:
    dead_port = free_port()
    dead_grpc = {"grpc": {"port": dead_port, "service": ""}, "periodSeconds": 1}
    env = knative_env(free_port(), free_port(), SERVING_READINESS_PROBE=json.dumps(dead_grpc))
    grpc_sidecar = await asyncio.to_thread(start_sidecar, env)
    exec_only = {"exec": {"command": ["true"]}, "periodSeconds": 1}
    env = knative_env(dead_port, free_port(), SERVING_READINESS_PROBE=json.dumps(exec_only))
    exec_sidecar = await asyncio.to_thread(start_sidecar, env)
    with running(grpc_sidecar), running(exec_sidecar):
        async with aiohttp.ClientSession() as client:
            for dead in (grpc_sidecar, exec_sidecar):
                assert (await ask(client, dead.url, HEALTH_CHECK))[:2] == (503, "")


async def test_health_checks_are_not_cut_by_the_revision_timeout() -> None:
    app = AppDouble()
    async with app_double(app) as app_port:
        env = knative_env(
            app_port,
            free_port(),
            SERVING_READINESS_PROBE=http_probe(app_port),
            REVISION_TIMEOUT_SECONDS="1",
        )
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                app.health_status = 503
                check = asyncio.ensure_future(ask(client, sidecar.url, HEALTH_CHECK))
                await asyncio.sleep(1.5)  # longer than REVISION_TIMEOUT_SECONDS
                app.health_status = 200
                status, body, _ = await check
    assert (status, body) == (200, "queue")


# -- Drain (§8) -------------------------------------------------------------------------------


async def test_draining_answers_every_probe_with_shutting_down_and_still_serves() -> None:
    app = AppDouble()
    async with stack(app, QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="2") as sidecar:
        async with aiohttp.ClientSession() as client:
            url = sidecar.url
            assert (await ask(client, url, HEALTH_CHECK))[:2] == (200, "queue")
            sidecar.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            probes = [
                HEALTH_CHECK,
                {"User-Agent": "Knative-Activator-Probe", "K-Network-Probe": "queue"},
                {"User-Agent": "Knative-Autoscaling-Probe", "K-Network-Probe": "activator"},
                {"User-Agent": "kube-probe/1.30"},
                {"K-Network-Probe": "probe", "K-Network-Hash": "abc"},
                {"K-Network-Probe": "probe"},
            ]
            for headers in probes:
                status, body, _ = await ask(client, url + "/x", headers)
                assert (status, body) == (503, SHUTTING_DOWN), headers
            assert (await ask(client, url + "/served"))[:2] == (200, "app\n")
            assert sidecar.proc.poll() is None
        assert await exit_code(sidecar) == 0
    assert app.seen == ["/served"]


async def test_probes_during_the_drain_do_not_restart_the_quiet_period() -> None:
    app = AppDouble()
    async with stack(app, QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="0.5") as sidecar:
        async with aiohttp.ClientSession() as client:
            sidecar.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            # The signal is handled by the event loop, possibly after a probe that arrived in the
            # same iteration: wait for the first probe that sees the drain, then count.
            while (await ask(client, sidecar.url, HEALTH_CHECK))[0] != 503:
                assert time.monotonic() - started < 5, "SIGTERM did not start the drain"
            answers = set()
            # Probes every 50 ms would keep a 0.5 s quiet period open forever if they counted.
            while sidecar.proc.poll() is None:
                assert time.monotonic() - started < 5, "the probes kept the drain open"
                for headers in (HEALTH_CHECK, {"K-Network-Probe": "probe", "K-Network-Hash": "h"}):
                    with contextlib.suppress(aiohttp.ClientConnectionError):
                        answers.add((await ask(client, sidecar.url, headers))[:2])
                await asyncio.sleep(0.05)
        assert await exit_code(sidecar) == 0
    assert answers == {(503, SHUTTING_DOWN)}


async def test_sigterm_under_load_from_50_clients_loses_no_request() -> None:
    with running(await asyncio.to_thread(start_sampleapp)) as sampleapp:
        sidecar = await asyncio.to_thread(
            start_sidecar, knative_env(sampleapp.port, free_port(), CONTAINER_CONCURRENCY="10")
        )
        with running(sidecar):
            # (after SIGTERM, on a fresh connection, status, body)
            results: list[tuple[bool, bool, int, str]] = []
            failures: list[BaseException] = []
            stop = asyncio.Event()
            signalled = False

            async def client_loop(client: aiohttp.ClientSession, fresh: bool) -> None:
                while not stop.is_set():
                    after = signalled
                    try:
                        async with client.get(f"{sidecar.url}/?sleep=5") as response:
                            text = await response.text()
                            results.append((after, fresh, response.status, text))
                    except (aiohttp.ClientError, OSError) as error:
                        failures.append(error)
                        return

            kept_alive = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
            async with kept_alive, fresh:
                loops = [client_loop(kept_alive, False) for _ in range(40)]
                loops += [client_loop(fresh, True) for _ in range(10)]  # a connection per request
                running_loops = asyncio.gather(*loops)
                await asyncio.sleep(0.5)
                sidecar.proc.send_signal(signal.SIGTERM)
                signalled = True
                # The quiet period (0.5 s) restarts with every request: the load keeps it open.
                await asyncio.sleep(0.7)
                drain_check = await ask(fresh, sidecar.url, HEALTH_CHECK)
                await asyncio.sleep(0.8)
                alive_at_stop = sidecar.proc.poll() is None
                stop.set()
                await running_loops
            code = await exit_code(sidecar)
    assert failures == []
    assert alive_at_stop
    assert drain_check[:2] == (503, SHUTTING_DOWN)
    assert {(status, body) for _, _, status, body in results} == {
        (200, "Hello World!\nsleep: 5 ms\n")
    }
    after_sigterm = [fresh for after, fresh, _, _ in results if after]
    assert len(after_sigterm) >= 50, len(after_sigterm)
    assert after_sigterm.count(True) >= 10  # new connections were accepted while draining
    assert code == 0


async def test_slow_requests_and_a_websocket_finish_during_drain() -> None:
    with running(await asyncio.to_thread(start_sampleapp)) as sampleapp:
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(sampleapp.port, free_port()))
        with running(sidecar):
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
                slow = [
                    asyncio.ensure_future(ask(client, f"{sidecar.url}/?sleep=2000", timeout=10))
                    for _ in range(5)
                ]
                ws = await client.ws_connect(sidecar.url.replace("http", "ws") + "/ws")
                await asyncio.sleep(0.1)
                sidecar.proc.send_signal(signal.SIGTERM)
                # Quiet period: the websocket echoes and new connections are still served.
                await ws.send_str("during quiet period")
                assert (await ws.receive(timeout=5)).data == "during quiet period"
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)
                ) as fresh:
                    assert (await ask(fresh, sidecar.url + "/"))[:2] == (200, "Hello World!\n")
                # Quiet period over: the listener closes while the slow requests still run.
                deadline = time.monotonic() + 5
                while not refuses_connections(sidecar.port):
                    assert time.monotonic() < deadline, "listener never closed"
                    await asyncio.sleep(0.05)
                assert not any(request.done() for request in slow)
                for status, body, _ in await asyncio.gather(*slow):
                    assert (status, body) == (200, "Hello World!\nsleep: 2000 ms\n")
                # Ordinary requests are done; the process still waits for the websocket.
                await asyncio.sleep(0.3)
                await ws.send_str("after the listener closed")
                assert (await ws.receive(timeout=5)).data == "after the listener closed"
                assert sidecar.proc.poll() is None
                await ws.close()
            assert await exit_code(sidecar) == 0


# -- Admin port: /wait-for-drain (§8) ---------------------------------------------------------


async def test_wait_for_drain_without_sigterm_is_undone_after_a_second() -> None:
    app = AppDouble()
    # A quiet period longer than the 1 s grace, as in Knative (30 s): the undo ends the wait.
    async with stack(app, QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="2") as sidecar:
        admin = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_ADMIN_PORT')}"
        async with aiohttp.ClientSession() as client:
            started = time.monotonic()
            pre_stop = asyncio.ensure_future(ask(client, admin + "/wait-for-drain"))
            await asyncio.sleep(0.3)
            assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (503, SHUTTING_DOWN)
            assert not pre_stop.done()
            status, body, _ = await pre_stop
            waited = time.monotonic() - started
            assert (status, body) == (200, "")
            assert 0.9 <= waited < 1.9, waited  # released by the undo, not by the quiet period
            assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (200, "queue")
            assert (await ask(client, sidecar.url + "/after"))[:2] == (200, "app\n")
            assert sidecar.proc.poll() is None
            # A second preStop drains again, and a SIGTERM after it ends the process.
            pre_stop = asyncio.ensure_future(ask(client, admin + "/wait-for-drain", timeout=10))
            await asyncio.sleep(0.2)
            sidecar.proc.send_signal(signal.SIGTERM)
            assert (await pre_stop)[:2] == (200, "")
        assert await exit_code(sidecar) == 0


async def test_wait_for_drain_blocks_until_the_quiet_period_after_the_last_request() -> None:
    app = AppDouble()
    async with stack(app) as sidecar:
        admin = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_ADMIN_PORT')}"
        async with aiohttp.ClientSession() as client:
            pre_stop = asyncio.ensure_future(ask(client, admin + "/wait-for-drain", timeout=10))
            await asyncio.sleep(0.1)
            sidecar.proc.send_signal(signal.SIGTERM)
            # Requests every 0.2 s for 1.5 s keep restarting the 0.5 s quiet period.
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                last_request = time.monotonic()  # its arrival restarts the quiet period
                assert (await ask(client, sidecar.url + "/busy"))[:2] == (200, "app\n")
                assert not pre_stop.done()
                await asyncio.sleep(0.2)
            # Past the 1 s undo window: the SIGTERM keeps the pod draining.
            assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (503, SHUTTING_DOWN)
            assert (await pre_stop)[:2] == (200, "")
            answered = time.monotonic()
        assert answered - last_request >= 0.45
        assert await exit_code(sidecar) == 0


async def test_admin_port_answers_404_for_anything_but_wait_for_drain() -> None:
    app = AppDouble()
    async with stack(app) as sidecar, aiohttp.ClientSession() as client:
        admin = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_ADMIN_PORT')}"
        for method, path in (
            ("GET", "/"),
            ("GET", "/healthz"),
            ("GET", "/wait-for-drain/x"),
            ("POST", "/drain"),
            ("GET", "/metrics"),
        ):
            status, body, _ = await ask(client, admin + path, method=method)
            assert (status, body) == (404, "404 page not found\n"), path
        # None of those started a drain.
        assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (200, "queue")


async def test_sigint_drains_like_sigterm() -> None:
    app = AppDouble()
    async with stack(app, QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="1") as sidecar:
        async with aiohttp.ClientSession() as client:
            sidecar.proc.send_signal(signal.SIGINT)
            await asyncio.sleep(0.2)
            assert (await ask(client, sidecar.url, HEALTH_CHECK))[:2] == (503, SHUTTING_DOWN)
            assert (await ask(client, sidecar.url + "/served"))[:2] == (200, "app\n")
        assert await exit_code(sidecar) == 0
