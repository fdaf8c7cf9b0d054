"""The data path: HTTP/1.x from the main port to the user container.

Built on asyncio Protocols instead of a framework, because a request through aiohttp's server and
client costs ~5x the CPU (see docs/design.md). Reading order:

- `DataPath`: what every connection shares (breaker, upstream pool, statistics, hooks).
- `ClientConnection`: one inbound connection; finds request heads and bodies with `h1` (every
  framing rule is there), answers probes and errors itself, and serves one request at a time.
  The head it sends the app (Knative's header rules) is `h1request.upstream_head`; its response
  side (re-framing the app's answer for this client) is `h1response.ResponseSide`.
- `exchange.Exchange`: one request/response cycle through the breaker to the app.
- `upstream.UpstreamConnection` / `UpstreamPool`: keep-alive connections to 127.0.0.1:$USER_PORT.

Rules that keep one client's bytes from becoming another request:

- A request is framed once, by `h1.parse_request_head`, and sent on framed by that same decision
  (our own Content-Length or chunked encoding, never the client's framing fields as sent).
- One request at a time per connection: while a request is being answered, bytes that follow it
  stay unparsed in a buffer and reading stops, so a pipelined backlog is bounded by one read plus
  the socket buffer, and bytes after an `Upgrade` request reach the app only after its `101`.
- A malformed request is answered (400, 414, 431, 501, 505, 405) and the connection closed: the
  stream cannot be trusted after it. A body that turns out malformed after its head went upstream
  aborts the upstream request.

No task or timer is created per request on the fast path: `data_received` drives everything, and
an upstream connection is only dialled (one task) when the pool has none idle.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

from queueproxy.breaker import Admission, Breaker
from queueproxy.exchange import (
    ACTIVE,
    CONNECTING,
    DONE,
    QUEUE_FULL_BODY,
    QUEUED,
    TUNNEL,
    Exchange,
    LocalResponder,
    Observer,
)
from queueproxy.h1 import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    HeadFinder,
    HeadMemo,
    ProtocolError,
    RequestHead,
    skip_empty_lines,
)
from queueproxy.h1body import BodyReader, body_reader, render_trailers
from queueproxy.h1request import upstream_head
from queueproxy.h1response import (
    ANSWERING,
    BODY_BACKLOG,
    UPSTREAM_FULL,
    ResponseSide,
)
from queueproxy.h2detect import h2c_upgrade_settings, preface_state
from queueproxy.http11 import (
    HIGH_WATER,
    READ_HEADER_TIMEOUT,
    simple_response,
)
from queueproxy.outcomes import (
    BAD_REQUEST,
    CUT,
    QUEUE_FULL,
    TIMEOUT,
)
from queueproxy.timeouts import TIMEOUT_BODY, TIMEOUT_STATUS, Alarm, RequestTimer, TimeoutRules
from queueproxy.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("queueproxy")

# Bodies up to this size are kept until the first response byte, so an idempotent request that
# met a keep-alive connection the app had just closed can be sent again on a fresh one.
REPLAY_LIMIT = 64 * 1024
# Lingering close: how long, and how many bytes, to read and drop after shutting the write side.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


class DataPath:
    """State shared by every connection of one main-port listener."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        upstream_host: str,
        upstream_port: int,
        breaker: Breaker | None,
        max_idle: int,
        timeout_rules: TimeoutRules,
        read_header_timeout: float = READ_HEADER_TIMEOUT,
    ) -> None:
        self.loop = loop
        self.breaker = breaker
        self.timeout_rules = timeout_rules
        self.read_header_timeout = read_header_timeout
        # Write times matter only to the response-start and idle rules.
        self.track_writes = timeout_rules.response_start > 0 or timeout_rules.idle > 0
        self.memo = HeadMemo()
        self.pool = UpstreamPool(loop, upstream_host, upstream_port, max_idle, self.memo)
        self.upstream_host_header = f"{upstream_host}:{upstream_port}".encode()
        self.observer: Observer | None = None
        self.responder: LocalResponder | None = None
        self.connections: set[ClientConnection] = set()
        # The h2c pool to the app (`h2upstream.H2UpstreamPool`), made by the first HTTP/2
        # connection: HTTP/1-only pods never load h2.
        self.h2_pool: Any = None

    def protocol_factory(self) -> ClientConnection:
        return ClientConnection(self)

    def admit(self, exchange: Exchange) -> None:
        """A request for the app, over HTTP/1 or HTTP/2 (an `h2stream.Stream` has the same
        interface): counted, then through the breaker to its connection's `start_upstream`,
        into the queue, or answered 503 when every place is taken."""
        conn = exchange.conn
        if self.observer is not None:
            exchange.counted = True
            self.observer.request_started(exchange)
        breaker = self.breaker
        if breaker is None:
            conn.start_upstream(exchange)
            return
        admission = breaker.try_acquire(exchange)
        if admission is Admission.ADMITTED:
            exchange.has_slot = True
            conn.start_upstream(exchange)
        elif admission is Admission.QUEUED:
            exchange.state = QUEUED
        else:
            conn.rejected(QUEUE_FULL, 503, QUEUE_FULL_BODY)
            conn.respond_locally(exchange, 503, QUEUE_FULL_BODY)

    def admitted(self, exchange: Exchange) -> None:
        """A queued exchange was handed a breaker slot."""
        exchange.has_slot = True
        exchange.conn.start_upstream(exchange)

    def release_slot(self, exchange: Exchange) -> None:
        if not exchange.has_slot:
            return
        exchange.has_slot = False
        breaker = self.breaker
        if breaker is not None:
            waiter = breaker.release()
            if waiter is not None:
                self.admitted(waiter)  # type: ignore[arg-type]


