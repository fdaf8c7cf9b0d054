"""The HTTP/1.1 conformance corpus: raw client bytes and what must come of them.

Each `Case` is data: the bytes a client writes (one or more writes, paused between), the
acceptable `Outcome`s (one, or several where the rules allow a choice), and, for response-side
cases, the raw bytes the app answers with. `@MK@` in any byte string is replaced by the case's
four-character marker (`c042`), so recordings and scripts can be tied to the case; it has the
marker's length, so Content-Length values written here stay right.

An `Outcome` lists the final status codes the client must read, in order; whether the
connection must then be closed (True), stay usable (False: the test sends one more GET on it,
which must come back 200 from the app) or either (None); and the requests the app must see, in
order and no others. The decisions encoded here (RFC 9112 / RFC 9110, strict) are listed in
tests/test_conformance.py.
"""

from __future__ import annotations

from dataclasses import dataclass

MARK = b"@MK@"


@dataclass(frozen=True)
class AppRequest:
    """A request as the app must see it."""

    method: bytes
    target: bytes = b"/@MK@/a"
    body: bytes | None = b""  # None: not checked
    complete: bool = True  # False: the proxy must have cut it short (never completed)
    suffix: bool = False  # the app's target only has to end with `target` (absolute-form)


@dataclass(frozen=True)
class Outcome:
    statuses: tuple[int, ...]
    closed: bool | None
    app: tuple[AppRequest, ...] = ()
    truncated: bool = False  # the last response's body is cut off by a close
    bodies: tuple[bytes | None, ...] = ()  # expected response bodies (None: not checked)


@dataclass(frozen=True)
class Case:
    name: str
    writes: tuple[bytes, ...]
    outcomes: tuple[Outcome, ...]
    response: bytes | None = None  # the app's raw answer to the case's first request
    response_close: bool = False  # the app closes after `response`
    methods: tuple[str, ...] = ()  # method of each request answered, when not GET (HEAD)
    upgrade: bool = False  # the first request is a websocket upgrade the app grants
    tunnel: bytes = b""  # after a 101: sent by the client, must come back echoed
    pause: float = 0.1  # between writes


CASES: list[Case] = []

# -- Helpers ---------------------------------------------------------------------------------

HOST = "Host: x"
A_TARGET = "/@MK@/a"


def b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def msg(*lines: str | bytes, body: str | bytes = b"") -> bytes:
    """Lines joined by CRLF, the empty line, then `body`."""
    return b"".join(b(line) + b"\r\n" for line in lines) + b"\r\n" + b(body)


def get(target: str = A_TARGET, *headers: str | bytes, version: str = "HTTP/1.1") -> bytes:
    return msg(f"GET {target} {version}", HOST, *headers)


def post(body: str | bytes, *headers: str | bytes, target: str = A_TARGET) -> bytes:
    return msg(f"POST {target} HTTP/1.1", HOST, *headers, body=body)


def post_cl(body: str | bytes, target: str = A_TARGET) -> bytes:
    return post(body, f"Content-Length: {len(b(body))}", target=target)


def post_chunked(chunks: str | bytes, *headers: str | bytes, target: str = A_TARGET) -> bytes:
    return post(chunks, "Transfer-Encoding: chunked", *headers, target=target)


def app(
    method: str, target: str = A_TARGET, body: str | bytes | None = b"", **kw: bool
) -> AppRequest:
    return AppRequest(b(method), b(target), None if body is None else b(body), **kw)


def ok(*requests: AppRequest, closed: bool | None = False, bodies: tuple = ()) -> Outcome:
    """Every request forwarded and answered 200 by the app."""
    return Outcome((200,) * len(requests), closed, requests, bodies=bodies)


def rejected(*statuses: int) -> tuple[Outcome, ...]:
    """Answered by the proxy with one of `statuses`, then closed; the app sees nothing."""
    return tuple(Outcome((status,), True) for status in statuses)


def rejected_body(method: str = "POST", target: str = A_TARGET) -> tuple[Outcome, ...]:
    """A body error after the head may have gone to the app: 400 and close; the app saw
    nothing, or that one request cut short, never completed."""
    cut = AppRequest(b(method), b(target), None, complete=False)
    return (Outcome((400,), True), Outcome((400,), True, (cut,)))


def case(
    name: str,
    writes: bytes | tuple[bytes, ...],
    *outcomes: Outcome | tuple[Outcome, ...],
    **kw: object,
) -> None:
    flat: list[Outcome] = []
    for outcome in outcomes:
        flat.extend(outcome if isinstance(outcome, tuple) else (outcome,))
    assert flat, name
    assert all(c.name != name for c in CASES), f"duplicate case {name}"
    CASES.append(
        Case(name, writes if isinstance(writes, tuple) else (writes,), tuple(flat), **kw)  # type: ignore[arg-type]
    )


GET_A = app("GET")
HELLO_CHUNKED = "5\r\nhello\r\n0\r\n\r\n"

# -- 1. Valid requests are forwarded ---------------------------------------------------------

