"""h2c with prior knowledge to the user container, for requests that arrived over HTTP/2.

Knative's transport picks the protocol by the inbound request (`NewProxyAutoTransport`,
`vendor/knative.dev/pkg/network/transports.go`): HTTP/2 in goes to `127.0.0.1:$USER_PORT` as h2c
(Go's `http2.Transport{AllowHTTP: true}`), so a gRPC call stays gRPC end to end.

`H2UpstreamPool` keeps a few multiplexed connections: a stream goes on the first connection with
room under the app's SETTINGS_MAX_CONCURRENT_STREAMS, and a connection is dialled (with the HTTP/1
pool's back-off) only when none has. Streams are owned by the client side (`h2server.Stream`);
this module only moves frames and reports events back through the stream's connection:
`upstream_ready`, `upstream_failed`, `response_head`, `response_data`, `response_end`,
`upstream_reset`, `upstream_writable`.

Flow control is the back-pressure (docs/http2.md#flow-control-is-the-back-pressure): DATA from
the app is acknowledged (`ack`) by the client side only once it has been written towards the
client, so a slow client holds at most one stream window (INITIAL_WINDOW) of the app's response
here.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import InvalidBodyLengthError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from hpack import Encoder
from hpack.exceptions import HPACKError
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame

from queueproxy.h2limits import (
    INITIAL_WINDOW,
    MAX_CLOSED_STREAMS,
    MAX_ENCODER_TABLE,
    MAX_HEADER_LIST_SIZE,
    MAX_INFORMATIONAL_BYTES,
    MAX_QUEUED_CONTROL_FRAMES,
    UPSTREAM_CONNECTION_WINDOW,
)
from queueproxy.upstream import dial, read_error

if TYPE_CHECKING:
    from queueproxy.h2server import Stream

Headers = list[tuple[bytes, bytes]]


_HPACK_FAILURES = (HPACKError, IndexError, TypeError, UnicodeDecodeError)


class EagerFrameBuffer(FrameBuffer):
    """h2's frame buffer, checking a frame's length as soon as its 9-byte header is in.

    h2 checks it against SETTINGS_MAX_FRAME_SIZE only once the whole frame has arrived, so a
    peer declaring a 16 MiB frame (the 24-bit maximum, 1024 times ours) made us buffer up to
    16 MiB per connection, for as long as it cared to trickle the bytes. RFC 9113 §4.2: a frame
    over the limit is a FRAME_SIZE_ERROR, which h2 then answers with GOAWAY as before.
    """

    def __next__(self) -> Frame:
        data = self._data
        if len(data) >= 9:
            self._validate_frame_length(int.from_bytes(data[:3], "big"))
        return super().__next__()


class CappedEncoder(Encoder):
    """hpack's encoder with its dynamic table capped at MAX_ENCODER_TABLE, whatever
    SETTINGS_HEADER_TABLE_SIZE the peer allows (up to 4 GiB): the table keeps every field we
    send until it is full, so a peer allowing 4 GiB made each connection keep them all."""

    @property
    def header_table_size(self) -> int:
        return self.header_table.maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        Encoder.header_table_size.fset(self, min(value, MAX_ENCODER_TABLE))  # type: ignore[attr-defined]


class SidecarConnection(H2Connection):
    """h2's connection as both sides of the sidecar use it (`_Client` to the app,
    `h2stream.StrictServer` to clients).

    Bounded: a frame is refused at its 9-byte header (`EagerFrameBuffer`), the encoder's table is
    capped (`CappedEncoder`), and closed streams are remembered up to MAX_CLOSED_STREAMS. A
    peer's GOAWAY concerns streams we would start (RFC 9113 §6.8): the streams in flight still
    finish, as with Go on either side, where h2 would refuse every frame after it. A request or
    response body that disagrees with its content-length is malformed (RFC 9113 §8.1.1): a
    stream error (`_stream_error`), not h2's connection error, so the connection's other streams
    carry on.
    """

    MAX_CLOSED_STREAMS = MAX_CLOSED_STREAMS

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config=config)
        self.incoming_buffer.__class__ = EagerFrameBuffer
        self.encoder.__class__ = CappedEncoder

    def _receive_frame(self, frame: Frame) -> list[Any]:
        if type(frame) is DataFrame:
            try:
                return super()._receive_frame(frame)
            except InvalidBodyLengthError:
                self.acknowledge_received_data(frame.flow_controlled_length, frame.stream_id)
                return self._stream_error(frame.stream_id)
        return super()._receive_frame(frame)

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Any]]:
        event = ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _stream_error(self, sid: int) -> list[Any]:
        """Reset stream `sid` with PROTOCOL_ERROR and report it as h2 reports a reset."""
        try:
            self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
        except ProtocolError:  # the stream is already closed (StreamClosedError is one)
            pass
        return [
            StreamReset(stream_id=sid, error_code=ErrorCodes.PROTOCOL_ERROR, remote_reset=False)
        ]


class _Client(SidecarConnection):
    """h2's client connection with two changes that keep one stream's trouble on that stream.

    The connection to the app carries the streams of many clients, so a connection error ends
    every one of them. A response whose DATA disagrees with its `content-length`, or a header
    block h2 refuses after decoding it (trailers without END_STREAM, a bad `content-length`),
    is malformed (RFC 9113 §8.1.1): a stream error, as Go's transport treats it. HPACK failures
    stay connection errors: the header table can no longer be trusted.

    The same goes for a 1xx response on a stream we have reset (the client went away while the
    app sent `100 Continue` or `103 Early Hints`): h2 makes it a connection error, where RFC 9113
    §5.1 says frames in flight after RST_STREAM are ignored.

    A GOAWAY from the app lets the streams it names finish (RFC 9113 §6.8: a graceful shutdown,
    as Go's `Server.Shutdown` or grpc-go's `GracefulStop` send it); h2 would refuse every later
    frame. `H2Upstream` opens no stream on the connection once it has seen one.
    """

    def _receive_frame(self, frame: Frame) -> list[Any]:
        if type(frame) is HeadersFrame:
            known = frame.stream_id in self.streams
            try:
                return super()._receive_frame(frame)
            except ProtocolError as error:
                # h2 raises HPACK failures `from` hpack's own error (or these built-ins).
                if (
                    not known
                    or type(error) is not ProtocolError
                    or isinstance(error.__cause__, _HPACK_FAILURES)
                ):
                    raise
                return self._stream_error(frame.stream_id)
        return super()._receive_frame(frame)


def _config() -> H2Configuration:
    # Outbound headers are built by h2server from validated input: h2's checks would repeat it.
    # The app's header blocks are checked by `malformed`, one pass instead of h2's chain of
    # generators per field (about a tenth of the CPU of an exchange).
    return H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )


_NAME_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def bad_value(value: bytes) -> bool:
    """NUL, CR or LF anywhere, or whitespace at either end (RFC 9113 §8.2.1)."""
    return bool(value) and (
        value[0] in (32, 9)
        or value[-1] in (32, 9)
        or b"\r" in value
        or b"\n" in value
        or b"\0" in value
    )


def malformed(fields: Headers, trailers: bool = False) -> str:
    """Why a response (or trailer) header block from the app is malformed (RFC 9113 §8.2.1,
    §8.3.2), or "" if it is not: one `:status` of three digits first (none in trailers),
    lower-case token names, no connection-specific fields, values without NUL, CR, LF or
    leading or trailing whitespace."""
    status = 0
    for index, (name, value) in enumerate(fields):
        if name[:1] == b":":
            if trailers or name != b":status" or index != 0:
                return f"pseudo-header {name!r} not allowed here"
            if len(value) != 3 or not value.isdigit():
                return f"invalid :status {value!r}"
            status = 1
        elif not name or name.translate(None, _NAME_BYTES):
            return f"invalid field name {name!r}"
        elif name in _CONNECTION_SPECIFIC:
            return f"connection-specific field {name!r}"
        if bad_value(value):
            return f"invalid value of {name!r}"
    if not trailers and not status:
        return "no :status"
    return ""


def malformed_informational(fields: Headers, stream: Stream) -> str:
    """`malformed`, plus what a 1xx response from the app must not be: 101 (RFC 9113 §8.6),
    or more 1xx header fields on the stream than MAX_INFORMATIONAL_BYTES."""
    if fields and fields[0] == (b":status", b"101"):
        return "101 Switching Protocols over HTTP/2"
    if stream.informational_bytes > MAX_INFORMATIONAL_BYTES:
        return "too many 1xx responses"
    return malformed(fields)


class H2Upstream(asyncio.Protocol):
    """One h2c connection to the app, carrying many streams."""

    def __init__(self, pool: H2UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.h2 = _Client(config=_config())
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.paused = False  # the app's socket buffer is full: stop acknowledging client DATA
        self.closed = False
        self.going_away = False  # GOAWAY received: no new streams
        self.flush_pending = False
        self.queued_control = 0  # PING/SETTINGS answered while the app does not read us

    # -- Protocol interface --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        h2 = self.h2
        h2.local_settings.update(
            {
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            }
        )
        h2.initiate_connection()
        h2.increment_flow_control_window(UPSTREAM_CONNECTION_WINDOW - 65535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        streams = list(self.streams.values())
        self.streams.clear()
        error = read_error(self.pool.address, exc)
        for stream in streams:
            stream.upstream = None
            stream.conn.upstream_failed(stream, error)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.queued_control = 0
        for stream in list(self.streams.values()):
            stream.conn.upstream_writable(stream)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()  # h2's GOAWAY
            self.abort()
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is DataReceived:
                stream = streams.get(event.stream_id)  # type: ignore[attr-defined]
                if stream is None:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length,  # type: ignore[attr-defined]
                        event.stream_id,  # type: ignore[attr-defined]
                    )
                else:
                    stream.conn.response_data(
                        stream,
                        event.data,  # type: ignore[attr-defined]
                        event.flow_controlled_length,  # type: ignore[attr-defined]
                    )
            elif kind is ResponseReceived:
                sid = event.stream_id  # type: ignore[attr-defined]
                stream = streams.get(sid)
                if stream is not None:
                    headers = event.headers  # type: ignore[attr-defined]
                    if self._refused(sid, stream, malformed(headers)):
                        continue
                    # A headers-only response (gRPC's Trailers-Only) stays one HEADERS frame.
                    ended = event.stream_ended is not None  # type: ignore[attr-defined]
                    if ended:
                        self._ended(sid, stream)
                    stream.conn.response_head(stream, headers, ended)
            elif kind is StreamEnded:
                sid = event.stream_id  # type: ignore[attr-defined]
                stream = streams.get(sid)
                if stream is not None:
                    self._ended(sid, stream)
                    stream.conn.response_end(stream)
            elif kind is TrailersReceived:
                sid = event.stream_id  # type: ignore[attr-defined]
                stream = streams.get(sid)
                if stream is not None:
                    headers = event.headers  # type: ignore[attr-defined]
                    if not self._refused(sid, stream, malformed(headers, trailers=True)):
                        stream.response_trailers = headers
            elif kind is WindowUpdated:
                sid = event.stream_id  # type: ignore[attr-defined]
                if sid == 0:
                    for stream in list(streams.values()):
                        stream.conn.upstream_writable(stream)
                else:
                    stream = streams.get(sid)
                    if stream is not None:
                        stream.conn.upstream_writable(stream)
            elif kind is StreamReset:
                stream = streams.pop(event.stream_id, None)  # type: ignore[attr-defined]
                if stream is not None:
                    stream.upstream = None
                    if event.remote_reset:  # type: ignore[attr-defined]
                        stream.conn.upstream_reset(stream, event.error_code)  # type: ignore[attr-defined]
                    else:  # our stream error for a malformed response (`_Client`)
                        stream.conn.upstream_failed(
                            stream, "malformed HTTP/2 response from the app"
                        )
                    self._maybe_idle()
            elif kind is InformationalResponseReceived:
                sid = event.stream_id  # type: ignore[attr-defined]
                stream = streams.get(sid)
                if stream is not None:
                    headers = event.headers  # type: ignore[attr-defined]
                    stream.informational_bytes += sum(32 + len(n) + len(v) for n, v in headers)
                    if not self._refused(sid, stream, malformed_informational(headers, stream)):
                        stream.conn.informational(stream, headers)
            elif kind is PingReceived or kind is RemoteSettingsChanged:
                # Each is answered; an app that does not read the answers gets them queued
                # here, so only so many (Go's rule).
                if self.paused:
                    self.queued_control += 1
                    if self.queued_control > MAX_QUEUED_CONTROL_FRAMES:
                        self.abort()
                        return
            elif kind is ConnectionTerminated:
                self.going_away = True
                self.pool.forget(self)
                last = event.last_stream_id  # type: ignore[attr-defined]
                for sid in [s for s in streams if s > last]:
                    # Never processed by the app (RFC 9113 §6.8): nothing of it reached the app.
                    stream = streams.pop(sid)
                    stream.upstream = None
                    stream.conn.upstream_failed(stream, "http2: server sent GOAWAY")
                if not streams:
                    self.abort()
        self.flush()

    def eof_received(self) -> bool | None:
        return None

    # -- Used by the client side ---------------------------------------------------------------

    def has_room(self) -> bool:
        # Our own count: h2's `open_outbound_streams` walks every stream on each call. Streams
        # leave `self.streams` only when closed on the h2 side too (ended both ways, or reset).
        return (
            not self.closed
            and not self.going_away
            and len(self.streams) < self.h2.remote_settings.max_concurrent_streams
        )

    def open(self, stream: Stream, headers: Headers, end_stream: bool) -> None:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end_stream)
        stream.upstream = self
        stream.upstream_id = sid
        self.streams[sid] = stream
        self.flush_soon()

    def window(self, sid: int) -> int:
        """Bytes we may send on stream `sid` now, in one frame."""
        h2 = self.h2
        return min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)

    def send(self, sid: int, data: bytes, end_stream: bool = False) -> None:
        self.h2.send_data(sid, data, end_stream=end_stream)
        self.flush_soon()

    def send_trailers(self, sid: int, trailers: Headers) -> None:
        self.h2.send_headers(sid, trailers, end_stream=True)
        self.flush_soon()

    def end(self, sid: int) -> None:
        self.h2.end_stream(sid)
        self.flush_soon()

    def ack(self, sid: int, size: int) -> None:
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, sid)
            self.flush_soon()

    def cancel(self, stream: Stream) -> None:
        """The client side is done with `stream` (reset, timed out): RST_STREAM CANCEL."""
        sid = stream.upstream_id
        stream.upstream = None
        if self.streams.pop(sid, None) is None or self.closed:
            return
        try:
            self.h2.reset_stream(sid, ErrorCodes.CANCEL)
        except ProtocolError:
            pass  # already closed on the h2 side
        self.flush_soon()
        self._maybe_idle()

    def _refused(self, sid: int, stream: Stream, reason: str) -> bool:
        """A malformed header block: the app's stream is reset (PROTOCOL_ERROR) and the client
        gets a 502, or a reset once its response has begun."""
        if not reason:
            return False
        del self.streams[sid]
        stream.upstream = None
        try:
            self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
        except ProtocolError:
            pass
        stream.conn.upstream_failed(stream, "malformed HTTP/2 response from the app: " + reason)
        self._maybe_idle()
        return True

    def _ended(self, sid: int, stream: Stream) -> None:
        """The app's response is complete: the stream leaves this connection."""
        del self.streams[sid]
        stream.upstream = None
        if not stream.request_sent:
            # The app answered before the whole request came (RFC 9113 §8.1): the rest of the
            # body is not wanted.
            stream.request_sent = True
            try:
                self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            except ProtocolError:
                pass
            self.flush_soon()
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if not self.streams and (self.going_away or self.pool.spare(self)):
            self.abort()

    # -- Writing -------------------------------------------------------------------------------

    def flush_soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        self.pool.forget(self)
        if not self.closed and self.transport is not None:
            self.flush()
            self.transport.close()


