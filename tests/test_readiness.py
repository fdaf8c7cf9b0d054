"""Readiness probing of the user container (contract §7.2).

First the pure ProbeSchedule as timed scripts, then the Prober against real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

import aiohttp
import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import trustme

from queueproxy.config import ProbeSpec
from queueproxy.readiness import (
    AGGRESSIVE_BUDGET,
    Attempt,
    Done,
    Prober,
    ProbeSchedule,
    Wait,
    attempt,
    request_target,
)
from sampleapp.protos import hello_pb2, hello_pb2_grpc
from tests.sampleapp_helpers import RunningApp, start_app

# --- ProbeSchedule --------------------------------------------------------------------------


def same(action: object, expected: object) -> bool:
    """Equal and of the same kind: the schedule's actions are NamedTuples, and a tuple compares
    equal to any other tuple of the same values (`Wait(1.0) == Attempt(1.0)`)."""
    return type(action) is type(expected) and action == expected


def play(
    schedule: ProbeSchedule, outcomes: Iterable[bool], duration: float = 0.0, now: float = 0.0
) -> tuple[Done, list[float]]:
    """Run `schedule`, each attempt lasting `duration` and succeeding per `outcomes` (the last
    outcome repeats). Returns the final Done and the start time of every attempt."""
    outcomes = list(outcomes)
    starts: list[float] = []
    while True:
        action = schedule.next_action(now)
        if isinstance(action, Done):
            return action, starts
        if isinstance(action, Wait):
            assert action.until > now
            now = action.until
            continue
        starts.append(now)
        ok = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        now += duration
        schedule.record(now, ok, "" if ok else f"refused #{len(starts)}")


def aggressive(threshold: int = 1, consecutive: int = 0) -> ProbeSchedule:
    return ProbeSchedule(
        0.0, aggressive=True, timeout=0.1, success_threshold=threshold, consecutive=consecutive
    )


def test_aggressive_attempts_at_once_with_100ms_timeout() -> None:
    spec = ProbeSpec(kind="tcp", host="127.0.0.1", port=1)
    schedule = ProbeSchedule.for_probe(spec, 7.0)
    assert same(schedule.next_action(7.0), Attempt(0.1))


def test_aggressive_single_success() -> None:
    done, starts = play(aggressive(), [True])
    assert same(done, Done(True, ""))
    assert starts == [0.0]


def test_aggressive_polls_every_50ms_until_success() -> None:
    done, starts = play(aggressive(), [False, False, False, True])
    assert done.ready
    assert starts == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_interval_is_start_to_start() -> None:
    _, starts = play(aggressive(), [False, False, True], duration=0.02)
    assert starts == pytest.approx([0.0, 0.05, 0.1])


def test_overrunning_attempt_is_followed_at_once() -> None:
    _, starts = play(aggressive(), [False, False, True], duration=0.1)
    assert starts == pytest.approx([0.0, 0.1, 0.2])


def test_success_threshold_needs_consecutive_successes() -> None:
    done, starts = play(aggressive(threshold=3), [True, True, False, True, True, True])
    assert done.ready
    assert len(starts) == 6


def test_failure_resets_consecutive_count() -> None:
    schedule = aggressive(threshold=3)
    play(schedule, [True, True, False, True, True, True])
    assert schedule.consecutive == 3
    schedule = aggressive(threshold=3)
    assert isinstance(schedule.next_action(0), Attempt)
    schedule.record(0.01, True)
    assert schedule.consecutive == 1
    assert isinstance(schedule.next_action(0.05), Attempt)
    schedule.record(0.06, False, "boom")
    assert schedule.consecutive == 0
    assert schedule.failures == 1


def test_gives_up_after_10s_budget() -> None:
    done, starts = play(aggressive(), [False])
    assert not done.ready
    assert len(starts) == 200  # 0, 0.05, ..., 9.95
    assert starts[-1] < AGGRESSIVE_BUDGET
    assert done.reason == "aggressive probe error (failed 200 times): refused #200"


def test_give_up_reason_when_threshold_not_reached() -> None:
    # Two successes at the very end of the budget are not three.
    outcomes = [False] * 198 + [True, True]
    done, _ = play(aggressive(threshold=3), outcomes)
    assert not done.ready
    assert done.reason.startswith("2 of 3 consecutive successes")
    assert "failed 198 times: refused #198" in done.reason


def test_budget_is_configurable() -> None:
    schedule = ProbeSchedule(0.0, aggressive=True, timeout=0.1, budget=0.5)
    done, starts = play(schedule, [False])
    assert not done.ready
    assert len(starts) == 10


def test_consecutive_successes_carry_over_from_earlier_runs() -> None:
    done, starts = play(aggressive(threshold=3, consecutive=2), [True])
    assert done.ready
    assert len(starts) == 1
    done, starts = play(aggressive(threshold=3, consecutive=2), [False, True, True, True])
    assert len(starts) == 4


def test_normal_mode_is_one_attempt_with_timeout_seconds() -> None:
    spec = ProbeSpec(kind="http", host="127.0.0.1", port=1, period_seconds=5, timeout_seconds=3)
    schedule = ProbeSchedule.for_probe(spec, 0.0)
    assert same(schedule.next_action(0.0), Attempt(3.0))
    schedule.record(0.2, False, "status 500")
    assert same(schedule.next_action(0.3), Done(False, "status 500"))


def test_normal_mode_leaves_thresholds_to_kubelet() -> None:
    spec = ProbeSpec(kind="tcp", host="127.0.0.1", port=1, period_seconds=1, success_threshold=3)
    done, starts = play(ProbeSchedule.for_probe(spec, 0.0), [True])
    assert same(done, Done(True, ""))
    assert len(starts) == 1


def test_normal_mode_without_timeout_uses_kubernetes_default() -> None:
    spec = ProbeSpec(kind="tcp", host="127.0.0.1", port=1, period_seconds=10, timeout_seconds=0)
    assert same(ProbeSchedule.for_probe(spec, 0.0).next_action(0.0), Attempt(1.0))


def test_waits_until_next_tick() -> None:
    schedule = ProbeSchedule(1.0, aggressive=True, timeout=0.1)
    assert same(schedule.next_action(1.0), Attempt(0.1))
    schedule.record(1.01, False, "x")
    assert same(schedule.next_action(1.01), Wait(pytest.approx(1.05)))
    assert same(schedule.next_action(1.05), Attempt(0.1))


def test_done_is_sticky() -> None:
    schedule = aggressive()
    play(schedule, [True])
    assert same(schedule.next_action(100.0), Done(True, ""))


def test_misuse_is_reported() -> None:
    schedule = aggressive()
    with pytest.raises(RuntimeError):
        schedule.record(0.0, True)
    schedule.next_action(0.0)
    with pytest.raises(RuntimeError):
        schedule.next_action(0.01)


# --- Prober against real servers ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class HttpApp:
    """A tiny HTTP/1.1 server: answers with `statuses` in turn (the last repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    delay: float = 0.0
    silent: bool = False  # accept, read, never answer
    body: bytes = b"ok"
    stall_body: bool = False  # send the head, then hang
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    handlers: set[asyncio.Task] = field(default_factory=set)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.silent:
                await self.released.wait()
            await asyncio.sleep(self.delay)
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            length = len(self.body) + (1 if self.stall_body else 0)
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, length)
            )
            if self.stall_body:
                await self.released.wait()
            writer.write(self.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def headers(self, index: int = -1) -> dict[str, str]:
        lines = self.requests[index].decode("latin-1").split("\r\n")[1:]
        return dict(line.split(": ", 1) for line in lines if line)

    def request_line(self, index: int = -1) -> str:
        return self.requests[index].decode("latin-1").split("\r\n")[0]


@contextlib.asynccontextmanager
async def serve(
    app: HttpApp, port: int = 0, tls: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    server = await asyncio.start_server(app.handle, "127.0.0.1", port, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        app.released.set()
        await asyncio.wait_for(asyncio.gather(*app.handlers, return_exceptions=True), 5)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def log(request: pytest.FixtureRequest) -> tuple[logging.Logger, Lines]:
    logger = logging.getLogger(f"test.readiness.{request.node.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    lines = Lines()
    logger.handlers = [lines]
    return logger, lines


def http(port: int, **fields: object) -> ProbeSpec:
    return ProbeSpec(kind="http", host="127.0.0.1", port=port, **fields)


NORMAL = {"period_seconds": 1, "timeout_seconds": 1}


async def test_no_probes_means_always_ready() -> None:
    prober = Prober(())
    assert prober.always_ready
    assert prober.ready
    assert await prober.probe() is True


async def test_tcp_up() -> None:
    app = HttpApp()
    async with serve(app) as port:
        prober = Prober([ProbeSpec(kind="tcp", host="127.0.0.1", port=port)])
        assert not prober.ready
        assert await prober.probe() is True
        assert prober.ready
        async with asyncio.timeout(5):
            while not app.connections:
                await asyncio.sleep(0.01)
        assert app.connections == 1


async def test_tcp_down_normal_mode(log: tuple[logging.Logger, Lines]) -> None:
    port = free_port()
    prober = Prober([ProbeSpec(kind="tcp", host="127.0.0.1", port=port, **NORMAL)], log=log[0])
    assert await prober.probe() is False
    assert not prober.ready
    assert f"tcp probe of 127.0.0.1:{port} failed" in prober.last_results[-1].reason


async def test_tcp_down_aggressive_gives_up_after_budget() -> None:
    port = free_port()
    prober = Prober([ProbeSpec(kind="tcp", host="127.0.0.1", port=port)], budget=0.3)
    assert await asyncio.wait_for(prober.probe(), 5) is False
    reason = prober.last_results[-1].reason
    assert reason.startswith("aggressive probe error (failed ")
    assert f"127.0.0.1:{port}" in reason


@pytest.mark.parametrize(
    ("status", "ready"), [(200, True), (302, True), (404, False), (500, False)]
)
async def test_http_status(status: int, ready: bool) -> None:
    app = HttpApp(statuses=[status])
    async with serve(app) as port:
        prober = Prober([http(port, path="/healthz", **NORMAL)])
        assert await prober.probe() is ready
    if not ready:
        assert f"got status code {status}" in prober.last_results[-1].reason


async def test_http_request_line_and_headers() -> None:
    app = HttpApp()
    async with serve(app) as port:
        spec = http(
            port,
            path="/healthz",
            headers=(("X-Custom", "yes"), ("K-Kubelet-Probe", "queue"), ("User-Agent", "mine")),
            **NORMAL,
        )
        assert await Prober([spec]).probe() is True
    assert app.request_line() == "GET /healthz HTTP/1.1"
    headers = app.headers()
    assert headers["User-Agent"] == "kube-probe//"
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert headers["Connection"] == "close"
    assert headers["X-Custom"] == "yes"
    assert headers["K-Kubelet-Probe"] == "queue"
    assert app.requests[-1].count(b"User-Agent") == 1


async def test_http_path_gets_leading_slash_and_host_header_override() -> None:
    app = HttpApp()
    async with serve(app) as port:
        spec = http(port, path="ready", headers=(("Host", "example.com"),), **NORMAL)
        assert await Prober([spec]).probe() is True
    assert app.request_line() == "GET /ready HTTP/1.1"
    assert app.headers()["Host"] == "example.com"


async def test_https_without_verification() -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("app.invalid").configure_cert(server_tls)
    app = HttpApp()
    async with serve(app, tls=server_tls) as port:
        assert await Prober([http(port, scheme="HTTPS", **NORMAL)]).probe() is True
    assert app.requests


async def test_body_is_read_and_discarded() -> None:
    app = HttpApp(body=b"x" * 300_000)
    async with serve(app) as port:
        assert await Prober([http(port, **NORMAL)]).probe() is True


async def test_status_decides_even_if_body_stalls() -> None:
    app = HttpApp(stall_body=True)
    async with serve(app) as port:
        assert await Prober([http(port, **NORMAL)]).probe() is True


async def test_app_starting_late_becomes_ready_with_aggressive_probe() -> None:
    port = free_port()
    app = HttpApp()
    prober = Prober([http(port)])
    probing = asyncio.ensure_future(prober.probe())
    await asyncio.sleep(0.3)
    assert not probing.done()
    async with serve(app, port):
        assert await asyncio.wait_for(probing, 5) is True
    assert len(app.requests) == 1


async def test_success_threshold_three_needs_three_in_a_row() -> None:
    app = HttpApp(statuses=[200, 500, 200, 200, 200])
    async with serve(app) as port:
        prober = Prober([http(port, success_threshold=3)])
        assert await asyncio.wait_for(prober.probe(), 5) is True
        assert len(app.requests) == 5
        # As in Knative, the streak carries over: one more success answers the next check.
        assert await asyncio.wait_for(prober.probe(), 5) is True
        assert len(app.requests) == 6


async def test_concurrent_callers_share_one_probe() -> None:
    app = HttpApp(delay=0.2)
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)])
        results = await asyncio.wait_for(asyncio.gather(*(prober.probe() for _ in range(10))), 5)
    assert results == [True] * 10
    assert len(app.requests) == 1


async def test_concurrent_callers_share_each_poll() -> None:
    app = HttpApp(statuses=[500, 500, 200])
    async with serve(app) as port:
        prober = Prober([http(port)])
        results = await asyncio.wait_for(asyncio.gather(*(prober.probe() for _ in range(10))), 5)
    assert results == [True] * 10
    assert len(app.requests) == 3


async def test_results_are_not_cached() -> None:
    app = HttpApp(statuses=[200, 500])
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)])
        assert await prober.probe() is True
        assert await prober.probe() is False
    assert len(app.requests) == 2
    assert [run.ready for run in prober.last_results] == [True, False]


