"""Request timeouts end to end (issue 4, contract §9.1), and slow clients that must not hold
the proxy. A real sidecar process in front of an aiohttp app in the test's loop (`SlowApp`),
which records what reached it and which of its requests were cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.harness import Process, free_port, knative_env, running, serve_app, start_sidecar, until

TIMEOUT_BODY = "request timeout"


class SlowApp:
    """`/sleep?s=&id=` answers after a pause; `/stream?chunks=&interval=&id=` writes chunks
    `chunk <i>\\n` with a pause between them, without a Content-Length."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.cut: list[str] = []  # requests the proxy aborted before the app had answered

    async def sleep(self, request: web.Request) -> web.Response:
        name = request.query.get("id", "")
        self.seen.append(name)
        try:
            await asyncio.sleep(float(request.query.get("s", "0")))
        except asyncio.CancelledError:
            self.cut.append(name)
            raise
        return web.Response(text=f"slept {name}\n")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("id", "")
        self.seen.append(name)
        chunks = int(request.query.get("chunks", "3"))
        interval = float(request.query.get("interval", "0.1"))
        response = web.StreamResponse()
        response.content_type = "text/plain"
        try:
            await response.prepare(request)
            for index in range(chunks):
                if index:
                    await asyncio.sleep(interval)
                await response.write(f"chunk {index}\n".encode())
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.cut.append(name)
            raise
        return response

    async def fixed(self, request: web.Request) -> web.StreamResponse:
        """`/fixed?length=&send=&id=`: declares `length` bytes, sends `send`, then stalls."""
        name = request.query.get("id", "")
        self.seen.append(name)
        response = web.StreamResponse()
        response.content_length = int(request.query["length"])
        try:
            await response.prepare(request)
            await response.write(b"x" * int(request.query["send"]))
            await asyncio.sleep(60)
        except (asyncio.CancelledError, ConnectionError):
            self.cut.append(name)
            raise
        return response

    async def upload(self, request: web.Request) -> web.Response:
        name = request.query.get("id", "")
        self.seen.append(name)
        try:
            body = await request.read()
        except (asyncio.CancelledError, ConnectionError):
            self.cut.append(name)
            raise
        return web.Response(text=f"read {len(body)}\n")

    async def big(self, request: web.Request) -> web.StreamResponse:
        """`/big?mib=`: that many MiB, as fast as the proxy takes them."""
        response = web.StreamResponse()
        response.content_length = int(request.query["mib"]) << 20
        await response.prepare(request)
        block = b"b" * (1 << 20)
        with contextlib.suppress(ConnectionError):
            for _ in range(int(request.query["mib"])):
                await response.write(block)
            await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def stack(cc: int = 0, **env: str) -> AsyncIterator[tuple[Process, SlowApp]]:
    app = SlowApp()
    application = web.Application()
    application.router.add_get("/sleep", app.sleep)
    application.router.add_get("/stream", app.stream)
    application.router.add_get("/fixed", app.fixed)
    application.router.add_post("/upload", app.upload)
    application.router.add_get("/big", app.big)
    async with serve_app(application) as app_port:
        sidecar = await asyncio.to_thread(
            start_sidecar,
            knative_env(app_port, free_port(), CONTAINER_CONCURRENCY=str(cc), **env),
        )
        with running(sidecar):
            yield sidecar, app


async def get(
    client: aiohttp.ClientSession, url: str, timeout: float = 10.0
) -> tuple[int, str, str, float]:
    """Status, body, Content-Type and seconds taken."""
    started = time.monotonic()
    async with client.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        body = await response.text()
    elapsed = time.monotonic() - started
    return response.status, body, response.headers.get("Content-Type", ""), elapsed


