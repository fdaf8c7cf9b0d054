"""HTTP/2 on the main port: h2c (prior knowledge or `Upgrade: h2c`) and h2 over TLS (ALPN).

Imported by `proxy` only when the first HTTP/2 connection appears, so the HTTP/1 path neither
loads `h2` nor pays for it. `h2` (python-hyper) is the sans-IO HTTP/2 state machine: framing,
HPACK, stream states and flow-control windows are its job; this module maps its events onto the
data path (docs/http2.md).

Each stream is one request for everything else, as in Knative (its `http2.Server` runs one
handler per stream): a `Stream` goes through the health responder, the observer, the breaker
(one slot per stream, queued streams in the same FIFO, overflow answered `503` on that stream
alone) and the revision timeouts exactly as an HTTP/1 `exchange.Exchange` does, with the same
attribute names, so `DataPath`, `HealthResponder` and `RequestObserver` take either. It goes to
the app as h2c with prior knowledge (`h2upstream`); the answer comes back through the methods
of `h2response.ResponseSide`.

Flow control is the back-pressure, in both directions: DATA is acknowledged to its sender only
once it has been handed to the other side and that side's socket is not full, and never while the
stream waits for a breaker slot; we send within the receiver's windows. So a stream holds at most
one window (h2limits.INITIAL_WINDOW) of body in the sidecar whatever its length, and a client
connection at most h2limits.CONNECTION_WINDOW.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

from queueproxy.exchange import ACTIVE, CONNECTING, DONE, QUEUED
from queueproxy.h2limits import (
    CONNECTION_WINDOW,
    INITIAL_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    FloodGuard,
)
from queueproxy.h2response import ResponseSide
from queueproxy.h2stream import (
    Headers,
    Stream,
    StrictServer,
    classify,
    malformed_request,
    server_config,
    trailers_malformed,
)
from queueproxy.h2upstream import H2Upstream, H2UpstreamPool
from queueproxy.http11 import HOP_BY_HOP
from queueproxy.outcomes import (
    BAD_REQUEST,
    CUT,
    TIMEOUT,
    UPSTREAM_RESET,
    upstream_failure_reason,
)
from queueproxy.proxy import DataPath
from queueproxy.timeouts import TIMEOUT_BODY, TIMEOUT_STATUS, Alarm, RequestTimer

log = logging.getLogger("queueproxy")


def shared_pool(path: DataPath) -> H2UpstreamPool:
    """The h2c pool to the app, made with the first HTTP/2 connection."""
    pool = path.h2_pool
    if pool is None:
        pool = path.h2_pool = H2UpstreamPool(path.loop, path.pool.host, path.pool.port)
    return pool


class H2ServerConnection(ResponseSide, Alarm, asyncio.Protocol):
    """One client connection speaking HTTP/2; takes over the transport from the HTTP/1 side."""

    def __init__(self, path: DataPath, client_ip: bytes, remote_addr: bytes) -> None:
        self.path = path
        self.loop = path.loop
        self.pool = shared_pool(path)
        self.client_ip = client_ip
        self.remote_addr = remote_addr
        self.h2 = StrictServer(config=server_config())
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.flood = FloodGuard(self.loop.time())
        self.closed = False
        self.writing_paused = False
        self.flush_pending = False
        self.goaway_last = -1  # last stream id accepted once a graceful GOAWAY went out
        self.tunnel_upstream = None  # the server's drain loop asks every connection
        self.timer_handle: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    @property
    def exchange(self) -> Stream | None:
        """Some open stream, or None: what the server's drain waits on."""
        for stream in self.streams.values():
            return stream
        return None

    # -- Taking over the connection ------------------------------------------------------------

    def _settings(self) -> None:
        h2 = self.h2
        h2.local_settings.update(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                SettingCodes.ENABLE_PUSH: 0,
            }
        )

    def take_over(self, transport: Any, data: bytes) -> None:
        """Prior knowledge (or ALPN h2): `data` is what was read so far, preface included."""
        self.transport = transport
        self.path.connections.add(self)
        self._settings()
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        transport.set_protocol(self)
        if data:
            self.data_received(data)
        else:
            self.flush()

    def take_over_upgrade(
        self,
        transport: Any,
        settings: bytes,
        method: bytes,
        target: bytes,
        headers: Headers,
        rest: bytes,
    ) -> None:
        """`Upgrade: h2c` granted (the 101 is out): the request becomes stream 1 (RFC 7540
        §3.2), half-closed on the client's side since it had no body."""
        self.transport = transport
        self._settings()
        try:
            self.h2.initiate_upgrade_connection(settings)
        except ProtocolError:
            # `h2detect.valid_settings` should have declined it; never leave a half-made
            # connection registered for the drain to write to.
            self.closed = True
            transport.close()
            return
        self.path.connections.add(self)
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        transport.set_protocol(self)
        fields: Headers = [(b":method", method), (b":scheme", b"http"), (b":path", target)]
        for name, value in headers:
            lname = name.lower()
            if lname == b"host":
                fields.append((b":authority", value))
            elif lname not in HOP_BY_HOP and lname != b"http2-settings":
                fields.append((lname, value))
        self._request(1, fields, end_stream=True)
        if rest:
            self.data_received(rest)
        else:
            self.flush()

    # -- Protocol interface --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # the transport was handed over by take_over

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.path.connections.discard(self)
        self._disarm()
        for stream in list(self.streams.values()):
            self._abandon(stream)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        # The client does not read: stop reading from it too, so nothing it sends (PINGs,
        # SETTINGS, requests) can queue answers here without bound; response DATA waits in
        # each stream, bounded by its window towards the app.
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            if stream.to_client or stream.response_done:
                self._pump_response(stream)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self._close_connection()
            return
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                self._data(event)
            elif kind is RequestReceived:
                self._request(
                    event.stream_id,  # type: ignore[attr-defined]
                    event.headers,  # type: ignore[attr-defined]
                    event.stream_ended is not None,  # type: ignore[attr-defined]
                )
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
                if stream is not None:
                    stream.request_done = True
                    self._pump_request(stream)
            elif kind is WindowUpdated:
                self._window_updated(event.stream_id)  # type: ignore[attr-defined]
            elif kind is StreamReset:
                self._reset_received(event)
            elif kind is TrailersReceived:
                stream = self.streams.get(event.stream_id)  # type: ignore[attr-defined]
                if stream is not None:
                    trailers = event.headers  # type: ignore[attr-defined]
                    if trailers_malformed(trailers):
                        self._reset_stream(stream, ErrorCodes.PROTOCOL_ERROR)
                    else:
                        stream.request_trailers = trailers
            elif kind is PingReceived:
                if not self.flood.ping(self.loop.time()):
                    return self._calm()
            elif kind is RemoteSettingsChanged:
                if not self.flood.settings_frame(self.loop.time()):
                    return self._calm()
                self._window_updated(0)
            elif kind is ConnectionTerminated:
                if event.error_code or not self.streams:  # type: ignore[attr-defined]
                    self._close_connection()
                    return
                # A graceful GOAWAY: no new streams; close once the open ones are answered.
                if self.goaway_last < 0:
                    self.goaway_last = self.h2.highest_inbound_stream_id
            if self.closed:
                return
        self.flush()

    # -- Requests ------------------------------------------------------------------------------

    def _request(self, sid: int, fields: Headers, end_stream: bool) -> None:
        refused = 0 <= self.goaway_last < sid
        if refused or len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Over the limit, or after our GOAWAY: refused, safe for the client to retry.
            self._reset(sid, ErrorCodes.REFUSED_STREAM)
            if not self.flood.reset(self.loop.time()):
                self._calm()
            return
        reason = malformed_request(fields)
        if reason:
            # A stream error (RFC 9113 §8.1.1); it counts against the reset budget.
            self.rejected(BAD_REQUEST, CUT, reason.encode())
            self._reset(sid, ErrorCodes.PROTOCOL_ERROR)
            if not self.flood.reset(self.loop.time()):
                self._calm()
            return
        method = target = authority = b""
        for name, value in fields:
            if name[:1] != b":":
                break
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
        stream = Stream(self, sid, method, target)
        stream.request_done = end_stream
        self.streams[sid] = stream
        stream.started_at = monotonic()
        if method == b"CONNECT":
            self.rejected(BAD_REQUEST, 405, b"CONNECT is not served")
            self.respond_locally(stream, 405, b"CONNECT is not served\n")
            return
        try:
            classify(stream, fields, authority, self.client_ip, self.path.upstream_host_header)
        except ValueError as error:
            self.rejected(BAD_REQUEST, 400, str(error).encode())
            self.respond_locally(stream, 400, str(error).encode() + b"\n")
            return
        path = self.path
        responder = path.responder
        if responder is not None and responder.answer(self, stream):  # type: ignore[arg-type]
            if stream.state == CONNECTING or stream.state == ACTIVE:
                self._start_timer(stream)
            return
        self._start_timer(stream)
        path.admit(stream)  # type: ignore[arg-type]

    def start_upstream(self, stream: Stream) -> None:
        """Called with a breaker slot (or for requests that skip the breaker)."""
        if self.closed or stream.state == DONE:
            self.path.release_slot(stream)  # type: ignore[arg-type]
            return
        stream.state = CONNECTING
        self.pool.acquire(stream)

    def upstream_ready(self, stream: Stream, upstream: H2Upstream) -> None:
        if stream.state != CONNECTING:
            return
        stream.state = ACTIVE
        stream.dispatched_at = monotonic()
        end = stream.request_done and not stream.to_app and stream.request_trailers is None
        try:
            upstream.open(stream, stream.up_headers, end)
        except ProtocolError as error:
            self.upstream_failed(stream, f"http2: {error}")
            return
        stream.request_sent = end
        self._pump_request(stream)

    def _data(self, event: Any) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        size = event.flow_controlled_length
        data = event.data
        if stream is None or stream.state == DONE:
            # Nobody will send it on: give the window back at once.
            self._ack(sid, size)
            return
        if size > len(data):
            self._ack(sid, size - len(data))  # padding
        if data:
            stream.to_app += data
        self._pump_request(stream)

    def _pump_request(self, stream: Stream) -> None:
        """Send held request body within the app's window; acknowledge what went."""
        upstream = stream.upstream
        if stream.state != ACTIVE or upstream is None:
            return  # queued or dialling: the body waits, unacknowledged
        sid = stream.upstream_id
        pending = stream.to_app
        sent = 0
        try:
            while pending:
                room = upstream.window(sid)
                if room <= 0:
                    break
                chunk = bytes(pending[:room])
                del pending[:room]
                upstream.send(sid, chunk)
                sent += len(chunk)
            if not pending and stream.request_done and not stream.request_sent:
                stream.request_sent = True
                if stream.request_trailers:
                    upstream.send_trailers(sid, stream.request_trailers)
                else:
                    upstream.end(sid)
        except ProtocolError:
            return  # the app's side of the stream is closed (it answered early): drop the rest
        stream.unacked += sent
        if stream.unacked and not upstream.paused:
            self._ack(stream.sid, stream.unacked)
            stream.unacked = 0

    def upstream_writable(self, stream: Stream) -> None:
        self._pump_request(stream)
        self.flush_soon()

    def _ack(self, sid: int, size: int) -> None:
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, sid)
            self.flush_soon()

    # -- Errors and resets ---------------------------------------------------------------------

    def upstream_failed(self, stream: Stream, error: str) -> None:
        """The app could not be reached or dropped the connection: 502 with Go's error text
        (`knative.dev/pkg/network/error_handler.go`), or a reset once the response began."""
        stream.upstream = None
        if stream.state == DONE:
            return
        reason = upstream_failure_reason(error)
        self.rejected(reason, CUT if stream.response_started else 502, error.encode())
        if stream.response_started:
            self._reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
        else:
            self.respond_locally(stream, 502, error.encode() + b"\n")

    def upstream_reset(self, stream: Stream, code: int) -> None:
        """The app reset its stream: so is the client's (gRPC reads the code)."""
        stream.upstream = None
        if stream.state != DONE:
            self.rejected(UPSTREAM_RESET, CUT, b"stream reset by the app: %d" % code)
            self._reset_stream(stream, code)

    def _reset_received(self, event: Any) -> None:
        """The client's RST_STREAM, or (`remote_reset` false) `StrictServer`'s reset of a
        malformed request: both count against the reset budget (rapid reset)."""
        if not self.flood.reset(self.loop.time()):
            self._calm()
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            self._abandon(stream)

    def _reset_stream(self, stream: Stream, code: int) -> None:
        self._reset(stream.sid, code)
        self._abandon(stream)

    def _reset(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (ProtocolError, StreamClosedError):
            pass
        self.flush_soon()

    def _abandon(self, stream: Stream) -> None:
        """The stream is gone on the client's side: cancel the app's, free the slot."""
        upstream = stream.upstream
        if upstream is not None:
            upstream.cancel(stream)
        self._finish(stream)

    def _finish(self, stream: Stream) -> None:
        state = stream.state
        if state == DONE:
            return
        path = self.path
        if state == QUEUED and path.breaker is not None:
            path.breaker.cancel(stream)
        elif state == CONNECTING:
            self.pool.remove_waiter(stream)
        stream.state = DONE
        stream.timer = None
        path.release_slot(stream)  # type: ignore[arg-type]
        # Body that will never be sent on still holds the connection window: give it back.
        held = stream.unacked + len(stream.to_app)
        stream.to_app = bytearray()
        stream.unacked = 0
        if held and not self.closed:
            self.h2.acknowledge_received_data(held, stream.sid)
        if stream.to_client:
            upstream = stream.upstream
            if upstream is not None:
                upstream.ack(stream.upstream_id, len(stream.to_client))
            stream.to_client = bytearray()
        if path.observer is not None:
            if stream.counted:
                path.observer.request_finished(stream)  # type: ignore[arg-type]
            elif stream.dispatched_at:
                path.observer.probe_answered(stream)  # type: ignore[arg-type]
        self.streams.pop(stream.sid, None)
        if not stream.request_done:
            # Answered before the whole request came (a 503, an early response): the client may
            # stop sending (RFC 9113 §8.1). A no-op for a stream already reset.
            self._reset(stream.sid, ErrorCodes.NO_ERROR)
        if self.goaway_last >= 0 and not self.streams:
            self._close_connection()

    # -- Timeouts (pkg/http/handler/timeout.go) ------------------------------------------------

    # As on HTTP/1, one loop timer per connection, re-armed lazily: a stream only stores its
    # deadlines (`RequestTimer`); the timer fires at the earliest one known when it was armed,
    # checks every stream and re-arms for the next. A new stream arms it only if its deadline
    # comes first, so a steady flow of streams creates no timer handles at all.

    def _start_timer(self, stream: Stream) -> None:
        timer = stream.timer = RequestTimer(self.path.timeout_rules)
        timer.start(self.loop.time())
        self._arm(timer.next_deadline())

    def _wrote(self, stream: Stream) -> None:
        if stream.timer is not None and self.path.track_writes:
            stream.timer.wrote(self.loop.time())

    def _on_timer(self) -> None:
        self.timer_handle = None
        if self.closed:
            return
        now = self.loop.time()
        for stream in list(self.streams.values()):
            timer = stream.timer
            if timer is None or stream.state == DONE or timer.check(now) is None:
                continue
            self._timed_out(stream)
        deadlines = [
            d
            for stream in self.streams.values()
            if stream.timer is not None and (d := stream.timer.next_deadline()) is not None
        ]
        if deadlines:
            self._arm(min(deadlines))
        self.flush()

    def _timed_out(self, stream: Stream) -> None:
        self.rejected(TIMEOUT, CUT if stream.response_started else TIMEOUT_STATUS, TIMEOUT_BODY)
        if not stream.response_started:
            self.respond_locally(stream, TIMEOUT_STATUS, TIMEOUT_BODY)
            return
        # The status is gone: the text goes after what was sent, then the stream is cut, as on
        # HTTP/1 (a reset is HTTP/2's way to say the response is incomplete).
        stream.to_client += TIMEOUT_BODY
        upstream = stream.upstream
        if upstream is not None:
            upstream.cancel(stream)
        self._pump_response(stream)
        self._reset_stream(stream, ErrorCodes.INTERNAL_ERROR)

    # -- Connection ----------------------------------------------------------------------------

    def _calm(self) -> None:
        """A peer over a flood budget: GOAWAY ENHANCE_YOUR_CALM and close (Go does the same)."""
        log.warning(f"HTTP/2 client {self.remote_addr.decode()} sent too many {self.flood.tripped}")
        try:
            self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM)
        except ProtocolError:
            pass
        self._close_connection()

    def _close_connection(self) -> None:
        self.flush()
        self.closed = True
        for stream in list(self.streams.values()):
            self._abandon(stream)
        if self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Drain: GOAWAY (NO_ERROR) naming the last stream we take; open streams finish, then
        the connection closes (RFC 9113 §6.8; Go's `Server.Shutdown` on HTTP/2)."""
        if self.closed or self.goaway_last >= 0:
            return
        self.goaway_last = self.h2.highest_inbound_stream_id
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.goaway_last
        frame.error_code = ErrorCodes.NO_ERROR
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame.serialize())
        if not self.streams:
            self._close_connection()

    def flush_soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
