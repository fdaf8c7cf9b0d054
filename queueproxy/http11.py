"""HTTP/1.x wire helpers shared by the data path and the small admin/metrics servers.

Everything here is precomputed or cheap: status lines are built once, the Date header once a
second (like uvicorn's `on_tick`), and simple responses are assembled from bytes.
"""

from __future__ import annotations

import time
from http import HTTPStatus

# Go's ReadHeaderTimeout on every Knative server: slowloris protection.
READ_HEADER_TIMEOUT = 60.0

# Read-side flow control: pause the peer when this much is buffered and not yet written on.
HIGH_WATER = 256 * 1024

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

STATUS_PHRASES: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}

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
    phrase = STATUS_PHRASES.get(status, b"Unknown")
    return b"HTTP/%s %d %s\r\n" % (version, status, phrase)


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