async def test_cancelled_caller_does_not_cancel_the_shared_probe() -> None:
    app = HttpApp(delay=0.2)
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)])
        impatient = asyncio.ensure_future(prober.probe())
        patient = asyncio.ensure_future(prober.probe())
        await asyncio.sleep(0.05)
        impatient.cancel()
        assert await asyncio.wait_for(patient, 5) is True


async def test_probe_future_for_callback_callers() -> None:
    app = HttpApp()
    async with serve(app) as port:
        prober = Prober([http(port)])
        first = prober.probe_future()
        assert prober.probe_future() is first
        seen: list[bool] = []
        first.add_done_callback(lambda done: seen.append(done.result()))
        await asyncio.wait_for(asyncio.shield(first), 5)
        await asyncio.sleep(0)
        assert seen == [True]
        assert prober.probe_future() is not first


async def test_silent_app_times_out_normal_mode() -> None:
    app = HttpApp(silent=True)
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)])
        assert await asyncio.wait_for(prober.probe(), 5) is False
    assert "timed out after 1s" in prober.last_results[-1].reason


async def test_silent_app_times_out_each_aggressive_attempt() -> None:
    app = HttpApp(silent=True)
    async with serve(app) as port:
        prober = Prober([http(port)], budget=0.35)
        assert await asyncio.wait_for(prober.probe(), 5) is False
    reason = prober.last_results[-1].reason
    assert "timed out after 0.1s" in reason
    assert 1 <= len(app.requests) <= 4  # 100 ms attempts back to back within 0.35 s


