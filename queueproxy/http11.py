"""HTTP/1.x wire helpers shared by the data path and the small admin/metrics servers.

Everything here is precomputed or cheap: status lines are built once, the Date header once a
second (like uvicorn's `on_tick`), and simple responses are assembled from bytes.
"""

from __future__ import annotations

import time

# Go's ReadHeaderTimeout on every Knative server: slowloris protection.
READ_HEADER_TIMEOUT = 60.0

# Read-side flow control: pause the peer when this much is buffered and not yet written on.
HIGH_WATER = 256 * 1024

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# The phrases of Python's `http.HTTPStatus`, written out: building that enum costs ~1 ms of every
# start. tests/test_http11.py keeps the two equal.
STATUS_PHRASES: dict[int, bytes] = {
    100: b"Continue",
    101: b"Switching Protocols",
    102: b"Processing",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    207: b"Multi-Status",
    208: b"Already Reported",
    226: b"IM Used",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    305: b"Use Proxy",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Requested Range Not Satisfiable",
    417: b"Expectation Failed",
    418: b"I'm a Teapot",
    421: b"Misdirected Request",
    422: b"Unprocessable Entity",
    423: b"Locked",
    424: b"Failed Dependency",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    506: b"Variant Also Negotiates",
    507: b"Insufficient Storage",
    508: b"Loop Detected",
    510: b"Not Extended",
    511: b"Network Authentication Required",
}

TEXT_PLAIN = b"text/plain; charset=utf-8"

# Hop-by-hop headers (RFC 9110 §7.6.1 and Go's httputil.ReverseProxy list), lower-case.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def status_line(version: bytes, status: int) -> bytes:
    if version == b"1.1":
        line = _STATUS_LINES_11.get(status)
        if line is not None:
            return line
    phrase = STATUS_PHRASES.get(status, b"Unknown")
    return b"HTTP/%s %d %s\r\n" % (version, status, phrase)


# Built once: every response through the data path starts with one.
_STATUS_LINES_11 = {s: b"HTTP/1.1 %d %s\r\n" % (s, p) for s, p in STATUS_PHRASES.items()}


def imf_fixdate(seconds: float) -> str:
    """`Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7), what `email.utils.formatdate(…,
    usegmt=True)` gives without importing the email package (~5 ms of every start)."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


class DateHeader:
    """The `Date: …` header line, rebuilt at most once a second."""

    __slots__ = ("_second", "line")

    def __init__(self) -> None:
        self._second = -1
        self.line = b""
        self.refresh()

    def refresh(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self.line = b"Date: " + imf_fixdate(now).encode() + b"\r\n"
        return self.line


DATE = DateHeader()


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    version: bytes = b"1.1",
    keep_alive: bool = True,
    content_type: bytes = TEXT_PLAIN,
    extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    head_only: bool = False,
) -> bytes:
    """A complete response with a known body, as Go's http.Error would write it."""
    parts = [status_line(version, status), DATE.line]
    if body or content_type != TEXT_PLAIN:
        parts.append(b"Content-Type: " + content_type + b"\r\n")
    if content_type == TEXT_PLAIN and body:
        parts.append(b"X-Content-Type-Options: nosniff\r\n")
    for name, value in extra_headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    elif version == b"1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
