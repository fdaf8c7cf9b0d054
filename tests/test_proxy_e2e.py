"""The data path end to end: a real sidecar process between real HTTP clients and an app."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from tests.harness import (
    free_port,
    knative_env,
    raw_exchange,
    rss_kib,
    run_to_exit,
    running,
    serve_app,
    start_sampleapp,
    start_sidecar,
    until,
)


class Recorder:
    """An aiohttp app in the test's loop that records what reaches it."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.seen: list[str] = []
        self.cancelled = 0
        self.release = asyncio.Event()

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path_qs": request.path_qs,
                "version": f"{request.version.major}.{request.version.minor}",
                "headers": [[k, v] for k, v in request.headers.items()],
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_len": len(body),
            },
            status=int(request.query.get("status", "200")),
            headers={
                "X-App": "yes",
                "Keep-Alive": "timeout=5",
                "Connection": "X-Hop",
                "X-Hop": "must not pass",
            },
        )

    async def hold(self, request: web.Request) -> web.Response:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.seen.append(request.query.get("id", ""))
        try:
            if "wait" in request.query:
                await self.release.wait()
            else:
                await asyncio.sleep(float(request.query.get("sleep", "0.05")))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        return web.Response(text="held\n")

    async def upload(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"bytes": size, "sha256": digest.hexdigest()})

    async def download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["bytes"])
        chunked = "chunked" in request.query
        response = web.StreamResponse()
        if not chunked:
            response.content_length = size
        await response.prepare(request)
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index in range(3):
            await response.write(f"data: {index}\n\n".encode())
            await asyncio.sleep(0.4)
        await response.write_eof()
        return response

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        socket_ = web.WebSocketResponse()
        await socket_.prepare(request)
        async for message in socket_:
            if message.type == aiohttp.WSMsgType.TEXT:
                await socket_.send_str("echo:" + message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await socket_.send_bytes(message.data[::-1])
        return socket_

    def app(self) -> web.Application:
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/hold", self.hold)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/download", self.download)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/ws", self.ws)
        return app


@contextlib.asynccontextmanager
async def upstream_app(recorder: Recorder):
    async with serve_app(recorder.app()) as port:
        try:
            yield port
        finally:
            recorder.release.set()


@contextlib.asynccontextmanager
async def stack(cc: int = 0, **env: str):
    recorder = Recorder()
    async with upstream_app(recorder) as app_port:
        serving = free_port()
        sidecar = await asyncio.to_thread(
            start_sidecar, knative_env(app_port, serving, CONTAINER_CONCURRENCY=str(cc), **env)
        )
        with running(sidecar):
            yield sidecar, recorder


async def test_request_and_response_pass_through_with_header_rules():
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        async with client.post(
            f"{sidecar.url}/echo?a=1&b=two&status=201",
            data=b"payload",
            headers={
                "Host": "hello.default.example.com",
                "X-Forwarded-For": "10.1.1.1",
                "X-Forwarded-Proto": "https",
                "Knative-Serving-Revision": "hello-00001",
                "Knative-Serving-Namespace": "default",
                "Connection": "keep-alive, X-Private",
                "X-Private": "hop",
                "Proxy-Authorization": "secret",
                "X-Custom": "kept",
            },
        ) as response:
            assert response.status == 201
            assert response.headers["X-App"] == "yes"
            assert "Keep-Alive" not in response.headers
            assert "X-Hop" not in response.headers
            seen = await response.json()
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert seen["method"] == "POST"
    assert seen["path_qs"] == "/echo?a=1&b=two&status=201"
    assert seen["body_sha256"] == hashlib.sha256(b"payload").hexdigest()
    assert headers["host"] == "hello.default.example.com"
    assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert headers["forwarded"] == "for=10.1.1.1;proto=https"
    assert headers["x-custom"] == "kept"
    for gone in ("knative-serving-revision", "knative-serving-namespace", "x-private"):
        assert gone not in headers
    assert "proxy-authorization" not in headers


async def test_k_original_host_rewrites_host():
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        async with client.get(
            f"{sidecar.url}/echo",
            headers={"Host": "activator.local", "K-Original-Host": "hello.example.com"},
        ) as response:
            seen = await response.json()
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["host"] == "hello.example.com"
    assert "k-original-host" not in headers