async def test_all_probes_must_pass() -> None:
    up, down = HttpApp(), HttpApp(statuses=[503])
    async with serve(up) as up_port, serve(down) as down_port:
        both_up = Prober([http(up_port, **NORMAL), ProbeSpec("tcp", "127.0.0.1", down_port)])
        assert await both_up.probe() is True
        one_down = Prober([http(up_port, **NORMAL), http(down_port, **NORMAL)])
        assert await one_down.probe() is False
        assert "got status code 503" in one_down.last_results[-1].reason


async def test_transitions_are_logged_once_each(log: tuple[logging.Logger, Lines]) -> None:
    logger, lines = log
    app = HttpApp(statuses=[200, 200, 500, 500, 500, 200, 200])
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)], log=logger)
        results = [await prober.probe() for _ in range(7)]
    assert results == [True, True, False, False, False, True, True]
    assert [message.split(":")[0] for _, message in lines.lines] == [
        "ready",
        "not ready",
        "ready",
    ]
    assert lines.lines[1][0] == "WARNING"
    assert "got status code 500" in lines.lines[1][1]


async def test_failed_aggressive_attempts_are_not_logged(log: tuple[logging.Logger, Lines]) -> None:
    logger, lines = log
    port = free_port()
    prober = Prober([ProbeSpec("tcp", "127.0.0.1", port)], log=logger, budget=0.3)
    assert await prober.probe() is False
    assert await prober.probe() is False
    assert len(lines.lines) == 1
    assert lines.lines[0][1].startswith("not ready: aggressive probe error (failed ")


