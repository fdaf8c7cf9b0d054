"""HTTP/2 under inputs its author did not write: hostile clients and broken apps (docs/http2.md).

Real sidecar processes on 127.0.0.1; the app side is a scripted h2c server (`HostileApp`) whose
answer to each request is chosen by the test, frame by frame, so it can send what a well-kept
library would refuse to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, PingFrame

from queueproxy.h2detect import valid_settings
from queueproxy.h2limits import MAX_QUEUED_CONTROL_FRAMES
from queueproxy.h2stream import StrictServer, server_config
from queueproxy.h2upstream import H2Upstream, H2UpstreamPool, _Client
from queueproxy.h2upstream import _config as _upstream_config
from tests.h2_app import serve_h2_app
from tests.harness import (
    Process,
    free_port,
    knative_env,
    raw_exchange,
    running,
    start_sidecar,
    until,
)
from tests.test_h2_e2e import RawH2

pytestmark = pytest.mark.timeout(60)

PREFACE_LESS_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame

Handler = Callable[["HostileApp", int, bytes, bytes], Awaitable[None]]


@dataclass
class AppLog:
    connections: int = 0
    lost: int = 0
    requests: list[bytes] = field(default_factory=list)
    resets: list[tuple[int, int]] = field(default_factory=list)


class HostileApp(asyncio.Protocol):
    """An h2c app that hands each complete request (path, body) to the test's handler, which
    writes what it likes: through `h2` without its checks, or as raw frames (`raw`)."""

    def __init__(self, log: AppLog, handler: Handler, on_request: Handler | None) -> None:
        self.log = log
        self.handler = handler
        self.on_request = on_request
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = H2Connection(config)
        self.paths: dict[int, bytes] = {}
        self.bodies: dict[int, bytearray] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.log.connections += 1
        self.h2.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.lost += 1

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def raw(self, frame: bytes) -> None:
        """A frame straight onto the socket, behind h2's back."""
        self.flush()
        assert self.transport is not None
        self.transport.write(frame)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                path = dict(event.headers)[b":path"]
                self.log.requests.append(path)
                self.paths[event.stream_id] = path
                self.bodies[event.stream_id] = bytearray()
                if self.on_request is not None:
                    asyncio.ensure_future(self.on_request(self, event.stream_id, path, b""))
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                body = bytes(self.bodies.pop(sid, b""))
                asyncio.ensure_future(self._answer(sid, self.paths[sid], body))
            elif isinstance(event, StreamReset):
                self.log.resets.append((event.stream_id, event.error_code))
        self.flush()

    async def _answer(self, sid: int, path: bytes, body: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            await self.handler(self, sid, path, body)
        self.flush()

    def answer(self, sid: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        self.h2.send_headers(sid, [(b":status", b"200"), *headers])
        self.h2.send_data(sid, body, end_stream=True)
        self.flush()


@contextlib.asynccontextmanager
async def hostile_stack(
    handler: Handler, on_request: Handler | None = None, **env: str
) -> AsyncIterator[tuple[Process, AppLog]]:
    log = AppLog()
    loop = asyncio.get_running_loop()
    port = free_port()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A small receive buffer (inherited by accepted sockets): an app that stops reading is
    # noticed after kilobytes, not after the kernel's megabytes.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", port))
    server = await loop.create_server(lambda: HostileApp(log, handler, on_request), sock=listener)
    try:
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(port, free_port(), **env))
        with running(sidecar):
            yield sidecar, log
    finally:
        server.close()


def h2_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, http1=False, timeout=10)


# -- Upgrade: h2c with HTTP2-Settings out of bounds ---------------------------------------------


def _settings(code: int, value: int) -> bytes:
    return base64.urlsafe_b64encode(struct.pack(">HI", code, value)).rstrip(b"=")


OUT_OF_BOUNDS = [
    (0x2, 2),  # ENABLE_PUSH
    (0x4, 2**31),  # INITIAL_WINDOW_SIZE
    (0x5, 16383),  # MAX_FRAME_SIZE below the minimum
    (0x5, 2**24),  # MAX_FRAME_SIZE above the maximum
    (0x8, 2),  # ENABLE_CONNECT_PROTOCOL
]


def test_settings_values_out_of_bounds_are_not_valid_http2_settings() -> None:
    for code, value in OUT_OF_BOUNDS:
        assert not valid_settings(_settings(code, value)), (code, value)
    for code, value in [(0x2, 0), (0x4, 2**31 - 1), (0x5, 2**24 - 1), (0x1, 2**32 - 1), (9, 7)]:
        assert valid_settings(_settings(code, value)), (code, value)


