"""HTTP/1.1 message bodies, sans-IO (RFC 9112 §6, §7): the readers that cut a body out of a byte
stream by the framing `h1` decided, and the trailer rules.

`ContentLengthReader`, `ChunkedReader` and `UntilCloseReader` share one interface:
`read(data, pos)` returns the payload bytes found in `data` from `pos` (never a view of the
caller's buffer, which it may reuse) and the position after them; `done` says the body has ended;
`trailers` holds a chunked body's trailer fields once done. The chunked reader validates every
size line, extension, CRLF and trailer field, and bounds partial lines, so data may arrive split
anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from queueproxy.h1 import (
    CHUNKED,
    LENGTH,
    MAX_CHUNK_LINE,
    MAX_TRAILER_BYTES,
    PROTECTED_FIELDS,
    UNTIL_CLOSE,
    ProtocolError,
    field_block_ok,
    split_fields,
)

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), RFC 9112 §7.1.1.
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*[!#$%&\'*+\-.^_`|~0-9A-Za-z]+"
    rb'(?:[ \t]*=[ \t]*(?:[!#$%&\'*+\-.^_`|~0-9A-Za-z]+|"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]'
    rb'|\\[\t\x20-\x7e\x80-\xff])*"))?)*'
)
# Byte sets for checks done by bytes.translate (C speed, no per-character Python work): what
# remains after deleting the allowed bytes must be empty.


class ContentLengthReader:
    """A body of exactly `length` bytes."""

    __slots__ = ("remaining", "done", "trailers")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.done = length == 0
        self.trailers: list[tuple[bytes, bytes]] = []

    def read(self, data: bytes, pos: int) -> tuple[list[bytes], int]:
        """Payload found in `data` from `pos`, and the position after it."""
        available = len(data) - pos
        if available <= 0:
            return [], pos
        take = self.remaining if available > self.remaining else available
        self.remaining -= take
        if self.remaining == 0:
            self.done = True
        if pos == 0 and take == len(data) and type(data) is bytes:
            return [data], take  # no copy; a bytearray is copied, its owner reuses it
        return [bytes(data[pos : pos + take])], pos + take


class UntilCloseReader:
    """A response body delimited by the connection's close (RFC 9112 §6.3 item 8)."""

    __slots__ = ("done", "trailers")

    def __init__(self) -> None:
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []

    def read(self, data: bytes, pos: int) -> tuple[list[bytes], int]:
        if pos >= len(data):
            return [], pos
        if pos == 0 and type(data) is bytes:
            return [data], len(data)
        return [bytes(data[pos:])], len(data)


_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedReader:
    """The chunked transfer coding (RFC 9112 §7.1), decoded.

    Payload comes out without chunk framing and extensions; the trailer fields, if any, are in
    `trailers` once `done`. Raises ProtocolError(400) on any deviation: a size that is not 1–16
    hex digits, a malformed extension, chunk data not followed by CRLF, a malformed trailer
    field; 431 past MAX_CHUNK_LINE or MAX_TRAILER_BYTES. Partial lines are kept between calls
    (bounded by those limits), so data may arrive split anywhere.
    """

    __slots__ = ("state", "remaining", "line", "done", "trailers", "trailer_bytes")

    def __init__(self) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.line = b""
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.trailer_bytes = 0

    def read(self, data: bytes, pos: int) -> tuple[list[bytes], int]:
        out: list[bytes] = []
        end = len(data)
        while pos < end and not self.done:
            state = self.state
            if state == _DATA:
                take = min(self.remaining, end - pos)
                out.append(bytes(data[pos : pos + take]))
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = _DATA_END
            elif state == _DATA_END:
                # Exactly CRLF after the data; collect up to two bytes across reads.
                need = 2 - len(self.line)
                self.line += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self.line) == 2:
                    if self.line != b"\r\n":
                        raise ProtocolError(400, "Bad Request: chunk data not followed by CRLF")
                    self.line = b""
                    self.state = _SIZE
            else:
                line, pos = self._line(data, pos)
                if line is None:
                    break
                if state == _SIZE:
                    self._size_line(line)
                else:
                    self._trailer_line(line)
        return out, pos

    def _line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """The next CRLF-terminated line (without CRLF), or None and all of `data` consumed."""
        limit = MAX_CHUNK_LINE if self.state == _SIZE else MAX_TRAILER_BYTES
        nl = data.find(b"\n", pos)
        if nl < 0:
            self.line += data[pos:]
            if len(self.line) > limit:
                raise ProtocolError(431, "Request Header Fields Too Large: chunk line")
            return None, len(data)
        line = self.line + data[pos:nl]
        self.line = b""
        if len(line) > limit:
            raise ProtocolError(431, "Request Header Fields Too Large: chunk line")
        if not line.endswith(b"\r") or b"\r" in line[:-1]:
            raise ProtocolError(400, "Bad Request: bare LF or CR in chunked framing")
        return line[:-1], nl + 1

    def _size_line(self, line: bytes) -> None:
        semi = line.find(b";")
        size, ext = (line, b"") if semi < 0 else (line[:semi], line[semi:])
        size = size.rstrip(b" \t") if ext else size
        if _HEX.fullmatch(size) is None or (ext and _CHUNK_EXT.fullmatch(ext) is None):
            raise ProtocolError(400, "Bad Request: invalid chunk size line")
        self.remaining = int(size, 16)
        self.state = _DATA if self.remaining else _TRAILER

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.state = _DONE
            self.done = True
            return
        self.trailer_bytes += len(line) + 2
        if self.trailer_bytes > MAX_TRAILER_BYTES:
            raise ProtocolError(431, "Request Header Fields Too Large: trailers")
        if not field_block_ok(line):
            raise ProtocolError(400, "Bad Request: malformed trailer field")
        ((name, value, _),) = split_fields(line + b"\r\n", 400)
        self.trailers.append((name, value))


BodyReader = ContentLengthReader | ChunkedReader | UntilCloseReader


def body_reader(framing: int, length: int) -> BodyReader | None:
    """The reader for a framing decision, or None when the message has no body."""
    if framing == LENGTH:
        return ContentLengthReader(length)
    if framing == CHUNKED:
        return ChunkedReader()
    if framing == UNTIL_CLOSE:
        return UntilCloseReader()
    return None


FORBIDDEN_TRAILERS: Final = PROTECTED_FIELDS | frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"authorization",
        b"set-cookie",
        b"cookie",
        b"cache-control",
        b"expect",
        b"max-forwards",
        b"pragma",
        b"range",
    }
)


def render_trailers(trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The trailer fields to send on, as field lines: those that may appear in a trailer
    (RFC 9110 §6.5.1; `FORBIDDEN_TRAILERS`), an underscore look-alike counted as its dashed name."""
    return b"".join(
        name + b": " + value + b"\r\n"
        for name, value in trailers
        if name.lower().replace(b"_", b"-") not in FORBIDDEN_TRAILERS
    )