async def test_last_results_keeps_ten() -> None:
    app = HttpApp()
    async with serve(app) as port:
        prober = Prober([http(port, **NORMAL)])
        for _ in range(12):
            await prober.probe()
    assert len(prober.last_results) == 10
    assert all(run.ready and run.finished >= run.started for run in prober.last_results)


# --- gRPC probes against the sample app in gRPC mode -----------------------------------------


@pytest.fixture(scope="module")
def grpc_app() -> Iterator[RunningApp]:
    running = start_app(SAMPLEAPP_PROTOCOL="grpc")
    yield running
    assert running.stop() == 0


def set_serving(app: RunningApp, serving: bool) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        switch = hello_pb2_grpc.ReadinessStub(channel)
        switch.Set(hello_pb2.SetReadinessRequest(serving=serving), timeout=5)


def grpc_probe(port: int, service: str = "", **fields: object) -> ProbeSpec:
    return ProbeSpec(kind="grpc", host="127.0.0.1", port=port, grpc_service=service, **fields)


@pytest.mark.parametrize("service", ["", "hello.Greeter"])
async def test_grpc_serving_is_ready(grpc_app: RunningApp, service: str) -> None:
    prober = Prober([grpc_probe(grpc_app.port, service, **NORMAL)])
    assert await prober.probe() is True
    assert prober.last_results[-1].reason == ""


