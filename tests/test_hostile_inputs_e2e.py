"""Inputs the authors of our gauges and rejection reasons did not write, against a real sidecar:
clients that leave while queued or at the app (every way a TCP client can leave), and bad
requests that carry the client's own bytes, which must never reach our log lines."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import aiohttp
import pytest

from tests.harness import until
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
