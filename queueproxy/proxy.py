"""The data path: HTTP/1.x from the main port to the user container (contract §3, §7.1, §9, §10).

Built on asyncio Protocols and httptools (llhttp) instead of a framework, because a request
through aiohttp's server and client costs ~5x the CPU (see README, design notes). Reading order:

- `DataPath`: what every connection shares (breaker, upstream pool, statistics, hooks).
- `ClientConnection`: one inbound connection; parses requests, answers probes and errors itself,
  keeps pipelined requests in order.
- `Exchange`: one request/response cycle through the breaker to the app.
- `UpstreamConnection` / `UpstreamPool`: keep-alive connections to 127.0.0.1:$USER_PORT.

No task or timer is created per request on the fast path: parser callbacks drive everything, and
an upstream connection is only dialled (one task) when the pool has none idle.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Protocol

import httptools

from queueproxy.breaker import Admission, Breaker
from queueproxy.http11 import (
    DATE,
    HIGH_WATER,
    HOP_BY_HOP,
    MAX_HEADER_BYTES,
    READ_HEADER_TIMEOUT,
    connection_tokens,
    simple_response,
    status_line,
)
from queueproxy.timeouts import TIMEOUT_BODY, TIMEOUT_STATUS, RequestTimer, TimeoutRules

log = logging.getLogger("queueproxy")

QUEUE_FULL_BODY = b"pending request queue full\n"
# Bodies up to this size are kept until the first response byte, so a request that met a
# keep-alive connection the app had just closed can be sent again on a fresh one.
REPLAY_LIMIT = 64 * 1024

_STRIPPED_REQUEST = frozenset(
    {b"knative-serving-revision", b"knative-serving-namespace", b"k-original-host", b"host"}
)
_NO_BODY_STATUSES = frozenset({204, 304})

# Exchange states
WAITING, QUEUED, CONNECTING, ACTIVE, TUNNEL, DONE = range(6)


class Observer(Protocol):
    """What the data path reports to statistics, metrics and logs (wired in `server`)."""

    def request_started(self, exchange: Exchange) -> None: ...

    def request_finished(self, exchange: Exchange) -> None: ...

    def probe_answered(self, exchange: Exchange) -> None: ...


class LocalResponder(Protocol):
    """Answers health checks and network probes without the app (contract §7.1)."""

    def answer(self, conn: ClientConnection, exchange: Exchange) -> bool:
        """Answer `exchange` locally and return True, or return False to proxy it."""
        ...


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
        self.pool = UpstreamPool(loop, upstream_host, upstream_port, max_idle)
        self.upstream_host_header = f"{upstream_host}:{upstream_port}".encode()
        self.observer: Observer | None = None
        self.responder: LocalResponder | None = None
        self.connections: set[ClientConnection] = set()
        self.closing = False

    def protocol_factory(self) -> ClientConnection:
        return ClientConnection(self)

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


class Exchange:
    """One request and its response."""

    __slots__ = (
        "conn",
        "method",
        "target",
        "version",
        "headers",
        "user_agent",
        "network_probe",
        "proxied",
        "keep_alive",
        "upgrade",
        "request_body",
        "head",
        "body_chunked",
        "body",
        "body_bytes",
        "request_done",
        "replay",
        "upstream",
        "state",
        "has_slot",
        "started_at",
        "status",
        "response_started",
        "response_bytes",
        "response_framing",
        "response_length",
        "request_length",
        "replay_bytes",
        "counted",
        "dispatched_at",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.method = b""
        self.target = b""
        self.version = b"1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.user_agent = b""
        self.network_probe: bytes | None = None
        self.proxied = False
        self.keep_alive = True
        self.upgrade = False
        self.request_body = False
        self.head = b""
        self.body_chunked = False
        # Request body chunks not yet written upstream (waiting for a slot or a connection).
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.request_done = False
        # Everything written upstream so far, while it is small and no response byte came back.
        self.replay: list[bytes] | None = []
        self.upstream: UpstreamConnection | None = None
        self.state = WAITING
        self.has_slot = False
        self.started_at = 0.0
        self.status = 0
        self.response_started = False
        self.response_bytes = 0
        # b"length", b"chunked", b"close" (HTTP/1.0 client without length) or b"none"
        self.response_framing = b"none"
        self.response_length = -1  # the app's Content-Length, when it framed the body so
        self.request_length = -1
        self.replay_bytes = 0
        self.counted = False  # reported to the observer (probes and local answers are not)
        self.dispatched_at = 0.0  # when it left the queue for the app

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class ClientConnection(asyncio.Protocol):
    """One inbound connection on the main port."""

    def __init__(self, path: DataPath) -> None:
        self.path = path
        self.loop = path.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.remote_addr = b""
        # Pipelined requests, oldest first; the head of the deque owns the response stream.
        self.exchanges: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the request being parsed
        self.header_bytes = 0
        self.url = b""
        self.rejection: tuple[int, bytes] | None = None
        self.reading_paused = 0  # bit set of reasons, see _pause_reading
        self.writing_paused = False
        self.closed = False
        self.tunnel_upstream: UpstreamConnection | None = None
        # One timer per connection, re-armed lazily (never cancelled per request): it enforces
        # the head exchange's timeouts and the deadline for a request head to arrive.
        self.timer = RequestTimer(path.timeout_rules)
        self.timer_handle: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.header_deadline = 0.0

    # -- Protocol interface --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            host = peer[0]
            self.client_ip = host.encode()
            port = peer[1]
            self.remote_addr = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.path.connections.add(self)
        # Like Go's ReadHeaderTimeout: the first request head must come within a minute.
        self.header_deadline = self.loop.time() + self.path.read_header_timeout
        self._arm(self.header_deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.path.connections.discard(self)
        if self.timer_handle is not None:
            self.timer_handle.cancel()
            self.timer_handle = None
        for exchange in list(self.exchanges):
            self._abandon(exchange)
        self.exchanges.clear()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.abort()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.write(data)
            if self.path.track_writes:
                self.timer.wrote(self.loop.time())
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_received(data[upgrade.args[0] :])
        except httptools.HttpParserCallbackError:
            status, reason = self.rejection or (400, b"Bad Request")
            self._reject(status, reason)
        except httptools.HttpParserError as error:
            self._reject(400, b"Bad Request: " + str(error).encode())

    def eof_received(self) -> bool | None:
        # Like Go's server, a client that shuts its side is gone: its requests are cancelled.
        return None

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.exchanges[0].upstream.pause_reading()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchanges and self.exchanges[0].upstream is not None:
            self.exchanges[0].upstream.resume_reading()
        if self.tunnel_upstream is not None:
            self.tunnel_upstream.resume_reading()

    # -- Parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = Exchange(self)
        self.header_bytes = 0
        self.url = b""
        if not self.header_deadline:
            # Later heads on a kept-alive connection: the minute counts from their first byte.
            self.header_deadline = self.loop.time() + self.path.read_header_timeout
            self._arm(self.header_deadline)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > MAX_HEADER_BYTES:
            self.rejection = (431, b"Request Header Fields Too Large")
            raise ValueError("request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self.current
        assert exchange is not None
        self.header_bytes += len(name) + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES:
            self.rejection = (431, b"Request Header Fields Too Large")
            raise ValueError("header block too large")
        exchange.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.current
        assert exchange is not None
        self.header_deadline = 0.0
        parser = self.parser
        exchange.method = parser.get_method()
        exchange.target = self.url
        exchange.version = parser.get_http_version().encode()
        exchange.keep_alive = parser.should_keep_alive()
        exchange.upgrade = parser.should_upgrade()
        self._build_upstream_head(exchange)
        self.exchanges.append(exchange)
        if len(self.exchanges) == 1:
            self._start(exchange)
        else:
            # Pipelined: it waits its turn; stop reading until the ones before it are answered.
            self._pause_reading(4)

    def on_body(self, body: bytes) -> None:
        exchange = self.current
        if exchange is None or exchange.state == DONE:
            return
        if exchange.body_chunked:
            body = b"%x\r\n%s\r\n" % (len(body), body)
        self._send_body(exchange, body)

    def on_message_complete(self) -> None:
        exchange = self.current
        self.current = None
        if exchange is None or exchange.state == DONE:
            return
        exchange.request_done = True
        if exchange.body_chunked:
            self._send_body(exchange, b"0\r\n\r\n")

    # -- Request side --------------------------------------------------------------------------

    def _build_upstream_head(self, exchange: Exchange) -> None:
        """Apply the header rules of §9.2/§10 and render the request head for the app."""
        host = b""
        original_host = b""
        xff: list[bytes] = []
        xfp = xfh = b""
        forwarded = False
        connection: set[bytes] = set()
        content_length = None
        chunked = False
        te_trailers = False
        upgrade_value = b""
        kept: list[bytes] = []
        append = kept.append
        for name, value in exchange.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    connection |= connection_tokens(value)
                elif lname == b"transfer-encoding":
                    chunked = True
                elif lname == b"te":
                    te_trailers = te_trailers or b"trailers" in value.lower()
                elif lname == b"upgrade":
                    upgrade_value = value
                continue
            if lname in _STRIPPED_REQUEST:
                if lname == b"host":
                    host = value
                elif lname == b"k-original-host":
                    original_host = value
                continue
            if lname == b"user-agent":
                exchange.user_agent = value
            elif lname == b"k-network-probe":
                exchange.network_probe = value
            elif lname == b"k-proxy-request":
                exchange.proxied = value == b"activator"
            elif lname == b"content-length":
                content_length = value
            elif lname == b"x-forwarded-for":
                xff.append(value)
                continue
            elif lname == b"x-forwarded-proto":
                xfp = value
            elif lname == b"x-forwarded-host":
                xfh = value
            elif lname == b"forwarded":
                forwarded = True
            append(name + b": " + value + b"\r\n")
        if connection:
            kept = [line for line in kept if line.split(b":", 1)[0].lower() not in connection]
        if original_host:
            host = original_host
        if not host:
            host = self.path.upstream_host_header
        if not forwarded and (xff or xfp or xfh):
            kept.append(b"Forwarded: " + forwarded_value(xff, xfp, xfh) + b"\r\n")
        xff.append(self.client_ip)
        kept.append(b"X-Forwarded-For: " + b", ".join(xff) + b"\r\n")
        if te_trailers:
            kept.append(b"Te: trailers\r\n")
        if exchange.upgrade and upgrade_value:
            kept.append(b"Connection: Upgrade\r\nUpgrade: " + upgrade_value + b"\r\n")
        if chunked:
            kept.append(b"Transfer-Encoding: chunked\r\n")
            exchange.body_chunked = True
            exchange.request_body = True
        elif content_length is not None:
            exchange.request_length = int(content_length)
            exchange.request_body = exchange.request_length > 0
        exchange.head = b"".join(
            (
                exchange.method,
                b" ",
                exchange.target,
                b" HTTP/1.1\r\nHost: ",
                host,
                b"\r\n",
                *kept,
                b"\r\n",
            )
        )
        if not exchange.request_body and not exchange.upgrade:
            exchange.request_done = True

    def _start(self, exchange: Exchange) -> None:
        """The exchange is at the head of the line: answer it locally or send it to the app."""
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
        if path.observer is not None:
            exchange.counted = True
            path.observer.request_started(exchange)
        breaker = path.breaker
        if breaker is None:
            self.start_upstream(exchange)
            return
        admission = breaker.try_acquire(exchange)
        if admission is Admission.ADMITTED:
            exchange.has_slot = True
            self.start_upstream(exchange)
        elif admission is Admission.QUEUED:
            exchange.state = QUEUED
        else:
            self.respond_locally(exchange, 503, QUEUE_FULL_BODY)

    def _start_timer(self) -> None:
        self.timer.start(self.loop.time())
        self._arm(self.timer.next_deadline())

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
        upstream.exchange = exchange
        data = [exchange.head, *exchange.body]
        exchange.body.clear()
        exchange.body_bytes = 0
        payload = b"".join(data)
        self._keep_for_replay(exchange, payload)
        upstream.write(payload)
        self._resume_reading(1)
        if self.writing_paused:
            upstream.pause_reading()

    def _send_body(self, exchange: Exchange, chunk: bytes) -> None:
        upstream = exchange.upstream
        if exchange.state == ACTIVE and upstream is not None:
            self._keep_for_replay(exchange, chunk)
            upstream.write(chunk)
            return
        exchange.body.append(chunk)
        exchange.body_bytes += len(chunk)
        if exchange.body_bytes > HIGH_WATER:
            self._pause_reading(1)

    @staticmethod
    def _keep_for_replay(exchange: Exchange, data: bytes) -> None:
        replay = exchange.replay
        if replay is not None:
            exchange.replay_bytes += len(data)
            if exchange.replay_bytes > REPLAY_LIMIT:
                exchange.replay = None
            else:
                replay.append(data)

    def retry_upstream(self, exchange: Exchange) -> bool:
        """A reused connection died before answering: send again on a fresh one if we can."""
        replay = exchange.replay
        if replay is None or exchange.response_started or self.closed:
            return False
        exchange.replay = None  # one retry only
        exchange.upstream = None
        exchange.state = CONNECTING
        # The head is rebuilt by upstream_ready; what followed it is sent again before new body.
        exchange.body[:0] = [b"".join(replay)[len(exchange.head) :]]
        self.path.pool.dial(exchange)
        return True

    # -- Response side -------------------------------------------------------------------------

    def response_head(
        self, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]], framing: bytes
    ) -> None:
        """Forward the app's response head; `framing` is how the app delimits the body."""
        exchange.status = status
        exchange.response_started = True
        exchange.replay = None
        if exchange.upgrade and status != 101:
            exchange.keep_alive = False  # the request parser stopped at the upgrade
        connection: set[bytes] = set()
        lines = [status_line(exchange.version, status)]
        has_date = False
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    connection |= connection_tokens(value)
                continue
            if lname == b"date":
                has_date = True
            lines.append(name + b": " + value + b"\r\n")
        if connection:
            lines = [lines[0]] + [
                line for line in lines[1:] if line.split(b":", 1)[0].lower() not in connection
            ]
        if not has_date:
            lines.append(DATE.line)
        if self.path.track_writes:
            self.timer.wrote(self.loop.time())
        if status == 101:
            lines.append(b"Connection: Upgrade\r\n")
            for name, value in headers:
                if name.lower() == b"upgrade":
                    lines.append(b"Upgrade: " + value + b"\r\n")
            exchange.response_framing = b"none"
        elif framing == b"chunked" or framing == b"close":
            if exchange.version == b"1.1":
                lines.append(b"Transfer-Encoding: chunked\r\n")
                exchange.response_framing = b"chunked"
            else:
                exchange.response_framing = b"close"
                exchange.keep_alive = False
        else:
            exchange.response_framing = framing
        if status != 101:
            if not exchange.keep_alive:
                lines.append(b"Connection: close\r\n")
            elif exchange.version == b"1.0":
                lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self._write(b"".join(lines))

    def informational(
        self, exchange: Exchange, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Forward a 1xx (100 Continue, 103 Early Hints) to HTTP/1.1 clients."""
        if exchange.version != b"1.1":
            return
        lines = [status_line(b"1.1", status)]
        lines += [n + b": " + v + b"\r\n" for n, v in headers if n.lower() not in HOP_BY_HOP]
        lines.append(b"\r\n")
        self._write(b"".join(lines))

    def response_body(self, exchange: Exchange, chunk: bytes) -> None:
        exchange.response_bytes += len(chunk)
        if self.path.track_writes:
            self.timer.wrote(self.loop.time())
        if exchange.response_framing == b"chunked":
            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        self._write(chunk)

    def response_complete(
        self, exchange: Exchange, trailers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        if exchange.response_framing == b"chunked":
            if trailers:
                tail = b"".join(n + b": " + v + b"\r\n" for n, v in trailers)
                self._write(b"0\r\n" + tail + b"\r\n")
            else:
                self._write(b"0\r\n\r\n")
        self._finish(exchange)

    def upstream_failed(self, exchange: Exchange, error: str) -> None:
        """The app could not be reached or broke off: 502 with Go's error text (§9.2)."""
        if exchange.state == DONE:
            return
        if exchange.response_started:
            # Part of the response is out: the only honest signal left is to cut the connection.
            exchange.keep_alive = False
            self._finish(exchange)
            if self.transport is not None:
                self.transport.abort()
            return
        exchange.keep_alive = exchange.keep_alive and exchange.request_done
        self.respond_locally(exchange, 502, error.encode() + b"\n")

    def respond_locally(
        self,
        exchange: Exchange,
        status: int,
        body: bytes,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer without (or instead of) the app."""
        if not exchange.request_done:
            # The rest of its body would be read as a new request: close after answering.
            exchange.keep_alive = False
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
        if rest:
            self._write(rest)
        self._resume_reading(1 | 2 | 4)

    def tunnel_closed(self) -> None:
        if self.exchanges:
            exchange = self.exchanges[0]
            exchange.keep_alive = False
            self._finish(exchange)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, exchange: Exchange) -> None:
        if exchange.state == DONE:
            return
        if exchange.state == QUEUED and self.path.breaker is not None:
            self.path.breaker.cancel(exchange)
        exchange.state = DONE
        if self.exchanges and self.exchanges[0] is exchange:
            self.timer.stop()
        path = self.path
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
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if not exchange.keep_alive:
            self.exchanges.clear()
            if self.transport is not None:
                self.transport.close()
            self.closed = True
            return
        if self.exchanges:
            self._start(self.exchanges[0])
        else:
            self._resume_reading(4)

    def _abandon(self, exchange: Exchange) -> None:
        """The client went away: free the slot, the queue place and the upstream connection."""
        if exchange.state == DONE:
            return
        upstream = exchange.upstream
        exchange.keep_alive = False
        if upstream is not None:
            upstream.abort()
        if exchange.started_at:
            self._finish(exchange)
        else:
            exchange.state = DONE

    # -- Timeouts (§9.1) -----------------------------------------------------------------------

    def _arm(self, deadline: float | None) -> None:
        """Make sure the timer fires no later than `deadline`; an earlier firing re-arms."""
        if deadline is None:
            return
        handle = self.timer_handle
        if handle is not None:
            if self.timer_at <= deadline:
                return
            handle.cancel()
        self.timer_at = deadline
        self.timer_handle = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self.timer_handle = None
        if self.closed:
            return
        now = self.loop.time()
        if self.header_deadline and now >= self.header_deadline:
            # A client that cannot send a request head in a minute is not a client: close.
            self.header_deadline = 0.0
            self.current = None
            if not self.exchanges and self.transport is not None:
                self.closed = True
                self.transport.close()
                return
        if self.exchanges and self.timer.check(now) is not None:
            self._timed_out(self.exchanges[0])
        if self.closed:
            return
        deadlines = [d for d in (self.timer.next_deadline(), self.header_deadline) if d]
        if deadlines:
            self._arm(min(deadlines))

    def _timed_out(self, exchange: Exchange) -> None:
        """504 `request timeout`, or, once the response has begun, that text and a cut."""
        upstream = exchange.upstream
        if upstream is not None:
            upstream.abort()  # the app's request is cancelled and its connection not reused
        if exchange.state == TUNNEL:
            if self.tunnel_upstream is not None:
                self.tunnel_upstream.abort()
            self.tunnel_closed()
            return
        if not exchange.response_started:
            exchange.keep_alive = exchange.keep_alive and exchange.request_done
            self.respond_locally(exchange, TIMEOUT_STATUS, TIMEOUT_BODY)
            return
        tail = TIMEOUT_BODY
        framing = exchange.response_framing
        if framing == b"chunked":
            tail = b"%x\r\n%s\r\n" % (len(tail), tail)
        if framing != b"length" or exchange.response_bytes + len(tail) <= exchange.response_length:
            # Past a Content-Length the text would turn a truncated body into a complete-looking
            # corrupt one; Go's server refuses such a write too.
            self._write(tail)
        exchange.keep_alive = False
        self._finish(exchange)

    # -- Upgrade and errors --------------------------------------------------------------------

    def _upgrade_received(self, rest: bytes) -> None:
        """The parser stopped after an `Upgrade` request head; `rest` is what followed it."""
        # The parser has already completed the message, so it is the newest exchange.
        exchange = self.exchanges[-1] if self.exchanges else None
        if exchange is None or not exchange.upgrade:
            self._reject(400, b"Bad Request: unexpected upgrade")
            return
        self.current = None
        exchange.request_done = True
        if rest:
            exchange.body.append(rest)
        # Nothing more is parsed on this connection; wait for the app's answer.
        self._pause_reading(2)

    def _reject(self, status: int, reason: bytes) -> None:
        """Answer a malformed request and close: the stream cannot be trusted after it."""
        self.current = None
        if self.transport is None or self.transport.is_closing():
            return
        for exchange in list(self.exchanges):
            self._abandon(exchange)
        self.exchanges.clear()
        self.transport.write(simple_response(status, reason + b"\n", keep_alive=False))
        self.transport.close()
        self.closed = True

    # -- Flow control --------------------------------------------------------------------------

    def _pause_reading(self, reason: int) -> None:
        """Reasons: 1 body waiting for upstream, 2 upgrade pending, 4 pipelined request."""
        if not self.reading_paused and self.transport is not None:
            self.transport.pause_reading()
        self.reading_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        if not self.reading_paused & reason:
            return
        self.reading_paused &= ~reason
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else after the response in progress."""
        if not self.exchanges and self.current is None:
            if self.transport is not None:
                self.transport.close()
            return
        for exchange in self.exchanges:
            exchange.keep_alive = False


def forwarded_value(xff: list[bytes], xfp: bytes, xfh: bytes) -> bytes:
    """Knative's Forwarded shim: build RFC 7239 `Forwarded` from the X-Forwarded-* headers."""
    nodes = [n.strip() for value in xff for n in value.split(b",") if n.strip()] or [b""]
    elements = []
    for index, node in enumerate(nodes):
        pairs = []
        if node:
            pairs.append(b'for="[' + node + b']"' if b":" in node else b"for=" + node)
        if index == 0:
            if xfh:
                pairs.append(b"host=" + xfh)
            if xfp:
                pairs.append(b"proto=" + xfp)
        elements.append(b";".join(pairs))
    return b", ".join(element for element in elements if element)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the user container."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.in_body = False
        self.until_close = False
        self.reused = False
        self.closed = False
        self.writing_paused = False

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
        if exchange.state == TUNNEL:
            conn.tunnel_closed()
        elif self.until_close and self.in_body:
            conn.response_complete(exchange)
        elif not self.in_body and self.reused and conn.retry_upstream(exchange):
            return
        else:
            conn.upstream_failed(exchange, read_error(self.pool.address, exc))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.state == TUNNEL:
            conn = exchange.conn
            conn._write(data)
            if conn.path.track_writes:
                conn.timer.wrote(conn.loop.time())
            return
        if exchange is None:
            # Bytes with no request outstanding: the connection is not usable any more.
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0] :]
            if exchange.status == 101:
                exchange.conn.start_tunnel(exchange, self, rest)
            else:
                self._broken(exchange, "malformed HTTP response")
        except httptools.HttpParserError as error:
            self._broken(exchange, f"malformed HTTP response: {error}")

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.exchange is not None:
            self.exchange.conn._pause_reading(8)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None:
            self.exchange.conn._resume_reading(8)

    # -- Parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.headers = []
        self.trailers = None
        self.in_body = False
        self.until_close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
        else:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            exchange.conn.informational(exchange, status, self.headers)
            return
        exchange.status = status
        framing = b"none"
        if status == 101:
            framing = b"none"
        elif exchange.method == b"HEAD" or status in _NO_BODY_STATUSES:
            framing = b"none"
        else:
            for name, value in self.headers:
                lname = name.lower()
                if lname == b"content-length":
                    framing = b"length"
                    exchange.response_length = int(value)
                elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                    framing = b"chunked"
                    break
            if framing == b"none":
                framing = b"close"
                self.until_close = True
        self.in_body = True
        exchange.conn.response_head(exchange, status, self.headers, framing)
        if exchange.method == b"HEAD":
            # llhttp cannot be told the response to HEAD has no body: it would wait for
            # Content-Length bytes. The exchange ends here and the connection is not reused.
            self.exchange = None
            exchange.upstream = None
            self.abort()
            exchange.conn.response_complete(exchange)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.conn.response_body(exchange, body)

    def on_message_complete(self) -> None:
        exchange = self.exchange
        if exchange is None or not self.in_body:
            return  # end of a 1xx
        if exchange.status == 101:
            return  # the upgrade exception follows
        reusable = (
            self.parser.should_keep_alive() and exchange.request_done and not self.until_close
        )
        self.in_body = False
        self.exchange = None
        exchange.upstream = None
        # Pool first: finishing may hand the breaker slot to a waiter that wants a connection.
        self.close_or_pool(reusable)
        exchange.conn.response_complete(exchange, self.trailers)

    # -- Helpers -------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
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

    def _broken(self, exchange: Exchange, reason: str) -> None:
        self.exchange = None
        self.abort()
        exchange.conn.upstream_failed(exchange, reason)