def _upgrade_exchange(port: int, settings: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(
            b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        answer = b""
        while b"hello h1" not in answer and b"\r\n\r\n\x00" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


async def test_an_upgrade_with_settings_out_of_bounds_is_served_as_http1_and_drain_works() -> None:
    # Such settings made h2 raise after the 101 was out: the client got a dead connection, and
    # the half-made HTTP/2 connection stayed registered, so the drain wrote to a closed
    # transport and the sidecar died with a traceback instead of draining.
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            for code, value in OUT_OF_BOUNDS:
                answer = await asyncio.to_thread(
                    _upgrade_exchange, sidecar.port, _settings(code, value)
                )
                assert answer.startswith(b"HTTP/1.1 200 OK"), (code, value, answer[:80])
                assert answer.endswith(b"hello h1")
            assert await asyncio.to_thread(sidecar.terminate) == 0
            output = sidecar.output()
    assert "Traceback" not in output
    assert [r[0] for r in record.requests] == [b"HTTP/1.1"] * len(OUT_OF_BOUNDS)


# -- A malformed response is that stream's problem alone ----------------------------------------


MALFORMED = {
    "longer than content-length": ([(b"content-length", b"3")], b"more than three"),
    "shorter than content-length": ([(b"content-length", b"30")], b"short"),
    "content-length not a number": ([(b"content-length", b"abc")], b"abc"),
    "conflicting content-lengths": ([(b"content-length", b"3"), (b"content-length", b"4")], b"abc"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_a_malformed_response_fails_its_stream_not_the_others_on_the_app_connection(
    kind: str,
) -> None:
    # The app connection carries the streams of every client: h2 made these connection errors,
    # so one bad response cut every other client's request in flight (502 EOF).
    headers, body = MALFORMED[kind]

    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        if path == b"/slow":
            await asyncio.sleep(0.8)
            app.answer(sid, b"slow ok")
        elif path == b"/bad":
            app.answer(sid, body, *headers)
        else:
            app.answer(sid, b"ok")

    async with hostile_stack(handler) as (sidecar, log):
        async with h2_client() as victim, h2_client() as attacker:
            assert (await victim.get(f"{sidecar.url}/warm")).status_code == 200
            slow = asyncio.ensure_future(victim.get(f"{sidecar.url}/slow"))
            await asyncio.sleep(0.3)
            try:
                bad = await attacker.get(f"{sidecar.url}/bad")
            except httpx.RemoteProtocolError:
                pass  # reset once its response had begun: fine
            else:
                assert bad.status_code == 502
            response = await slow
            assert (response.status_code, response.text) == (200, "slow ok")
            after = await attacker.get(f"{sidecar.url}/after")
            assert (after.status_code, after.text) == (200, "ok")
    assert log.connections == 1  # all of it on the one app connection, which survived


# -- The app's GOAWAY: a graceful shutdown lets its streams finish ------------------------------


@pytest.mark.parametrize("last", ["this stream", "2^31-1"])
async def test_an_app_goaway_lets_the_streams_it_names_finish(last: str) -> None:
    # grpc-go's GracefulStop and Go's Server.Shutdown send GOAWAY and finish the streams it
    # names; h2 refused every frame after it, so each of them became a 502.
    async def on_request(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        if path == b"/upload":
            frame = GoAwayFrame(0)
            frame.last_stream_id = sid if last == "this stream" else 2**31 - 1
            app.raw(frame.serialize())

    async def handler(app: HostileApp, sid: int, path: bytes, body: bytes) -> None:
        if path == b"/upload":
            await asyncio.sleep(0.2)
            app.answer(sid, b"got %d" % len(body))
        else:
            app.answer(sid, b"ok")

    body = b"u" * (300 * 1024)  # several windows: most of it goes after the GOAWAY
    async with hostile_stack(handler, on_request) as (sidecar, log), h2_client() as client:
        response = await client.post(f"{sidecar.url}/upload", content=body)
        assert (response.status_code, response.text) == (200, f"got {len(body)}")
        after = await client.get(f"{sidecar.url}/after")
        assert (after.status_code, after.text) == (200, "ok")
    assert log.connections == 2  # nothing new went on the connection going away


async def test_streams_beyond_the_apps_goaway_get_502_and_are_not_retried() -> None:
    # Not processed by the app (RFC 9113 §6.8): answered 502 and never sent again, whatever
    # the method (the sidecar does not retry).
    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        if path == b"/first":
            await asyncio.sleep(0.5)
            app.answer(sid, b"first")
        else:
            frame = GoAwayFrame(0)
            frame.last_stream_id = 1
            app.raw(frame.serialize())
            await asyncio.sleep(0.3)
            # a late answer on a stream the app disowned: must not reach anybody
            app.raw(
                HeadersFrame(
                    sid, app.h2.encoder.encode([(b":status", b"200")]), flags=["END_HEADERS"]
                ).serialize()
                + DataFrame(sid, b"disowned", flags=["END_STREAM"]).serialize()
            )

    async with hostile_stack(handler) as (sidecar, log), h2_client() as client:
        first = asyncio.ensure_future(client.get(f"{sidecar.url}/first"))
        await asyncio.sleep(0.1)
        second = await client.post(f"{sidecar.url}/second", content=b"x")
        assert (await first).text == "first"
    assert second.status_code == 502
    assert log.requests.count(b"/second") == 1


# -- 1xx responses from the app -------------------------------------------------------------------


def _informational(app: HostileApp, sid: int, status: bytes, value: bytes) -> bytes:
    block = app.h2.encoder.encode([(b":status", status), (b"link", value)])
    return HeadersFrame(sid, block, flags=["END_HEADERS"]).serialize()


async def test_endless_1xx_responses_are_not_forwarded_without_bound() -> None:
    # 1xx responses carry no flow control: every one was forwarded, so an app sending them
    # without end to a client that does not read grew the sidecar's memory without bound.
    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        for index in range(300):
            app.raw(_informational(app, sid, b"103", b"</%d>; rel=preload" % index + b"a" * 1024))
        app.answer(sid, b"after hints")

    async with hostile_stack(handler) as (sidecar, _):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/hints")
        await asyncio.to_thread(
            client.until,
            lambda: any(
                isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == sid
                for e in client.events
            ),
        )
        client.close()
    hints = [e for e in client.events if isinstance(e, InformationalResponseReceived)]
    assert 0 < len(hints) < 100  # the first 64 KiB of them, then the stream fails
    final = [
        int(dict(e.headers)[b":status"]) for e in client.events if isinstance(e, ResponseReceived)
    ]
    assert final in ([502], [])


async def test_a_101_from_the_app_is_not_forwarded() -> None:
    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        app.raw(_informational(app, sid, b"101", b"x"))
        app.answer(sid, b"switched?")

    async with hostile_stack(handler) as (sidecar, _), h2_client() as client:
        response = await client.get(f"{sidecar.url}/switch")
    assert response.status_code == 502  # RFC 9113 §8.6: no 101 in HTTP/2


async def test_a_1xx_on_a_stream_the_client_reset_leaves_the_app_connection_alone() -> None:
    # The client cancels while the app sends 103 Early Hints: h2 made the late 1xx a connection
    # error, cutting every other client's request on the app connection.
    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        if path == b"/slow":
            await asyncio.sleep(1.0)
            app.answer(sid, b"slow ok")
            return
        if path != b"/early":
            app.answer(sid, b"ok")
            return
        while not any(reset_sid == sid for reset_sid, _ in app.log.resets):
            await asyncio.sleep(0.01)
        app.raw(_informational(app, sid, b"103", b"</late>"))

    async with hostile_stack(handler) as (sidecar, log), h2_client() as victim:
        slow = asyncio.ensure_future(victim.get(f"{sidecar.url}/slow"))
        await asyncio.sleep(0.2)
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/early")
        await asyncio.sleep(0.2)
        client.h2.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()
        response = await slow
        assert (response.status_code, response.text) == (200, "slow ok")
        client.close()
    assert log.connections == 1


# -- Control frames from an app that does not read -------------------------------------------------


class _FullTransport(asyncio.Transport):
    """The socket to an app whose buffer is full: it keeps what is written and notes a close."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


async def test_an_app_that_pings_without_reading_the_answers_is_cut_off() -> None:
    # Each PING (and SETTINGS) is answered; an app that never read the answers had them queued
    # in the sidecar without bound. In process: end to end, h2 takes a minute to parse enough
    # PINGs to get past the kernel's socket buffers.
    pool = H2UpstreamPool(asyncio.get_running_loop(), "127.0.0.1", free_port())
    upstream = H2Upstream(pool)
    transport = _FullTransport()
    upstream.connection_made(transport)
    app = H2Connection(H2Configuration(client_side=False))
    app.initiate_connection()
    app.receive_data(bytes(transport.written))
    upstream.data_received(app.data_to_send())
    upstream.pause_writing()  # the app stopped reading
    ping = PingFrame(0, b"12345678").serialize()
    for _ in range(MAX_QUEUED_CONTROL_FRAMES // 1000):
        upstream.data_received(ping * 1000)
    assert not transport.closing  # so many are allowed, as in Go
    upstream.data_received(ping)
    assert transport.closing
    # Reading again resets the count.
    other = H2Upstream(pool)
    busy = _FullTransport()
    other.connection_made(busy)
    other.pause_writing()
    other.data_received(PREFACE_LESS_SETTINGS + ping * (MAX_QUEUED_CONTROL_FRAMES - 1))
    other.resume_writing()
    other.pause_writing()
    other.data_received(ping * 100)
    assert not busy.closing


# -- Frames larger than SETTINGS_MAX_FRAME_SIZE ---------------------------------------------------


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _oversized_frame_answer(port: int) -> tuple[bytes, bool]:
    """Send the header of a 16 MiB DATA frame and a little of its body; what comes back within
    two seconds, and whether the sidecar closed the connection."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(
            PREFACE
            + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            + (2**24 - 1).to_bytes(3, "big")
            + b"\x00\x00\x00\x00\x00\x01"
            + b"\x00" * 100
        )
        sock.settimeout(2)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            pass
        return received, True


async def test_an_oversized_frame_is_refused_at_its_header_not_buffered() -> None:
    # h2 read a whole frame before checking its length against our 16 KiB limit: a client could
    # make the sidecar hold 16 MiB per connection, trickling the bytes for as long as it liked.
    async with serve_h2_app() as (app_port, _):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            received, closed = await asyncio.to_thread(_oversized_frame_answer, sidecar.port)
            async with h2_client() as client:
                assert (await client.get(f"{sidecar.url}/other")).status_code == 200
    assert closed  # at once, not after 16 MiB
    goaway = received.find(b"\x07\x00\x00\x00\x00\x00")  # type GOAWAY, no flags, stream 0
    if goaway > 0:  # unless a reset on close destroyed it
        code = received[goaway + 10 : goaway + 14]
        assert int.from_bytes(code, "big") == ErrorCodes.FRAME_SIZE_ERROR


async def test_an_oversized_frame_from_the_app_is_refused_at_its_header() -> None:
    async def handler(app: HostileApp, sid: int, path: bytes, _: bytes) -> None:
        app.h2.send_headers(sid, [(b":status", b"200")])
        app.flush()
        app.raw((2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big"))
        app.raw(b"x" * 65536)  # and never the rest

    async with hostile_stack(handler) as (sidecar, log):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/big-frame")
        # The app connection is refused at once: 502, or a reset if the status got through.
        await asyncio.to_thread(
            client.until,
            lambda: any(
                isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == sid
                for e in client.events
            ),
            3,
        )
        client.close()
        await until(lambda: log.lost == 1)  # the sidecar closed the app connection
    statuses = [
        dict(e.headers)[b":status"] for e in client.events if isinstance(e, ResponseReceived)
    ]
    assert statuses in ([b"502"], [b"200"])
    if statuses == [b"200"]:
        assert any(isinstance(e, StreamReset) for e in client.events)


# -- A client's GOAWAY ---------------------------------------------------------------------------


async def test_a_clients_graceful_goaway_lets_its_requests_in_flight_finish() -> None:
    # RFC 9113 §6.8: a client's GOAWAY is about streams the server would start; its own requests
    # are still answered (Go's server does). They were cut.
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            client = await asyncio.to_thread(RawH2(sidecar.port).start)
            sid = client.request("/slow?ms=300")
            goaway = GoAwayFrame(0)
            goaway.last_stream_id = 0
            client.sock.sendall(goaway.serialize())
            answer = await asyncio.to_thread(client.response, sid)
            assert answer == (200, b"hello h2 /slow?ms=300")
            # and then the sidecar closes the connection
            await asyncio.to_thread(client.until, lambda: client.closed, 3)
            client.close()


# -- Detection -------------------------------------------------------------------------------------


def _split_preface(port: int, cut: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(PREFACE[:cut])
        time.sleep(0.02)
        sock.sendall(PREFACE[cut:] + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        return sock.recv(9)


async def test_the_preface_split_at_every_byte_and_http1_requests_that_start_like_it() -> None:
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            for cut in range(1, len(PREFACE)):
                header = await asyncio.to_thread(_split_preface, sidecar.port, cut)
                assert header[3] == 0x4, cut  # our SETTINGS: HTTP/2
            # Not the preface, though it starts like it: HTTP/1.1 (and 505 for version 2.0).
            answer = await asyncio.to_thread(
                raw_exchange, sidecar.port, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 2
            )
            assert answer.startswith(b"HTTP/1.1 505 ")
            answer = await asyncio.to_thread(
                raw_exchange, sidecar.port, b"PRIX /p HTTP/1.1\r\nHost: x\r\n\r\n", 2
            )
            assert answer.startswith(b"HTTP/1.1 ")
    assert [r for r in record.requests if r[0] != b"HTTP/1.1"] == []


# -- HPACK: the peer's SETTINGS_HEADER_TABLE_SIZE ---------------------------------------------


@pytest.mark.parametrize("side", ["server", "upstream"])
def test_a_huge_header_table_allowed_by_the_peer_is_not_filled(side: str) -> None:
    # A peer allowing a 4 GiB table made our encoder keep every distinct field it sent on the
    # connection (measured end to end: +8.8 MiB of RSS for 600 responses with a distinct 16 KiB
    # field each; in process here, as end to end the HPACK work alone takes half a minute).
    peer = H2Connection(H2Configuration(client_side=side == "server", header_encoding=None))
    if side == "server":
        ours: H2Connection = StrictServer(config=server_config())
        ours.initiate_connection()
    else:
        ours = _Client(config=_upstream_config())
        ours.initiate_connection()
    peer.initiate_connection()
    peer.update_settings({SettingCodes.HEADER_TABLE_SIZE: 2**32 - 1})
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    for index in range(100):
        ours.encoder.encode([(b"x-token", b"%07d" % index * 128)])  # 1 KiB, distinct
    assert ours.encoder.header_table_size <= 4096
    assert sum(32 + len(n) + len(v) for n, v in ours.encoder.header_table.dynamic_entries) <= 4096


# -- Malformed requests never reach the app ---------------------------------------------------


_BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/p")]

MALFORMED_REQUESTS = {
    "repeated :path": _BASE + [(b":path", b"/q")],
    "repeated :method": [(b":method", b"POST"), *_BASE],
    "pseudo after regular": [*_BASE[:3], (b"x-a", b"1"), _BASE[3]],
    "unknown pseudo": [*_BASE, (b":protocol", b"websocket")],
    "response pseudo": [(b":status", b"200"), *_BASE],
    "empty :path": [*_BASE[:3], (b":path", b"")],
    "relative :path": [*_BASE[:3], (b":path", b"p")],
    "absolute-form :path": [*_BASE[:3], (b":path", b"http://evil/p")],
    "* for GET": [*_BASE[:3], (b":path", b"*")],
    "no :scheme": [_BASE[0], _BASE[2], _BASE[3]],
    "no :method": _BASE[1:],
    "no authority or host": [_BASE[0], _BASE[1], _BASE[3]],
    "host and :authority differ": [*_BASE, (b"host", b"y")],
    "upper-case name": [*_BASE, (b"X-Upper", b"1")],
    "space in name": [*_BASE, (b"x a", b"1")],
    "connection": [*_BASE, (b"connection", b"keep-alive")],
    "transfer-encoding": [*_BASE, (b"transfer-encoding", b"chunked")],
    "upgrade": [*_BASE, (b"upgrade", b"websocket")],
    "keep-alive": [*_BASE, (b"keep-alive", b"5")],
    "te gzip": [*_BASE, (b"te", b"gzip")],
    "CRLF in value": [*_BASE, (b"x-a", b"1\r\nx-injected: 2")],
    "LF in value": [*_BASE, (b"x-a", b"1\nx-injected: 2")],
    "NUL in value": [*_BASE, (b"x-a", b"1\x002")],
    "CR in :path": [*_BASE[:3], (b":path", b"/p\r\nx: y")],
    "space in :authority": [*_BASE[:2], (b":authority", b"a b"), _BASE[3]],
    "userinfo in :authority": [*_BASE[:2], (b":authority", b"user@x"), _BASE[3]],
    "leading space in value": [*_BASE, (b"x-a", b" 1")],
    "bad content-length": [*_BASE, (b"content-length", b"1_0")],
    "conflicting content-lengths": [
        *_BASE,
        (b"content-length", b"1"),
        (b"content-length", b"2"),
    ],
}


async def test_malformed_request_kinds_are_reset_and_never_reach_the_app() -> None:
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            client = await asyncio.to_thread(RawH2(sidecar.port).start)
            client.h2.config.validate_outbound_headers = False
            client.h2.config.normalize_outbound_headers = False
            answers = {}
            for kind, fields in MALFORMED_REQUESTS.items():
                sid = client.h2.get_next_available_stream_id()
                client.h2.send_headers(sid, fields, end_stream=True)
                client.flush()

                def ended(sid: int = sid) -> bool:
                    return any(
                        isinstance(e, (StreamReset, StreamEnded)) and e.stream_id == sid
                        for e in client.events
                    )

                await asyncio.to_thread(client.until, ended)
                answers[kind] = next(
                    (
                        e.error_code
                        if isinstance(e, StreamReset)
                        else int(dict(e.headers)[b":status"])
                        for e in client.events
                        if isinstance(e, (StreamReset, ResponseReceived)) and e.stream_id == sid
                    ),
                )
            good = client.request("/good")
            assert await asyncio.to_thread(client.response, good) == (200, b"hello h2 /good")
            client.close()
    # A stream error each (or a 400 for an authority the HTTP/1 path refuses too).
    assert {k: v for k, v in answers.items() if v not in (ErrorCodes.PROTOCOL_ERROR, 400)} == {}
    assert [r[1] for r in record.requests] == [b"/good"]


async def test_a_request_body_longer_than_its_content_length_is_cut_at_the_app() -> None:
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            client = await asyncio.to_thread(RawH2(sidecar.port).start)
            client.h2.config.validate_outbound_headers = False
            sid = client.h2.get_next_available_stream_id()
            post = [(b":method", b"POST"), *_BASE[1:3], (b":path", b"/echo")]
            client.h2.send_headers(sid, [*post, (b"content-length", b"5")])
            client.flush()
            await asyncio.sleep(0.2)  # at the app by now
            frame = DataFrame(sid, b"hello, and more", flags=["END_STREAM"])
            client.sock.sendall(frame.serialize())
            await asyncio.to_thread(
                client.until,
                lambda: any(
                    isinstance(e, StreamReset) and e.stream_id == sid for e in client.events
                ),
            )
            good = client.request("/after")
            assert await asyncio.to_thread(client.response, good) == (200, b"hello h2 /after")
            client.close()
    assert record.completed == 1  # /after only: the app's /echo stream was cancelled
    assert record.resets == 1


async def test_upgrade_on_http10_or_with_pipelined_bytes_smuggles_nothing() -> None:
    probe = H2Connection(H2Configuration(client_side=True))
    settings = probe.initiate_upgrade_connection()
    head = (
        b"GET /up HTTP/1.%d\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
    )
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
        with running(sidecar):
            answer = await asyncio.to_thread(raw_exchange, sidecar.port, head % 0, 2)
            assert answer.startswith(b"HTTP/1.0 200 ") or answer.startswith(b"HTTP/1.1 200 ")
            assert b" 101 " not in answer
            # After a granted upgrade the bytes are HTTP/2's: an HTTP/1 request there is a
            # connection error, never a second request.
            answer = await asyncio.to_thread(raw_exchange, sidecar.port, head % 1 + smuggled, 2)
            assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"/smuggled" not in [r[1] for r in record.requests]


# -- Queue places ----------------------------------------------------------------------------


async def test_resetting_queued_streams_frees_their_places_and_they_never_reach_the_app() -> None:
    # CC=1: one stream at the app, ten queued (a full queue); the ten are reset, and ten new
    # ones must find places again rather than 503s.
    async with serve_h2_app() as (app_port, record):
        env = knative_env(app_port, free_port(), CONTAINER_CONCURRENCY="1")
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            client = await asyncio.to_thread(RawH2(sidecar.port).start)
            held = client.request("/hold")
            await asyncio.sleep(0.2)
            queued = [client.request(f"/q{index}") for index in range(10)]
            await asyncio.sleep(0.2)
            for sid in queued:
                client.h2.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
            await asyncio.sleep(0.2)
            again = [client.request(f"/r{index}") for index in range(10)]
            await asyncio.sleep(0.3)
            client.h2.reset_stream(held, ErrorCodes.CANCEL)
            client.flush()
            answers = [await asyncio.to_thread(client.response, sid) for sid in again]
            client.close()
    assert [status for status, _ in answers] == [200] * 10
    assert [r[1] for r in record.requests] == [b"/hold"] + [b"/r%d" % i for i in range(10)]
