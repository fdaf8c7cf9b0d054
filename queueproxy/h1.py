"""HTTP/1.1 message syntax and framing, sans-IO (RFC 9112, RFC 9110).

Every decision about where a message begins and ends lives here, for both directions, so that
the bytes the sidecar sends on are framed by the same rule that read them. Nothing in this module
touches a socket or a clock: the data path (`proxy.py`, `upstream.py`) and the small endpoint
server (`endpoints.py`) hand it bytes and act on what it returns, as h11 separates its readers
from its connection state.

Theory of operation:

- A head is found with `find_head_end`, which scans only bytes it has not scanned before (no
  quadratic re-scans of a slowly arriving head) and enforces `MAX_HEAD_BYTES` while the head is
  still incomplete, so an endless header line is refused as it grows, not when it ends.
  `check_partial_head` refuses what can already be seen to be broken (HTTP/0.9, bare LF/CR).
- `parse_request_head` validates the head with byte operations that run in C
  (`bytes.translate` leaves what is not allowed, `count` checks that every CR and LF is a CRLF)
  and one split into lines, and decides the request's framing (NO_BODY, LENGTH, CHUNKED). It
  raises `ProtocolError` carrying the status to answer with (as h11's `error_status_hint`):
  400, 405, 414, 431, 501 or 505.
- `parse_response_head` does the same for the app's answers; errors there mean 502.
- The body readers (`h1body`) cut a body out of a byte stream by the framing decided here.

Strictness (RFC 9112 allows leniency in places; Go and HAProxy take some of it; we do not, because
every leniency is a place where two parsers can disagree about a message boundary):

- line ends are CRLF only (§2.2); a bare CR or LF is a 400; obs-fold is a 400 (§5.2);
- no whitespace between a field name and its colon (§5.1), field names are tokens, values have no
  control characters (RFC 9110 §5.5);
- HTTP/1.1 needs exactly one Host (§3.2); HTTP/1.0 at most one;
- Content-Length is 1*DIGIT, once (RFC 9110 §8.6: we refuse even a repeated equal value);
- Transfer-Encoding is accepted only as exactly `chunked` (the only coding we can parse); a list
  whose last coding is not chunked is a 400 (§6.3), a coding we do not implement a 501 (§6.1);
  both Content-Length and Transfer-Encoding, or Transfer-Encoding in HTTP/1.0, is a 400 (§6.1);
- methods are tokens (RFC 9110 §9.1) and any token is forwarded; CONNECT is answered 405: a
  sidecar is not a forward proxy.
"""

from __future__ import annotations

import re
from typing import Final

# The largest request or response head we accept, counted as bytes arrive. Go allows 1 MiB; 64 KiB
# is what nginx and HAProxy accept by default and leaves room for 16 KiB of cookies.
MAX_HEAD_BYTES: Final = 64 * 1024
# A chunk-size line (size, extensions) longer than this is not a client we want to serve.
MAX_CHUNK_LINE: Final = 4096
# Trailer section bound: the same as a head.
MAX_TRAILER_BYTES: Final = MAX_HEAD_BYTES
# 2**63 - 1: what Go's strconv.ParseInt(.., 10, 64) admits for Content-Length.
MAX_CONTENT_LENGTH: Final = (1 << 63) - 1

NO_BODY, LENGTH, CHUNKED, UNTIL_CLOSE = range(4)
"""Body framing (RFC 9112 §6.3): none, Content-Length bytes, chunked, or until the peer closes."""

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
"""Methods a proxy may send again after a connection failure, as Go's transport decides
(`net/http` `Request.isReplayable`, RFC 9110 §9.2.2). PUT and DELETE are idempotent by definition
but Go does not replay them without an idempotency key, and neither do we."""