class UpstreamPool:
    """Idle keep-alive connections to the app, most recently used first (§9.2)."""

    # Go's dialer in Knative: first try 50 ms, x1.4 per step; we stop after ~2 s in all.
    DIAL_TIMEOUTS = tuple(0.05 * 1.4**step for step in range(10))

    def __init__(
        self, loop: asyncio.AbstractEventLoop, host: str, port: int, max_idle: int
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.dialling: set[asyncio.Task[None]] = set()

    def acquire(self, exchange: Exchange) -> None:
        idle = self.idle
        while idle:
            upstream = idle.pop()
            if not upstream.closed and upstream.transport is not None:
                if not upstream.transport.is_closing():
                    upstream.reused = True
                    upstream.resume_reading()
                    exchange.conn.upstream_ready(exchange, upstream)
                    return
        self.dial(exchange)

    def dial(self, exchange: Exchange) -> None:
        task = self.loop.create_task(self._dial(exchange))
        self.dialling.add(task)
        task.add_done_callback(self.dialling.discard)

    async def _dial(self, exchange: Exchange) -> None:
        factory: Callable[[], UpstreamConnection] = lambda: UpstreamConnection(self)  # noqa: E731
        error = ""
        for timeout in self.DIAL_TIMEOUTS:
            try:
                _, upstream = await asyncio.wait_for(
                    self.loop.create_connection(factory, self.host, self.port), timeout
                )
            except TimeoutError:
                error = f"timed out dialing {self.address}"
                continue
            except OSError as exc:
                error = dial_error(self.address, exc)
                break
            exchange.conn.upstream_ready(exchange, upstream)
            return
        exchange.conn.upstream_failed(exchange, error)

    def release(self, upstream: UpstreamConnection) -> None:
        if len(self.idle) >= self.max_idle:
            upstream.abort()
            return
        upstream.reused = False
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


def dial_error(address: str, exc: OSError) -> str:
    """Go's wording for dial failures, which users grep their logs for."""
    if exc.errno == errno.ECONNREFUSED:
        return f"dial tcp {address}: connect: connection refused"
    reason = exc.strerror or str(exc)
    return f"dial tcp {address}: connect: {reason.lower()}"
