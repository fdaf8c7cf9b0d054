"""Inputs the authors of our gauges, rejection reasons and live page did not write, against a real
sidecar: clients that leave while queued or at the app (every way a TCP client can leave), bad
requests that carry the client's own bytes (which must never reach our log lines), and live-page
viewers that pipeline a drain, half-close, speak HTTP/1.0 or never read while the pod shuts down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import struct
import time

import aiohttp
import pytest

from tests.harness import free_port, knative_env, raw_exchange, running, start_sidecar, until
from tests.test_outcomes_e2e import ours, scrape, stack

pytestmark = pytest.mark.timeout(60)

NO_REJECTIONS = {
    "queue_full": 0,
    "timeout": 0,
    "upstream_unreachable": 0,
    "upstream_reset": 0,
    "upstream_malformed": 0,
    "draining": 0,
    "bad_request": 0,
}


def _send(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.sendall(request)
    return sock


async def test_clients_that_leave_are_no_rejection_and_the_gauges_return_to_zero() -> None:
    async with (
        stack(CONTAINER_CONCURRENCY="1") as (sidecar, app),
        aiohttp.ClientSession() as client,
    ):

        async def gauges() -> tuple[int, int, dict[str, int]]:
            values = ours(await scrape(client, sidecar, "QUEUEPROXY_METRICS_PORT"))
            return (
                values["queueproxy_requests_at_app"],
                values["queueproxy_requests_queued"],
                values["rejected"],
            )

        held = b"GET /work?hold=1 HTTP/1.1\r\nHost: a\r\n\r\n"
        at_app = _send(sidecar.port, held)
        await until(lambda: app.active == 1)
        queued = [_send(sidecar.port, held) for _ in range(3)]
        for _ in range(200):
            if (await gauges())[:2] == (1, 3):
                break
            await asyncio.sleep(0.02)
        assert (await gauges())[:2] == (1, 3)
        # Queued clients leave: a reset, a half-close (Go's server takes it as gone), a close.
        queued[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        queued[0].close()
        queued[1].shutdown(socket.SHUT_WR)
        queued[2].close()
        for _ in range(200):
            if (await gauges())[:2] == (1, 0):
                break
            await asyncio.sleep(0.02)
        assert await gauges() == (1, 0, NO_REJECTIONS)
        # The client at the app leaves, and one leaves in the middle of its request body.
        at_app.close()
        await until(lambda: app.active == 0)
        body_cut = b"POST /work HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab"
        partial = _send(sidecar.port, body_cut)
        await asyncio.sleep(0.2)
        partial.close()
        for _ in range(200):
            if (await gauges())[:2] == (0, 0):
                break
            await asyncio.sleep(0.02)
        assert await gauges() == (0, 0, NO_REJECTIONS)
        queued[1].close()


async def test_rejection_log_lines_carry_none_of_the_clients_bytes() -> None:
    marker = "MARKER7f3a"
    bad = [
        # A health check with a value of the client's choosing (Knative echoes it in the 400).
        f"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: kube-probe/1.30\r\n"
        f"K-Network-Probe: {marker}-probe\r\n\r\n",
        # A transfer coding we do not implement, named by the client.
        f"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {marker}, chunked\r\n\r\n",
        f"GET /{marker}-path HTTP/1.1\r\nHost: a\r\nContent-Length: {marker}\r\n\r\n",
        f"GET /{marker}-path HTTP/1.1\r\nHost: {marker} x\r\n\r\n",
        f"GET /{marker}-line HTTP/7.1\r\nHost: a\r\n\r\n",
        f"GET /x HTTP/1.1\r\nHost: a\r\nX-{marker}\r\n\r\n",
    ]
    async with (
        stack(CONTAINER_CONCURRENCY="1", QUEUEPROXY_REJECTION_LOG_INTERVAL_SECONDS="0") as (
            sidecar,
            _,
        ),
        aiohttp.ClientSession() as client,
    ):
        for request in bad:
            with _send(sidecar.port, request.encode()) as sock:
                answer = sock.recv(1000)
            assert answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), answer
        values = ours(await scrape(client, sidecar, "QUEUEPROXY_METRICS_PORT"))
        assert values["rejected"]["bad_request"] == len(bad)
        assert await asyncio.to_thread(sidecar.terminate) == 0
        output = sidecar.proc.stdout.read()
    lines = [json.loads(line) for line in output.splitlines()]
    answered = [line for line in lines if line["message"].startswith("sidecar answered")]
    assert len(answered) == len(bad)  # interval 0: every one is logged
    assert marker.lower() not in output.lower(), [
        line["message"] for line in answered if marker.lower() in line["message"].lower()
    ]


def _stream(port: int, request: bytes) -> socket.socket:
    sock = _send(port, request)
    have = b""
    while b"\n\n" not in have:
        chunk = sock.recv(65536)
        assert chunk, have
        have += chunk
    assert have.split(b"\r\n", 1)[0].endswith(b" 200 OK"), have[:100]
    return sock


def test_live_viewers_can_neither_pipeline_a_drain_nor_hold_up_shutdown() -> None:
    env = knative_env(
        free_port(),
        free_port(),
        CONTAINER_CONCURRENCY="2",
        QUEUEPROXY_LIVE="1",
        QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="1",
    )
    with running(start_sidecar(env)) as sidecar:
        admin = sidecar.port_of("QUEUEPROXY_ADMIN_PORT")
        time.sleep(1.1)
        # A /wait-for-drain pipelined behind an event stream is never read: no drain starts.
        drainer = _stream(
            admin,
            b"GET /live/events HTTP/1.1\r\nHost: p\r\n\r\n"
            b"GET /wait-for-drain HTTP/1.1\r\nHost: p\r\n\r\n",
        )
        viewers = [drainer]
        viewers.append(_stream(admin, b"GET /live/events HTTP/1.0\r\n\r\n"))
        half_closed = _stream(admin, b"GET /live/events?target=2 HTTP/1.1\r\nHost: p\r\n\r\n")
        half_closed.shutdown(socket.SHUT_WR)
        viewers.append(half_closed)
        time.sleep(1.5)  # a tick or two: a drain would show
        answer = raw_exchange(
            admin, b"GET /live.json HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
        )
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["state"] != "draining"
        drainer.settimeout(0.5)
        seen = b""
        with contextlib.suppress(TimeoutError):
            while len(seen) < 200_000:
                seen += drainer.recv(65536)
        assert b"HTTP/1.1 200 OK\r\nContent-Length" not in seen  # no second answer
        # SIGTERM with viewers attached (one never reading): out after the quiet period.
        started = time.monotonic()
        sidecar.proc.send_signal(signal.SIGTERM)
        assert sidecar.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        for sock in viewers:
            sock.close()
