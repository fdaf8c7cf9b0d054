"""A small h2c (prior knowledge) app for end-to-end tests, run in the test's event loop.

Paths: `/echo` answers the request body's length and SHA-256; `/slow?ms=N` answers after N ms;
`/hold` never answers (until the client resets); `/big?n=N` streams N bytes of `x`;
`/trailers` answers with trailers; `/reset?code=N` resets the stream;
`/early` sends 103 Early Hints first; anything else
`hello h2 <path>`. A connection that does not begin with the HTTP/2 preface gets one HTTP/1.1
answer, `hello h1`, and is closed. It records what it saw: requests (method, path, headers), the
most streams in progress at once, and resets received.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError

from tests.harness import free_port


@dataclass
class Record:
    requests: list[tuple[bytes, bytes, dict[bytes, bytes]]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    resets: int = 0
    completed: int = 0


class _AppConnection(asyncio.Protocol):
    def __init__(self, record: Record) -> None:
        self.record = record
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.bodies: dict[int, bytearray] = {}
        self.heads: dict[int, tuple[bytes, bytes]] = {}
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.live: set[int] = set()
        self.first = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.first:
            self.first = False
            if not data.startswith(b"PRI"):
                self.record.requests.append((b"HTTP/1.1", data.split(b" ")[1], {}))
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhello h1"
                )
                self.transport.close()
                return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = dict(event.headers)
                method, path = headers[b":method"], headers[b":path"]
                self.record.requests.append((method, path, headers))
                self.heads[event.stream_id] = (method, path)
                self.bodies[event.stream_id] = bytearray()
                self.live.add(event.stream_id)
                self.record.active += 1
                self.record.max_active = max(self.record.max_active, self.record.active)
            elif isinstance(event, DataReceived):
                self.bodies[event.stream_id] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                if event.stream_id in self.heads:
                    asyncio.ensure_future(self.answer(event.stream_id))
            elif isinstance(event, StreamReset):
                self.record.resets += 1
                self._gone(event.stream_id)
            elif isinstance(event, WindowUpdated):
                for future in list(self.waiting.values()):
                    if not future.done():
                        future.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                if self.transport is not None:
                    self.transport.close()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for sid in list(self.live):
            self._gone(sid)

    def _gone(self, sid: int) -> None:
        if sid in self.live:
            self.live.discard(sid)
            self.record.active -= 1
        future = self.waiting.pop(sid, None)
        if future is not None and not future.done():
            future.cancel()

    async def answer(self, sid: int) -> None:
        method, target = self.heads.pop(sid)
        body = bytes(self.bodies.pop(sid))
        url = urlsplit(target.decode())
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/slow":
                await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            if url.path == "/hold":
                await asyncio.Future()
            if sid not in self.live:
                return
            if url.path == "/echo":
                digest = hashlib.sha256(body).hexdigest()
                await self.send(sid, f"{len(body)} {digest}".encode())
            elif url.path == "/big":
                await self.send(sid, b"x" * int(query["n"]))
            elif url.path == "/early":
                self.h2.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>")])
                await self.send(sid, b"after hints")
            elif url.path == "/reset":
                self.h2.reset_stream(sid, int(query.get("code", "8")))
                self.flush()
                return
            elif url.path == "/trailers":
                self.h2.send_headers(sid, [(b":status", b"200")])
                self.h2.send_data(sid, b"with trailers")
                self.h2.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
                self.flush()
            else:
                await self.send(sid, b"hello h2 " + target)
            self.record.completed += 1
        except (asyncio.CancelledError, ProtocolError):
            return
        finally:
            if sid in self.live:
                self.live.discard(sid)
                self.record.active -= 1

    async def send(self, sid: int, body: bytes) -> None:
        self.h2.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
        view = memoryview(body)
        while view:
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                self.flush()
                future = self.waiting[sid] = asyncio.get_running_loop().create_future()
                await future
                continue
            self.h2.send_data(sid, bytes(view[:room]))
            view = view[room:]
            self.flush()
        self.h2.end_stream(sid)
        self.flush()


@contextlib.asynccontextmanager
async def serve_h2_app() -> AsyncIterator[tuple[int, Record]]:
    """Serve the app on a free 127.0.0.1 port; yield (port, record)."""
    record = Record()
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(lambda: _AppConnection(record), "127.0.0.1", port)
    try:
        yield port, record
    finally:
        server.close()