async def test_app_never_sees_more_than_cc_under_200_clients():
    async with stack(cc=5) as (sidecar, recorder):
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def one(index: int) -> tuple[int, str]:
                async with client.get(f"{sidecar.url}/hold?sleep=0.1&id={index}") as response:
                    return response.status, await response.text()

            results = await asyncio.gather(*(one(i) for i in range(200)))
    statuses = [status for status, _ in results]
    assert recorder.max_active == 5
    assert statuses.count(200) + statuses.count(503) == 200
    # 5 active + 50 queued: the rest of a simultaneous burst of 200 is turned away.
    assert statuses.count(503) > 0
    assert statuses.count(200) >= 55
    assert {text for status, text in results if status == 503} == {"pending request queue full\n"}


async def test_overflow_503_is_immediate_and_queue_is_fifo():
    async with stack(cc=1) as (sidecar, recorder), aiohttp.ClientSession() as client:
        first = asyncio.ensure_future(client.get(f"{sidecar.url}/hold?wait=1&id=first"))
        await until(lambda: recorder.active == 1)
        waiting = []
        for index in range(10):  # 10 x CC places in the queue, filled in a known order
            waiting.append(asyncio.ensure_future(client.get(f"{sidecar.url}/hold?id={index}")))
            await asyncio.sleep(0.02)
        started = time.monotonic()
        async with client.get(f"{sidecar.url}/hold?id=overflow") as response:
            assert response.status == 503
            assert await response.text() == "pending request queue full\n"
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert time.monotonic() - started < 1.0
        recorder.release.set()
        responses = await asyncio.gather(first, *waiting)
        assert [r.status for r in responses] == [200] * 11
        for response in responses:
            response.release()
    assert recorder.seen == ["first", *map(str, range(10))]


async def test_aborted_clients_leave_no_slot_or_queue_place_behind():
    async with stack(cc=2) as (sidecar, recorder):
        # 2 at the app and 5 waiting, then every one of those clients goes away.
        sockets = []
        for index in range(7):
            sock = socket.create_connection(("127.0.0.1", sidecar.port))
            sock.sendall(f"GET /hold?wait=1&id=a{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sockets.append(sock)
        await until(lambda: recorder.active == 2)
        await asyncio.sleep(0.2)
        for sock in sockets:
            sock.close()
        await until(lambda: recorder.active == 0)
        assert recorder.cancelled == 2  # the app saw its two requests cut off
        recorder.release.set()
        # Every slot and queue place must be free again: 2 + 20 requests all fit.
        recorder.seen.clear()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:

            async def one(index: int) -> int:
                async with client.get(f"{sidecar.url}/hold?sleep=0.3&id=b{index}") as response:
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(22)))
        assert statuses == [200] * 22
        assert recorder.max_active == 2


