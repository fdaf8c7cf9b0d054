"""Keep-alive connections to the user container at 127.0.0.1:$USER_PORT.

Knative's transport (`pkg/queue/sharedmain/main.go` `buildTransport`, `knative.dev/pkg/network`
`transports.go`) keeps up to containerConcurrency idle connections (1000 when unlimited) and
dials with a 50 ms first attempt backing off by 1.4x. Ours does the same with two rules of its own,
both about never letting one request's bytes land on another:

- **Pool hygiene.** A connection goes back to the pool only when its response ended exactly at the
  last byte received, the whole request was written, and both sides allow keep-alive. Bytes beyond
  a response (a 204 with a body, a body longer than its Content-Length) discard the connection;
  bytes that arrive on an idle pooled connection discard it too. Each response is parsed from a
  clean state (`attach` resets the reader), so a parse error belongs to one request only.
- **Retries** (RFC 9110 §9.2.2, as Go's `Transport` decides in `net/http`): a request is sent
  again on a fresh connection only when the reused connection closed before a single byte of the
  response arrived, and only if it is idempotent (`h1.IDEMPOTENT_METHODS`) or carries an
  `Idempotency-Key`/`X-Idempotency-Key`. A POST that the app may have acted on is answered 502.

Responses are read by `h1` (sans-IO) and handed to the client side (`proxy.ClientConnection`)
through `response_head`, `response_body`, `response_complete`, `informational`, `start_tunnel`,
`upstream_failed` and `retry_upstream`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from queueproxy.h1 import (
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    HeadFinder,
    HeadMemo,
    ProtocolError,
    ResponseHead,
)
from queueproxy.h1body import BodyReader, body_reader

if TYPE_CHECKING:
    from queueproxy.exchange import Exchange

# Go's dialer in Knative: first try 50 ms, x1.4 per step; we stop after ~2 s in all.
DIAL_TIMEOUTS = tuple(0.05 * 1.4**step for step in range(10))
P = TypeVar("P", bound=asyncio.Protocol)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the user container; at most one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.buffer = bytearray()  # an incomplete response head
        self.heads = HeadFinder(request=False)
        self.response: ResponseHead | None = None
        self.reader: BodyReader | None = None
        self.received = False  # a byte of the current exchange's response arrived
        self.stale = False  # those bytes could not begin a response
        self.tunnel = False
        self.reused = False
        self.closed = False
        # Whether we paused the transport's reading: a pooled connection is resumed on every
        # release and acquire, and most of those find it reading already.
        self.paused = False

    def attach(self, exchange: Exchange) -> None:
        """Give the connection to `exchange`; its response is parsed from a clean state."""
        self.exchange = exchange
        if self.buffer:
            self.buffer.clear()
        self.heads.scanned = 0
        self.response = None
        self.reader = None
        self.received = False

    # -- Protocol interface --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        exchange = self.exchange
        self.exchange = None
        if exchange is None:
            return
        conn = exchange.conn
        if self.tunnel:
            conn.tunnel_closed()
        elif self.reader is not None and self.response is not None:
            if self.response.framing == UNTIL_CLOSE and exc is None:
                self.reader = None
                conn.response_complete(exchange, None)
            else:
                conn.upstream_failed(exchange, read_error(self.pool.address, exc))
        elif not self.received and self.reused and conn.retry_upstream(exchange):
            return
        else:
            conn.upstream_failed(exchange, read_error(self.pool.address, exc))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the rest

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.upstream_writable(True)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes with no request outstanding: nobody may ever read them as a response.
            self.abort()
            return
        if self.tunnel:
            exchange.conn.tunnel_data(data)
            return
        if not self.received:
            self.received = True
            # What cannot begin a response is left over from the connection's last one (an app
            # that wrote past its response): the connection was stale, not this answer wrong.
            if self.reused:
                start = data[:5]
                self.stale = start != b"HTTP/" and not b"HTTP/".startswith(start)
        buffer = self.buffer
        if buffer:
            buffer += data
            data = buffer  # type: ignore[assignment]
        try:
            self._process(exchange, data)
        except ProtocolError as error:
            self.abort()
            conn = exchange.conn
            if not (self.stale and conn.retry_upstream(exchange)):
                # h1's reasons are worded for requests; say whose message it was.
                reason = error.reason.partition(": ")[2] or error.reason
                if error.status in (414, 431):
                    reason = "head over 64 KiB"
                conn.upstream_failed(exchange, "malformed HTTP response from the app: " + reason)
        conn = exchange.conn
        if conn.held:
            conn.flush()

    def _process(self, exchange: Exchange, data: bytes) -> None:
        pos = 0
        while True:
            reader = self.reader
            if reader is None:
                end = self.heads.find(data, pos)
                if end < 0:
                    self._keep(data, pos)
                    return
                memo = self.pool.memo
                key = (bytes(data[pos:end]), exchange.method, bool(exchange.upgrade))
                head = memo.responses.get(key) or memo.response(*key)
                pos = end
                if head.status < 200 and head.status != 101:
                    exchange.conn.informational(exchange, head)
                    continue
                self.response = head
                conn = exchange.conn
                conn.response_head(exchange, head)
                if self.exchange is not exchange:
                    return  # the client side ended the exchange (it went away)
                if head.status == 101:
                    self.tunnel = True
                    conn.start_tunnel(exchange, self, bytes(data[pos:]))
                    self.buffer.clear()
                    return
                framing = head.framing
                if framing == NO_BODY:
                    self._complete(exchange, pos < len(data))
                    return
                if framing == LENGTH:
                    end = pos + head.length
                    if pos < end <= len(data):
                        # The whole body came with the head (a small response): what a
                        # ContentLengthReader would hand out, without building one.
                        conn.response_body(exchange, bytes(data[pos:end]))
                        self._complete(exchange, end < len(data))
                        return
                reader = body_reader(framing, head.length)
                if reader is None:
                    self._complete(exchange, pos < len(data))
                    return
                self.reader = reader
            chunks, pos = reader.read(data, pos)
            conn = exchange.conn
            for chunk in chunks:
                conn.response_body(exchange, chunk)
            if reader.done:
                self._complete(exchange, pos < len(data))
            elif data is self.buffer:
                self.buffer.clear()
            return

    def _keep(self, data: bytes | bytearray, pos: int) -> None:
        """Hold an incomplete head (bounded by h1.MAX_HEAD_BYTES) for the next read."""
        if data is self.buffer:
            if pos:
                del self.buffer[:pos]
        else:
            self.buffer += memoryview(data)[pos:]

    def _complete(self, exchange: Exchange, leftover: bool) -> None:
        response = self.response
        reader = self.reader
        trailers = reader.trailers if reader is not None else None
        reusable = (
            response is not None
            and response.keep_alive
            and response.framing != UNTIL_CLOSE
            and exchange.request_done
            and not leftover
        )
        self.reader = None
        self.response = None
        if self.buffer:
            self.buffer.clear()
        self.exchange = None
        exchange.upstream = None
        # Pool first: finishing may hand the breaker slot to a waiter that wants a connection.
        if reusable and not self.closed:
            self.pool.release(self)
        else:
            self.abort()
        exchange.conn.response_complete(exchange, trailers)

    # -- Helpers -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def close_or_pool(self, reusable: bool) -> None:
        if reusable and not self.closed:
            self.pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.exchange = None
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.pool.forget(self)


class UpstreamPool:
    """Idle keep-alive connections to the app, most recently used first."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        max_idle: int,
        memo: HeadMemo | None = None,
    ) -> None:
        self.loop = loop
        self.memo = memo if memo is not None else HeadMemo()
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.dialling: set[asyncio.Task[None]] = set()

    def acquire(self, exchange: Exchange) -> None:
        """Hand `exchange` a connection: an idle one now, or a new one when dialled."""
        idle = self.idle
        while idle:
            upstream = idle.pop()
            transport = upstream.transport
            if not upstream.closed and transport is not None and not transport.is_closing():
                upstream.reused = True
                if upstream.paused:
                    upstream.resume_reading()
                exchange.conn.upstream_ready(exchange, upstream)
                return
        self.dial(exchange)

    def dial(self, exchange: Exchange) -> None:
        task = self.loop.create_task(self._dial(exchange))
        self.dialling.add(task)
        task.add_done_callback(self.dialling.discard)

    async def _dial(self, exchange: Exchange) -> None:
        upstream, error = await dial(
            self.loop, lambda: UpstreamConnection(self), self.host, self.port
        )
        if upstream is None:
            exchange.conn.upstream_failed(exchange, error)
        else:
            exchange.conn.upstream_ready(exchange, upstream)

    def release(self, upstream: UpstreamConnection) -> None:
        if len(self.idle) >= self.max_idle:
            upstream.abort()
            return
        upstream.reused = False
        # An idle connection must be read: that is how the app's close (or bytes nobody asked
        # for) is noticed before a request is written into it. It may come back paused, by a
        # client that was not reading its response.
        if upstream.paused:
            upstream.resume_reading()
        self.idle.append(upstream)

    def forget(self, upstream: UpstreamConnection) -> None:
        try:
            self.idle.remove(upstream)
        except ValueError:
            pass

    def close(self) -> None:
        for upstream in list(self.idle):
            upstream.abort()
        self.idle.clear()
        for task in self.dialling:
            task.cancel()