case("get_basic", get(), ok(GET_A))
case("get_query", get("/@MK@/a?x=1&y=%20z"), ok(app("GET", "/@MK@/a?x=1&y=%20z")))
case("get_root_like_path", get("/@MK@/"), ok(app("GET", "/@MK@/")))
case("http10_no_host", msg(f"GET {A_TARGET} HTTP/1.0"), ok(GET_A, closed=True))
case("http10_with_host", get(version="HTTP/1.0"), ok(GET_A, closed=True))
case("http10_keep_alive", get(A_TARGET, "Connection: keep-alive", version="HTTP/1.0"), ok(GET_A))
case(
    "http10_keep_alive_then_plain_then_more",
    get("/@MK@/a", "Connection: keep-alive", version="HTTP/1.0")
    + get("/@MK@/b", version="HTTP/1.0")
    + get("/@MK@/c", version="HTTP/1.0"),
    ok(GET_A, app("GET", "/@MK@/b"), closed=True),
)
case(
    "http10_pipelined_closes_after_first",
    get(version="HTTP/1.0") + get("/@MK@/b"),
    ok(GET_A, closed=True),
)
case("connection_close", get(A_TARGET, "Connection: close"), ok(GET_A, closed=True))
case("connection_close_uppercase", get(A_TARGET, "Connection: CLOSE"), ok(GET_A, closed=True))
case("connection_close_in_list", get(A_TARGET, "Connection: x-foo, close"), ok(GET_A, closed=True))
case(
    "absolute_form",
    msg("GET http://x/@MK@/p?q HTTP/1.1", HOST),
    ok(app("GET", "/@MK@/p?q", suffix=True)),
)
case(
    "absolute_form_other_host",
    msg("GET http://y:8080/@MK@/p?q HTTP/1.1", HOST),
    ok(app("GET", "/@MK@/p?q", suffix=True)),
)
case("options_star", msg("OPTIONS * HTTP/1.1", HOST), ok(app("OPTIONS", "*")))
case("options_path", msg(f"OPTIONS {A_TARGET} HTTP/1.1", HOST), ok(app("OPTIONS")))
case("host_no_space", msg(f"GET {A_TARGET} HTTP/1.1", "Host:x"), ok(GET_A))
case("host_with_port", msg(f"GET {A_TARGET} HTTP/1.1", "Host: x:8080"), ok(GET_A))
case("host_ipv6", msg(f"GET {A_TARGET} HTTP/1.1", "Host: [::1]:8080"), ok(GET_A))
case("host_trailing_ows", msg(f"GET {A_TARGET} HTTP/1.1", "Host: x \t "), ok(GET_A))
case("host_lowercase_name", msg(f"GET {A_TARGET} HTTP/1.1", "host: x"), ok(GET_A))
case("header_empty_value", get(A_TARGET, "X-Empty:"), ok(GET_A))
case("header_inner_whitespace", get(A_TARGET, "X-A: a  b\tc"), ok(GET_A))
case("header_obs_text_value", get(A_TARGET, b"X-A: caf\xc3\xa9"), ok(GET_A))
case("header_tchar_name", get(A_TARGET, "X!#$%&'*+-.^_`|~1: v"), ok(GET_A))
case("header_many", get(A_TARGET, *(f"X-H{i}: {i}" for i in range(100))), ok(GET_A))
case(
    "cookies_16k",
    get(A_TARGET, *(f"Cookie: c{i}={'v' * 1000}" for i in range(16))),
    ok(GET_A),
)
case("headers_48k", get(A_TARGET, *(f"X-Pad-{i}: {'p' * 1000}" for i in range(48))), ok(GET_A))
case("target_8k", get("/@MK@/" + "t" * 8192), ok(app("GET", "/@MK@/" + "t" * 8192)))
for label, method in (
    ("mux", "MUX"),
    ("propfind", "PROPFIND"),
    ("m_search", "M-SEARCH"),
    ("purge", "PURGE"),
    ("trace", "TRACE"),
    ("lowercase_get", "get"),
    ("all_tchars", "X!#$%&'*+-.^_`|~Y"),
):
    case(
        f"method_token_{label}",
        msg(f"{method} {A_TARGET} HTTP/1.1", HOST),
        ok(app(method)),
    )
