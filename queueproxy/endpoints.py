"""A minimal HTTP/1.1 server for the sidecar's own endpoints: admin (:8022), autoscaler
statistics (:9090) and user metrics (:9091).

These answer a handful of requests a second, but importing aiohttp's server for them would add
~120 ms to start-up and ~14 MiB to every pod (performance.md), so they share the data path's
parser instead. Request bodies are read and ignored; responses are whole byte strings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httptools

from queueproxy.http11 import MAX_HEADER_BYTES, READ_HEADER_TIMEOUT, simple_response


@dataclass(frozen=True, slots=True)
class Request:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]  # lower-case names; last value wins
    version: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[[Request], Response | Awaitable[Response]]


def not_found(_: Request) -> Response:
    return Response(404, b"404 page not found\n")


class EndpointProtocol(asyncio.Protocol):
    """One connection to an endpoint server; requests are answered in order."""

    def __init__(self, handler: Handler, loop: asyncio.AbstractEventLoop) -> None:
        self.handler = handler
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.queue: list[Request] = []
        self.busy = False
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.header_timer = self.loop.call_later(READ_HEADER_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"Bad Request: upgrade not supported\n")
        except httptools.HttpParserCallbackError:
            self._fail(431, b"Request Header Fields Too Large\n")
        except httptools.HttpParserError:
            self._fail(400, b"Bad Request\n")

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise ValueError("header block too large")
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def on_message_complete(self) -> None:
        path = httptools.parse_url(self.url).path if self.url else b"/"
        self.queue.append(
            Request(
                self.parser.get_method(),
                path,
                self.headers,
                self.parser.get_http_version().encode(),
                self.parser.should_keep_alive(),
            )
        )
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while self.queue and self.transport is not None:
            request = self.queue.pop(0)
            result = self.handler(request)
            if isinstance(result, Response):
                self._send(request, result)
                continue
            self.busy = True
            task = asyncio.ensure_future(result)
            task.add_done_callback(lambda done, r=request: self._finished(r, done))
            return
        self.busy = False

    def _finished(self, request: Request, done: asyncio.Future[Response]) -> None:
        self.busy = False
        if done.cancelled() or done.exception() is not None:
            self._send(request, Response(500, b"internal error\n"))
        else:
            self._send(request, done.result())
        self._next()

    def _send(self, request: Request, response: Response) -> None:
        if self.transport is None:
            return
        self.transport.write(
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
            self.transport.close()
            self.transport = None

    def _fail(self, status: int, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(simple_response(status, body, keep_alive=False))
            self.transport.close()
            self.transport = None


async def serve(
    loop: asyncio.AbstractEventLoop, handler: Handler, host: str | None, port: int
) -> asyncio.Server:
    return await loop.create_server(
        lambda: EndpointProtocol(handler, loop), host or None, port, reuse_address=True
    )
