"""`h1request.upstream_head`: the head a request goes to the app with, without a network.

End-to-end coverage of the same rules (through real sockets) is in test_proxy_e2e.py and the
conformance corpus; these pin the function itself, field by field.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queueproxy.exchange import Exchange
from queueproxy.h1 import ProtocolError, parse_request_head
from queueproxy.h1request import upstream_head

APP = b"127.0.0.1:8080"


def build(head: bytes, client_ip: bytes = b"10.0.0.7") -> tuple[Exchange, list[bytes]]:
    """Parse `head`, render it for the app; the exchange and the rendered lines."""
    request = parse_request_head(head)
    exchange = Exchange(None, request)  # type: ignore[arg-type]  # the connection is unused
    rendered = upstream_head(exchange, request, client_ip, APP)
    assert rendered.endswith(b"\r\n\r\n")
    return exchange, rendered[:-4].split(b"\r\n")


def fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    return [tuple(line.split(b": ", 1)) for line in lines[1:]]  # type: ignore[misc]


def test_request_line_is_http11_with_host_first() -> None:
    _, lines = build(b"GET /a?b=c HTTP/1.0\r\nHost: example.com\r\nAccept: */*\r\n\r\n")
    assert lines[0] == b"GET /a?b=c HTTP/1.1"
    assert lines[1] == b"Host: example.com"
    assert (b"Accept", b"*/*") in fields(lines)


def test_missing_host_becomes_the_apps_address() -> None:
    _, lines = build(b"GET / HTTP/1.0\r\n\r\n")
    assert lines[1] == b"Host: " + APP


def test_hop_by_hop_and_connection_named_fields_go_but_framing_is_rendered() -> None:
    _, lines = build(
        b"POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, Content-Length\r\n"
        b"Keep-Alive: timeout=5\r\nX-Secret: s\r\nProxy-Connection: x\r\nContent-Length: 3\r\n"
        b"\r\n"
    )
    names = [name.lower() for name, _ in fields(lines)]
    for gone in (b"connection", b"keep-alive", b"x-secret", b"proxy-connection"):
        assert gone not in names
    # Naming Content-Length in Connection cannot unframe the body.
    assert (b"Content-Length", b"3") in fields(lines)


def test_chunked_request_is_reframed_by_the_decision() -> None:
    _, lines = build(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
    assert [f for f in fields(lines) if f[0].lower() == b"transfer-encoding"] == [
        (b"Transfer-Encoding", b"chunked")
    ]


def test_te_trailers_survives_as_the_only_te_value() -> None:
    _, lines = build(b"GET / HTTP/1.1\r\nHost: h\r\nTE: gzip, trailers\r\n\r\n")
    assert [f for f in fields(lines) if f[0].lower() == b"te"] == [(b"Te", b"trailers")]


def test_x_forwarded_for_gets_the_peer_and_forwarded_is_derived() -> None:
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    got = dict(fields(lines))
    assert got[b"X-Forwarded-For"] == b"1.2.3.4, 10.0.0.7"
    assert got[b"Forwarded"] == b"for=1.2.3.4;proto=https"


def test_a_clients_forwarded_field_is_kept_as_sent() -> None:
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=5.6.7.8\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"
    )
    assert [v for n, v in fields(lines) if n == b"Forwarded"] == [b"for=5.6.7.8"]


def test_k_original_host_replaces_host_and_is_not_forwarded() -> None:
    _, lines = build(b"GET / HTTP/1.1\r\nHost: h\r\nK-Original-Host: orig.example\r\n\r\n")
    assert lines[1] == b"Host: orig.example"
    assert all(n.lower() != b"k-original-host" for n, _ in fields(lines))


@pytest.mark.parametrize("value", [b"a b", b"a/b", b"[::1", b"x@y", b"a\x7fb"])
def test_invalid_k_original_host_is_a_400(value: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        build(b"GET / HTTP/1.1\r\nHost: h\r\nK-Original-Host: " + value + b"\r\n\r\n")
    assert raised.value.status == 400


def test_h2c_is_never_offered_to_the_app_other_upgrades_are() -> None:
    exchange, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n"
    )
    assert exchange.upgrade == b"websocket"
    assert (b"Upgrade", b"websocket") in fields(lines)
    exchange, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    )
    assert exchange.upgrade == b""
    assert all(n.lower() not in (b"upgrade", b"connection") for n, _ in fields(lines))


def test_probe_and_routing_fields_are_noted_by_first_value() -> None:
    exchange, _ = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nUser-Agent: kube-probe/1.29\r\nUser-Agent: other\r\n"
        b"K-Network-Probe: queue\r\nKnative-Serving-Tag: blue\r\nK-Proxy-Request: activator\r\n"
        b"\r\n"
    )
    assert exchange.user_agent == b"kube-probe/1.29"
    assert exchange.network_probe == b"queue"
    assert exchange.proxied is True
    assert exchange.knative_fields is not None
    assert exchange.knative_fields[b"knative-serving-tag"] == b"blue"


def test_idempotency_key_makes_a_post_retryable() -> None:
    exchange, _ = build(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    assert exchange.retryable is False
    exchange, _ = build(
        b"POST / HTTP/1.1\r\nHost: h\r\nIdempotency-Key: k1\r\nContent-Length: 0\r\n\r\n"
    )
    assert exchange.retryable is True


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).map(str.encode)
_value = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)


@given(st.lists(st.tuples(_token, _value), max_size=12))
def test_every_rendered_line_is_one_field_line(pairs: list[tuple[bytes, bytes]]) -> None:
    """Whatever valid fields a client sends, the app gets one line per field and no field the
    sidecar strips (a line break in the output would be a request the client smuggled)."""
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in pairs)
    try:
        _, lines = build(head + b"\r\n")
    except ProtocolError:
        return  # e.g. a Content-Length or Transfer-Encoding value the framing rules refuse
    for name, value in fields(lines):
        assert b"\r" not in value and b"\n" not in value
        assert name.lower() not in (b"connection", b"keep-alive", b"k-original-host")


# -- Knative's Forwarded shim reads each X-Forwarded-* field by its first value ----------------


def test_shim_reads_first_values_and_x_forwarded_for_keeps_every_line() -> None:
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\n"
        b"X-Forwarded-For: 3.3.3.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: first.example\r\nX-Forwarded-Host: second.example\r\n\r\n"
    )
    got = dict(fields(lines))
    # `Header.Get` in the shim: the first line of each; Go's proxy joins every prior line.
    assert got[b"Forwarded"] == b"for=1.1.1.1;host=first.example;proto=https, for=2.2.2.2"
    assert got[b"X-Forwarded-For"] == b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"


def test_an_empty_first_forwarded_is_replaced_by_the_shim() -> None:
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nForwarded: \r\nForwarded: for=9.9.9.9\r\n"
        b"X-Forwarded-Proto: https\r\n\r\n"
    )
    assert [v for n, v in fields(lines) if n.lower() == b"forwarded"] == [b"proto=https"]


def test_an_empty_first_forwarded_without_x_forwarded_fields_is_left_alone() -> None:
    _, lines = build(b"GET / HTTP/1.1\r\nHost: h\r\nForwarded: \r\nForwarded: for=9.9.9.9\r\n\r\n")
    assert [v for n, v in fields(lines) if n.lower() == b"forwarded"] == [b"", b"for=9.9.9.9"]


def test_connection_named_x_forwarded_for_still_feeds_the_shim() -> None:
    """The shim runs before Go's proxy drops what Connection names: Forwarded is built from the
    field, which the app then does not get (only our X-Forwarded-For)."""
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\n\r\n"
    )
    got = fields(lines)
    assert (b"Forwarded", b"for=1.2.3.4") in got
    assert [v for n, v in got if n == b"X-Forwarded-For"] == [b"10.0.0.7"]


@pytest.mark.parametrize("client_forwarded", [b"", b"Forwarded: for=9.9.9.9\r\n"])
def test_connection_named_forwarded_reaches_the_app_from_nobody(client_forwarded: bytes) -> None:
    _, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Forwarded\r\n"
        + client_forwarded
        + b"X-Forwarded-Proto: https\r\n\r\n"
    )
    assert all(n.lower() != b"forwarded" for n, _ in fields(lines))
    assert (b"X-Forwarded-Proto", b"https") in fields(lines)


def test_repeated_upgrade_lines_are_one_list() -> None:
    """RFC 9110 §5.3 (Go's proxy would offer only the first line)."""
    exchange, lines = build(
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Upgrade: websocket\r\nUpgrade: foo/2\r\n\r\n"
    )
    assert exchange.upgrade == b"websocket, foo/2"
    assert (b"Upgrade", b"websocket, foo/2") in fields(lines)


def test_http2_requests_get_the_same_forwarded_rules() -> None:
    """`h2stream.classify` applies the shim the same way to HTTP/2 fields."""
    from queueproxy.h2stream import Stream, classify

    stream = Stream(None, 1, b"GET", b"/")  # type: ignore[arg-type]  # the connection is unused
    classify(
        stream,
        [
            (b":method", b"GET"),
            (b"forwarded", b""),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-for", b"3.3.3.3"),
            (b"x-forwarded-proto", b"https"),
            (b"x-forwarded-proto", b"http"),
        ],
        b"example.com",
        b"10.0.0.7",
        APP,
    )
    sent = [(n, v) for n, v in stream.up_headers if n[:1] != b":"]
    assert [v for n, v in sent if n == b"forwarded"] == [b"for=1.1.1.1;proto=https"]
    assert [v for n, v in sent if n == b"x-forwarded-for"] == [b"1.1.1.1, 3.3.3.3, 10.0.0.7"]
    assert [v for n, v in sent if n == b"x-forwarded-proto"] == [b"https", b"http"]