async def test_one_gib_streams_both_ways_with_flat_memory():
    size = 1024 * 1024 * 1024
    async with stack(cc=4) as (sidecar, _), aiohttp.ClientSession() as client:
        before = rss_kib(sidecar.pid)

        async def produce():
            block = bytes(range(256)) * 1024
            for _ in range(size // len(block)):
                yield block

        async with client.post(f"{sidecar.url}/upload", data=produce()) as response:
            uploaded = await response.json()
        digest = hashlib.sha256()
        async with client.get(f"{sidecar.url}/download?bytes={size}") as response:
            assert response.headers["Content-Length"] == str(size)
            async for chunk in response.content.iter_chunked(1 << 20):
                digest.update(chunk)
        after = rss_kib(sidecar.pid)
    expected = hashlib.sha256()
    block = bytes(range(256)) * 1024
    for _ in range(size // len(block)):
        expected.update(block)
    assert uploaded == {"bytes": size, "sha256": expected.hexdigest()}
    assert digest.hexdigest() == expected.hexdigest()
    # Buffering either body would add a GiB; streaming keeps the proxy flat.
    assert after - before < 48 * 1024, (before, after)


async def test_ten_mib_chunked_up_and_down_checksums_match():
    size = 10 * 1024 * 1024
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        payload = bytes(range(256)) * (size // 256)

        async def chunks():
            for offset in range(0, size, 100_000):
                yield payload[offset : offset + 100_000]

        async with client.post(f"{sidecar.url}/upload", data=chunks()) as response:
            assert await response.json() == {
                "bytes": size,
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        async with client.get(f"{sidecar.url}/download?bytes={size}&chunked=1") as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            body = await response.read()
    block = bytes(range(256)) * 256
    assert (
        hashlib.sha256(body).hexdigest() == hashlib.sha256(block * (size // len(block))).hexdigest()
    )


async def test_server_sent_events_arrive_as_sent():
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        started = time.monotonic()
        async with client.get(f"{sidecar.url}/sse") as response:
            arrivals = []
            async for line in response.content:
                if line.startswith(b"data:"):
                    arrivals.append((line.strip(), time.monotonic() - started))
    assert [data for data, _ in arrivals] == [b"data: 0", b"data: 1", b"data: 2"]
    # The app waits 0.4 s between events: each must arrive before the next one is written.
    assert arrivals[0][1] < 0.35
    assert arrivals[1][1] < 0.75


async def test_websocket_echo_through_the_sidecar():
    async with stack(cc=1) as (sidecar, _), aiohttp.ClientSession() as client:
        async with client.ws_connect(f"{sidecar.url.replace('http', 'ws')}/ws") as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "echo:hello"
            await ws.send_bytes(b"\x01\x02\x03")
            assert (await ws.receive(timeout=5)).data == b"\x03\x02\x01"
        # The websocket held the only slot; closing it must free it.
        async with client.get(f"{sidecar.url}/echo") as response:
            assert response.status == 200


async def test_http10_clients_and_keep_alive():
    async with stack() as (sidecar, _):
        reply = await asyncio.to_thread(raw_exchange, sidecar.port, b"GET /echo HTTP/1.0\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200")
        assert json.loads(body)["method"] == "GET"

        def keep_alive_twice() -> list[bytes]:
            with socket.create_connection(("127.0.0.1", sidecar.port), 5) as sock:
                heads = []
                for _ in range(2):
                    sock.sendall(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += sock.recv(65536)
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = int(_header(head, b"content-length"))
                    while len(rest) < length:
                        rest += sock.recv(65536)
                    heads.append(head)
                return heads

        heads = await asyncio.to_thread(keep_alive_twice)
        for head in heads:
            assert _header(head, b"connection").lower() == b"keep-alive"


async def test_pipelined_requests_are_answered_in_order():
    async with stack() as (sidecar, _):
        requests = (
            b"".join(
                f"GET /hold?sleep={delay}&id={index} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                for index, delay in enumerate((0.3, 0.0, 0.1))
            )
            + b"GET /echo?last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reply = await asyncio.to_thread(raw_exchange, sidecar.port, requests)
    assert reply.count(b"HTTP/1.1 200") == 4
    assert reply.index(b"held") < reply.rindex(b"held") < reply.index(b"/echo?last")


async def test_stale_pooled_connection_is_replaced_not_502():
    """An app that drops a kept-alive connection right as the proxy reuses it."""
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Answers the first request on each connection, then closes on the second without
        # answering, as an app does whose keep-alive timeout fires as the request arrives.
        for index in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            if index == 1:
                writer.close()
                return
            served.append(len(head))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    app_port = server.sockets[0].getsockname()[1]
    serving = free_port()
    sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, serving))
    with running(sidecar):
        async with aiohttp.ClientSession() as client:
            for _ in range(4):
                async with client.get(f"{sidecar.url}/") as response:
                    assert response.status == 200
                    assert await response.text() == "ok\n"
    server.close()
    assert len(served) == 4


async def test_upstream_refused_is_502_with_error_text():
    dead_port = free_port()
    serving = free_port()
    sidecar = await asyncio.to_thread(start_sidecar, knative_env(dead_port, serving))
    with running(sidecar):
        async with aiohttp.ClientSession() as client, client.get(f"{sidecar.url}/") as response:
            assert response.status == 502
            text = await response.text()
    assert text == f"dial tcp 127.0.0.1:{dead_port}: connect: connection refused\n"


@pytest.mark.parametrize(
    "payload, status",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "bad-header", "cl-and-te", "two-content-lengths", "oversized-headers"],
)
async def test_malformed_requests_get_4xx_and_others_are_unaffected(payload, status):
    async with stack() as (sidecar, _), aiohttp.ClientSession() as client:
        slow = asyncio.ensure_future(client.get(f"{sidecar.url}/hold?sleep=0.5"))
        await asyncio.sleep(0.1)
        reply = await asyncio.to_thread(raw_exchange, sidecar.port, payload)
        assert reply.startswith(b"HTTP/1.1 %d" % status), reply[:100]
        response = await slow
        assert response.status == 200
        response.release()
        async with client.get(f"{sidecar.url}/echo") as after:
            assert after.status == 200


@pytest.mark.parametrize(
    "name, value",
    [("CONTAINER_CONCURRENCY", "ten"), ("USER_PORT", "99999"), ("SERVING_REVISION", None)],
)
def test_bad_environment_exits_1_naming_the_variable(name, value):
    env = knative_env(free_port(), free_port())
    if value is None:
        del env[name]
    else:
        env[name] = value
    started = time.monotonic()
    result = run_to_exit(env)
    assert result.returncode == 1
    assert name in result.stderr
    if value is not None:
        assert value in result.stderr
    assert time.monotonic() - started < 5


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise KeyError(name)


async def test_head_requests_get_headers_only_and_the_next_request_works():
    async with stack(cc=1) as (sidecar, _), aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.head(f"{sidecar.url}/echo") as response:
                assert response.status == 200
                assert int(response.headers["Content-Length"]) > 0
                assert await response.read() == b""
        async with client.get(f"{sidecar.url}/echo") as response:
            assert (await response.json())["method"] == "GET"


async def test_app_resetting_the_connection_is_a_502_and_the_proxy_serves_on():
    app = await asyncio.to_thread(start_sampleapp)
    with running(app):
        serving = free_port()
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app.port, serving))
        with running(sidecar):
            async with aiohttp.ClientSession() as client:
                async with client.get(f"{sidecar.url}/?reset=1") as response:
                    assert response.status == 502
                    text = await response.text()
                async with client.get(f"{sidecar.url}/") as response:
                    assert await response.text() == "Hello World!\n"
    assert text in ("EOF\n", f"read tcp 127.0.0.1:{app.port}: read: connection reset by peer\n")


def _send_in_reads(port: int, pieces: list[bytes]) -> bytes:
    """Send each piece as its own write (a pause between, so each is its own read at the
    sidecar), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(0.03)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"\r", b"\nGET /echo?b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        [b"\r\n\r", b"\n\r", b"\nGET /echo?b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"],
        [
            b"GET /echo?a HTTP/1.1\r\nHost: x\r\n\r\n\r",
            b"\nGET /echo?b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ],
    ],
    ids=["cr-then-lf", "every-line-split", "pipelined-split"],
)
async def test_empty_lines_before_a_request_line_are_ignored_however_split(pieces):
    # RFC 9112 §2.2: a server SHOULD ignore empty lines before a request line; where the
    # client's writes (or TCP segments) split a CRLF must not turn it into a 400.
    async with stack() as (sidecar, _):
        reply = await asyncio.to_thread(_send_in_reads, sidecar.port, pieces)
    assert b" 400 " not in reply, reply
    assert reply.count(b"HTTP/1.1 200") == b"".join(pieces).count(b"GET "), reply
    assert b"/echo?b" in reply


async def test_a_response_in_one_byte_reads_on_a_reused_connection_is_served_not_retried():
    """A response on a pooled connection may come a byte a read (its first read 1-4 bytes of
    `HTTP/`): it is parsed across the reads and served, and the connection stays pooled."""
    connections: list[int] = []
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                for index in range(len(response)):
                    writer.write(response[index : index + 1])
                    await writer.drain()
                    await asyncio.sleep(0.002)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    app_port = server.sockets[0].getsockname()[1]
    sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
    with running(sidecar):
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(f"{sidecar.url}/") as reply:
                    assert reply.status == 200
                    assert await reply.text() == "hello\n"
    server.close()
    assert len(connections) == 1  # every request after the first went on the pooled one


@pytest.mark.parametrize("port_name", ["QUEUEPROXY_METRICS_PORT", "QUEUEPROXY_ADMIN_PORT"])
async def test_the_sidecars_own_ports_ignore_an_empty_line_split_across_reads(port_name):
    async with stack() as (sidecar, _):
        pieces = [
            b"\r",
            b"\n\r",
            b"\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ]
        reply = await asyncio.to_thread(_send_in_reads, sidecar.port_of(port_name), pieces)
    assert reply.startswith(b"HTTP/1.1 ") and b" 400 " not in reply.split(b"\r\n")[0], reply
