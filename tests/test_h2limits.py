"""Sans-IO HTTP/2 pieces: flood budgets with an injected clock, the stream-error conversion of
malformed requests, and the HTTP2-Settings check of an h2c upgrade -- no sockets."""

from __future__ import annotations

import base64

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, StreamReset
from h2.exceptions import ProtocolError

from queueproxy.h1 import parse_request_head
from queueproxy.h2detect import PREFACE, h2c_upgrade_settings, preface_state, valid_settings
from queueproxy.h2limits import (
    MAX_HEADER_LIST_SIZE,
    PING_RATE,
    RESET_RATE,
    SETTINGS_RATE,
    FloodGuard,
    TokenBucket,
)
from queueproxy.h2stream import StrictServer, malformed_request, server_config, trailers_malformed
from queueproxy.h2upstream import malformed


def test_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=8, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(100.0625)  # half a token
    assert bucket.take(100.125)
    assert not bucket.take(100.125)
    # Idle time refills up to the burst, never beyond.
    assert [bucket.take(200.0) for _ in range(4)] == [True, True, True, False]


def test_bucket_ignores_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 5), (1, 0.5)])
def test_bucket_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


@pytest.mark.parametrize(
    "spend, budget, name",
    [
        (FloodGuard.reset, RESET_RATE, "stream resets"),
        (FloodGuard.ping, PING_RATE, "PING frames"),
        (FloodGuard.settings_frame, SETTINGS_RATE, "SETTINGS frames"),
    ],
)
def test_flood_guard_trips_after_the_burst_and_says_what(spend, budget, name) -> None:
    rate, burst = budget
    guard = FloodGuard(now=0.0)
    assert all(spend(guard, 0.0) for _ in range(int(burst)))
    assert guard.tripped == ""
    assert not spend(guard, 0.0)
    assert guard.tripped == name
    # A client within the steady rate is never stopped.
    steady = FloodGuard(now=0.0)
    assert all(spend(steady, t / rate) for t in range(int(burst) * 3))


def test_budgets_are_independent() -> None:
    guard = FloodGuard(now=0.0)
    while guard.ping(0.0):
        pass
    assert guard.reset(0.0)
    assert guard.settings_frame(0.0)


# -- Malformed requests are stream errors (RFC 9113 §8.1.1), the connection lives on -------------