class ClientConnection(ResponseSide, Alarm, asyncio.Protocol):
    """One inbound connection on the main port."""

    def __init__(self, path: DataPath) -> None:
        self.path = path
        self.loop = path.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = b""
        self.remote_addr = b""
        # Received and not yet parsed: an incomplete head, or what follows the request being
        # answered. Bounded by h1.MAX_HEAD_BYTES plus one read, because reading stops meanwhile.
        self.buffer = bytearray()
        self.heads = HeadFinder()
        self.exchange: Exchange | None = None  # the request being answered
        self.reader: BodyReader | None = None  # its body, while it is still arriving
        self.processing = False
        self.reading_paused = 0  # bit set of reasons
        self.writing_paused = False
        self.closed = False
        self.tunnel_upstream: UpstreamConnection | None = None
        self.held = b""  # a response head not yet written (see `response_head`)
        self.lingering = 0  # bytes still to drop after closing (see `_close`)
        # One timer per connection, re-armed lazily (never cancelled per request): it enforces
        # the exchange's timeouts and the deadline for a request head to arrive.
        self.timer = RequestTimer(path.timeout_rules)
        self.timer_handle: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.header_deadline = 0.0
        # Nothing read yet: the bytes may be HTTP/2's connection preface (prior knowledge).
        self.fresh = True

    # -- Protocol interface --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            host = peer[0]
            self.client_ip = host.encode()
            port = peer[1]
            self.remote_addr = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._switch_to_h2(b"")
            return
        self.path.connections.add(self)
        # Like Go's ReadHeaderTimeout: the first request head must come within a minute.
        self.header_deadline = self.loop.time() + self.path.read_header_timeout
        self._arm(self.header_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.path.connections.discard(self)
        self._disarm()
        exchange = self.exchange
        if exchange is not None:
            self._abandon(exchange)
        self.exchange = None
        self.reader = None
        self.buffer = bytearray()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.abort()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.write(data)
            if self.path.track_writes:
                self.timer.wrote(self.loop.time())
            return
        if self.closed:
            self.lingering -= len(data)
            if self.lingering < 0 and self.transport is not None:
                self.transport.close()  # it keeps sending: stop lingering
            return
        if self.fresh and self._sniff(data):
            return
        buffer = self.buffer
        if buffer:
            buffer += data
            self._process(buffer)
        else:
            self._process(data)

    def _sniff(self, data: bytes) -> bool:
        """Look for HTTP/2's preface at the start of the connection (RFC 9113 §3.4), which may
        arrive split across reads. True when `data` was taken (held, or handed to HTTP/2)."""
        seen = bytes(self.buffer) + data if self.buffer else data
        state = preface_state(seen)
        if state < 0:
            self.fresh = False
            return False
        if state == 0:
            self.buffer += data
            return True
        self.fresh = False
        self.buffer = bytearray()
        self._switch_to_h2(seen)
        return True

    def _switch_to_h2(self, data: bytes) -> None:
        """Hand the connection to the HTTP/2 server, loaded now (docs/http2.md)."""
        from queueproxy.h2server import H2ServerConnection

        self._detach()
        H2ServerConnection(self.path, self.client_ip, self.remote_addr).take_over(
            self.transport, data
        )

    def _detach(self) -> None:
        self.closed = True
        self.fresh = False
        self.path.connections.discard(self)
        self._disarm()

    def eof_received(self) -> bool | None:
        # Like Go's server, a client that shuts its side is gone: its requests are cancelled.
        return None

    def pause_writing(self) -> None:
        self.writing_paused = True
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.resume_reading()
        if self.reading_paused and exchange is None and not self.closed:
            # Requests waited for the client to read its answers: go on with them.
            self._resume_reading(ANSWERING | BODY_BACKLOG | UPSTREAM_FULL)
            if self.buffer and not self.processing:
                self._process(self.buffer)

    # -- Reading requests ----------------------------------------------------------------------

    def _process(self, data: bytes | bytearray) -> None:
        """Parse what `data` holds: the current request's body, then (when it has been answered)
        the next request head. What is left over is kept in `self.buffer`."""
        self.processing = True
        pos = 0
        try:
            while not self.closed:
                reader = self.reader
                if reader is not None:
                    exchange = self.exchange
                    assert exchange is not None
                    chunks, pos = reader.read(data, pos)  # type: ignore[arg-type]
                    chunked = exchange.body_chunked
                    for chunk in chunks:
                        # Re-framed by our decision; extensions and the client's sizes are gone.
                        self._send_body(
                            exchange, b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                        )
                    if not reader.done:
                        break
                    self.reader = None
                    self._request_complete(exchange, reader.trailers)
                    continue
                if self.exchange is not None or pos >= len(data) or self.writing_paused:
                    # Answering, or the client is not reading its answers (pipelined requests
                    # answered here could otherwise fill memory): what follows waits, and
                    # reading stops below.
                    break
                pos = self._read_head(data, pos)
                if pos < 0:
                    return
        except ProtocolError as error:
            self._protocol_error(error)
            return
        finally:
            self.processing = False
        if self.closed:
            return
        if data is self.buffer or pos < len(data):
            self._keep(data, pos)
        if (
            self.buffer
            and self.reader is None
            and (self.exchange is not None or self.writing_paused)
        ):
            self._pause_reading(ANSWERING)

    def _read_head(self, data: bytes | bytearray, pos: int) -> int:
        """Parse a request head at `pos` and start its exchange; -1 when it is incomplete (the
        rest of `data` is then kept)."""
        # A CR first is rare (empty lines before a request line, RFC 9112 §2.2); indexing is
        # cheaper than `startswith` for the usual letter.
        start = skip_empty_lines(data, pos) if data[pos] == 13 else pos
        if start >= len(data):
            return start
        if start == len(data) - 1 and data[start] == 13:
            # A CR last may be an empty line whose LF is in the next read: wait for it, before
            # the head finder refuses a lone CR as a request line.
            self._keep(data, start)
            return -1
        if not self.header_deadline:
            # Later heads on a kept-alive connection: the minute counts from their first byte.
            self.header_deadline = self.loop.time() + self.path.read_header_timeout
            deadline = self.header_deadline
            if self.timer_handle is None or deadline < self.timer_at:
                self._arm(deadline)
        end = self.heads.find(data, start)
        if end < 0:
            self._keep(data, start)
            return -1
        head = bytes(data[start:end])
        memo = self.path.memo
        request = memo.requests.get(head) or memo.request(head)
        self.header_deadline = 0.0
        self.fresh = False
        if request.upgrade and self._upgrade_h2c(request, data, end):
            return -1
        self._begin(request)
        return end

    def _upgrade_h2c(self, request: RequestHead, data: bytes | bytearray, end: int) -> bool:
        """Grant `Upgrade: h2c` when `h2detect` says so: 101, then HTTP/2 with the request as
        stream 1 and the bytes after it as HTTP/2's. False: serve it over HTTP/1.1."""
        transport = self.transport
        if transport is None or transport.get_extra_info("ssl_object") is not None:
            return False
        settings = h2c_upgrade_settings(request)
        if settings is None:
            return False
        from queueproxy.h2server import H2ServerConnection

        rest = bytes(data[end:])
        self._detach()
        self.buffer = bytearray()
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        )
        H2ServerConnection(self.path, self.client_ip, self.remote_addr).take_over_upgrade(
            transport, settings, request.method, request.target, list(request.headers), rest
        )
        return True

    def _keep(self, data: bytes | bytearray, pos: int) -> None:
        buffer = self.buffer
        if data is buffer:
            if pos:
                del buffer[:pos]
        elif pos < len(data):
            buffer += memoryview(data)[pos:]

    def _begin(self, request: RequestHead) -> None:
        exchange = Exchange(self, request)
        self.exchange = exchange
        memo = request.upstream
        if memo is not None and memo[0] == self.client_ip and memo[1] is self.path:
            # The same head from the same client (HeadMemo hands out one RequestHead per
            # distinct head): what the header rules made of it last time holds again.
            (
                _,
                _,
                exchange.head,
                exchange.user_agent,
                exchange.network_probe,
                exchange.knative_fields,
                exchange.proxied,
                exchange.retryable,
                exchange.upgrade,
            ) = memo
        else:
            self._build_upstream_head(exchange, request)
        framing = request.framing
        self.reader = None if framing == NO_BODY else body_reader(framing, request.length)
        if self.reader is None:
            exchange.request_done = True
        self._start(exchange)

    def _request_complete(self, exchange: Exchange, trailers: list[tuple[bytes, bytes]]) -> None:
        exchange.request_done = True
        if exchange.state == DONE:
            return
        if exchange.body_chunked:
            self._send_body(exchange, b"0\r\n" + render_trailers(trailers) + b"\r\n")

    def _protocol_error(self, error: ProtocolError) -> None:
        """A request that cannot be trusted: answer it if nothing is on the wire yet, then close."""
        exchange = self.exchange
        self.reader = None
        self.buffer = bytearray()
        if exchange is None:
            self._reject(error.status, error.reason.encode())
            return
        started = exchange.response_started or exchange.state == TUNNEL
        self.rejected(BAD_REQUEST, CUT if started else error.status, error.reason.encode())
        upstream = exchange.upstream
        if upstream is not None:
            upstream.abort()  # the app must not complete a request we could not frame
            exchange.upstream = None
        exchange.keep_alive = False
        if exchange.response_started or exchange.state == TUNNEL:
            self._finish(exchange)
            if self.transport is not None:
                self.transport.abort()
            return
        self.respond_locally(exchange, error.status, error.reason.encode() + b"\n")

    # -- Request side --------------------------------------------------------------------------

    def _build_upstream_head(self, exchange: Exchange, request: RequestHead) -> None:
        """The request head for the app (`h1request.upstream_head`), remembered on the parsed
        head for the next identical one from this client."""
        exchange.head = upstream_head(
            exchange, request, self.client_ip, self.path.upstream_host_header
        )
        request.upstream = (
            self.client_ip,
            self.path,
            exchange.head,
            exchange.user_agent,
            exchange.network_probe,
            exchange.knative_fields,
            exchange.proxied,
            exchange.retryable,
            exchange.upgrade,
        )

    def _start(self, exchange: Exchange) -> None:
        """A request head arrived: answer it locally or send it to the app."""
        path = self.path
        # Latencies use the full-precision clock; uvloop's loop.time() ticks in milliseconds.
        exchange.started_at = monotonic()
        responder = path.responder
        if responder is not None and responder.answer(self, exchange):
            # Health checks and network probes are not timed (Knative's Drainer sits outside its
            # TimeoutHandler); a request the responder sent straight to the app is.
            if exchange.state == CONNECTING or exchange.state == ACTIVE:
                self._start_timer()
            return
        self._start_timer()
        path.admit(exchange)

    def _start_timer(self) -> None:
        deadline = self.timer.start(self.loop.time())
        # Usually the connection's timer already fires earlier (it is re-armed lazily).
        if deadline is not None and (self.timer_handle is None or deadline < self.timer_at):
            self._arm(deadline)

    def start_upstream(self, exchange: Exchange) -> None:
        if self.closed:
            self.path.release_slot(exchange)
            return
        exchange.state = CONNECTING
        self.path.pool.acquire(exchange)

    def upstream_ready(self, exchange: Exchange, upstream: UpstreamConnection) -> None:
        """The pool found or dialled a connection: send the head and what body we have."""
        if exchange.state != CONNECTING:
            upstream.close_or_pool(reusable=True)
            return
        exchange.state = ACTIVE
        if not exchange.dispatched_at:
            exchange.dispatched_at = monotonic()
        exchange.upstream = upstream
        upstream.attach(exchange)
        if exchange.body:
            payload = b"".join((exchange.head, *exchange.body))
            exchange.body.clear()
            exchange.body_bytes = 0
        else:
            payload = exchange.head
        self._keep_for_replay(exchange, payload)
        upstream.write(payload)
        if self.reading_paused:
            self._resume_reading(BODY_BACKLOG)
        if self.writing_paused:
            upstream.pause_reading()

    def _send_body(self, exchange: Exchange, chunk: bytes) -> None:
        """Send (or hold until a connection is ready) request bytes already framed for the app."""
        if exchange.state == DONE:
            return
        upstream = exchange.upstream
        if exchange.state == ACTIVE and upstream is not None:
            self._keep_for_replay(exchange, chunk)
            upstream.write(chunk)
            return
        exchange.body.append(chunk)
        exchange.body_bytes += len(chunk)
        if exchange.body_bytes > HIGH_WATER:
            self._pause_reading(BODY_BACKLOG)

    @staticmethod
    def _keep_for_replay(exchange: Exchange, data: bytes) -> None:
        replay = exchange.replay
        if replay is not None:
            exchange.replay_bytes += len(data)
            if exchange.replay_bytes > REPLAY_LIMIT or not exchange.retryable:
                exchange.replay = None
            else:
                replay.append(data)

    def retry_upstream(self, exchange: Exchange) -> bool:
        """A reused connection closed before any byte of the response: send the request again on
        a fresh connection if it is idempotent (RFC 9110 §9.2.2) and still held whole."""
        replay = exchange.replay
        if replay is None or exchange.response_started or self.closed or exchange.state == DONE:
            return False
        exchange.replay = None  # one retry only
        exchange.upstream = None
        exchange.state = CONNECTING
        # The head is rebuilt by upstream_ready; what followed it is sent again before new body.
        exchange.body[:0] = [b"".join(replay)[len(exchange.head) :]]
        self.path.pool.dial(exchange)
        return True

    def _finish(self, exchange: Exchange) -> None:
        if exchange.state == DONE:
            return
        if exchange.state == QUEUED and self.path.breaker is not None:
            self.path.breaker.cancel(exchange)
        exchange.state = DONE
        self.timer.stop()
        path = self.path
        if exchange.has_slot:
            path.release_slot(exchange)
        upstream = exchange.upstream
        if upstream is not None:
            exchange.upstream = None
            upstream.exchange = None
        if path.observer is not None:
            if exchange.counted:
                path.observer.request_finished(exchange)
            elif exchange.dispatched_at:  # a K-Kubelet-Probe request the app answered
                path.observer.probe_answered(exchange)
        if self.exchange is exchange:
            self.exchange = None
        if not exchange.keep_alive or self.reader is not None:
            self._close()
            return
        if self.writing_paused:
            return  # resume_writing goes on with what is buffered
        # Whatever paused reading for this exchange (its body waiting for a connection, the
        # app's full socket buffer) ended with it: the next request is read.
        if self.reading_paused:
            self._resume_reading(ANSWERING | BODY_BACKLOG | UPSTREAM_FULL)
        if self.buffer and not self.processing:
            self._process(self.buffer)

    def _abandon(self, exchange: Exchange) -> None:
        """The client went away: free the slot, the queue place and the upstream connection."""
        if exchange.state == DONE:
            return
        upstream = exchange.upstream
        exchange.keep_alive = False
        if upstream is not None:
            exchange.upstream = None
            upstream.abort()
        self._finish(exchange)

    # -- Timeouts (pkg/http/handler/timeout.go) ------------------------------------------------

    def _on_timer(self) -> None:
        self.timer_handle = None
        if self.closed:
            return
        now = self.loop.time()
        if self.header_deadline and now >= self.header_deadline:
            # A client that cannot send a request head in a minute is not a client: close.
            self.header_deadline = 0.0
            if self.exchange is None:
                self._close()
                return
        exchange = self.exchange
        if exchange is not None and self.timer.check(now) is not None:
            self._timed_out(exchange)
        if self.closed:
            return
        deadlines = [d for d in (self.timer.next_deadline(), self.header_deadline) if d]
        if deadlines:
            self._arm(min(deadlines))

    def _timed_out(self, exchange: Exchange) -> None:
        """504 `request timeout`, or, once the response has begun, that text and a cut."""
        started = exchange.response_started or exchange.state == TUNNEL
        self.rejected(TIMEOUT, CUT if started else TIMEOUT_STATUS, TIMEOUT_BODY)
        upstream = exchange.upstream
        if upstream is not None:
            exchange.upstream = None
            upstream.abort()  # the app's request is cancelled and its connection not reused
        if exchange.state == TUNNEL:
            if self.tunnel_upstream is not None:
                self.tunnel_upstream.abort()
            self.tunnel_closed()
            return
        if not exchange.response_started:
            self.respond_locally(exchange, TIMEOUT_STATUS, TIMEOUT_BODY)
            return
        tail = TIMEOUT_BODY
        framing = exchange.response_framing
        if framing == CHUNKED:
            tail = b"%x\r\n%s\r\n" % (len(tail), tail)
        if framing != LENGTH or exchange.response_bytes + len(tail) <= exchange.response_length:
            # Past a Content-Length the text would turn a truncated body into a complete-looking
            # corrupt one; Go's server refuses such a write too.
            self._write(tail)
        exchange.keep_alive = False
        self._finish(exchange)

    # -- Errors and closing --------------------------------------------------------------------

    def _reject(self, status: int, reason: bytes) -> None:
        """Answer a malformed request and close: the stream cannot be trusted after it."""
        if self.transport is None or self.closed:
            return
        self.rejected(BAD_REQUEST, status, reason)
        self.transport.write(simple_response(status, reason + b"\n", keep_alive=False))
        self._close()

    def _close(self) -> None:
        """Close after what has been written is delivered, lingering (RFC 9112 §9.6).

        The write side is shut first and what the client still sends is read and dropped for a
        moment: closing a socket with unread data makes the kernel send RST, which can destroy
        the answer (a 400, a 413, an early response) before the client has read it.
        """
        if self.held:
            self._write(b"")
        self.closed = True
        self.reader = None
        self.buffer = bytearray()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # after the buffered answer
        self.lingering = LINGER_BYTES
        if self.reading_paused:
            self.reading_paused = 0
            transport.resume_reading()
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def rejected(self, reason: str, status: int, detail: bytes) -> None:
        """Report an answer the sidecar gives itself (see `Observer.rejected`)."""
        observer = self.path.observer
        if observer is not None:
            observer.rejected(reason, status, detail)

    # -- Flow control --------------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.reading_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self.reading_paused & reason:
            return
        self.reading_paused &= ~reason
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def upstream_writable(self, writable: bool) -> None:
        """The app's socket buffer filled up (or drained): stop (resume) reading the client."""
        if writable:
            self._resume_reading(UPSTREAM_FULL)
        else:
            self._pause_reading(UPSTREAM_FULL)

    def _write(self, data: bytes) -> None:
        if self.held:
            data = self.held + data
            self.held = b""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else after the response in progress."""
        exchange = self.exchange
        if exchange is None:
            if not self.closed:
                self._close()
            return
        exchange.keep_alive = False
