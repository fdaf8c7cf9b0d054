"""The live page's endpoints on a real sidecar's admin port, over raw sockets: off unless asked
for in a pod, the event stream's framing, the viewer bound, bad input."""

from __future__ import annotations

import json
import socket
import time

import pytest

from queueproxy.live import MAX_VIEWERS
from tests.harness import (
    free_port,
    knative_env,
    raw_exchange,
    running,
    start_sidecar,
    wait_for_port,
)

pytestmark = pytest.mark.timeout(60)


def admin_get(port: int, target: str, method: str = "GET") -> bytes:
    # start_sidecar waits for the serving port; the admin port opens a moment later.
    wait_for_port(port)
    request = f"{method} {target} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
    return raw_exchange(port, request.encode())


def open_stream(port: int, target: str = "/live/events") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: pod\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, have: bytes = b"") -> bytes:
    deadline = time.monotonic() + 5
    while marker not in have:
        assert time.monotonic() < deadline, have[-300:]
        chunk = sock.recv(65536)
        assert chunk, "closed"
        have += chunk
    return have


def test_off_in_a_pod_unless_asked_for() -> None:
    env = knative_env(free_port(), free_port(), CONTAINER_CONCURRENCY="2")
    with running(start_sidecar(env)) as sidecar:
        admin = sidecar.port_of("QUEUEPROXY_ADMIN_PORT")
        for path in ("/live", "/live.json", "/live/events"):
            assert admin_get(admin, path).startswith(b"HTTP/1.1 404 ")


def test_live_endpoints_when_on() -> None:
    env = knative_env(free_port(), free_port(), CONTAINER_CONCURRENCY="2", QUEUEPROXY_LIVE="1")
    with running(start_sidecar(env)) as sidecar:
        admin = sidecar.port_of("QUEUEPROXY_ADMIN_PORT")
        page = admin_get(admin, "/live")
        assert page.startswith(b"HTTP/1.1 200 ")
        assert b"Content-Type: text/html; charset=utf-8" in page
        assert b"Content-Security-Policy: default-src 'none'" in page
        head, _, html = page.partition(b"\r\n\r\n")
        assert b"<script>" in html and b"src=" not in html and b"https:" not in html
        time.sleep(1.2)  # a tick has passed
        answer = admin_get(admin, "/live.json?target=7")
        assert answer.startswith(b"HTTP/1.1 200 ")
        data = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert (data["cc"], data["queue_capacity"], data["at_app"], data["queued"]) == (2, 20, 0, 0)
        assert data["kpa"]["target_annotation"] == 7.0 and data["kpa"]["total"] == 2.0
        assert data["history"]
        assert admin_get(admin, "/live.json?target=abc").startswith(b"HTTP/1.1 400 ")
        assert admin_get(admin, "/live.json?target=nan").startswith(b"HTTP/1.1 400 ")
        assert admin_get(admin, "/live", "POST").startswith(b"HTTP/1.1 405 ")
        # The drain endpoint is still there (not called: it would drain).
        assert admin_get(admin, "/other").startswith(b"HTTP/1.1 404 ")


def test_event_stream_framing_and_the_viewer_bound() -> None:
    env = knative_env(free_port(), free_port(), CONTAINER_CONCURRENCY="2", QUEUEPROXY_LIVE="1")
    with running(start_sidecar(env)) as sidecar:
        admin = sidecar.port_of("QUEUEPROXY_ADMIN_PORT")
        time.sleep(1.1)
        first = open_stream(admin, "/live/events?target=3")
        have = read_until(first, b"\n\n")
        head, _, body = have.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/event-stream" in head
        assert b"Connection: close" in head
        assert b"Content-Length" not in head and b"Transfer-Encoding" not in head
        assert body.startswith(b"retry: 1000\ndata: {")
        event = json.loads(body.split(b"data: ", 1)[1].split(b"\n\n", 1)[0])
        assert "history" in event and event["kpa"]["target_annotation"] == 3.0
        # One more event a second, with the newest point and no history.
        rest = read_until(first, b"\n\n", body.split(b"\n\n", 1)[1])
        later = json.loads(rest.split(b"data: ", 1)[1].split(b"\n\n", 1)[0])
        assert "history" not in later and later["point"]
        others = [open_stream(admin) for _ in range(MAX_VIEWERS - 1)]
        for sock in others:
            read_until(sock, b"data: ")
        refused = admin_get(admin, "/live/events")
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too many live viewers" in refused
        # A viewer that leaves frees its place (noticed at the next write, within a second
        # or two).
        first.close()
        deadline = time.monotonic() + 5
        while True:
            sock = open_stream(admin)
            status = read_until(sock, b"\r\n\r\n").split(b"\r\n", 1)[0]
            sock.close()
            if status == b"HTTP/1.1 200 OK":
                break
            assert status.startswith(b"HTTP/1.1 503 ") and time.monotonic() < deadline
            time.sleep(0.2)
        for sock in others:
            sock.close()