async def test_grpc_not_serving_is_not_ready_until_it_serves(
    grpc_app: RunningApp, log: tuple[logging.Logger, Lines]
) -> None:
    logger, lines = log
    prober = Prober([grpc_probe(grpc_app.port, **NORMAL)], log=logger)
    set_serving(grpc_app, False)
    try:
        assert await prober.probe() is False
        assert "gRPC health check status NOT_SERVING" in prober.last_results[-1].reason
    finally:
        set_serving(grpc_app, True)
    assert await prober.probe() is True
    assert [message for _, message in lines.lines][-1] == "ready"


async def test_grpc_aggressive_mode_waits_for_serving(grpc_app: RunningApp) -> None:
    prober = Prober([grpc_probe(grpc_app.port)])  # periodSeconds 0: poll every 50 ms
    set_serving(grpc_app, False)
    try:
        run = prober.probe_future()
        await asyncio.sleep(0.4)
        assert not run.done()
    finally:
        await asyncio.to_thread(set_serving, grpc_app, True)
    assert await asyncio.wait_for(asyncio.shield(run), 5) is True


async def test_grpc_unknown_service_is_not_ready(grpc_app: RunningApp) -> None:
    prober = Prober([grpc_probe(grpc_app.port, "no.such.Service", **NORMAL)])
    assert await prober.probe() is False
    assert "grpc-status 5 (NOT_FOUND)" in prober.last_results[-1].reason


async def test_grpc_unreachable_is_not_ready() -> None:
    prober = Prober([grpc_probe(free_port(), **NORMAL)])
    assert await prober.probe() is False
    assert "grpc probe of 127.0.0.1:" in prober.last_results[-1].reason


async def test_grpc_probe_of_an_http1_app_is_not_ready() -> None:
    app = HttpApp()
    async with serve(app) as port:
        prober = Prober([grpc_probe(port, **NORMAL)])
        assert await prober.probe() is False
    assert "not an HTTP/2 server" in prober.last_results[-1].reason


async def test_grpc_probe_times_out_on_a_silent_app() -> None:
    app = HttpApp(silent=True)
    async with serve(app) as port:
        prober = Prober([grpc_probe(port, **NORMAL)])
        assert await prober.probe() is False
    assert "timed out after 1s" in prober.last_results[-1].reason


# --- ENABLE_HTTP2_AUTO_DETECTION --------------------------------------------------------------


@dataclass
class H2cApp:
    """An h2c-only server (prior knowledge): answers every request with `status`; HTTP/1.1
    requests get the connection closed, as a Go h2c server without the upgrade handler does."""

    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)
    refused_http1: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        connection.initiate_connection()
        writer.write(connection.data_to_send())
        try:
            while data := await reader.read(65536):
                try:
                    events = connection.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.refused_http1 += 1
                    return
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests.append(dict(event.headers))
                        connection.send_headers(
                            event.stream_id, [(":status", str(self.status))], end_stream=True
                        )
                writer.write(connection.data_to_send())
                await writer.drain()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serve_h2c(app: H2cApp) -> AsyncIterator[int]:
    server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_auto_detection_probes_an_h2c_only_app_over_h2c() -> None:
    app = H2cApp()
    async with serve_h2c(app) as port:
        spec = http(port, path="/healthz", headers=(("Host", "app.local"), ("X-Probe", "1")))
        detecting = Prober([spec._replace(**NORMAL)], http2_auto_detection=True)
        assert await detecting.probe() is True
        # Without auto-detection the same app is not ready: it speaks no HTTP/1.1.
        plain = Prober([spec._replace(**NORMAL)])
        assert await plain.probe() is False
    request = app.requests[0]
    assert (request[":method"], request[":path"], request[":scheme"]) == ("GET", "/healthz", "http")
    assert request[":authority"] == "app.local"
    assert (request["user-agent"], request["x-probe"]) == ("kube-probe//", "1")
    assert app.refused_http1 == 1