def _pair() -> tuple[H2Connection, StrictServer]:
    client = H2Connection(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    server = StrictServer(config=server_config())
    server.initiate_connection()
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/")]


MALFORMED = {
    "connection": [*BASE, (b"connection", b"close")],
    "transfer-encoding": [*BASE, (b"transfer-encoding", b"chunked")],
    "keep-alive": [*BASE, (b"keep-alive", b"1")],
    "upgrade": [*BASE, (b"upgrade", b"h2c")],
    "te gzip": [*BASE, (b"te", b"gzip")],
    "upper-case name": [*BASE, (b"Upper", b"1")],
    "empty name": [*BASE, (b"", b"1")],
    "space in name": [*BASE, (b"a b", b"1")],
    "CRLF in value": [*BASE, (b"x", b"a\r\nb")],
    "NUL in value": [*BASE, (b"x", b"a\x00b")],
    "leading space": [*BASE, (b"x", b" a")],
    "trailing tab": [*BASE, (b"x", b"a\t")],
    "unknown pseudo": [*BASE, (b":weird", b"1")],
    ":status in a request": [(b":status", b"200"), *BASE],
    "no :scheme": [(b":method", b"GET"), (b":authority", b"x"), (b":path", b"/")],
    "no :path": BASE[:3],
    "empty :path": [*BASE[:3], (b":path", b"")],
    "absolute :path": [*BASE[:3], (b":path", b"http://x/")],
    "* not OPTIONS": [*BASE[:3], (b":path", b"*")],
    "no :method": BASE[1:],
    "repeated :method": [BASE[0], *BASE],
    "repeated :path": [*BASE, BASE[3]],
    "pseudo after regular": [*BASE[:3], (b"x", b"1"), BASE[3]],
    "no authority or host": [*BASE[:2], BASE[3]],
    "host differs": [*BASE, (b"host", b"y")],
    "userinfo in :authority": [*BASE[:2], (b":authority", b"user@x"), BASE[3]],
    "space in :authority": [*BASE[:2], (b":authority", b"a b"), BASE[3]],
    "slash in host": [*BASE[:2], BASE[3], (b"host", b"a/b")],
    "two hosts": [*BASE[:2], BASE[3], (b"host", b"x"), (b"host", b"x")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"x:443"), BASE[3]],
    "CONNECT without :authority": [(b":method", b"CONNECT")],
}
WELL_FORMED = {
    "plain": BASE,
    "IPv6 :authority": [*BASE[:2], (b":authority", b"[::1]:8012"), BASE[3]],
    "host only": [*BASE[:2], BASE[3], (b"host", b"x")],
    "host equals :authority": [*BASE, (b"host", b"x")],
    "te trailers": [*BASE, (b"te", b"trailers"), (b"content-type", b"application/grpc")],
    "OPTIONS *": [(b":method", b"OPTIONS"), BASE[1], BASE[2], (b":path", b"*")],
    "CONNECT": [(b":method", b"CONNECT"), (b":authority", b"x:443")],
    "empty value": [*BASE, (b"x", b"")],
    "inner space": [*BASE, (b"x", b"a b")],
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests(name: str) -> None:
    assert malformed_request(MALFORMED[name]) != ""


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed_requests(name: str) -> None:
    assert malformed_request(WELL_FORMED[name]) == ""


def test_request_trailers() -> None:
    assert trailers_malformed([(b"x-checksum", b"abc")]) == ""
    for bad in ([(b":path", b"/")], [(b"te", b"trailers")], [(b"X", b"1")], [(b"x", b"a\nb")]):
        assert trailers_malformed(bad) != "", bad


def test_an_invalid_content_length_resets_its_stream_only() -> None:
    # h2 checks content-length itself (always) and raises a connection error: StrictServer
    # makes it a stream error.
    client, server = _pair()
    client.send_headers(1, [*BASE, (b"content-length", b"abc")], end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events] == [StreamReset]
    assert events[0].error_code == ErrorCodes.PROTOCOL_ERROR
    assert not events[0].remote_reset
    answers = client.receive_data(server.data_to_send())
    assert any(isinstance(e, StreamReset) and e.stream_id == 1 for e in answers)
    # The next request on the same connection is fine.
    client.send_headers(3, BASE, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert isinstance(events[0], RequestReceived)
    assert events[0].stream_id == 3


def test_body_longer_than_content_length_resets_the_stream_and_returns_the_window() -> None:
    client, server = _pair()
    client.send_headers(1, [*BASE, (b"content-length", b"3")])
    server.receive_data(client.data_to_send())
    window = server._inbound_flow_control_window_manager.current_window_size
    client.send_data(1, b"toolong", end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert [type(e) for e in events] == [StreamReset]
    # The 7 bytes were acknowledged at connection level: nobody will ever read them.
    assert server._inbound_flow_control_window_manager.current_window_size >= window - 7
    client.send_headers(3, BASE, end_stream=True)
    assert isinstance(server.receive_data(client.data_to_send())[0], RequestReceived)


# -- Detection: the preface and Upgrade: h2c (h2detect) ----------------------------------------


def test_preface_is_recognised_in_pieces_and_anything_else_is_http1() -> None:
    assert preface_state(PREFACE) == 1
    assert preface_state(PREFACE + b"\x00\x00") == 1
    assert all(preface_state(PREFACE[:n]) == 0 for n in range(len(PREFACE)))
    assert preface_state(b"POST / HTTP/1.1\r\n") == -1
    assert preface_state(b"PRI * HTTP/2.0\r\n\r\nXX") == -1
    assert preface_state(b"PRX") == -1


SETTINGS = b"AAMAAABkAARAAAAAAAIAAAAA"


def _head(*lines: str, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return "\r\n".join([f"{method} / {version}", "Host: x", *lines, "", ""]).encode()


def test_h2c_upgrade_granted_only_by_the_rules() -> None:
    granted = [
        "Connection: Upgrade, HTTP2-Settings",
        "Upgrade: h2c",
        f"HTTP2-Settings: {SETTINGS.decode()}",
    ]
    assert h2c_upgrade_settings(parse_request_head(_head(*granted))) == SETTINGS
    among_others = _head(granted[0], "Upgrade: websocket, H2C", granted[2])
    assert h2c_upgrade_settings(parse_request_head(among_others)) == SETTINGS
    declined = [
        _head(*granted, "Content-Length: 5", method="POST"),  # a body
        _head(*granted, "Transfer-Encoding: chunked", method="POST"),
        _head("Connection: Upgrade", *granted[1:]),  # HTTP2-Settings not in Connection
        _head(*granted, granted[2]),  # two of them
        _head(*granted[:2], "HTTP2-Settings: not*base64"),
        _head(*granted[:2]),  # none
        _head(granted[0], "Upgrade: websocket", granted[2]),  # h2c not offered
    ]
    for head in declined:
        assert h2c_upgrade_settings(parse_request_head(head)) is None, head


def test_http2_settings_value() -> None:
    good = H2Connection(H2Configuration(client_side=True)).initiate_upgrade_connection()
    assert good is not None and valid_settings(good)
    assert valid_settings(b"")  # no settings at all is allowed
    assert valid_settings(b"AAMAAABkAARAAAAAAAIAAAAA")
    assert not valid_settings(b"!!")
    assert not valid_settings(base64.urlsafe_b64encode(b"12345"))  # not whole settings
    assert not valid_settings(b"AAMA+AB/")  # base64, not base64url


# -- The app's header blocks (h2upstream.malformed) ---------------------------------------------

OK = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"grpc-status", b"0")]


def test_well_formed_response_and_trailers() -> None:
    assert malformed(OK) == ""
    assert malformed([(b":status", b"204")]) == ""
    assert malformed([(b"grpc-status", b"0"), (b"grpc-message", b"")], trailers=True) == ""


@pytest.mark.parametrize(
    "fields, trailers",
    [
        ([(b"content-type", b"x")], False),  # no :status
        ([(b":status", b"20")], False),
        ([(b":status", b"abc")], False),
        ([(b"x", b"1"), (b":status", b"200")], False),  # pseudo after regular
        ([(b":status", b"200"), (b":status", b"200")], False),
        ([(b":status", b"200"), (b":path", b"/")], False),
        ([(b":status", b"200")], True),  # pseudo in trailers
        ([*OK, (b"Upper", b"1")], False),
        ([*OK, (b"", b"1")], False),
        ([*OK, (b"a b", b"1")], False),
        ([*OK, (b"connection", b"close")], False),
        ([*OK, (b"transfer-encoding", b"chunked")], False),
        ([*OK, (b"x", b"a\r\nb")], False),
        ([*OK, (b"x", b"a\x00b")], False),
        ([*OK, (b"x", b" lead")], False),
        ([*OK, (b"x", b"trail\t")], False),
        ([(b"x", b"a\nb")], True),
    ],
)
def test_malformed_response_fields(fields, trailers) -> None:
    assert malformed(fields, trailers=trailers) != ""


def test_header_list_over_the_advertised_size_ends_the_connection() -> None:
    client, server = _pair()
    client.send_headers(1, [*BASE, (b"x-big", b"v" * (MAX_HEADER_LIST_SIZE + 1))])
    with pytest.raises(ProtocolError):
        server.receive_data(client.data_to_send())
    # h2 sends GOAWAY: the HPACK state cannot be trusted after an aborted decode.
    events = client.receive_data(server.data_to_send())
    assert any(isinstance(e, ConnectionTerminated) for e in events)
