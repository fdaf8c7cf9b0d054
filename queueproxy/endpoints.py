"""A minimal HTTP/1.1 server for the sidecar's own endpoints: admin (:8022), autoscaler
statistics (:9090) and user metrics (:9091).

These answer a handful of requests a second, but importing aiohttp's server for them would add
~120 ms to start-up and ~14 MiB to every pod, so they share the data path's framing rules
(`h1`) instead, with the same bounds: a head is limited to `h1.MAX_HEAD_BYTES` as it arrives, it
must be complete within the read-header timeout (from the connection's start, and from the end
of the previous answer, which also bounds an idle kept-alive connection), and one request is
answered at a time: while a handler runs (the admin port's `/wait-for-drain` may take minutes)
or while the client does not read its answers, reading stops, so a pipelined backlog costs one
read. No endpoint reads a request body: a request with one is answered at once and the
connection closed. Responses are whole byte strings, except a `Stream` (the live page's
server-sent events): its head goes out at once, without a length, and its body is written later
by its owner through a `StreamWriter` until either side closes. The connection then reads no
more requests, and a client that does not read its stream is cut once `STREAM_BUFFER_LIMIT`
bytes wait for it, so a stream never holds more than that in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from queueproxy.h1 import (
    NO_BODY,
    HeadFinder,
    ProtocolError,
    RequestHead,
    parse_request_head,
    skip_empty_lines,
)
from queueproxy.http11 import DATE, READ_HEADER_TIMEOUT, simple_response, status_line
from queueproxy.listen import listen

# Bytes a stream may have waiting for a slow client before it is cut.
STREAM_BUFFER_LIMIT = 64 * 1024


# NamedTuples, not frozen dataclasses: as immutable, and cheaper to define at every start.
class Request(NamedTuple):
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]  # lower-case names; last value wins
    version: bytes
    keep_alive: bool
    query: bytes = b""  # after the `?`, undecoded


class Response(NamedTuple):
    status: int
    body: bytes = b""
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()


class StreamWriter:
    """The body of a `Stream`, for its owner: `write` while `open`; `on_close` is called once
    when the stream ends, from either side."""

    __slots__ = ("_transport", "open", "on_close")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport: asyncio.Transport | None = transport
        self.open = True
        self.on_close: Callable[[], None] | None = None

    def write(self, data: bytes) -> bool:
        """Send `data`; False (and the stream closed) when the client is too far behind."""
        transport = self._transport
        if transport is None:
            return False
        if transport.get_write_buffer_size() + len(data) > STREAM_BUFFER_LIMIT:
            transport.abort()  # a reader this slow gets cut, not buffered for
            self.ended()
            return False
        transport.write(data)
        return True

    def close(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()
        self.ended()

    def ended(self) -> None:
        self._transport = None
        if self.open:
            self.open = False
            if self.on_close is not None:
                self.on_close()


class Stream(NamedTuple):
    """A 200 whose body `start` writes later; the connection closes when it ends."""

    content_type: bytes
    start: Callable[[StreamWriter], None]


Handler = Callable[[Request], Response | Stream | Awaitable[Response]]


def not_found(_: Request) -> Response:
    return Response(404, b"404 page not found\n")


class EndpointProtocol(asyncio.Protocol):
    """One connection to an endpoint server; requests are answered one at a time, in order."""

    def __init__(
        self,
        handler: Handler,
        loop: asyncio.AbstractEventLoop,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
    ) -> None:
        self.handler = handler
        self.loop = loop
        self.read_header_timeout = read_header_timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.heads = HeadFinder()
        self.busy = False  # a handler is running or its answer is being sent
        self.paused = False  # reading stopped while busy or while the client is not reading
        self.writing_paused = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.stream: StreamWriter | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self.transport = None
        self.buffer = bytearray()
        if self.stream is not None:
            self.stream.ended()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buffer += data
        self._process()

    def pause_writing(self) -> None:
        # A client that does not read its answers gets no more of them until it does.
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.busy and self.transport is not None:
            if self.paused:
                self.paused = False
                self.transport.resume_reading()
            if self.buffer:
                self._process()

    # -- Reading -------------------------------------------------------------------------------

    def _process(self) -> None:
        buffer = self.buffer
        pos = 0
        try:
            while self.transport is not None and not self.busy and not self.writing_paused:
                start = skip_empty_lines(buffer, pos)
                if start == len(buffer) - 1 and buffer[start] == 13:
                    # A CR last may be an empty line whose LF is in the next read (RFC 9112
                    # §2.2): wait for it, before the head finder refuses a lone CR.
                    pos = start
                    break
                if start >= len(buffer):
                    pos = start
                    break
                if self.header_timer is None:
                    self._arm_header_timer()
                end = self.heads.find(buffer, start)
                if end < 0:
                    pos = start
                    break
                head = parse_request_head(bytes(buffer[start:end]))
                pos = end
                self._cancel_header_timer()
                self._begin(head)
        except ProtocolError as error:
            self._fail(error.status, error.reason.encode() + b"\n")
            return
        if self.transport is None:
            return
        if pos:
            del buffer[:pos]
        if (self.busy or self.writing_paused) and buffer and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _begin(self, head: RequestHead) -> None:
        # No endpoint reads a body: one is not waited for (it could be endless) but answered at
        # once, and the connection closed after the answer.
        path, _, query = head.target.partition(b"?")
        request = Request(
            head.method,
            path or b"/",
            {name.lower(): value for name, value in head.headers},
            head.version,
            head.keep_alive and head.framing == NO_BODY,
            query,
        )
        self._dispatch(request)

    # -- Answering -----------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        self.busy = True
        result = self.handler(request)
        if isinstance(result, Response):
            self._send(request, result)
            return
        if isinstance(result, Stream):
            self._start_stream(request, result)
            return
        task = asyncio.ensure_future(result)
        task.add_done_callback(lambda done, r=request: self._finished(r, done))

    def _finished(self, request: Request, done: asyncio.Future[Response]) -> None:
        if done.cancelled() or done.exception() is not None:
            self._send(request, Response(500, b"internal error\n"))
        else:
            self._send(request, done.result())
        if not self.busy and self.transport is not None and self.buffer:
            self._process()

    def _send(self, request: Request, response: Response) -> None:
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        transport.write(
            simple_response(
                response.status,
                response.body,
                version=request.version,
                keep_alive=request.keep_alive,
                content_type=response.content_type,
                extra_headers=response.headers,
                head_only=request.method == b"HEAD",
            )
        )
        if not request.keep_alive:
            self._close()
            return
        if self.header_timer is None:
            # The next head must be complete within the deadline from now: this bounds how
            # long an idle kept-alive connection may stay, too.
            self._arm_header_timer()
        if self.paused and not self.writing_paused:
            self.paused = False
            transport.resume_reading()

    def _start_stream(self, request: Request, stream: Stream) -> None:
        """The head now, then the owner writes; this connection answers nothing else."""
        transport = self.transport
        if transport is None:
            return
        self._cancel_header_timer()
        version = request.version if request.version in (b"1.0", b"1.1") else b"1.1"
        transport.write(
            status_line(version, 200)
            + b"Content-Type: "
            + stream.content_type
            + b"\r\nCache-Control: no-store\r\nConnection: close\r\n"
            + DATE.line
            + b"\r\n"
        )
        if request.method == b"HEAD":
            self._close()
            return
        # What the client sends from now on is not read: reading stops for good.
        self.buffer = bytearray()
        if not self.paused:
            self.paused = True
            transport.pause_reading()
        self.stream = StreamWriter(transport)
        stream.start(self.stream)

    def _fail(self, status: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(simple_response(status, body, keep_alive=False))
            self._close()

    def _close(self) -> None:
        self._cancel_header_timer()
        if self.transport is not None:
            self.transport.close()  # after what was written is delivered
            self.transport = None
        self.buffer = bytearray()

    # -- The read-header deadline (Go's ReadHeaderTimeout) -------------------------------------

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(self.read_header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport is not None and not self.busy:
            self._close()


async def serve(
    loop: asyncio.AbstractEventLoop,
    handler: Handler,
    host: str | None,
    port: int,
    read_header_timeout: float = READ_HEADER_TIMEOUT,
) -> list[asyncio.Server]:
    """`handler` on `host`:`port` (None or "" = every interface): one server per listening
    socket (`listen.listen`)."""
    return await listen(
        loop, lambda: EndpointProtocol(handler, loop, read_header_timeout), host, port
    )