async def test_auto_detection_fails_on_an_h2c_status_outside_2xx_3xx() -> None:
    app = H2cApp(status=503)
    async with serve_h2c(app) as port:
        prober = Prober([http(port, **NORMAL)], http2_auto_detection=True)
        assert await prober.probe() is False
    reason = prober.last_results[-1].reason
    assert "over h2c: status code 503" in reason


async def test_auto_detection_falls_back_to_http1_for_the_aiohttp_sample_app() -> None:
    running = start_app()
    try:
        prober = Prober([http(running.port, path="/healthz", **NORMAL)], http2_auto_detection=True)
        assert await prober.probe() is True
        # Re-detected every time: still ready on the next run, and not ready when /healthz is.
        assert await prober.probe() is True
        async with aiohttp.ClientSession() as client:
            await client.post(f"{running.url}/healthz?ready=0")
        assert await prober.probe() is False
        reason = prober.last_results[-1].reason
        assert "got status code 503" in reason and "(over h2c: " in reason
    finally:
        assert running.stop() == 0


async def test_auto_detection_reaches_either_kind_of_app_in_one_run() -> None:
    # The app switches protocol between two probes (a new revision of it, say): each run finds
    # out again which protocol it speaks.
    h2c_app, http1_app = H2cApp(), HttpApp()
    async with serve_h2c(h2c_app) as h2c_port, serve(http1_app) as http1_port:
        for port in (h2c_port, http1_port, h2c_port):
            prober = Prober([http(port, **NORMAL)], http2_auto_detection=True)
            assert await prober.probe() is True
    assert len(h2c_app.requests) == 2
    # The HTTP/1 app saw our preface as a request (and answered it in HTTP/1), then the GET.
    assert [head.split(b" ", 1)[0] for head in http1_app.requests] == [b"PRI", b"GET"]


def test_the_sidecar_loads_h2_only_for_a_probe_that_needs_it() -> None:
    code = (
        "import sys\n"
        "import queueproxy.server, queueproxy.readiness, queueproxy.main\n"
        "lazy = ('h2', 'hpack', 'grpc', 'queueproxy.h2probe', 'queueproxy.grpcwire')\n"
        "print(sorted(m for m in sys.modules if m in lazy or m.split('.')[0] in lazy))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("/a b", "/a%20b"),
        ("/h\u20acalth?x=\u00e9", "/h%E2%82%ACalth?x=%C3%A9"),
        ("/x\r\nEvil: 1", "/x%0D%0AEvil:%201"),
        ("/100%", "/100%25"),
        ("/ok%2F?q=a&b=c#frag", "/ok%2F?q=a&b=c"),
        ('/"<>\\^`{|}', "/%22%3C%3E%5C%5E%60%7B%7C%7D"),
    ],
)
async def test_http_path_is_sent_as_a_valid_request_target(path: str, sent: str) -> None:
    # The path comes from the pod spec: whatever it holds, the app gets one well-formed request
    # line (RFC 9112 section 3), as Go's url.URL writes it, never a crash or a second line.
    assert request_target(path) == sent
    app = HttpApp()
    async with serve(app) as port:
        assert await attempt(http(port, path=path, **NORMAL), 2.0) is None
    assert app.request_line() == f"GET {sent} HTTP/1.1"
    assert len(app.requests) == 1


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (("X-A", "a\r\nInjected: 1"), "invalid header field value for 'X-A'"),
        (("X-A", "a\nb"), "invalid header field value"),
        (("X-A", "a\x00b"), "invalid header field value"),
        (("Bad Name", "v"), "invalid header field name 'Bad Name'"),
        (("Host", "h\r\nX: y"), "invalid header field value for 'Host'"),
    ],
)
@pytest.mark.parametrize("h2c_first", [False, True])
async def test_a_probe_header_that_would_inject_fails_the_probe_unsent(
    header: tuple[str, str], why: str, h2c_first: bool
) -> None:
    app = HttpApp()
    async with serve(app) as port:
        spec = http(port, headers=(header,), **NORMAL)
        reason = await attempt(spec, 2.0, h2c_first=h2c_first)
    assert reason is not None and why in reason
    assert app.requests == []  # nothing was sent: no smuggled header reaches the app


async def test_a_non_latin1_header_value_goes_out_as_utf8() -> None:
    app = HttpApp()
    async with serve(app) as port:
        assert await attempt(http(port, headers=(("X-A", "v\u20ac"),), **NORMAL), 2.0) is None
    assert b"\r\nX-A: v\xe2\x82\xac\r\n" in app.requests[-1]