def read_response(port: int, target: str, version: str = "1.1") -> tuple[bytes, bytes, float]:
    """One request on a fresh connection, read until the server closes it: head, body, seconds."""
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        started = time.monotonic()
        sock.sendall(
            f"GET {target} HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        elapsed = time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body, elapsed


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether it ended with the last (empty) chunk."""
    chunks = []
    while body:
        size_line, separator, rest = body.partition(b"\r\n")
        if not separator:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        if len(rest) < size + 2:
            chunks.append(rest[:size])
            break
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return chunks, False


# -- REVISION_TIMEOUT_SECONDS -----------------------------------------------------------------


async def test_revision_timeout_answers_504_cancels_the_app_and_frees_the_slot() -> None:
    async with stack(cc=1, REVISION_TIMEOUT_SECONDS="1") as (sidecar, app):
        async with aiohttp.ClientSession() as client:
            status, body, content_type, elapsed = await get(client, f"{sidecar.url}/sleep?s=3&id=a")
            assert (status, body) == (504, TIMEOUT_BODY)
            assert content_type == "text/plain; charset=utf-8"
            assert 0.9 <= elapsed < 2.5, elapsed  # the revision timeout, not the app's 3 s
            await until(lambda: app.cut == ["a"])
            # The only slot (CC=1) is free again.
            status, body, _, _ = await get(client, f"{sidecar.url}/sleep?s=0.1&id=b")
            assert (status, body) == (200, "slept b\n")
    assert app.seen == ["a", "b"]


async def test_time_waiting_in_the_limiter_counts_towards_the_revision_timeout() -> None:
    async with stack(cc=1, REVISION_TIMEOUT_SECONDS="1") as (sidecar, app):
        async with aiohttp.ClientSession() as client:
            first = asyncio.ensure_future(get(client, f"{sidecar.url}/sleep?s=0.6&id=a"))
            await until(lambda: app.seen == ["a"])
            # Queued ~0.6 s, then 0.8 s at the app: within 1 s only if the queue didn't count.
            second = await get(client, f"{sidecar.url}/sleep?s=0.8&id=b")
            assert (await first)[:2] == (200, "slept a\n")
    assert second[:2] == (504, TIMEOUT_BODY)
    assert app.seen == ["a", "b"]
    assert app.cut == ["b"]


@pytest.mark.parametrize(
    "rule", ["REVISION_RESPONSE_START_TIMEOUT_SECONDS", "REVISION_IDLE_TIMEOUT_SECONDS"]
)
async def test_request_that_times_out_in_the_queue_never_reaches_the_app(rule: str) -> None:
    # The slot holder writes a chunk every 0.3 s, so only the waiting request breaks the rule.
    async with stack(cc=1, REVISION_TIMEOUT_SECONDS="10", **{rule: "1"}) as (sidecar, app):
        async with aiohttp.ClientSession() as client:
            holder = asyncio.ensure_future(
                get(client, f"{sidecar.url}/stream?chunks=8&interval=0.3&id=holder")
            )
            await until(lambda: app.seen == ["holder"])
            status, body, _, elapsed = await get(client, f"{sidecar.url}/sleep?id=queued")
            assert (status, body) == (504, TIMEOUT_BODY)
            assert not holder.done()
            status, body, _, _ = await holder
            assert (status, body) == (200, "".join(f"chunk {i}\n" for i in range(8)))
            # The queue place was given back too.
            assert (await get(client, f"{sidecar.url}/sleep?id=after"))[:2] == (
                200,
                "slept after\n",
            )
    assert elapsed >= 0.9
    assert app.seen == ["holder", "after"]
    assert app.cut == []


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_revision_timeout_mid_stream_appends_the_text_and_cuts_the_stream(
    version: str,
) -> None:
    async with stack(REVISION_TIMEOUT_SECONDS="1") as (sidecar, app):
        head, body, elapsed = await asyncio.to_thread(
            read_response, sidecar.port, "/stream?chunks=20&interval=0.3&id=s", version
        )
        await until(lambda: app.cut == ["s"])
    assert head.startswith(f"HTTP/{version} 200".encode())
    assert elapsed < 2.5
    if version == "1.1":
        assert b"transfer-encoding: chunked" in head.lower()
        chunks, clean_end = dechunk(body)
        assert not clean_end  # cut: no last chunk, so the client knows the body is incomplete
        text = b"".join(chunks).decode()
    else:
        text = body.decode()  # close-delimited
    sent, _, tail = text.rpartition("\n")
    assert tail == TIMEOUT_BODY
    assert sent.split("\n")[:2] == ["chunk 0", "chunk 1"]
    assert len(sent.split("\n")) < 20


@pytest.mark.parametrize(
    "length, sent",
    [
        (1000, 100),
        (100, 95),
    ],
)
async def test_revision_timeout_mid_body_with_a_content_length(length: int, sent: int) -> None:
    async with stack(REVISION_TIMEOUT_SECONDS="1") as (sidecar, app):
        head, body, _ = await asyncio.to_thread(
            read_response, sidecar.port, f"/fixed?length={length}&send={sent}&id=f"
        )
        await until(lambda: app.cut == ["f"])
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {length}".encode() in head.lower()
    # The client must see a body shorter than declared: a truncation it can detect. The text
    # is appended only where it fits (Go refuses a write past the Content-Length).
    assert len(body) < length
    if sent + len(TIMEOUT_BODY) <= length:
        assert body == b"x" * sent + TIMEOUT_BODY.encode()
    else:
        assert body == b"x" * sent


async def test_revision_timeout_during_a_slow_upload_answers_504_and_closes() -> None:
    async with stack(REVISION_TIMEOUT_SECONDS="1") as (sidecar, app):

        def slow_upload() -> tuple[bytes, float]:
            with socket.create_connection(("127.0.0.1", sidecar.port), 10) as sock:
                started = time.monotonic()
                sock.sendall(
                    b"POST /upload?id=u HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                    + b"u" * 10
                )
                return _read_until_close(sock), time.monotonic() - started

        reply, elapsed = await asyncio.to_thread(slow_upload)
        await until(lambda: app.cut == ["u"])
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504")
    # The rest of the body would be read as a new request: the connection must close.
    assert b"connection: close" in head.lower()
    assert body == TIMEOUT_BODY.encode()
    assert elapsed < 2.5


async def test_timer_restarts_for_each_request_on_a_kept_alive_connection() -> None:
    async with stack(REVISION_TIMEOUT_SECONDS="1") as (sidecar, _):
        connector = aiohttp.TCPConnector(limit=1)  # one connection, reused
        async with aiohttp.ClientSession(connector=connector) as client:
            assert (await get(client, f"{sidecar.url}/sleep?s=0.1&id=a"))[:2] == (200, "slept a\n")
            await asyncio.sleep(0.6)
            # Timed from its own arrival, not from the first request's.
            assert (await get(client, f"{sidecar.url}/sleep?s=0.7&id=b"))[:2] == (200, "slept b\n")
            status, body, _, elapsed = await get(client, f"{sidecar.url}/sleep?s=3&id=c")
            assert (status, body) == (504, TIMEOUT_BODY)
            assert elapsed >= 0.9
            # A 504 that consumed the whole request keeps the connection usable.
            assert (await get(client, f"{sidecar.url}/sleep?id=d"))[:2] == (200, "slept d\n")


# -- REVISION_RESPONSE_START_TIMEOUT_SECONDS --------------------------------------------------


async def test_response_start_timeout() -> None:
    env = {"REVISION_RESPONSE_START_TIMEOUT_SECONDS": "1"}
    async with stack(**env) as (sidecar, app), aiohttp.ClientSession() as client:
        status, body, _, elapsed = await get(client, f"{sidecar.url}/sleep?s=2.5&id=late")
        assert (status, body) == (504, TIMEOUT_BODY)
        assert 0.9 <= elapsed < 2.0, elapsed
        await until(lambda: app.cut == ["late"])
        # Started in time: it may then take longer than the response-start bound.
        status, body, _, elapsed = await get(
            client, f"{sidecar.url}/stream?chunks=4&interval=0.5&id=started"
        )
        assert (status, body) == (200, "".join(f"chunk {i}\n" for i in range(4)))
        assert elapsed >= 1.4
        assert (await get(client, f"{sidecar.url}/sleep?s=0.3&id=quick"))[:2] == (
            200,
            "slept quick\n",
        )
    assert app.cut == ["late"]


# -- REVISION_IDLE_TIMEOUT_SECONDS ------------------------------------------------------------


async def test_idle_timeout() -> None:
    async with stack(REVISION_IDLE_TIMEOUT_SECONDS="1") as (sidecar, app):
        async with aiohttp.ClientSession() as client:
            # Bytes every 0.4 s: never idle for 1 s, though it runs for 1.6 s.
            status, body, _, elapsed = await get(
                client, f"{sidecar.url}/stream?chunks=5&interval=0.4&id=flowing"
            )
            assert (status, body) == (200, "".join(f"chunk {i}\n" for i in range(5)))
            assert elapsed >= 1.5
            # No byte at all: idle counts from arrival.
            status, body, _, _ = await get(client, f"{sidecar.url}/sleep?s=2.5&id=silent")
            assert (status, body) == (504, TIMEOUT_BODY)
        # A pause longer than the idle bound after the first chunk: appended and cut.
        head, body, elapsed = await asyncio.to_thread(
            read_response, sidecar.port, "/stream?chunks=3&interval=1.8&id=stalled"
        )
        await until(lambda: sorted(app.cut) == ["silent", "stalled"])
    assert head.startswith(b"HTTP/1.1 200")
    chunks, clean_end = dechunk(body)
    assert (chunks, clean_end) == ([b"chunk 0\n", TIMEOUT_BODY.encode()], False)
    assert elapsed >= 0.9, elapsed


# -- Slow clients -----------------------------------------------------------------------------


async def test_half_sent_request_heads_hold_no_slot_and_block_nobody() -> None:
    async with stack(cc=2) as (sidecar, app):
        stalled = []
        for index in range(30):
            sock = socket.create_connection(("127.0.0.1", sidecar.port))
            sock.sendall(f"GET /sleep?id=stalled{index} HTTP/1.1\r\nHost: x\r\nX-Half: ".encode())
            stalled.append(sock)
        trickler = socket.create_connection(("127.0.0.1", sidecar.port))
        trickle_head = b"GET /sleep?id=trickled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

        async def trickle() -> None:
            for byte in trickle_head[:-1]:  # all but the last byte, one every 20 ms
                trickler.send(bytes([byte]))
                await asyncio.sleep(0.02)

        trickling = asyncio.ensure_future(trickle())
        # A client that asks for 64 MiB and reads none of it.
        deaf = socket.create_connection(("127.0.0.1", sidecar.port))
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.sendall(b"GET /big?mib=64 HTTP/1.1\r\nHost: x\r\n\r\n")
        stalled.append(deaf)
        try:
            # CC=2 gives 2 slots and 20 queue places; the reader-less download holds a slot,
            # so all 21 fit only if no stalled head holds a place.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
                results = await asyncio.gather(
                    *(get(client, f"{sidecar.url}/sleep?s=0.02&id=ok{i}") for i in range(21))
                )
            assert [result[:2] for result in results] == [
                (200, f"slept ok{i}\n") for i in range(21)
            ]
            assert not trickling.done()  # the slow client was still sending meanwhile
            await trickling
            # The slow clients were not dropped: finishing their heads gets them served.
            trickler.sendall(trickle_head[-1:])
            reply = await asyncio.to_thread(_read_until_close, trickler)
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"slept trickled\n")
            stalled[0].sendall(b"1\r\nConnection: close\r\n\r\n")
            reply = await asyncio.to_thread(_read_until_close, stalled[0])
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"slept stalled0\n")
        finally:
            trickling.cancel()
            for sock in (*stalled, trickler):
                sock.close()
    assert sorted(app.seen) == sorted([f"ok{i}" for i in range(21)] + ["trickled", "stalled0"])


def _read_until_close(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
