"""The response side of an HTTP/1.x client connection: `proxy.ClientConnection`'s methods that
send the app's (or our own) answer, split out to keep one module per concern.

The app's response is re-framed for this client (RFC 9112 §6): its fields go on without the
connection-specific ones (RFC 9110 §7.6.1), with our own `Content-Length`, chunked encoding or
close-delimited body as the framing decision says, and a `Date` when the app sent none, as Go's
server adds one. A response head is held until the first body bytes or the end of the read, so a
small response leaves in one write.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from queueproxy.exchange import DONE, TUNNEL, Exchange
from queueproxy.h1 import CHUNKED, LENGTH, NO_BODY, PROTECTED_FIELDS, ResponseHead
from queueproxy.h1body import render_trailers
from queueproxy.http11 import DATE, HOP_BY_HOP, simple_response, status_line
from queueproxy.outcomes import CUT, upstream_failure_reason
from queueproxy.timeouts import RequestTimer

if TYPE_CHECKING:
    from queueproxy.proxy import DataPath
    from queueproxy.upstream import UpstreamConnection

# Reasons to stop reading from the client (a bit set)
BODY_BACKLOG, ANSWERING, UPSTREAM_FULL = 1, 2, 4
# Response framing towards an HTTP/1.0 client that gets a body of unknown length: until close.
UNTIL_CLOSE_CLIENT = 5


class ResponseSide:
    """Mixed into `ClientConnection`, which provides the state and the hooks below."""

    path: DataPath
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    timer: RequestTimer
    held: bytes
    buffer: bytearray
    exchange: Exchange | None
    tunnel_upstream: UpstreamConnection | None

    if TYPE_CHECKING:  # provided by the connection class

        def _write(self, data: bytes) -> None: ...

        def _finish(self, exchange: Exchange) -> None: ...

        def _resume_reading(self, reason: int) -> None: ...

        def rejected(self, reason: str, status: int, detail: bytes) -> None: ...

    def response_head(self, exchange: Exchange, response: ResponseHead) -> None:
        """Forward the app's response head, framed for this client (RFC 9112 §6)."""
        status = response.status
        exchange.status = status
        exchange.response_started = True
        exchange.replay = None
        version = exchange.version
        framing = response.framing
        if response.plain:
            # Nothing connection-specific: the app's fields go on as they are, its
            # Content-Length (validated) included.
            lines = [status_line(version, status), response.fields]
            if not response.has_date:
                lines.append(DATE.line)
        else:
            lines = self._forwarded_fields(version, response)
            if framing == LENGTH:
                lines.append(b"Content-Length: %d\r\n" % response.length)
            elif framing == NO_BODY and status >= 200 and status != 204:
                # 304 and HEAD keep the length of the representation (RFC 9110 §8.6); a 204 and
                # a 1xx never carry one.
                for name, value in response.headers:
                    if name.lower() == b"content-length":
                        lines.append(b"Content-Length: " + value + b"\r\n")
        if self.path.track_writes:
            self.timer.wrote(self.loop.time())
        if status == 101:
            lines.append(b"Connection: Upgrade\r\nUpgrade: " + exchange.upgrade + b"\r\n")
            exchange.response_framing = NO_BODY
        elif framing == LENGTH:
            exchange.response_framing = LENGTH
            exchange.response_length = response.length
        elif framing == NO_BODY:
            exchange.response_framing = NO_BODY
        elif version == b"1.1":
            exchange.response_framing = CHUNKED
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            exchange.response_framing = UNTIL_CLOSE_CLIENT
            exchange.keep_alive = False
        if exchange.upgrade and status != 101 and not exchange.request_done:
            exchange.keep_alive = False
        if status != 101:
            if not exchange.keep_alive:
                lines.append(b"Connection: close\r\n")
            elif version == b"1.0":
                lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        # Held until the first body bytes or the end of this read (`flush`): head and body of a
        # small response leave in one write, one system call.
        self.held = b"".join(lines)

    def _forwarded_fields(self, version: bytes, response: ResponseHead) -> list[bytes]:
        """Status line and the app's fields without connection-specific ones (RFC 9110 §7.6.1)
        and without its framing, which the caller renders from the framing decision."""
        named = response.connection - PROTECTED_FIELDS if response.connection else None
        lines = [status_line(version, response.status)]
        has_date = False
        for name, value in response.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname == b"content-length":
                continue
            if named is not None and lname in named:
                continue
            if lname == b"date":
                has_date = True
            lines.append(name + b": " + value + b"\r\n")
        if not has_date:
            lines.append(DATE.line)
        return lines

    def flush(self) -> None:
        """Write a held response head: called when a read from the app has been handled."""
        if self.held:
            self._write(b"")

    def informational(self, exchange: Exchange, response: ResponseHead) -> None:
        """Forward a 1xx (100 Continue, 103 Early Hints) to an HTTP/1.1 client."""
        if exchange.version != b"1.1":
            return
        lines = [status_line(b"1.1", response.status)]
        lines += [
            n + b": " + v + b"\r\n"
            for n, v in response.headers
            if n.lower() not in HOP_BY_HOP and n.lower() != b"content-length"
        ]
        lines.append(b"\r\n")
        self._write(b"".join(lines))

    def response_body(self, exchange: Exchange, chunk: bytes) -> None:
        exchange.response_bytes += len(chunk)
        if self.path.track_writes:
            self.timer.wrote(self.loop.time())
        if exchange.response_framing == CHUNKED:
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._write(chunk)

    def response_complete(
        self, exchange: Exchange, trailers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        if exchange.response_framing == CHUNKED:
            tail = render_trailers(trailers) if trailers else b""
            self._write(b"0\r\n" + tail + b"\r\n")
        self._finish(exchange)

    def upstream_failed(self, exchange: Exchange, error: str) -> None:
        """The app could not be reached, broke off or answered malformed: 502 with Go's error text
        (`knative.dev/pkg/network/error_handler.go`)."""
        if exchange.state == DONE:
            return
        exchange.upstream = None
        reason = upstream_failure_reason(error)
        self.rejected(reason, CUT if exchange.response_started else 502, error.encode())
        if exchange.response_started:
            # Part of the response is out: the only honest signal left is to cut the connection.
            exchange.keep_alive = False
            self._finish(exchange)
            if self.transport is not None:
                self.transport.abort()
            return
        self.respond_locally(exchange, 502, error.encode() + b"\n")

    def respond_locally(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer without (or instead of) the app."""
        if not exchange.request_done or exchange.upgrade:
            # The rest of its body would be read as a new request: close after answering. After
            # an upgrade request nobody knows what the client sends next.
            exchange.keep_alive = False
        upstream = exchange.upstream
        if upstream is not None:
            exchange.upstream = None
            upstream.abort()  # whatever the app still sends belongs to nobody
        exchange.status = status
        exchange.response_bytes = len(body)
        exchange.response_started = True
        self._write(
            simple_response(
                status,
                body,
                version=exchange.version,
                keep_alive=exchange.keep_alive,
                extra_headers=extra_headers,
                head_only=exchange.method == b"HEAD",
            )
        )
        self._finish(exchange)

    def start_tunnel(self, exchange: Exchange, upstream: UpstreamConnection, rest: bytes) -> None:
        """101 from the app: from now on bytes flow both ways untouched."""
        exchange.state = TUNNEL
        self.tunnel_upstream = upstream
        pending = b"".join(exchange.body)
        exchange.body.clear()
        if pending:
            upstream.write(pending)
        if self.buffer:
            # What the client sent after its upgrade request belongs to the new protocol.
            upstream.write(bytes(self.buffer))
            self.buffer = bytearray()
        self._write(rest)  # with the held 101 head
        self._resume_reading(BODY_BACKLOG | ANSWERING | UPSTREAM_FULL)

    def tunnel_data(self, data: bytes) -> None:
        self._write(data)
        if self.path.track_writes:
            self.timer.wrote(self.loop.time())

    def tunnel_closed(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.keep_alive = False
            self._finish(exchange)
        if self.transport is not None:
            self.transport.close()
