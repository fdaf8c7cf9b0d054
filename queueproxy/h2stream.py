"""One HTTP/2 request on the main port, and h2's connection adjusted to our rules.

`Stream` is `h2server`'s per-request object: the attributes `exchange.Exchange` offers the breaker,
the health responder and the observer, plus HTTP/2's per-stream state (bodies held while windows
are closed, acknowledgements owed). `classify` applies Knative's request-field rules to HTTP/2
fields. `StrictServer` is h2's `H2Connection` with malformed requests as stream errors. Loaded with
`h2server`, never on the HTTP/1 path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from h2.config import H2Configuration
from h2.exceptions import InvalidBodyLengthError, ProtocolError
from hyperframe.frame import Frame, HeadersFrame

from queueproxy.exchange import (
    FORWARDING_FIELDS,
    NOTED_FIELDS,
    STRIPPED_REQUEST_FIELDS,
    WAITING,
    forwarded_shim,
    note_field,
)
from queueproxy.h1 import valid_host
from queueproxy.h2limits import MAX_CONCURRENT_STREAMS
from queueproxy.h2upstream import (
    _CONNECTION_SPECIFIC,
    _NAME_BYTES,
    SidecarConnection,
    bad_value,
)
from queueproxy.http11 import HOP_BY_HOP
from queueproxy.timeouts import RequestTimer

if TYPE_CHECKING:
    from queueproxy.h2server import H2ServerConnection
    from queueproxy.h2upstream import H2Upstream

Headers = list[tuple[bytes, bytes]]

# Request fields the app must not get over HTTP/2 (RFC 9113 §8.2.2) besides Knative's own.
_NOT_FORWARDED = HOP_BY_HOP | STRIPPED_REQUEST_FIELDS - {b"content-length"}


def _no_log(*args: object, **kwargs: object) -> None:
    pass


# hpack logs every header field it encodes or decodes at debug level: some 50 calls per
# exchange, a few per cent of our CPU even when debug is off, and field values (cookies,
# tokens) when it is on. Its loggers' `debug` becomes a no-op.
for _name in ("hpack.hpack", "hpack.table"):
    logging.getLogger(_name).debug = _no_log  # type: ignore[method-assign]


class StrictServer(SidecarConnection):
    """h2's connection with malformed requests as stream errors.

    h2 raises a connection error for a request with bad header fields or a body that disagrees
    with its content-length; RFC 9113 §8.1.1 makes those stream errors (PROTOCOL_ERROR), which
    lets the connection's other requests carry on. HPACK failures stay connection errors: the
    header table can no longer be trusted.
    """

    @property
    def open_inbound_streams(self) -> int:
        # h2 treats a stream over SETTINGS_MAX_CONCURRENT_STREAMS as a connection error; RFC
        # 9113 §5.1.2 allows a stream error, which Go sends and `H2ServerConnection._request`
        # sends too (REFUSED_STREAM). h2's own cap stays, at twice the limit, for peers that
        # ignore the refusals. (The count also makes h2 forget closed streams: keep calling it.)
        count = super().open_inbound_streams
        return count if count >= 2 * MAX_CONCURRENT_STREAMS else 0

    def _receive_frame(self, frame: Frame) -> list[Any]:
        sid = frame.stream_id
        if type(frame) is HeadersFrame:
            known = sid in self.streams
            try:
                return super()._receive_frame(frame)
            except ProtocolError as error:
                if known or sid not in self.streams or type(error) not in _STREAM_ERRORS:
                    raise
                return self._stream_error(sid)
        return super()._receive_frame(frame)


_STREAM_ERRORS = (ProtocolError, InvalidBodyLengthError)


def malformed_request(fields: Headers) -> str:
    """Why a request header block is malformed (RFC 9113 §8.1.1, §8.2, §8.3.1), or "" if it is
    not; one pass instead of h2's chain of generators per field.

    Pseudo-header fields first, each once, only `:method`, `:scheme`, `:path`, `:authority`;
    `:method` always, `:scheme` and a `:path` that is origin-form (or `*`) unless CONNECT;
    `:authority` or `host`, a valid host, equal when both are present; lower-case token names; no
    connection-specific fields; `te` only as `trailers`; values without NUL, CR, LF or leading
    or trailing whitespace.
    """
    method = scheme = path = authority = host = None
    regular = False
    for name, value in fields:
        if name[:1] == b":":
            if regular:
                return f"pseudo-header {name!r} after a regular field"
            if name == b":method":
                if method is not None:
                    return "repeated :method"
                method = value
            elif name == b":path":
                if path is not None:
                    return "repeated :path"
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    return "repeated :scheme"
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    return "repeated :authority"
                authority = value
            else:
                return f"pseudo-header {name!r} not allowed in a request"
        else:
            regular = True
            if not name or name.translate(None, _NAME_BYTES):
                return f"invalid field name {name!r}"
            if name in _CONNECTION_SPECIFIC:
                return f"connection-specific field {name!r}"
            if name == b"te" and value != b"trailers":
                return "te other than trailers"
            if name == b"host":
                if host is not None:
                    return "repeated host"
                host = value
        if bad_value(value):
            return f"invalid value of {name!r}"
    if not method:
        return "no :method"
    if method == b"CONNECT":
        if scheme is not None or path is not None or not authority:
            return "CONNECT needs :authority and no :scheme or :path"
    elif not scheme or not path:
        return "no :scheme or :path"
    elif path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        return "invalid :path"
    if authority is None and host is None:
        return "no :authority or host"
    if not valid_host(authority if authority is not None else host or b""):
        # host [ ":" port ], no userinfo (RFC 9113 §8.3.1, RFC 9110 §7.2): the app gets it.
        return "invalid :authority or host"
    if authority is not None and host is not None and authority != host:
        return ":authority and host differ"
    return ""


def trailers_malformed(fields: Headers) -> str:
    """Request trailers: no pseudo-header fields, otherwise the field rules of a request."""
    for name, value in fields:
        if name[:1] == b":" or not name or name.translate(None, _NAME_BYTES):
            return f"invalid trailer field name {name!r}"
        if name in _CONNECTION_SPECIFIC or name == b"te" or bad_value(value):
            return f"invalid trailer field {name!r}"
    return ""


def server_config() -> H2Configuration:
    # RFC 9113 §8's malformed requests are caught by `malformed_request`, one pass per block
    # instead of h2's generator chain; our outbound headers are built from validated fields.
    return H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class Stream:
    """One request on an HTTP/2 connection: `exchange.Exchange`'s interface, HTTP/2's state."""

    __slots__ = (
        "conn",
        "sid",
        "method",
        "target",
        "version",
        "headers",
        "user_agent",
        "network_probe",
        "knative_fields",
        "proxied",
        "keep_alive",
        "body_chunked",
        "request_length",
        "state",
        "has_slot",
        "started_at",
        "dispatched_at",
        "status",
        "response_started",
        "response_bytes",
        "counted",
        "up_headers",
        "upstream",
        "upstream_id",
        "request_done",
        "request_sent",
        "request_trailers",
        "to_app",
        "unacked",
        "to_client",
        "response_done",
        "response_trailers",
        "timer",
        "informational_bytes",
    )

    def __init__(self, conn: H2ServerConnection, sid: int, method: bytes, target: bytes) -> None:
        self.conn = conn
        self.sid = sid
        self.method = method
        self.target = target
        self.version = b"2.0"
        self.headers: Headers = []
        self.user_agent = b""
        self.network_probe: bytes | None = None
        self.knative_fields: dict[bytes, bytes] | None = None  # as `exchange.Exchange`'s
        self.proxied = False
        self.keep_alive = True
        self.body_chunked = False
        self.request_length = -1
        self.state = WAITING
        self.has_slot = False
        self.started_at = 0.0
        self.dispatched_at = 0.0
        self.status = 0
        self.response_started = False
        self.response_bytes = 0
        self.counted = False
        self.up_headers: Headers = []
        self.upstream: H2Upstream | None = None
        self.upstream_id = 0
        self.request_done = False
        self.request_sent = False  # END_STREAM went to the app
        self.request_trailers: Headers | None = None
        self.to_app = bytearray()  # request body received, not yet sent to the app
        self.unacked = 0  # request body sent to the app, not yet acknowledged to the client
        self.to_client = bytearray()  # response body from the app, not yet sent to the client
        self.response_done = False
        self.response_trailers: Headers | None = None
        self.timer: RequestTimer | None = None
        self.informational_bytes = 0  # 1xx header fields from the app so far (h2upstream)

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header, by lower-case name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def classify(
    stream: Stream, fields: Headers, authority: bytes, client_ip: bytes, default_host: bytes
) -> None:
    """Knative's request rules (`pkg/http/header.go`, the Forwarded shim, Go's
    `httputil.ReverseProxy`) on HTTP/2 fields; builds what goes to the app."""
    original_host = b""
    first: dict[bytes, bytes] = {}  # FORWARDING_FIELDS by first value, for the shim
    prior_xff: list[bytes] = []  # the X-Forwarded-For values the app gets, before ours
    client_forwarded: list[tuple[bytes, bytes]] = []
    te_trailers = False
    host = b""
    regular: Headers = []
    out: Headers = []
    for name, value in fields:
        if name[:1] == b":":
            continue
        regular.append((name, value))
        if name in _NOT_FORWARDED:
            if name == b"k-original-host" and not original_host:
                original_host = value
            elif name == b"host" and not host:
                host = value
            elif name == b"te":
                te_trailers = b"trailers" in value.lower()
            continue
        if name in NOTED_FIELDS:
            note_field(stream, name, value)
        elif name in FORWARDING_FIELDS:
            if name not in first:
                first[name] = value
            if name == b"x-forwarded-for":
                prior_xff.append(value)
                continue
            if name == b"forwarded":
                client_forwarded.append((name, value))
        elif name == b"content-length":
            if value.isdigit():
                stream.request_length = int(value)
        out.append((name, value))
    stream.headers = regular
    if original_host and not valid_host(original_host):
        raise ValueError("Bad Request: invalid K-Original-Host header")
    authority = original_host or authority or host or default_host
    shim = forwarded_shim(first) if first else None
    if shim is not None:
        for pair in client_forwarded:  # an empty first value: the shim's replaces them
            out.remove(pair)
        out.append((b"forwarded", shim))
    prior_xff.append(client_ip)
    out.append((b"x-forwarded-for", b", ".join(prior_xff)))
    if te_trailers:
        out.append((b"te", b"trailers"))
    stream.up_headers = [
        (b":method", stream.method),
        (b":scheme", b"http"),
        (b":authority", authority),
        (b":path", stream.target),
        *out,
    ]


def forwardable(fields: Headers) -> Headers:
    """Trailers without connection-specific or pseudo fields (RFC 9113 §8.1)."""
    return [(n, v) for n, v in fields if n[:1] != b":" and n not in HOP_BY_HOP]