case("method_delete", msg(f"DELETE {A_TARGET} HTTP/1.1", HOST), ok(app("DELETE")))
case(
    "head",
    msg(f"HEAD {A_TARGET} HTTP/1.1", HOST),
    ok(app("HEAD"), bodies=(b"",)),
    methods=("HEAD",),
)
case("post_cl", post_cl("hello"), ok(app("POST", body="hello")))
case("post_cl_zero", post("", "Content-Length: 0"), ok(app("POST")))
case("post_cl_leading_zeros", post("hello", "Content-Length: 005"), ok(app("POST", body="hello")))
case("post_cl_ows", post("hello", "Content-Length: \t5 "), ok(app("POST", body="hello")))
case("post_cl_binary_body", post_cl(bytes(range(256))), ok(app("POST", body=bytes(range(256)))))
case(
    "post_cl_body_looks_like_request",
    post_cl("GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ok(app("POST", body="GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")),
)
case(
    "get_with_cl_body",
    msg(f"GET {A_TARGET} HTTP/1.1", HOST, "Content-Length: 5", body="hello"),
    ok(app("GET", body="hello")),
)
case("post_chunked", post_chunked(HELLO_CHUNKED), ok(app("POST", body="hello")))
case(
    "post_chunked_te_uppercase",
    post(HELLO_CHUNKED, "Transfer-Encoding: CHUNKED"),
    ok(app("POST", body="hello")),
)
case(
    "post_chunked_te_ows",
    post(HELLO_CHUNKED, "Transfer-Encoding:  chunked  "),
    ok(app("POST", body="hello")),
)
case(
    "chunked_three_chunks",
    post_chunked("3\r\nhel\r\n3\r\nlo \r\n5\r\nworld\r\n0\r\n\r\n"),
    ok(app("POST", body="hello world")),
)
case(
    "chunked_hex_upper",
    post_chunked("A\r\n0123456789\r\n0\r\n\r\n"),
    ok(app("POST", body="0123456789")),
)
case(
    "chunked_hex_lower",
    post_chunked("a\r\n0123456789\r\n0\r\n\r\n"),
    ok(app("POST", body="0123456789")),
)
case(
    "chunked_size_leading_zeros",
    post_chunked("0005\r\nhello\r\n0\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_size_16_digits",
    post_chunked("0000000000000005\r\nhello\r\n0000000000000000\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_extension",
    post_chunked("5;name=value\r\nhello\r\n0\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_extension_quoted",
    post_chunked('5;name="a b;c"\r\nhello\r\n0\r\n\r\n'),
    ok(app("POST", body="hello")),
)
case(
    "chunked_extension_no_value",
    post_chunked("5;foo\r\nhello\r\n0\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_extensions_several",
    post_chunked("5;a=1;b=2\r\nhello\r\n0;c=3\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_trailer",
    post_chunked("5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case(
    "chunked_trailers_two",
    post_chunked("5\r\nhello\r\n0\r\nX-T1: 1\r\nX-T2: 2\r\n\r\n"),
    ok(app("POST", body="hello")),
)
case("chunked_empty_body", post_chunked("0\r\n\r\n"), ok(app("POST")))
case(
    "chunked_binary_with_crlf_inside",
    post_chunked("8\r\na\r\n0\r\n\r\n\r\n0\r\n\r\n"),
    ok(app("POST", body="a\r\n0\r\n\r\n")),
)
case(
    "post_head_then_body_later",
    (msg(f"POST {A_TARGET} HTTP/1.1", HOST, "Content-Length: 5"), b"hello"),
    ok(app("POST", body="hello")),
)
case(
    "post_split_everywhere",
    (b"POST /@MK@/a HTT", b"P/1.1\r\nHost: x\r\nContent-Le", b"ngth: 5\r\n\r", b"\nhel", b"lo"),
    ok(app("POST", body="hello")),
    pause=0.03,
)
case(
    "chunked_split_everywhere",
    (
        msg(f"POST {A_TARGET} HTTP/1.1", HOST, "Transfer-Encoding: chunked"),
        b"5\r\nhe",
        b"llo\r\n0\r",
        b"\n\r\n",
    ),
    ok(app("POST", body="hello")),
    pause=0.03,
)
case(
    "chunked_split_in_size_line",
    (post_chunked("") + b"1", b"0\r\n0123456789abcdef\r\n0\r\n\r\n"),
    ok(app("POST", body="0123456789abcdef")),
    pause=0.05,
)
case(
    "expect_100_continue",
    post("hello", "Content-Length: 5", "Expect: 100-continue"),
    ok(app("POST", body="hello")),
)
case(
    "expect_100_continue_body_later",
    (post("", "Content-Length: 5", "Expect: 100-continue"), b"hello"),
    ok(app("POST", body="hello")),
)
case(
    "expect_100_continue_chunked",
    post_chunked(HELLO_CHUNKED, "Expect: 100-continue"),
    ok(app("POST", body="hello")),
)
case(
    "leading_crlf_before_request",
    b"\r\n" + get(),
    ok(GET_A),
    rejected(400),
)

# -- 2. Pipelining -----------------------------------------------------------------------------

case(
    "pipeline_three_gets",
    get("/@MK@/1") + get("/@MK@/2") + get("/@MK@/3"),
    ok(*(app("GET", f"/@MK@/{i}") for i in (1, 2, 3))),
)
case(
    "pipeline_ten_gets",
    b"".join(get(f"/@MK@/{i}") for i in range(10)),
    ok(*(app("GET", f"/@MK@/{i}") for i in range(10))),
)
case(
    "pipeline_mixed_bodies",
    get("/@MK@/1")
    + post_cl("hello", target="/@MK@/2")
    + post_chunked("3\r\nabc\r\n0\r\n\r\n", target="/@MK@/3")
    + get("/@MK@/4"),
    ok(
        app("GET", "/@MK@/1"),
        app("POST", "/@MK@/2", "hello"),
        app("POST", "/@MK@/3", "abc"),
        app("GET", "/@MK@/4"),
    ),
)
_three = get("/@MK@/1") + post_cl("hello", target="/@MK@/2") + get("/@MK@/3")
case(
    "pipeline_split_writes",
    (_three[:7], _three[7:41], _three[41:75], _three[75:]),
    ok(app("GET", "/@MK@/1"), app("POST", "/@MK@/2", "hello"), app("GET", "/@MK@/3")),
    pause=0.03,
)
case(
    "pipeline_post_body_in_later_write",
    (
        get("/@MK@/1") + msg("POST /@MK@/2 HTTP/1.1", HOST, "Content-Length: 5"),
        b"hello" + get("/@MK@/3"),
    ),
    ok(app("GET", "/@MK@/1"), app("POST", "/@MK@/2", "hello"), app("GET", "/@MK@/3")),
)
case(
    "pipeline_close_in_middle",
    get("/@MK@/1") + get("/@MK@/2", "Connection: close") + get("/@MK@/3"),
    ok(app("GET", "/@MK@/1"), app("GET", "/@MK@/2"), closed=True),
)
case(
    "pipeline_close_first_then_request",
    get("/@MK@/1", "Connection: close") + get("/@MK@/2"),
    ok(app("GET", "/@MK@/1"), closed=True),
)
case(
    "pipeline_close_first_then_garbage",
    get("/@MK@/1", "Connection: close") + b"\x00\x01garbage\r\n\r\n",
    ok(app("GET", "/@MK@/1"), closed=True),
)
case(
    "pipeline_close_post_then_request",
    post("hello", "Content-Length: 5", "Connection: close") + get("/@MK@/2"),
    ok(app("POST", body="hello"), closed=True),
)
case(
    "pipeline_valid_then_garbage",
    get() + b"garbage garbage\r\n\r\n",
    Outcome((200, 400), True, (GET_A,)),
)
case(
    "pipeline_valid_then_no_host",
    get() + msg("GET /@MK@/b HTTP/1.1"),
    Outcome((200, 400), True, (GET_A,)),
)
case(
    "pipeline_valid_then_bad_content_length",
    get() + post("hello", "Content-Length: +5", target="/@MK@/b"),
    Outcome((200, 400), True, (GET_A,)),
)
case(
    "pipeline_valid_then_bad_chunk",
    get() + post_chunked("zz\r\nhello\r\n0\r\n\r\n", target="/@MK@/b"),
    Outcome((200, 400), True, (GET_A,)),
    Outcome((200, 400), True, (GET_A, app("POST", "/@MK@/b", None, complete=False))),
)
case(
    "pipeline_valid_then_te_cl",
    get()
    + post(HELLO_CHUNKED, "Content-Length: 5", "Transfer-Encoding: chunked", target="/@MK@/b"),
    Outcome((200, 400), True, (GET_A,)),
)

# -- 3. Upgrade and Expect ---------------------------------------------------------------------

WS_HEADERS = (
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
)
case("upgrade_without_connection_token", get(A_TARGET, "Upgrade: websocket"), ok(GET_A))
case("connection_upgrade_without_upgrade", get(A_TARGET, "Connection: Upgrade"), ok(GET_A))
case(
    "upgrade_http10_is_plain",
    get(A_TARGET, *WS_HEADERS, version="HTTP/1.0"),
    ok(GET_A, closed=True),
)
case(
    "upgrade_declined_alone",
    get("/@MK@/ws", *WS_HEADERS),
    ok(app("GET", "/@MK@/ws"), closed=None),
)
case(
    "upgrade_declined_then_request",
    get("/@MK@/ws", *WS_HEADERS) + get("/@MK@/next"),
    ok(app("GET", "/@MK@/ws"), app("GET", "/@MK@/next"), closed=None),
    ok(app("GET", "/@MK@/ws"), closed=True),
)
case(
    "upgrade_declined_then_garbage",
    get("/@MK@/ws", *WS_HEADERS) + b"\x81\x85garbage-websocket-frame",
    ok(app("GET", "/@MK@/ws"), closed=True),
    Outcome((200, 400), True, (app("GET", "/@MK@/ws"),)),
)
case(
    "upgrade_websocket_accepted",
    get("/@MK@/ws", *WS_HEADERS),
    Outcome((101,), None, (app("GET", "/@MK@/ws"),)),
    response=(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    ),
    upgrade=True,
    tunnel=b"ping through the tunnel\n",
)
H2C = (
    "Connection: Upgrade, HTTP2-Settings",
    "Upgrade: h2c",
    "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
)
case(
    "upgrade_h2c_post_cl",
    post("hello", "Content-Length: 5", *H2C),
    ok(app("POST", body="hello"), closed=None),
)
case(
    "upgrade_h2c_post_chunked",
    post_chunked(HELLO_CHUNKED, *H2C),
    ok(app("POST", body="hello"), closed=None),
)
# A valid h2c upgrade without a body is granted (101, then HTTP/2: tests/test_h2_e2e.py); one
# that breaks RFC 7540 §3.2's rules is declined and served over HTTP/1.1.
case(
    "upgrade_h2c_settings_not_in_connection",
    get(A_TARGET, "Connection: Upgrade", *H2C[1:]),
    ok(GET_A, closed=None),
)
case("upgrade_h2c_two_settings", get(A_TARGET, *H2C, H2C[2]), ok(GET_A, closed=None))
case(
    "upgrade_h2c_bad_settings",
    get(A_TARGET, *H2C[:2], "HTTP2-Settings: not*base64"),
    ok(GET_A, closed=None),
)

# -- 4. Malformed request heads: 400 and close, the app sees nothing --------------------------

BAD = rejected(400)
case("no_host_http11", msg(f"GET {A_TARGET} HTTP/1.1"), BAD)
case(
    "no_host_http11_post", msg(f"POST {A_TARGET} HTTP/1.1", "Content-Length: 5", body="hello"), BAD
)
case("two_hosts", get(A_TARGET, "Host: y"), BAD)
case("two_hosts_same_value", get(A_TARGET, "Host: x"), BAD)
case("two_hosts_case_differs", get(A_TARGET, "HOST: x"), BAD)
case("host_with_space", msg(f"GET {A_TARGET} HTTP/1.1", "Host: a b"), BAD)
case("host_with_slash", msg(f"GET {A_TARGET} HTTP/1.1", "Host: a/b"), BAD)
case("host_with_userinfo", msg(f"GET {A_TARGET} HTTP/1.1", "Host: u@x"), BAD)
case("host_with_ctl", msg(f"GET {A_TARGET} HTTP/1.1", "Host: a\x01b"), BAD)
case("host_bad_port", msg(f"GET {A_TARGET} HTTP/1.1", "Host: x:8o"), BAD)
case(
    "host_empty",
    msg(f"GET {A_TARGET} HTTP/1.1", "Host:"),
    ok(GET_A),
    BAD,
)
case("http09_request", b"GET /@MK@/a\r\n", BAD)
for label, line in (
    ("double_space_after_method", "GET  /@MK@/a HTTP/1.1"),
    ("double_space_before_version", "GET /@MK@/a  HTTP/1.1"),
    ("leading_space", " GET /@MK@/a HTTP/1.1"),
    ("tab_after_method", "GET\t/@MK@/a HTTP/1.1"),
    ("tab_before_version", "GET /@MK@/a\tHTTP/1.1"),
    ("missing_version", "GET /@MK@/a"),
    ("missing_target", "GET HTTP/1.1"),
    ("method_only", "GET"),
    ("version_lowercase", "GET /@MK@/a http/1.1"),
    ("version_trailing_space", "GET /@MK@/a HTTP/1.1 "),
    ("version_leading_zero", "GET /@MK@/a HTTP/01.1"),
    ("version_minor_two_digits", "GET /@MK@/a HTTP/1.10"),
    ("version_major_two_digits", "GET /@MK@/a HTTP/11.1"),
    ("version_no_minor", "GET /@MK@/a HTTP/1"),
    ("version_letter", "GET /@MK@/a HTTP/1.x"),
    ("version_missing_slash", "GET /@MK@/a HTTP1.1"),
    ("extra_token", "GET /@MK@/a HTTP/1.1 extra"),
    ("star_with_get", "GET * HTTP/1.1"),
    ("star_with_post", "POST * HTTP/1.1"),
    ("target_not_a_form", "GET @MK@/a HTTP/1.1"),
    ("method_paren", "GE(T /@MK@/a HTTP/1.1"),
    ("method_comma", "G,ET /@MK@/a HTTP/1.1"),
    ("method_slash", "GE/T /@MK@/a HTTP/1.1"),
    ("method_nul", "GE\x00T /@MK@/a HTTP/1.1"),
    ("method_non_ascii", "G\xc3\x89T /@MK@/a HTTP/1.1"),
    ("target_nul", "GET /@MK@/a\x00b HTTP/1.1"),
    ("target_ctl", "GET /@MK@/a\x01b HTTP/1.1"),
    ("target_del", "GET /@MK@/a\x7fb HTTP/1.1"),
    ("target_non_ascii", "GET /@MK@/caf\xc3\xa9 HTTP/1.1"),
    ("target_high_byte", "GET /@MK@/\xff HTTP/1.1"),
    ("target_vertical_tab", "GET /@MK@/a\x0bb HTTP/1.1"),
):
    case(f"request_line_{label}", msg(line, HOST), BAD)
case("version_http2", msg(f"GET {A_TARGET} HTTP/2.0", HOST), rejected(400, 505))
case("version_http3", msg(f"GET {A_TARGET} HTTP/3.0", HOST), rejected(400, 505))
case("bare_lf_after_request_line", b"GET /@MK@/a HTTP/1.1\nHost: x\r\n\r\n", BAD)
case("bare_lf_after_header", b"GET /@MK@/a HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", BAD)
case("bare_lf_final_line", b"GET /@MK@/a HTTP/1.1\r\nHost: x\r\n\n", BAD)
case("bare_lf_everywhere", b"GET /@MK@/a HTTP/1.1\nHost: x\n\n", BAD)
case("bare_cr_after_request_line", b"GET /@MK@/a HTTP/1.1\rHost: x\r\n\r\n", BAD)
case("bare_cr_in_value", get(A_TARGET, "X-A: a\rb"), BAD)
case("bare_cr_end_of_value", get(A_TARGET, "X-A: a\r"), BAD)
case("bare_cr_in_name", get(A_TARGET, "X-\rA: b"), BAD)
case("space_before_colon_host", msg(f"GET {A_TARGET} HTTP/1.1", "Host : x"), BAD)
case("space_before_colon_other", get(A_TARGET, "X-A : v"), BAD)
case("tab_before_colon", get(A_TARGET, "X-A\t: v"), BAD)
case("header_without_colon", get(A_TARGET, "X-A v"), BAD)
case("header_empty_name", get(A_TARGET, ": v"), BAD)
case("header_only_colon_line", get(A_TARGET, ":"), BAD)
case("obs_fold_space", get(A_TARGET, "X-A: a", " b"), BAD)
case("obs_fold_tab", get(A_TARGET, "X-A: a", "\tb"), BAD)
case("obs_fold_first_field", msg(f"GET {A_TARGET} HTTP/1.1", " X-A: b", HOST), BAD)
case("obs_fold_host", msg(f"GET {A_TARGET} HTTP/1.1", "Host: x", " y"), BAD)
case("whitespace_only_line", msg(f"GET {A_TARGET} HTTP/1.1", HOST, " "), BAD)
for label, value in (
    ("nul", "a\x00b"),
    ("soh", "a\x01b"),
    ("esc", "\x1b[31mred"),
    ("del", "a\x7fb"),
    ("vertical_tab", "a\x0bb"),
    ("form_feed", "a\x0cb"),
):
    case(f"value_ctl_{label}", get(A_TARGET, f"X-A: {value}"), BAD)
for label, name in (
    ("nul", "X-\x00A"),
    ("paren", "X(A)"),
    ("slash", "X/A"),
    ("quote", 'X"A'),
    ("at", "X@A"),
    ("brackets", "X[A]"),
    ("brace", "X{A}"),
    ("equals", "X=A"),
    ("comma", "X,A"),
    ("semicolon", "X;A"),
    ("space", "X A"),
    ("non_ascii", "X\xc3\xa9"),
    ("del", "X\x7fA"),
):
    case(f"name_not_token_{label}", get(A_TARGET, f"{name}: v"), BAD)
case(
    "connect_method",
    msg("CONNECT x:443 HTTP/1.1", "Host: x:443"),
    Outcome((405,), None),
)
case("header_block_100k_one_field", get(A_TARGET, "X-Big: " + "b" * 100 * 1024), rejected(431))
case(
    "header_block_100k_many_fields",
    get(A_TARGET, *(f"X-Pad-{i}: {'p' * 1000}" for i in range(100))),
    rejected(431),
)
case("request_target_70k", get("/@MK@/" + "t" * 70 * 1024), rejected(414))

# -- 5. Body framing: Content-Length and Transfer-Encoding -------------------------------------

for label, value in (
    ("plus", "+5"),
    ("minus", "-1"),
    ("hex", "0x5"),
    ("inner_space", "5 5"),
    ("list_equal", "5,5"),
    ("list_equal_space", "5, 5"),
    ("list_differ", "5, 6"),
    ("empty", ""),
    ("alpha_suffix", "5a"),
    ("exponent", "5e0"),
    ("decimal", "5.0"),
    ("fullwidth_digit", "\xef\xbc\x95"),
    ("vertical_tab", "5\x0b"),
    ("nul", "5\x00"),
    ("quoted", '"5"'),
):
    case(f"content_length_{label}", post("hello", f"Content-Length: {value}"), BAD)
case(
    "content_length_huge",
    post("hello", "Content-Length: 99999999999999999999999"),
    rejected(400, 413),
)
case("content_length_two_lines_equal", post("hello", "Content-Length: 5", "Content-Length: 5"), BAD)
case(
    "content_length_two_lines_differ", post("hello", "Content-Length: 5", "Content-Length: 6"), BAD
)
case("content_length_space_before_colon", post("hello", "Content-Length : 5"), BAD)
case("content_length_obs_fold", post("hello", "Content-Length:", " 5"), BAD)
case(
    "content_length_and_chunked",
    post(HELLO_CHUNKED, "Content-Length: 5", "Transfer-Encoding: chunked"),
    BAD,
)
case(
    "chunked_and_content_length",
    post(HELLO_CHUNKED, "Transfer-Encoding: chunked", "Content-Length: 5"),
    BAD,
)
case(
    "content_length_and_chunked_http10",
    msg(
        f"POST {A_TARGET} HTTP/1.0",
        "Content-Length: 5",
        "Transfer-Encoding: chunked",
        body=HELLO_CHUNKED,
    ),
    BAD,
)
case(
    "content_length_zero_and_chunked",
    post(HELLO_CHUNKED, "Content-Length: 0", "Transfer-Encoding: chunked"),
    BAD,
)
NOT_FORWARDED = rejected(400, 501)
for label, value in (
    ("chunked_twice", "chunked, chunked"),
    ("gzip_chunked", "gzip, chunked"),
    ("gzip", "gzip"),
    ("identity", "identity"),
    ("chunked_identity", "chunked, identity"),
    ("xchunked", "xchunked"),
    ("chunked_param", "chunked;q=1"),
    ("empty", ""),
    ("chunked_comma_gzip", "chunked,gzip"),
):
    case(
        f"transfer_encoding_{label}",
        post(HELLO_CHUNKED, f"Transfer-Encoding: {value}"),
        NOT_FORWARDED,
    )
case(
    "transfer_encoding_two_lines",
    post(HELLO_CHUNKED, "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
    NOT_FORWARDED,
)
case(
    "transfer_encoding_two_lines_identity",
    post(HELLO_CHUNKED, "Transfer-Encoding: chunked", "Transfer-Encoding: identity"),
    NOT_FORWARDED,
)
case(
    "transfer_encoding_space_before_colon", post(HELLO_CHUNKED, "Transfer-Encoding : chunked"), BAD
)
case("transfer_encoding_tab_before_colon", post(HELLO_CHUNKED, "Transfer-Encoding\t: chunked"), BAD)
case("transfer_encoding_vertical_tab", post(HELLO_CHUNKED, "Transfer-Encoding: \x0bchunked"), BAD)
case("transfer_encoding_nul", post(HELLO_CHUNKED, "Transfer-Encoding: chunked\x00"), BAD)
case("transfer_encoding_obs_fold", post(HELLO_CHUNKED, "Transfer-Encoding:", " chunked"), BAD)
case(
    "transfer_encoding_http10",
    msg(f"POST {A_TARGET} HTTP/1.0", "Transfer-Encoding: chunked", body=HELLO_CHUNKED),
    BAD,
)
# `Transfer_Encoding` is a valid field name, just not Transfer-Encoding: the request has no body,
# so the chunked bytes that follow are the next "request" and are rejected.
case(
    "transfer_underscore_encoding",
    post(HELLO_CHUNKED, "Transfer_Encoding: chunked"),
    Outcome((200, 400), True, (app("POST"),)),
    BAD,
)

# -- 6. Chunked bodies: every deviation is 400; the app never gets a completed request ---------

for label, chunks in (
    ("size_0x", "0x5\r\nhello\r\n0\r\n\r\n"),
    ("size_leading_space", " 5\r\nhello\r\n0\r\n\r\n"),
    ("size_trailing_space", "5 \r\nhello\r\n0\r\n\r\n"),
    ("size_trailing_tab", "5\t\r\nhello\r\n0\r\n\r\n"),
    ("size_plus", "+5\r\nhello\r\n0\r\n\r\n"),
    ("size_minus", "-5\r\nhello\r\n0\r\n\r\n"),
    ("size_not_hex", "5g\r\nhello\r\n0\r\n\r\n"),
    ("size_missing", "\r\nhello\r\n0\r\n\r\n"),
    ("size_17_digits", "00000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("size_overflow", "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("size_bare_lf", "5\nhello\r\n0\r\n\r\n"),
    ("size_bare_cr", "5\rhello\r\n0\r\n\r\n"),
    ("data_then_bare_lf", "5\r\nhello\n0\r\n\r\n"),
    ("data_then_bare_cr", "5\r\nhello\r0\r\n\r\n"),
    ("data_not_followed_by_crlf", "5\r\nhelloXX0\r\n\r\n"),
    ("data_longer_than_size", "3\r\nhello\r\n0\r\n\r\n"),
    ("extension_empty_name", "5;\r\nhello\r\n0\r\n\r\n"),
    ("extension_space_in_value", "5;a=b c\r\nhello\r\n0\r\n\r\n"),
    ("extension_nul", "5;a=\x00\r\nhello\r\n0\r\n\r\n"),
    ("extension_bare_lf", "5;a=b\nhello\r\n0\r\n\r\n"),
    ("last_chunk_bare_lf", "5\r\nhello\r\n0\n\r\n"),
    ("final_crlf_bare_lf", "5\r\nhello\r\n0\r\n\n"),
    ("trailer_without_colon", "5\r\nhello\r\n0\r\nGarbage\r\n\r\n"),
    ("trailer_is_a_request", "5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("trailer_obs_fold", "5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n"),
    ("trailer_bare_lf", "5\r\nhello\r\n0\r\nX-T: a\n\r\n"),
    ("trailer_space_before_colon", "5\r\nhello\r\n0\r\nX-T : a\r\n\r\n"),
    ("trailer_nul", "5\r\nhello\r\n0\r\nX-T: a\x00\r\n\r\n"),
):
    case(f"chunk_{label}", post_chunked(chunks), rejected_body())

# -- 7. Connection must not strip framing or Host ----------------------------------------------

SMUGGLED = "GET /smuggled HTTP/1.1\r\nX: y\r\n\r\n"
case(
    "connection_content_length_smuggling",
    post(SMUGGLED, f"Content-Length: {len(SMUGGLED)}", "Connection: Content-Length"),
    ok(app("POST", body=SMUGGLED)),
)
case(
    "connection_transfer_encoding",
    post_chunked(HELLO_CHUNKED, "Connection: Transfer-Encoding"),
    ok(app("POST", body="hello")),
)
case(
    "connection_transfer_encoding_smuggling",
    post_chunked(f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n", "Connection: Transfer-Encoding"),
    ok(app("POST", body=SMUGGLED)),
)
case("connection_host", get(A_TARGET, "Connection: Host"), ok(GET_A))
case(
    "connection_close_content_length",
    post("hello", "Content-Length: 5", "Connection: close, Content-Length"),
    ok(app("POST", body="hello"), closed=True),
)
case(
    "connection_keep_alive_transfer_encoding",
    post_chunked(HELLO_CHUNKED, "Connection: keep-alive, Transfer-Encoding"),
    ok(app("POST", body="hello")),
)
case(
    "connection_content_length_http10",
    msg(
        f"POST {A_TARGET} HTTP/1.0",
        "Content-Length: 5",
        "Connection: keep-alive, Content-Length",
        body="hello",
    ),
    ok(app("POST", body="hello")),
)

# -- 8. Response side: the app answers raw bytes to `GET /@MK@/r` ------------------------------

R_TARGET = "/@MK@/r"
R_REQUEST = get(R_TARGET)
GET_R = app("GET", R_TARGET)


def response_case(
    name: str,
    raw: bytes,
    *outcomes: Outcome | tuple[Outcome, ...],
    close: bool = False,
    method: str = "GET",
) -> None:
    request = msg(f"{method} {R_TARGET} HTTP/1.1", HOST)
    extra = {"methods": (method,)} if method != "GET" else {}
    case(name, request, *outcomes, response=raw, response_close=close, **extra)  # type: ignore[arg-type]


def answered(status: int = 200, body: bytes | None = b"ok", closed: bool | None = False) -> Outcome:
    return Outcome((status,), closed, (GET_R,), bodies=(body,))


def bad_gateway() -> Outcome:
    return Outcome((502,), None, (GET_R,))


def cut_short(status: int = 200) -> Outcome:
    """The head went out, then the body broke: the client sees it cut off by a close."""
    return Outcome((status,), True, (GET_R,), truncated=True)


OK_2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
response_case("response_plain", OK_2, answered())
response_case("response_100_then_200", b"HTTP/1.1 100 Continue\r\n\r\n" + OK_2, answered())
response_case(
    "response_103_then_200",
    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n" + OK_2,
    answered(),
)
response_case(
    "response_two_1xx_then_200",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK_2,
    answered(),
)
response_case(
    "response_204_with_body",
    b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle",
    answered(204, b""),
)
response_case(
    "response_204_with_content_length_and_body",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    answered(204, b""),
)
response_case(
    "response_304_with_content_length",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    answered(304, b""),
)
response_case(
    "response_304_with_chunked",
    b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
    answered(304, b""),
)
response_case(
    "response_body_longer_than_content_length",
    OK_2 + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle",
    answered(),
)
response_case(
    "response_extra_404_after_body",
    OK_2 + b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    answered(),
)
response_case(
    "response_content_length_and_chunked",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    bad_gateway(),
    answered(body=b"hello", closed=None),
)
response_case(
    "response_chunked_and_content_length",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    bad_gateway(),
    answered(body=b"hello", closed=None),
)
for label, value in (
    ("alpha", b"abc"),
    ("negative", b"-1"),
    ("plus", b"+2"),
    ("hex", b"0x2"),
    ("list_differ", b"2, 3"),
    ("inner_space", b"2 2"),
    ("empty", b""),
):
    response_case(
        f"response_content_length_{label}",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\nok",
        bad_gateway(),
    )
response_case(
    "response_content_length_two_lines_differ",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    bad_gateway(),
)
response_case(
    "response_content_length_two_lines_equal",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    answered(),
    bad_gateway(),
)
response_case(
    "response_content_length_leading_zero",
    b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok",
    answered(),
)
response_case(
    "response_connection_content_length",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Content-Length\r\n\r\nok",
    answered(),
)
response_case(
    "response_connection_transfer_encoding",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    answered(body=b"hello"),
)
response_case(
    "response_chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
    answered(body=b"hello"),
)
response_case(
    "response_chunked_trailers",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    answered(body=b"hello"),
)
response_case(
    "response_chunked_extension",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
    answered(body=b"hello"),
)
response_case(
    "response_http10_no_length",
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
    answered(body=b"until close"),
    close=True,
)
response_case(
    "response_http11_no_length_close",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
    answered(body=b"until close"),
    close=True,
)
response_case(
    "response_connection_close_with_length",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    answered(),
    close=True,
)
response_case(
    "response_head_with_content_length",
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
    Outcome((200,), False, (app("HEAD", R_TARGET),), bodies=(b"",)),
    method="HEAD",
)
response_case(
    "response_head_with_chunked",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    Outcome((200,), False, (app("HEAD", R_TARGET),), bodies=(b"",)),
    method="HEAD",
)
response_case(
    "response_101_to_plain_request",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    bad_gateway(),
)
for label, raw in (
    ("status_letters", b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status_two_digits", b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("status_four_digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("version_letters", b"HTTP/1.x 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ("nul_in_field", b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok"),
    ("field_without_colon", b"HTTP/1.1 200 OK\r\nBad field\r\nContent-Length: 2\r\n\r\nok"),
    (
        "head_over_64k",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 70 * 1024 + b"\r\nContent-Length: 2\r\n\r\nok",
    ),
):
    response_case(f"response_{label}", raw, bad_gateway())
# Bytes that cannot begin a response, on a reused connection, may be left over from the
# connection's previous response: a GET is then retried once on a fresh connection.
for label, raw in (
    ("not_http", b"FOO BAR\r\n\r\n"),
    ("icy", b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok"),
):
    response_case(f"response_{label}", raw, bad_gateway(), Outcome((200,), False, (GET_R, GET_R)))
# A request that met a reused keep-alive connection the app closed without answering may be sent
# again on a fresh one (as Go's transport does): then the app sees it twice and answers 200.
response_case(
    "response_nothing_then_close",
    b"",
    bad_gateway(),
    Outcome((200,), False, (GET_R, GET_R)),
    close=True,
)
response_case(
    "response_partial_head_then_close",
    b"HTTP/1.1 200 OK\r\nContent-Le",
    bad_gateway(),
    close=True,
)
response_case(
    "response_body_shorter_than_length_then_close",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
    cut_short(),
    bad_gateway(),
    close=True,
)
response_case(
    "response_chunk_size_invalid",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    cut_short(),
    bad_gateway(),
)
response_case(
    "response_chunk_data_without_crlf",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    cut_short(),
    bad_gateway(),
)
# RFC 9112 §5.1/§5.2: a proxy must either repair these (drop the whitespace, unfold) or reject
# the response with 502; what it forwards must be well-framed either way.
response_case(
    "response_space_before_colon",
    b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    answered(closed=None),
    bad_gateway(),
)
response_case(
    "response_obs_fold",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
    answered(closed=None),
    bad_gateway(),
)
response_case(
    "response_bare_lf",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    answered(closed=None),
    bad_gateway(),
)
response_case(
    "response_status_no_reason",
    b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    answered(),
)
response_case(
    "response_status_no_space_no_reason",
    b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
    answered(closed=None),
    bad_gateway(),
)
