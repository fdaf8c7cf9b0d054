"""The data path: HTTP/1.x from the main port to the user container.

Built on asyncio Protocols instead of a framework, because a request through aiohttp's server and
client costs ~5x the CPU (see docs/design.md). Reading order:

- `DataPath`: what every connection shares (breaker, upstream pool, statistics, hooks).
- `ClientConnection`: one inbound connection; finds request heads and bodies with `h1` (every
  framing rule is there), answers probes and errors itself, and serves one request at a time.
- `Exchange`: one request/response cycle through the breaker to the app.
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
from typing import TYPE_CHECKING, Any, Protocol

from queueproxy.breaker import Admission, Breaker
from queueproxy.h1 import (
    CHUNKED,
    IDEMPOTENT_METHODS,
    LENGTH,
    NO_BODY,
    PROTECTED_FIELDS,
    BodyReader,
    HeadFinder,
    HeadMemo,
    ProtocolError,
    RequestHead,
    ResponseHead,
    body_reader,
    render_trailers,
    skip_empty_lines,
    valid_host,
)
from queueproxy.h2detect import h2c_upgrade_settings, preface_state
from queueproxy.http11 import (
    DATE,
    HIGH_WATER,
    HOP_BY_HOP,
    READ_HEADER_TIMEOUT,
    simple_response,
    status_line,
)
from queueproxy.outcomes import (
    BAD_REQUEST,
    CUT,
    QUEUE_FULL,
    TIMEOUT,
    upstream_failure_reason,
)
from queueproxy.timeouts import TIMEOUT_BODY, TIMEOUT_STATUS, RequestTimer, TimeoutRules
from queueproxy.upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from queueproxy.h2stream import Stream

log = logging.getLogger("queueproxy")

QUEUE_FULL_BODY = b"pending request queue full\n"
# Bodies up to this size are kept until the first response byte, so an idempotent request that
# met a keep-alive connection the app had just closed can be sent again on a fresh one.
REPLAY_LIMIT = 64 * 1024

_STRIPPED_REQUEST = frozenset(
    {
        b"knative-serving-revision",
        b"knative-serving-namespace",
        b"k-original-host",
        b"host",
        b"content-length",
    }
)
_IDEMPOTENCY_KEYS = (b"idempotency-key", b"x-idempotency-key")
# Fields only a probe or the route-tag label reads (`health`, `observer`): noted in the one pass
# over the request's fields that builds the upstream head, rather than each reader scanning the
# fields again (`Exchange.header`), which cost ~1.5k instructions per look-up.
KNATIVE_FIELDS = frozenset(
    {b"k-kubelet-probe", b"knative-serving-tag", b"knative-serving-default-route"}
)
# The fields that pass decides something from; one set test keeps the common field (Accept,
# Cookie...) from being compared with each of them in turn.
_NOTED = KNATIVE_FIELDS | {b"user-agent", b"k-network-probe", b"k-proxy-request"}

# Exchange states
WAITING, QUEUED, CONNECTING, ACTIVE, TUNNEL, DONE = range(6)
# Reasons to stop reading from the client (a bit set)
_BODY_BACKLOG, _ANSWERING, _UPSTREAM_FULL = 1, 2, 4
# Lingering close: how long, and how many bytes, to read and drop after shutting the write side.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
# Response framing towards an HTTP/1.0 client that gets a body of unknown length: until close.
UNTIL_CLOSE_CLIENT = 5


class Observer(Protocol):
    """What the data path reports to statistics, metrics and logs (wired in `server`)."""

    def request_started(self, exchange: Exchange) -> None: ...

    def request_finished(self, exchange: Exchange) -> None: ...

    def probe_answered(self, exchange: Exchange) -> None: ...

    def rejected(self, reason: str, status: int, detail: bytes) -> None:
        """The sidecar answers `status` itself (0: cuts the connection), for `reason`."""
        ...


class LocalResponder(Protocol):
    """Answers health checks and network probes without the app (`health.HealthResponder`)."""

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
        "knative_fields",
        "proxied",
        "keep_alive",
        "upgrade",
        "retryable",
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

    def __init__(self, conn: ClientConnection, request: RequestHead) -> None:
        self.conn = conn
        self.method = request.method
        self.target = request.target
        self.version = request.version
        self.headers = request.headers
        self.user_agent = b""
        self.network_probe: bytes | None = None
        # First value of each KNATIVE_FIELDS field present (lower-case name), None when none is.
        self.knative_fields: dict[bytes, bytes] | None = None
        self.proxied = False
        self.keep_alive = request.keep_alive
        self.upgrade = b""  # the protocols offered to the app, when it may switch
        self.retryable = request.method in IDEMPOTENT_METHODS
        self.head = b""
        self.body_chunked = request.framing == CHUNKED
        # Request body not yet written upstream (waiting for a slot or a connection).
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
        self.response_framing = NO_BODY  # how the response is framed towards the client
        self.response_length = -1  # the app's Content-Length, when it framed the body so
        self.request_length = request.length if request.framing == LENGTH else -1
        self.replay_bytes = 0
        self.counted = False  # reported to the observer (probes and local answers are not)
        self.dispatched_at = 0.0  # when it left the queue for the app

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def note_knative_field(exchange: Exchange | Stream, lname: bytes, value: bytes) -> None:
    """Keep the first value of a KNATIVE_FIELDS field (Go's `Header.Get`)."""
    fields = exchange.knative_fields
    if fields is None:
        exchange.knative_fields = {lname: value}
    elif lname not in fields:
        fields[lname] = value


class ClientConnection(asyncio.Protocol):
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
        if self.timer_handle is not None:
            self.timer_handle.cancel()
            self.timer_handle = None
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
        if self.timer_handle is not None:
            self.timer_handle.cancel()
            self.timer_handle = None

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
            self._resume_reading(_ANSWERING | _BODY_BACKLOG | _UPSTREAM_FULL)
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
            self._pause_reading(_ANSWERING)

    def _read_head(self, data: bytes | bytearray, pos: int) -> int:
        """Parse a request head at `pos` and start its exchange; -1 when it is incomplete (the
        rest of `data` is then kept)."""
        start = skip_empty_lines(data, pos) if data.startswith(b"\r\n", pos) else pos
        if start >= len(data):
            return start
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
        """Apply Knative's header rules (`pkg/http/header.go`, `pkg/queue/forwarded_shim.go`,
        Go's `httputil.ReverseProxy`) and render the request head for the app."""
        original_host = b""
        xff: list[bytes] = []
        xfp = xfh = b""
        forwarded = False
        seen_proxy_request = False
        sent_length = False  # `Content-Length: 0` is kept: some apps want it on a POST
        te_trailers = False
        # Fields named in Connection are hop-by-hop, except those that frame or route the
        # message: those are rendered below from the framing decision, never dropped.
        named = request.connection - PROTECTED_FIELDS if request.connection else None
        kept: list[bytes] = []
        append = kept.append
        for name, value in request.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"te":
                    te_trailers = te_trailers or b"trailers" in value.lower()
                continue
            if lname in _STRIPPED_REQUEST:
                if lname == b"k-original-host" and not original_host:
                    original_host = value
                elif lname == b"content-length":
                    sent_length = True
                continue
            # What the request is (probe, health check, proxied) is decided before hop-by-hop
            # removal, as Knative's handlers see it: `Connection` cannot hide a probe. A repeated
            # field counts by its first value, as Go's `Header.Get` reads it.
            if lname in _NOTED:
                if lname == b"user-agent":
                    if not exchange.user_agent:
                        exchange.user_agent = value
                elif lname == b"k-network-probe":
                    if exchange.network_probe is None:
                        exchange.network_probe = value
                elif lname == b"k-proxy-request":
                    if not seen_proxy_request:
                        seen_proxy_request = True
                        exchange.proxied = value == b"activator"
                else:
                    note_knative_field(exchange, lname, value)
            if named is not None and lname in named:
                continue
            if lname == b"x-forwarded-for":
                xff.append(value)
                continue
            elif lname == b"x-forwarded-proto":
                xfp = value
            elif lname == b"x-forwarded-host":
                xfh = value
            elif lname == b"forwarded":
                forwarded = True
            elif lname in _IDEMPOTENCY_KEYS:
                exchange.retryable = True
            append(name + b": " + value + b"\r\n")
        if original_host and not valid_host(original_host):
            # It becomes the Host the app sees: the same syntax as Host (RFC 9110 §7.2).
            raise ProtocolError(400, "Bad Request: invalid K-Original-Host header")
        host = original_host or request.host or self.path.upstream_host_header
        if not forwarded and (xff or xfp or xfh):
            append(b"Forwarded: " + forwarded_value(xff, xfp, xfh) + b"\r\n")
        xff.append(self.client_ip)
        append(b"X-Forwarded-For: " + b", ".join(xff) + b"\r\n")
        if te_trailers:
            append(b"Te: trailers\r\n")
        if request.upgrade:
            # An h2c upgrade not granted by `_upgrade_h2c` is declined, never offered to the app:
            # the request is answered over HTTP/1.1, as RFC 9110 §7.8 allows.
            offered = b", ".join(
                p.strip(b" \t")
                for p in request.upgrade.split(b",")
                if p.strip(b" \t") and p.strip(b" \t").lower() != b"h2c"
            )
            if offered:
                exchange.upgrade = offered
                append(b"Connection: Upgrade\r\nUpgrade: " + offered + b"\r\n")
        framing = request.framing
        if framing == CHUNKED:
            append(b"Transfer-Encoding: chunked\r\n")
        elif framing == LENGTH or sent_length:
            append(b"Content-Length: %d\r\n" % request.length)
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
            self.rejected(QUEUE_FULL, 503, QUEUE_FULL_BODY)
            self.respond_locally(exchange, 503, QUEUE_FULL_BODY)

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
            self._resume_reading(_BODY_BACKLOG)
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
            self._pause_reading(_BODY_BACKLOG)

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

    # -- Response side -------------------------------------------------------------------------

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
        self._resume_reading(_BODY_BACKLOG | _ANSWERING | _UPSTREAM_FULL)

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
            self._resume_reading(_ANSWERING | _BODY_BACKLOG | _UPSTREAM_FULL)
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
            self._resume_reading(_UPSTREAM_FULL)
        else:
            self._pause_reading(_UPSTREAM_FULL)

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


def forwarded_value(xff: list[bytes], xfp: bytes, xfh: bytes) -> bytes:
    """Knative's Forwarded shim (`pkg/http/forwarded_shim.go`): RFC 7239 `Forwarded` from the
    X-Forwarded-* headers."""
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
