"""The response side of an HTTP/2 client connection: `h2server.H2ServerConnection`'s methods
that send the app's (or our own) answer on a stream, split out to keep one module per concern.

Forwarded frame by frame as they come, within the client's flow-control windows and only while
the client's socket is not full; DATA from the app is acknowledged to it only once written
towards the client (docs/http2.md#flow-control-is-the-back-pressure). The app's fields pass
without connection-specific ones, with a `date` when the app sent none, as Go's server adds one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from h2.connection import H2Connection

from queueproxy.exchange import DONE
from queueproxy.h2stream import Headers, Stream, forwardable
from queueproxy.http11 import DATE, HOP_BY_HOP

if TYPE_CHECKING:
    from queueproxy.proxy import DataPath

_STATUS = {code: str(code).encode() for code in range(100, 600)}
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_NOSNIFF = (b"x-content-type-options", b"nosniff")


class ResponseSide:
    """Mixed into `H2ServerConnection`, which provides the state and the hooks below."""

    h2: H2Connection
    path: DataPath
    loop: asyncio.AbstractEventLoop
    streams: dict[int, Stream]
    writing_paused: bool
    closed: bool

    if TYPE_CHECKING:  # provided by the connection class

        def _finish(self, stream: Stream) -> None: ...

        def _wrote(self, stream: Stream) -> None: ...

        def flush_soon(self) -> None: ...

    def response_head(self, stream: Stream, fields: Headers, end_stream: bool = False) -> None:
        if stream.state == DONE:
            return
        status = 0
        headers: Headers = []
        has_date = False
        for name, value in fields:
            if name == b":status":
                status = int(value)
            elif name not in HOP_BY_HOP:
                if name == b"date":
                    has_date = True
                headers.append((name, value))
        if not has_date:
            headers.append((b"date", DATE.line[6:-2]))
        stream.status = status
        stream.response_started = True
        self._wrote(stream)
        headers.insert(0, (b":status", _STATUS.get(status) or str(status).encode()))
        self.h2.send_headers(stream.sid, headers, end_stream=end_stream)
        if end_stream:
            self._finish(stream)
        self.flush_soon()

    def informational(self, stream: Stream, fields: Headers) -> None:
        if stream.state != DONE:
            self.h2.send_headers(stream.sid, [(n, v) for n, v in fields if n not in HOP_BY_HOP])
            self.flush_soon()

    def response_data(self, stream: Stream, data: bytes, size: int) -> None:
        upstream = stream.upstream
        if stream.state == DONE:
            if upstream is not None:
                upstream.ack(stream.upstream_id, size)
            return
        if upstream is not None and size > len(data):
            upstream.ack(stream.upstream_id, size - len(data))
        stream.to_client += data
        self._pump_response(stream)

    def response_end(self, stream: Stream) -> None:
        """The app ended its response (trailers, if any, are in `response_trailers`)."""
        if stream.state == DONE:
            return
        if not stream.response_started:
            self.response_head(stream, [(b":status", b"200")])
        stream.response_done = True
        self._pump_response(stream)

    def _pump_response(self, stream: Stream) -> None:
        if self.writing_paused or stream.state == DONE:
            return
        h2 = self.h2
        sid = stream.sid
        pending = stream.to_client
        sent = 0
        while pending:
            room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if room <= 0:
                break
            chunk = bytes(pending[:room])
            del pending[:room]
            h2.send_data(sid, chunk)
            sent += len(chunk)
        if sent:
            stream.response_bytes += sent
            self._wrote(stream)
            upstream = stream.upstream
            if upstream is not None:
                upstream.ack(stream.upstream_id, sent)
        if not pending and stream.response_done:
            trailers = stream.response_trailers
            if trailers:
                h2.send_headers(sid, forwardable(trailers), end_stream=True)
            else:
                h2.end_stream(sid)
            self._finish(stream)
        self.flush_soon()

    def _window_updated(self, sid: int) -> None:
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and (stream.to_client or stream.response_done):
                self._pump_response(stream)
            return
        for stream in list(self.streams.values()):
            if stream.to_client or stream.response_done:
                self._pump_response(stream)

    def respond_locally(
        self,
        stream: Stream,
        status: int,
        body: bytes,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        """Answer without (or instead of) the app, as Go's http.Error would."""
        if stream.state == DONE or self.closed:
            return
        upstream = stream.upstream
        if upstream is not None:
            upstream.cancel(stream)
        stream.status = status
        stream.response_started = True
        headers: Headers = [(b":status", _STATUS[status]), (b"date", DATE.line[6:-2])]
        if body:
            headers += [_TEXT, _NOSNIFF]
        headers += [(name.lower(), value) for name, value in extra_headers]
        headers.append((b"content-length", b"%d" % len(body)))
        head_only = stream.method == b"HEAD" or not body
        self.h2.send_headers(stream.sid, headers, end_stream=head_only)
        if head_only:
            stream.response_bytes = len(body)
            self._finish(stream)
        else:
            stream.to_client[:] = body
            stream.response_done = True
            stream.response_trailers = None
            self._pump_response(stream)
        self.flush_soon()

    def rejected(self, reason: str, status: int, detail: bytes) -> None:
        """Report an answer the sidecar gives itself (`proxy.Observer.rejected`); a reset
        stream counts as a cut (status 0)."""
        observer = self.path.observer
        if observer is not None:
            observer.rejected(reason, status, detail)