class H2UpstreamPool:
    """The multiplexed h2c connections to the app."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.connections: list[H2Upstream] = []
        # Streams waiting for the connection being dialled (None when no dial is under way).
        self.waiting: list[Stream] | None = None
        self.dialling: set[asyncio.Task[None]] = set()

    def acquire(self, stream: Stream) -> None:
        """Open `stream` on a connection with room, now or once one is dialled."""
        for upstream in self.connections:
            if upstream.has_room():
                stream.conn.upstream_ready(stream, upstream)
                return
        if self.waiting is not None:
            self.waiting.append(stream)
            return
        self.waiting = [stream]
        task = self.loop.create_task(self._dial())
        self.dialling.add(task)
        task.add_done_callback(self.dialling.discard)

    def remove_waiter(self, stream: Stream) -> None:
        if self.waiting is not None and stream in self.waiting:
            self.waiting.remove(stream)

    async def _dial(self) -> None:
        upstream, error = await dial(self.loop, lambda: H2Upstream(self), self.host, self.port)
        waiting = self.waiting or []
        self.waiting = None
        if upstream is None:
            for stream in waiting:
                stream.conn.upstream_failed(stream, error)
            return
        self.connections.append(upstream)
        for index, stream in enumerate(waiting):
            if not upstream.has_room():
                for rest in waiting[index:]:
                    self.acquire(rest)  # the app allows fewer streams: another connection
                return
            stream.conn.upstream_ready(stream, upstream)

    def spare(self, upstream: H2Upstream) -> bool:
        """Another idle connection exists, so `upstream` (idle too) need not be kept."""
        return any(c is not upstream and not c.streams for c in self.connections)

    def forget(self, upstream: H2Upstream) -> None:
        try:
            self.connections.remove(upstream)
        except ValueError:
            pass

    def close(self) -> None:
        for upstream in list(self.connections):
            upstream.abort()
        for task in self.dialling:
            task.cancel()