_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)(.*)")
# Host = uri-host [ ":" port ]; reg-name, IPv4 or an IP-literal in brackets (RFC 3986 §3.2.2).
_HOST = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*(?::[0-9]*)?"
    rb"|\[[0-9A-Fa-f:.vV\-]+\](?::[0-9]*)?"
)
_DIGITS = re.compile(rb"[0-9]+")
_ALL = bytes(range(256))
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# field-vchar, SP, HTAB and obs-text: everything but CTLs (RFC 9110 §5.5)
_FIELD_BYTES = bytes(b for b in _ALL if b >= 0x20 and b != 0x7F) + b"\t"
_URI_BYTES = bytes(b for b in _TCHAR if b not in b"#^`|") + b"/?:@;=,()[]"
_REG_NAME_BYTES = (
    _URI_BYTES.replace(b"/", b"")
    .replace(b"?", b"")
    .replace(b":", b"")
    .replace(b"@", b"")
    .replace(b"[", b"")
    .replace(b"]", b"")
)
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# Response fields that frame the message, manage the connection (RFC 9110 §7.6.1) or are
# added when missing (Date): the rest of a response head is forwarded untouched.
_FIELDS_OF_NOTE = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"date",
    }
)
_FRAMING_FIELDS = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade", b"te"}
)
_BARE_CR_OR_LF = re.compile(rb"\r[^\n]|(?<!\r)\n")


