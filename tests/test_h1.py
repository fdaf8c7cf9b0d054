"""The framing rules of `queueproxy.h1`, without a network: one table per decision."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queueproxy import h1
from queueproxy.h1 import (
    CHUNKED,
    LENGTH,
    MAX_HEAD_BYTES,
    NO_BODY,
    UNTIL_CLOSE,
    ProtocolError,
    check_partial_head,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from queueproxy.h1body import ChunkedReader, ContentLengthReader


def request(*lines: bytes, version: bytes = b"HTTP/1.1", line: bytes | None = None) -> bytes:
    start = line if line is not None else b"GET / " + version
    return b"\r\n".join((start, *lines)) + b"\r\n\r\n"


# (name, head, framing, length)
VALID_REQUESTS = [
    ("plain GET", request(b"Host: x"), NO_BODY, 0),
    ("HTTP/1.0 without Host", request(version=b"HTTP/1.0"), NO_BODY, 0),
    ("Content-Length", request(b"Host: x", b"Content-Length: 5"), LENGTH, 5),
    ("Content-Length 0", request(b"Host: x", b"Content-Length: 0"), NO_BODY, 0),
    ("chunked", request(b"Host: x", b"Transfer-Encoding: chunked"), CHUNKED, 0),
    ("chunked any case", request(b"Host: x", b"transfer-encoding: ChUnKeD"), CHUNKED, 0),
    ("OWS around values", request(b"Host:   x  ", b"Content-Length:\t7\t"), LENGTH, 7),
    ("empty Host", request(b"Host:"), NO_BODY, 0),
    ("IPv6 Host", request(b"Host: [::1]:8080"), NO_BODY, 0),
    ("extension method", request(b"Host: x", line=b"MUX / HTTP/1.1"), NO_BODY, 0),
    ("OPTIONS *", request(b"Host: x", line=b"OPTIONS * HTTP/1.1"), NO_BODY, 0),
    ("absolute-form", request(b"Host: y", line=b"GET http://x:1/p?q HTTP/1.1"), NO_BODY, 0),
    ("higher minor version", request(b"Host: x", version=b"HTTP/1.9"), NO_BODY, 0),
    ("obs-text in a value", request(b"Host: x", b"X: caf\xc3\xa9"), NO_BODY, 0),
    ("percent-encoded target", request(b"Host: x", line=b"GET /a%20b?c=%2F HTTP/1.1"), NO_BODY, 0),
    ("largest Content-Length", request(b"Host: x", b"Content-Length: 9223372036854775807"), LENGTH,
     (1 << 63) - 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("head", "framing", "length"),
    [case[1:] for case in VALID_REQUESTS],
    ids=[case[0] for case in VALID_REQUESTS],
)
def test_valid_requests_are_framed(head: bytes, framing: int, length: int) -> None:
    parsed = parse_request_head(head)
    assert (parsed.framing, parsed.length) == (framing, length)


# (name, head, status)
INVALID_REQUESTS = [
    ("HTTP/1.1 without Host", request(), 400),
    ("two Host lines", request(b"Host: a", b"Host: a"), 400),
    ("Host with a space", request(b"Host: a b"), 400),
    ("Host with a slash", request(b"Host: a/b"), 400),
    ("HTTP/1.0 with two Hosts", request(b"Host: a", b"Host: b", version=b"HTTP/1.0"), 400),
    ("HTTP/0.9", b"GET /\r\n\r\n", 400),
    ("no version", request(b"Host: x", line=b"GET / "), 400),
    ("lower-case version", request(b"Host: x", version=b"http/1.1"), 400),
    ("version with two digits", request(b"Host: x", version=b"HTTP/01.1"), 400),
    ("version with trailing space", request(b"Host: x", version=b"HTTP/1.1 "), 400),
    ("HTTP/2.0 in an HTTP/1 line", request(b"Host: x", version=b"HTTP/2.0"), 505),
    ("HTTP/0.9 spelled out", request(b"Host: x", version=b"HTTP/0.9"), 505),
    ("two spaces", request(b"Host: x", line=b"GET  / HTTP/1.1"), 400),
    ("tab separator", request(b"Host: x", line=b"GET\t/ HTTP/1.1"), 400),
    ("space before colon", request(b"Host : x"), 400),
    ("tab before colon", request(b"Host: x", b"Transfer-Encoding\t: chunked"), 400),
    ("no colon", request(b"Host: x", b"Garbage"), 400),
    ("empty name", request(b"Host: x", b": v"), 400),
    ("obs-fold", request(b"Host: x", b"X: a", b" folded"), 400),
    ("obs-fold with tab", request(b"Host: x", b"X: a", b"\tfolded"), 400),
    ("NUL in value", request(b"Host: x", b"X: a\x00b"), 400),
    ("CTL in value", request(b"Host: x", b"X: a\x01b"), 400),
    ("DEL in value", request(b"Host: x", b"X: a\x7fb"), 400),
    ("bare CR in value", request(b"Host: x", b"X: a\rb"), 400),
    ("bare LF in value", request(b"Host: x", b"X: a\nb"), 400),
    ("non-token name", request(b"Host: x", b"X[]: y"), 400),
    ("underscore is a token but slash is not", request(b"Host: x", b"X/Y: y"), 400),
    ("non-token method", request(b"Host: x", line=b"G(T / HTTP/1.1"), 400),
    ("CONNECT", request(b"Host: x:443", line=b"CONNECT x:443 HTTP/1.1"), 405),
    ("space in target", request(b"Host: x", line=b"GET /a b HTTP/1.1"), 400),
    ("non-ASCII target", request(b"Host: x", line=b"GET /\xc3\xa9 HTTP/1.1"), 400),
    ("bad escape in target", request(b"Host: x", line=b"GET /%zz HTTP/1.1"), 400),
    ("fragment in target", request(b"Host: x", line=b"GET /a#b HTTP/1.1"), 400),
    ("relative target", request(b"Host: x", line=b"GET a HTTP/1.1"), 400),
    ("asterisk with GET", request(b"Host: x", line=b"GET * HTTP/1.1"), 400),
    ("absolute-form with userinfo", request(b"Host: x", line=b"GET http://u@x/ HTTP/1.1"), 400),
    ("absolute-form of another scheme", request(b"Host: x", line=b"GET ftp://x/ HTTP/1.1"), 400),
    ("CL with plus", request(b"Host: x", b"Content-Length: +5"), 400),
    ("CL negative", request(b"Host: x", b"Content-Length: -1"), 400),
    ("CL hex", request(b"Host: x", b"Content-Length: 0x5"), 400),
    ("CL list", request(b"Host: x", b"Content-Length: 5, 5"), 400),
    ("CL two lines", request(b"Host: x", b"Content-Length: 5", b"Content-Length: 5"), 400),
    ("CL empty", request(b"Host: x", b"Content-Length:"), 400),
    ("CL with inner space", request(b"Host: x", b"Content-Length: 5 5"), 400),
    ("CL over int64", request(b"Host: x", b"Content-Length: 9223372036854775808"), 400),
    ("CL twenty digits", request(b"Host: x", b"Content-Length: 00000000000000000005"), 400),
    ("CL and TE", request(b"Host: x", b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
    ("TE in HTTP/1.0", request(b"Transfer-Encoding: chunked", version=b"HTTP/1.0"), 400),
    ("TE chunked twice", request(b"Host: x", b"Transfer-Encoding: chunked, chunked"), 400),
    ("TE two lines", request(b"Host: x", b"Transfer-Encoding: chunked",
                             b"Transfer-Encoding: chunked"), 400),
    ("TE identity", request(b"Host: x", b"Transfer-Encoding: identity"), 400),
    ("TE xchunked", request(b"Host: x", b"Transfer-Encoding: xchunked"), 400),
    ("TE chunked with parameter", request(b"Host: x", b"Transfer-Encoding: chunked;q=1"), 400),
    ("TE chunked then gzip", request(b"Host: x", b"Transfer-Encoding: chunked, gzip"), 400),
    ("TE empty element", request(b"Host: x", b"Transfer-Encoding: , chunked"), 400),
    ("TE quoted", request(b"Host: x", b'Transfer-Encoding: "chunked"'), 400),
    ("TE gzip then chunked", request(b"Host: x", b"Transfer-Encoding: gzip, chunked"), 501),
    ("underscore look-alike of TE", request(b"Host: x", b"Transfer_Encoding: chunked",
                                            b"Content-Length: 3"), 400),
    ("underscore look-alike of CL", request(b"Host: x", b"content_length: 3"), 400),
    ("underscore look-alike of Host", request(b"Host: x", b"HOST_: y"), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("head", "status"),
    [case[1:] for case in INVALID_REQUESTS],
    ids=[case[0] for case in INVALID_REQUESTS],
)
def test_invalid_requests_are_refused_with_their_status(head: bytes, status: int | None) -> None:
    if status is None:  # not a look-alike once `_` is read as `-`: an ordinary field
        assert parse_request_head(head).framing == NO_BODY
        return
    with pytest.raises(ProtocolError) as raised:
        parse_request_head(head)
    assert raised.value.status == status


def test_connection_tokens_and_keep_alive() -> None:
    assert not parse_request_head(request(b"Host: x", b"Connection: close")).keep_alive
    assert parse_request_head(request(b"Host: x", b"Connection: Content-Length")).keep_alive
    assert not parse_request_head(request(version=b"HTTP/1.0")).keep_alive
    keep = parse_request_head(request(b"Connection: Keep-Alive", version=b"HTTP/1.0"))
    assert keep.keep_alive
    tokens = parse_request_head(request(b"Host: x", b"Connection: a, B", b"Connection: c"))
    assert tokens.connection == {b"a", b"b", b"c"}


def test_upgrade_counts_only_with_connection_upgrade_in_http11() -> None:
    upgrade = (b"Host: x", b"Upgrade: websocket")
    assert parse_request_head(request(*upgrade, b"Connection: Upgrade")).upgrade == b"websocket"
    assert parse_request_head(request(*upgrade)).upgrade == b""
    old = request(b"Upgrade: websocket", b"Connection: upgrade", version=b"HTTP/1.0")
    assert parse_request_head(old).upgrade == b""


def test_absolute_form_becomes_origin_form_with_its_authority() -> None:
    parsed = parse_request_head(request(b"Host: ignored", line=b"GET http://a.b:8/p?q HTTP/1.1"))
    assert (parsed.target, parsed.host) == (b"/p?q", b"a.b:8")
    bare = parse_request_head(request(b"Host: h", line=b"GET HTTP://a.b HTTP/1.1"))
    assert (bare.target, bare.host) == (b"/", b"a.b")


# -- Responses ---------------------------------------------------------------------------------


def response(*lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return b"\r\n".join((status, *lines)) + b"\r\n\r\n"


# (name, head, method, upgrade requested, framing, keep_alive)
VALID_RESPONSES = [
    ("length", response(b"Content-Length: 3"), b"GET", False, LENGTH, True),
    ("length zero", response(b"Content-Length: 0"), b"GET", False, NO_BODY, True),
    ("chunked", response(b"Transfer-Encoding: chunked"), b"GET", False, CHUNKED, True),
    ("until close", response(), b"GET", False, UNTIL_CLOSE, False),
    ("HEAD with length", response(b"Content-Length: 9"), b"HEAD", False, NO_BODY, True),
    ("204 with length", response(b"Content-Length: 5", status=b"HTTP/1.1 204 No Content"),
     b"GET", False, NO_BODY, True),
    ("304 with length", response(b"Content-Length: 5", status=b"HTTP/1.1 304 Not Modified"),
     b"GET", False, NO_BODY, True),
    ("100 continue", response(status=b"HTTP/1.1 100 Continue"), b"POST", False, NO_BODY, True),
    ("101 to an upgrade", response(b"Upgrade: websocket", b"Connection: Upgrade",
                                   status=b"HTTP/1.1 101 Switching Protocols"),
     b"GET", True, NO_BODY, True),
    ("no reason phrase", response(b"Content-Length: 0", status=b"HTTP/1.1 200"), b"GET", False,
     NO_BODY, True),
    ("HTTP/1.0 keep-alive", response(b"Content-Length: 1", b"Connection: keep-alive",
                                     status=b"HTTP/1.0 200 OK"), b"GET", False, LENGTH, True),
    ("HTTP/1.0 default", response(b"Content-Length: 1", status=b"HTTP/1.0 200 OK"), b"GET",
     False, LENGTH, False),
    ("Connection: close", response(b"Content-Length: 1", b"Connection: close"), b"GET", False,
     LENGTH, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("head", "method", "upgrade", "framing", "keep_alive"),
    [case[1:] for case in VALID_RESPONSES],
    ids=[case[0] for case in VALID_RESPONSES],
)
def test_valid_responses_are_framed(
    head: bytes, method: bytes, upgrade: bool, framing: int, keep_alive: bool
) -> None:
    parsed = parse_response_head(head, method, upgrade)
    assert (parsed.framing, parsed.keep_alive) == (framing, keep_alive)


INVALID_RESPONSES = [
    ("CL and TE", response(b"Content-Length: 3", b"Transfer-Encoding: chunked")),
    ("invalid CL", response(b"Content-Length: 3x")),
    ("two CLs", response(b"Content-Length: 3", b"Content-Length: 4")),
    ("gzip coding", response(b"Transfer-Encoding: gzip")),
    ("gzip then chunked", response(b"Transfer-Encoding: gzip, chunked")),
    ("101 to a plain request", response(status=b"HTTP/1.1 101 Switching Protocols")),
    ("garbage status line", response(status=b"HTTP/1.1 OK")),
    ("HTTP/2 status line", response(status=b"HTTP/2 200 OK")),
    ("bare LF", b"HTTP/1.1 200 OK\r\nX: a\nContent-Length: 0\r\n\r\n"),
    ("obs-fold", response(b"X: a", b" b", b"Content-Length: 0")),
    ("space before colon", response(b"Content-Length : 0")),
]


@pytest.mark.parametrize(
    "head", [case[1] for case in INVALID_RESPONSES], ids=[case[0] for case in INVALID_RESPONSES]
)
def test_invalid_responses_are_a_502(head: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_response_head(head, b"GET", False)
    assert raised.value.status == 502


# -- Finding heads -----------------------------------------------------------------------------


def test_head_end_is_found_across_reads_without_rescanning() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"
    assert find_head_end(data, 0, 0) == len(data) - 4
    for split in range(1, len(data) - 4):
        assert find_head_end(data[:split], 0, 0) in (-1, len(data) - 4)
        # Resuming at the previous end finds a CRLFCRLF that straddles the two reads.
        assert find_head_end(data, 0, split) == len(data) - 4


def test_an_incomplete_head_is_refused_once_it_outgrows_the_bound() -> None:
    header_line = b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES
    with pytest.raises(ProtocolError) as raised:
        find_head_end(header_line, 0, 0)
    assert raised.value.status == 431
    with pytest.raises(ProtocolError) as raised:
        find_head_end(b"GET /" + b"a" * MAX_HEAD_BYTES, 0, 0)
    assert raised.value.status == 414
    assert find_head_end(b"GET / HTTP/1.1\r\nCookie: " + b"c" * 16384, 0, 0) == -1


@pytest.mark.parametrize(
    "partial",
    [b"GET /\r\n", b"GET / HTTP/1.1\n", b"GET / HTTP/1.1\r\nHost: x\n", b"GET / HTTP/1.1\rX"],
)
def test_partial_heads_that_cannot_become_valid_are_refused_at_once(partial: bytes) -> None:
    with pytest.raises(ProtocolError):
        check_partial_head(partial, 0, 0, False)


def test_partial_heads_that_may_become_valid_wait() -> None:
    assert check_partial_head(b"GET / HTTP/1.1\r", 0, 0, False) is False
    assert check_partial_head(b"GET / HTTP/1.1\r\nHost: x", 0, 0, False) is True


# -- Bodies ------------------------------------------------------------------------------------


def decode_chunked(data: bytes, splits: list[int]) -> tuple[bytes, list[tuple[bytes, bytes]], int]:
    reader = ChunkedReader()
    out = b""
    consumed = 0
    points = sorted({s for s in splits if 0 < s < len(data)}) + [len(data)]
    start = 0
    for point in points:
        piece = data[start:point]
        chunks, pos = reader.read(piece, 0)
        out += b"".join(chunks)
        consumed += pos
        start = point
        if reader.done:
            break
    assert reader.done
    return out, reader.trailers, consumed


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = b'5;a=b;c="d e"\r\nhello\r\n1 ;x\r\n!\r\n0\r\nT: v\r\n\r\nNEXT'
    body, trailers, consumed = decode_chunked(data, [])
    assert (body, trailers, data[consumed:]) == (b"hello!", [(b"T", b"v")], b"NEXT")


BAD_CHUNKED = [
    b"0x5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 \r\nhello\r\n0\r\n\r\n",
    b"+5\r\nhello\r\n0\r\n\r\n",
    b"\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"5\r\r\nhello\r\n0\r\n\r\n",
    b"5;\r\nhello\r\n0\r\n\r\n",
    b"5;a=\r\nhello\r\n0\r\n\r\n",
    b'5;a="x\r\nhello\r\n0\r\n\r\n',
    b"11111111111111111\r\n",
    b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    b"5\r\nhello\r\n0\r\n folded: x\r\n\r\n",
    b"g\r\n",
]


@pytest.mark.parametrize("data", BAD_CHUNKED)
def test_malformed_chunked_bodies_are_refused(data: bytes) -> None:
    reader = ChunkedReader()
    with pytest.raises(ProtocolError) as raised:
        reader.read(data, 0)
    assert raised.value.status in (400, 431)


def test_chunk_lines_are_bounded() -> None:
    with pytest.raises(ProtocolError) as raised:
        ChunkedReader().read(b"5;" + b"a" * h1.MAX_CHUNK_LINE, 0)
    assert raised.value.status == 431
    with pytest.raises(ProtocolError):
        ChunkedReader().read(b"0\r\nT: " + b"v" * h1.MAX_TRAILER_BYTES + b"\r\n", 0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    st.booleans(),
)
def test_chunked_round_trip_split_anywhere(
    pieces: list[bytes], splits: list[int], extensions: bool
) -> None:
    ext = b";e=1" if extensions else b""
    data = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces) + b"0\r\n\r\nAFTER"
    body, trailers, consumed = decode_chunked(data, splits)
    assert body == b"".join(pieces)
    assert trailers == []
    assert data[consumed:] == b"AFTER"


def test_content_length_reader_stops_at_its_length() -> None:
    reader = ContentLengthReader(5)
    chunks, pos = reader.read(b"hel", 0)
    assert (chunks, pos, reader.done) == ([b"hel"], 3, False)
    chunks, pos = reader.read(b"loGET /", 0)
    assert (chunks, pos, reader.done) == ([b"lo"], 2, True)


@pytest.mark.parametrize("partial", [b"\x16\x03\x01\x02", b"\x81\x85garbage", b" GET", b"GE(T"])
def test_a_request_line_that_cannot_start_a_method_is_refused_at_once(partial: bytes) -> None:
    with pytest.raises(ProtocolError):
        check_partial_head(partial, 0, 0, False)


def test_a_complete_head_with_a_request_line_over_the_bound_is_a_414() -> None:
    head = b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(ProtocolError) as raised:
        find_head_end(head, 0, 0)
    assert raised.value.status == 414


def test_the_memo_returns_what_parsing_returns_and_stays_bounded() -> None:
    memo = h1.HeadMemo(size=4, max_head=256)
    head = request(b"Host: x", b"Content-Length: 5")
    first = memo.request(head)
    assert memo.request(head) is first and (first.framing, first.length) == (LENGTH, 5)
    with pytest.raises(ProtocolError):
        memo.request(request())  # invalid heads raise every time and are never kept
    assert len(memo.requests) == 1
    for index in range(10):
        memo.request(request(b"Host: h%d" % index))
    assert len(memo.requests) <= 4
    memo.request(request(b"Host: x", b"X: " + b"v" * 300))  # too long to keep
    assert all(len(key) <= 256 for key in memo.requests)
    assert isinstance(first.headers, tuple)  # shared results cannot be changed by a user


def test_the_memo_keys_responses_by_the_request_method_too() -> None:
    memo = h1.HeadMemo()
    head = response(b"Content-Length: 9")
    assert memo.response(head, b"GET", False).framing == LENGTH
    assert memo.response(head, b"HEAD", False).framing == NO_BODY
    assert memo.response(head, b"GET", False).framing == LENGTH


def test_the_head_finder_resumes_where_it_stopped_even_when_the_head_moves() -> None:
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    finder = h1.HeadFinder()
    buffer = bytearray(b"junk!")  # bytes before the head that the caller later drops
    for byte in data[:-1]:
        buffer.append(byte)
        assert finder.find(buffer, 5) == -1
    del buffer[:5]  # the caller moves the incomplete head to the start of its buffer
    buffer.append(data[-1])
    assert finder.find(buffer, 0) == len(data)
    assert (finder.scanned, finder.line_checked) == (0, False)
    with pytest.raises(ProtocolError):
        h1.HeadFinder().find(b"GET /\r\n", 0)  # HTTP/0.9, refused before the blank line
    assert h1.HeadFinder(request=False).find(b"HTTP/1.1 200 OK\r\n", 0) == -1