def read_error(address: str, exc: Exception | None) -> str:
    """Go's wording when the app drops the connection: `EOF`, or the socket error."""
    if exc is None:
        return "EOF"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"read tcp {address}: read: {reason.lower()}"


async def dial(
    loop: asyncio.AbstractEventLoop, factory: Callable[[], P], host: str, port: int
) -> tuple[P | None, str]:
    """Connect to the app as Knative's Go dialer does: a first try of 50 ms, each retry's
    timeout x1.4, about 2 s in all (`DIAL_TIMEOUTS`); a refusal or other error ends it at once.
    Returns (the connected protocol, "") or (None, Go's wording of the last failure)."""
    address = f"{host}:{port}"
    error = ""
    for timeout in DIAL_TIMEOUTS:
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(factory, host, port), timeout
            )
        except TimeoutError:
            error = f"timed out dialing {address}"
            continue
        except OSError as exc:
            return None, dial_error(address, exc)
        return protocol, ""
    return None, error


def dial_error(address: str, exc: OSError) -> str:
    """Go's wording for dial failures, which users grep their logs for."""
    if exc.errno == errno.ECONNREFUSED:
        return f"dial tcp {address}: connect: connection refused"
    reason = exc.strerror or str(exc)
    return f"dial tcp {address}: connect: {reason.lower()}"