class ProtocolError(Exception):
    """A message that cannot be framed or is not valid HTTP/1.1.

    `status` is what to answer with (for requests: 400, 405, 414, 431, 501, 505; for responses
    from the app the data path answers 502 whatever it is), `reason` a short text for the body.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestHead:
    """A validated request head and its framing decision.

    `headers` keeps the fields in order as received (name as sent, value with OWS stripped).
    `target` is what to send upstream (origin-form; an absolute-form target is reduced to its
    path and query, and its authority becomes `host`, RFC 9112 §3.2.2). `length` is the body
    length when `framing` is LENGTH. `upgrade` is the `Upgrade` value when the request asks to
    switch protocols (HTTP/1.1, `Connection: upgrade`), else b"".
    """

    __slots__ = (
        "method",
        "target",
        "version",
        "headers",
        "host",
        "framing",
        "length",
        "keep_alive",
        "connection",
        "upgrade",
        "upstream",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = b"1.1"
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.host: bytes | None = None
        self.framing = NO_BODY
        self.length = 0
        self.keep_alive = True
        self.connection: frozenset[bytes] = frozenset()
        self.upgrade = b""
        # The data path's rendering of this head for the app, for one client address (the
        # head is shared through `HeadMemo`); an opaque tuple owned by `proxy.ClientConnection`.
        self.upstream: tuple | None = None


class ResponseHead:
    """A validated response head from the app: status, fields and framing (RFC 9112 §6.3).

    `headers` lists the fields (name as sent, value without OWS); `fields` is the same block as
    received (each line with its CRLF). When `plain` is true it holds no connection-specific
    field (RFC 9110 §7.6.1) and nothing the proxy must re-frame, so it may be forwarded as is.
    """

    __slots__ = (
        "status",
        "version",
        "headers",
        "fields",
        "plain",
        "has_date",
        "framing",
        "length",
        "keep_alive",
        "connection",
    )

    def __init__(self) -> None:
        self.status = 0
        self.version = b"1.1"
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.fields = b""
        self.plain = True
        self.has_date = False
        self.framing = NO_BODY
        self.length = 0
        self.keep_alive = True
        self.connection: frozenset[bytes] = frozenset()


# -- Finding a head ----------------------------------------------------------------------------


def find_head_end(buffer: bytes | bytearray, start: int, scanned: int) -> int:
    """Where the head beginning at `start` ends (the index after its blank line), or -1.

    `scanned` is how far an earlier call got (absolute index); the search resumes three bytes
    before it so a CRLFCRLF split across reads is found and nothing is scanned twice.

    Raises ProtocolError(431) when the incomplete head is already longer than MAX_HEAD_BYTES.
    """
    end = buffer.find(b"\r\n\r\n", max(start, scanned - 3))
    if end >= 0:
        if end + 4 - start > MAX_HEAD_BYTES:
            _too_large(buffer, start)
        return end + 4
    if len(buffer) - start > MAX_HEAD_BYTES:
        _too_large(buffer, start)
    return -1


def _too_large(buffer: bytes | bytearray, start: int) -> None:
    # RFC 9112 §3: a request line longer than we accept is a 414; a long head otherwise a 431.
    if buffer.find(b"\r\n", start, start + MAX_HEAD_BYTES) < 0:
        raise ProtocolError(414, "URI Too Long")
    raise ProtocolError(431, "Request Header Fields Too Large")


def check_partial_head(
    buffer: bytes | bytearray, start: int, scanned: int, line_checked: bool
) -> bool:
    """Refuse an incomplete head that is already invalid, instead of waiting for its end.

    A bare CR or LF can never become a valid head, and a request line followed by CRLF must be
    complete: an HTTP/0.9 `GET /` would otherwise wait a minute for a blank line that never comes.
    Only bytes from `scanned` on are looked at. Returns whether the request line has been checked
    (pass True for response heads, whose status line is checked with the whole head).
    """
    if _BARE_CR_OR_LF.search(buffer, max(start, scanned - 1)):
        raise ProtocolError(400, "Bad Request: bare CR or LF")
    if not line_checked:
        # No CRLF lay before `scanned`, or the line would have been checked then.
        line_end = buffer.find(b"\r\n", max(start, scanned - 1))
        if line_end < 0:
            # The method so far must be a token: binary data (a TLS handshake, websocket
            # frames after a declined upgrade) is refused at once, not after a minute.
            space = buffer.find(b" ", start, start + 64)
            method = buffer[start : space if space >= 0 else start + 64]
            if bytes(method).translate(None, _TCHAR) or space == start:
                raise ProtocolError(400, "Bad Request: malformed request line")
            return False
        _parse_request_line(bytes(buffer[start:line_end]))
    return True


class HeadFinder:
    """Finds where a head ends as its bytes arrive, one connection's state for
    `find_head_end` and `check_partial_head`: how much of the incomplete head was searched
    (relative to its first byte, so the caller may move it within its buffer) and whether its
    request line was checked. `request=False` reads response heads (their status line is checked
    with the whole head).
    """

    __slots__ = ("request", "scanned", "line_checked")

    def __init__(self, request: bool = True) -> None:
        self.request = request
        self.scanned = 0
        self.line_checked = not request

    def find(self, buffer: bytes | bytearray, start: int) -> int:
        """The index after the head that begins at `start`, or -1 while it is incomplete.

        Raises ProtocolError as `find_head_end` and `check_partial_head` do.
        """
        scanned = start + self.scanned
        # find_head_end, inlined for the usual case: the whole head in one read.
        end = buffer.find(b"\r\n\r\n", start if scanned - 3 < start else scanned - 3)
        if 0 <= end and end + 4 - start <= MAX_HEAD_BYTES:
            self.scanned = 0
            self.line_checked = not self.request
            return end + 4
        end = find_head_end(buffer, start, scanned)
        if end >= 0:
            self.scanned = 0
            self.line_checked = not self.request
            return end
        self.line_checked = check_partial_head(buffer, start, scanned, self.line_checked)
        self.scanned = len(buffer) - start
        return -1


def skip_empty_lines(buffer: bytes | bytearray, start: int) -> int:
    """RFC 9112 §2.2: a server SHOULD ignore empty lines received before a request-line."""
    while buffer.startswith(b"\r\n", start):
        start += 2
    return start


# -- Requests ----------------------------------------------------------------------------------


def _parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    method, _, rest = line.partition(b" ")
    target, _, version = rest.partition(b" ")
    if not _is_token(method) or not target or not version:
        if line.count(b" ") == 1:
            raise ProtocolError(400, "Bad Request: malformed request line (no HTTP version)")
        raise ProtocolError(400, "Bad Request: malformed request line")
    if version == b"HTTP/1.1" or version == b"HTTP/1.0":
        return method, target, version[5:]
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ProtocolError(400, "Bad Request: malformed request line")
    if match.group(1) != b"1":
        raise ProtocolError(505, "HTTP Version Not Supported")
    # RFC 9110 §6.2: a higher minor version is answered as the highest we implement.
    return method, target, b"1.0" if match.group(2) == b"0" else b"1.1"


def field_block_ok(block: bytes) -> bool:
    """No control character but HTAB, and every CR and LF part of a CRLF (RFC 9112 §2.2, §5.2)."""
    rest = block.translate(None, _FIELD_BYTES)
    return len(rest) == 2 * block.count(b"\r\n")


def _is_token(value: bytes) -> bool:
    """RFC 9110 §5.6.2: one or more tchar."""
    return bool(value) and not value.translate(None, _TCHAR)


def split_fields(block: bytes, status: int) -> list[tuple[bytes, bytes, bytes]]:
    """The field lines of `block` (each ending with CRLF; control characters already refused by
    `field_block_ok`) as (name, value without OWS, lower-case name).

    field-line = field-name ":" OWS field-value OWS (RFC 9112 §5): the name must be a token,
    with nothing between it and the colon; obs-fold starts with whitespace and so is no token.
    Raises ProtocolError(status) for a line that is not a field line.
    """
    fields = []
    for line in block[:-2].split(b"\r\n") if block else ():
        name, colon, value = line.partition(b":")
        if not colon or not _is_token(name):
            raise ProtocolError(status, "Bad Request: malformed header field")
        fields.append((name, value.strip(b" \t"), name.lower()))
    return fields


def parse_request_head(head: bytes) -> RequestHead:
    """Validate a request head (request-line through the blank line) and decide its framing.

    Raises ProtocolError with the status to answer: 400 malformed, 405 CONNECT, 501 a transfer
    coding we do not implement, 505 a major version other than 1.
    """
    line_end = head.find(b"\r\n")
    method, target, version = _parse_request_line(head[:line_end])
    if not field_block_ok(head):
        raise ProtocolError(400, "Bad Request: control character or bare CR/LF in the head")
    request = RequestHead()
    request.method = method
    request.version = version
    if method == b"CONNECT":
        raise ProtocolError(405, "Method Not Allowed: CONNECT")
    request.target, target_host = _origin_form(method, target)

    headers: list[tuple[bytes, bytes]] = []
    host: bytes | None = None
    hosts = 0
    content_length: bytes | None = None
    lengths = 0
    transfer_encoding: list[bytes] | None = None
    connection: list[bytes] | None = None
    upgrade = b""
    for name, value, lname in split_fields(head[line_end + 2 : -2], 400):
        headers.append((name, value))
        if b"_" in lname and lname.replace(b"_", b"-") in _FRAMING_FIELDS:
            # CGI-style servers (WSGI, PHP) read `Content_Length` as `Content-Length`: a field
            # that we would forward as an ordinary one but the app would frame by.
            raise ProtocolError(400, "Bad Request: look-alike of a framing header field")
        if lname == b"host":
            host = value
            hosts += 1
        elif lname == b"content-length":
            content_length = value
            lengths += 1
        elif lname == b"transfer-encoding":
            if transfer_encoding is None:
                transfer_encoding = []
            transfer_encoding.append(value)
        elif lname == b"connection":
            if connection is None:
                connection = []
            connection.append(value)
        elif lname == b"upgrade":
            # Repeated lines of a list field are one list (RFC 9110 §5.3); Go reads the first.
            upgrade = upgrade + b", " + value if upgrade else value

    request.headers = tuple(headers)  # parse results are shared (HeadMemo): immutable
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        raise ProtocolError(400, "Bad Request: missing or duplicate Host header")
    if host is not None and not valid_host(host):
        raise ProtocolError(400, "Bad Request: invalid Host header")
    request.host = target_host if target_host is not None else host

    if transfer_encoding is not None:
        if version == b"1.0":
            raise ProtocolError(400, "Bad Request: Transfer-Encoding in HTTP/1.0")
        if content_length is not None:
            raise ProtocolError(400, "Bad Request: both Content-Length and Transfer-Encoding")
        _check_chunked_only(transfer_encoding)
        request.framing = CHUNKED
    elif content_length is not None:
        request.length = _content_length(content_length, lengths, 400)
        request.framing = LENGTH if request.length else NO_BODY

    tokens = _connection_tokens(connection)
    request.connection = tokens
    if version == b"1.1":
        request.keep_alive = b"close" not in tokens
        # RFC 9110 §7.8: Upgrade counts only when Connection names it; HTTP/1.0 ignores it.
        if upgrade and b"upgrade" in tokens:
            request.upgrade = upgrade
    else:
        request.keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    return request


def valid_host(host: bytes) -> bool:
    """uri-host [ ":" port ] (RFC 9110 §7.2, RFC 3986 §3.2.2)."""
    name, colon, port = host.partition(b":")
    if not name.translate(None, _REG_NAME_BYTES) and (not colon or not port or port.isdigit()):
        return b"%" not in name or _BAD_ESCAPE.search(name) is None
    return _HOST.fullmatch(host) is not None


def _valid_target(target: bytes) -> bool:
    """RFC 3986 characters only; `%` must start a %XX escape."""
    if target.translate(None, _URI_BYTES):
        return False
    return b"%" not in target or _BAD_ESCAPE.search(target) is None


def _origin_form(method: bytes, target: bytes) -> tuple[bytes, bytes | None]:
    """The target to send upstream and, for absolute-form, the authority that replaces Host."""
    if target[0] == 47:  # "/"
        if not _valid_target(target):
            raise ProtocolError(400, "Bad Request: invalid request target")
        return target, None
    if target == b"*":
        if method != b"OPTIONS":
            raise ProtocolError(400, "Bad Request: asterisk-form is for OPTIONS only")
        return target, None
    match = _ABSOLUTE.fullmatch(target)
    if (
        match is None
        or match.group(1).lower() not in (b"http", b"https")
        or not _valid_target(target)
        or b"@" in match.group(2)
        or not valid_host(match.group(2))
    ):
        raise ProtocolError(400, "Bad Request: invalid request target")
    path = match.group(3) or b"/"
    if path[0] != 47:
        path = b"/" + path  # `http://h?q` has an empty path: RFC 9112 §3.2.1
    return path, match.group(2)


def _check_chunked_only(values: list[bytes]) -> None:
    codings = [c.strip(b" \t").lower() for value in values for c in value.split(b",")]
    for coding in codings:
        if not _is_token(coding):
            raise ProtocolError(400, "Bad Request: malformed Transfer-Encoding")
    if codings == [b"chunked"]:
        return
    if codings.count(b"chunked") > 1 or codings[-1] != b"chunked":
        # RFC 9112 §6.3: a request whose final coding is not chunked cannot be framed.
        raise ProtocolError(400, "Bad Request: Transfer-Encoding must end with chunked")
    # The coding is not named: this text is also our log line, which carries no header.
    raise ProtocolError(501, "Not Implemented: a transfer coding other than chunked")


def _content_length(value: bytes, count: int, status: int) -> int:
    if count != 1 or _DIGITS.fullmatch(value) is None or len(value) > 19:
        raise ProtocolError(status, "Bad Request: invalid Content-Length")
    length = int(value)
    if length > MAX_CONTENT_LENGTH:
        raise ProtocolError(status, "Bad Request: invalid Content-Length")
    return length


def _connection_tokens(values: list[bytes] | None) -> frozenset[bytes]:
    if not values:
        return frozenset()
    return frozenset(
        token.strip(b" \t").lower()
        for value in values
        for token in value.split(b",")
        if token.strip(b" \t")
    )


# -- Responses ---------------------------------------------------------------------------------


def parse_response_head(
    head: bytes, request_method: bytes, upgrade_requested: bool
) -> ResponseHead:
    """Validate the app's response head and decide how its body is delimited (RFC 9112 §6.3).

    Raises ProtocolError (the data path answers 502 for every one) for a malformed head, a 101 to
    a request that asked for no upgrade, Content-Length and Transfer-Encoding together, an invalid
    or repeated Content-Length, or a transfer coding other than chunked.
    """
    line_end = head.find(b"\r\n")
    # status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ] (RFC 9112 §4); the SP before an
    # empty reason is commonly left out and harmless.
    if (
        not head.startswith(b"HTTP/1.")
        or not head[7:8].isdigit()
        or head[8:9] != b" "
        or not head[9:12].isdigit()
        or (line_end > 12 and head[12:13] != b" ")
    ):
        raise ProtocolError(502, "malformed HTTP status line")
    if not field_block_ok(head):
        raise ProtocolError(502, "malformed HTTP response head: control character or bare CR/LF")
    response = ResponseHead()
    response.version = b"1.0" if head[7] == 48 else b"1.1"
    status = response.status = int(head[9:12])
    if status < 100:
        raise ProtocolError(502, "malformed HTTP status code")
    fields = response.fields = head[line_end + 2 : -2]
    content_length: bytes | None = None
    lengths = 0
    transfer_encoding: list[bytes] | None = None
    connection: list[bytes] | None = None
    plain = True
    headers: list[tuple[bytes, bytes]] = []
    for name, value, lname in split_fields(fields, 502):
        headers.append((name, value))
        if lname not in _FIELDS_OF_NOTE:
            continue
        if lname == b"content-length":
            content_length = value
            lengths += 1
        elif lname == b"date":
            response.has_date = True
        else:
            # Connection-specific (RFC 9110 §7.6.1) or framing: the head is rebuilt.
            plain = False
            if lname == b"transfer-encoding":
                if transfer_encoding is None:
                    transfer_encoding = []
                transfer_encoding.append(value)
            elif lname == b"connection":
                if connection is None:
                    connection = []
                connection.append(value)
    response.headers = tuple(headers)  # parse results are shared (HeadMemo): immutable
    tokens = _connection_tokens(connection)
    response.connection = tokens
    if response.version == b"1.1":
        response.keep_alive = b"close" not in tokens
    else:
        response.keep_alive = b"keep-alive" in tokens and b"close" not in tokens

    if status == 101 and not upgrade_requested:
        raise ProtocolError(502, "101 Switching Protocols to a request without Upgrade")
    if transfer_encoding is not None and content_length is not None:
        raise ProtocolError(502, "response with both Content-Length and Transfer-Encoding")
    if content_length is not None:
        try:
            response.length = _content_length(content_length, lengths, 502)
        except ProtocolError:
            raise ProtocolError(502, "invalid Content-Length in response") from None
        if status == 204 or status < 200:
            plain = False  # a Content-Length that must not be forwarded (RFC 9110 §8.6)
    response.plain = plain
    if status < 200 or status == 204 or status == 304 or request_method == b"HEAD":
        response.framing = NO_BODY  # whatever the fields say (RFC 9112 §6.3, items 1)
        return response
    if transfer_encoding is not None:
        try:
            _check_chunked_only(transfer_encoding)
        except ProtocolError as error:
            raise ProtocolError(502, "unsupported Transfer-Encoding in response") from error
        response.framing = CHUNKED
    elif content_length is not None:
        response.framing = LENGTH if response.length else NO_BODY
    else:
        response.framing = UNTIL_CLOSE
        response.keep_alive = False
    return response


# -- Memo ------------------------------------------------------------------------------------


class HeadMemo:
    """Parsed heads by their exact bytes: clients and apps repeat the same heads (a load
    balancer's keep-alive GETs, an app's responses within one second of `Date`), and parsing is
    the largest part of a proxied request's CPU. A parse is a pure function of the bytes, so a
    hit returns what parsing would; the results are never mutated by their users. Only valid
    heads of at most `max_head` bytes are kept, at most `size` of them (the memo is emptied when
    full), so it holds at most size × max_head bytes of keys.
    """

    __slots__ = ("requests", "responses", "size", "max_head")

    def __init__(self, size: int = 256, max_head: int = 1024) -> None:
        self.requests: dict[bytes, RequestHead] = {}
        self.responses: dict[tuple[bytes, bytes, bool], ResponseHead] = {}
        self.size = size
        self.max_head = max_head

    def request(self, head: bytes) -> RequestHead:
        """`parse_request_head(head)`, remembered."""
        parsed = self.requests.get(head)
        if parsed is None:
            parsed = parse_request_head(head)
            if len(head) <= self.max_head:
                if len(self.requests) >= self.size:
                    self.requests.clear()
                self.requests[head] = parsed
        return parsed

    def response(self, head: bytes, request_method: bytes, upgrade: bool) -> ResponseHead:
        """`parse_response_head(head, request_method, upgrade)`, remembered."""
        key = (head, request_method, upgrade)
        parsed = self.responses.get(key)
        if parsed is None:
            parsed = parse_response_head(head, request_method, upgrade)
            if len(head) <= self.max_head:
                if len(self.responses) >= self.size:
                    self.responses.clear()
                self.responses[key] = parsed
        return parsed


# Fields that describe a message's own framing or routing: a `Connection` header naming them
# never removes them (RFC 9110 §7.6.1 lets a sender list only hop-by-hop fields; listing these is
# an attack, not a request), and they are never taken from trailers (RFC 9110 §6.5.1).
PROTECTED_FIELDS: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"trailer", b"te", b"upgrade"}
)
"""Lower-case names that `Connection` cannot remove and trailers cannot carry."""
