"""The hand-written gRPC health check bytes (queueproxy/grpcwire.py) and the one-shot h2c client of
the probes (queueproxy/h2probe.py) against hostile servers.

The wire codec is checked against the real protobuf library as an oracle, over generated inputs;
the client against raw servers on 127.0.0.1 that send what an app should not: HTTP/1 answers,
resets, floods of PING, DATA and CONTINUATION frames, garbage messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queueproxy import grpcwire, h2probe
from queueproxy.grpcwire import WireError

# --- framing ----------------------------------------------------------------------------------


@given(st.binary(max_size=2048))
def test_frame_then_unframe_gives_the_message_back(message: bytes) -> None:
    framed = grpcwire.frame(message)
    assert framed[:5] == b"\x00" + struct.pack(">I", len(message))
    assert grpcwire.unframe(framed, max_message=2048) == message


@given(st.binary(max_size=300), st.data())
def test_every_truncation_or_extension_is_refused(message: bytes, data: st.DataObject) -> None:
    framed = grpcwire.frame(message)
    cut = data.draw(st.integers(0, len(framed) - 1))
    with pytest.raises(WireError):
        grpcwire.unframe(framed[:cut], max_message=1024)
    extra = data.draw(st.binary(min_size=1, max_size=16))
    with pytest.raises(WireError):
        grpcwire.unframe(framed + extra, max_message=1024)


@pytest.mark.parametrize("length", [1025, 1 << 20, 0xFFFF_FFFF])
def test_a_length_prefix_over_the_cap_is_refused_before_reading(length: int) -> None:
    # The body is short: a decoder that trusted the prefix would wait for (or allocate) 4 GiB.
    with pytest.raises(WireError, match="exceeds"):
        grpcwire.unframe(b"\x00" + struct.pack(">I", length) + b"\x08\x01", max_message=1024)


@pytest.mark.parametrize("flag", [1, 2, 0xFF])
def test_a_compressed_or_unknown_flag_is_refused(flag: int) -> None:
    with pytest.raises(WireError, match="compressed"):
        grpcwire.unframe(bytes([flag]) + b"\x00\x00\x00\x02\x08\x01", max_message=1024)


# --- protobuf, with the protobuf library as the oracle -----------------------------------------


@given(st.text(max_size=300))
def test_request_encoding_matches_protobuf(service: str) -> None:
    expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert grpcwire.encode_health_check_request(service) == expected


@given(st.integers(-(2**31), 2**31 - 1))
def test_response_decoding_matches_protobuf_for_every_status(status: int) -> None:
    wire = health_pb2.HealthCheckResponse(status=status).SerializeToString()  # type: ignore[arg-type]
    assert grpcwire.decode_health_check_response(wire) == status


_unknown_field = st.one_of(
    st.tuples(st.integers(2, 1000), st.just(0), st.integers(0, 2**64 - 1)),
    st.tuples(st.integers(2, 1000), st.just(1), st.binary(min_size=8, max_size=8)),
    st.tuples(st.integers(2, 1000), st.just(2), st.binary(max_size=40)),
    st.tuples(st.integers(2, 1000), st.just(5), st.binary(min_size=4, max_size=4)),
    # Field 1 itself in the length-delimited wire type (what a packed status would look like).
    st.tuples(st.just(1), st.just(2), st.binary(max_size=12)),
)


def _encode_field(field: int, wire_type: int, value: int | bytes) -> bytes:
    tag = grpcwire.encode_varint(field << 3 | wire_type)
    if wire_type == 0:
        assert isinstance(value, int)
        return tag + grpcwire.encode_varint(value)
    assert isinstance(value, bytes)
    if wire_type == 2:
        return tag + grpcwire.encode_varint(len(value)) + value
    return tag + value


@given(st.lists(_unknown_field, max_size=6), st.lists(st.integers(0, 2**64 - 1), max_size=3))
def test_unknown_fields_are_skipped_and_the_last_status_wins(
    unknown: list[tuple[int, int, int | bytes]], statuses: list[int]
) -> None:
    wire = b"".join(_encode_field(*field) for field in unknown)
    wire += b"".join(_encode_field(1, 0, status) for status in statuses)
    parsed = health_pb2.HealthCheckResponse.FromString(wire)
    assert grpcwire.decode_health_check_response(wire) == parsed.status


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_garbage_never_decodes_to_something_protobuf_disagrees_with(wire: bytes) -> None:
    try:
        ours = grpcwire.decode_health_check_response(wire)
    except WireError:
        return  # refusing is always allowed; any other exception fails the test
    try:
        theirs = health_pb2.HealthCheckResponse.FromString(wire).status
    except DecodeError:
        pytest.fail(f"we decoded {wire!r} as {ours}, protobuf refuses it")
    assert ours == theirs


@pytest.mark.parametrize(
    "value", [2**32 + 1, 2**33 + 2, 2**63 + 1, 2**64 - 1, 2**31, 2**32 - 1, 2**35 + 3]
)
def test_a_status_varint_past_32_bits_decodes_as_protobuf_does(value: int) -> None:
    # An int32 enum keeps the low 32 bits: 2**32 + 1 is SERVING to protobuf and to grpc-go.
    wire = b"\x08" + grpcwire.encode_varint(value)
    assert grpcwire.decode_health_check_response(wire) == (
        health_pb2.HealthCheckResponse.FromString(wire).status
    )


@pytest.mark.parametrize("values", [[1], [2, 1], [2**32 + 1], [0, 1, 1]])
def test_a_packed_status_is_an_unknown_field_as_protobuf_takes_it(values: list[int]) -> None:
    # `status` is singular: a length-delimited field 1 is not a packed value to protobuf (the
    # oracle answers UNKNOWN), so SERVING packed must not pass the probe.
    body = b"".join(grpcwire.encode_varint(value) for value in values)
    wire = b"\x0a" + grpcwire.encode_varint(len(body)) + body
    expected = health_pb2.HealthCheckResponse.FromString(wire).status
    assert grpcwire.decode_health_check_response(wire) == expected == 0
    # And before or after a plain status, the plain one decides.
    for both in (wire + b"\x08\x02", b"\x08\x02" + wire):
        assert grpcwire.decode_health_check_response(both) == 2
        assert health_pb2.HealthCheckResponse.FromString(both).status == 2


@pytest.mark.parametrize(
    "wire",
    [
        b"\x08",  # tag, then nothing
        b"\x08\x80",  # varint cut in the middle
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint of 11 bytes
        b"\x12\x05ab",  # length-delimited field shorter than its length
        b"\x12\xff\xff\xff\xff\x0f",  # a 4 GiB field in a 6-byte message
        b"\x0b",  # group start (wire type 3)
        b"\x0f",  # wire type 7
        b"\x00\x01",  # field number 0
    ],
)
def test_malformed_responses_are_refused(wire: bytes) -> None:
    with pytest.raises(WireError):
        grpcwire.decode_health_check_response(wire)


def test_an_empty_response_is_unknown() -> None:
    assert grpcwire.decode_health_check_response(b"") == 0


# --- the verdict on a response ----------------------------------------------------------------


def _response(**fields: object) -> h2probe.H2Response:
    base: dict[str, object] = {
        "status": 200,
        "headers": [("content-type", "application/grpc")],
        "body": grpcwire.frame(b"\x08\x01"),
        "trailers": [("grpc-status", "0")],
        "ended": True,
    }
    base.update(fields)
    return h2probe.H2Response(**base)  # type: ignore[arg-type]


def test_serving_passes() -> None:
    h2probe.check_grpc_response(_response())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"body": grpcwire.frame(b"\x08\x02")}, "status NOT_SERVING"),
        ({"body": grpcwire.frame(b"")}, "status UNKNOWN"),
        ({"body": grpcwire.frame(b"\x08\x03")}, "status SERVICE_UNKNOWN"),
        ({"body": grpcwire.frame(b"\x08\x07")}, "status status 7"),
        ({"body": b""}, "truncated gRPC message prefix"),
        ({"body": grpcwire.frame(b"\x08\x01")[:-1]}, "the body holds 1"),
        ({"body": grpcwire.frame(b"\x0b")}, "wire type 3"),
        ({"truncated": True}, "longer than"),
        ({"status": 503}, "HTTP status 503"),
        ({"trailers": []}, "without grpc-status"),
        (
            {"trailers": [("grpc-status", "5"), ("grpc-message", "unknown%20service%0A")]},
            "grpc-status 5 (NOT_FOUND): unknown service?",
        ),
        ({"trailers": [("grpc-status", "9" * 5000)]}, "grpc-status 999"),
        # Trailers-Only: the status comes in the headers and there is no body.
        ({"headers": [("grpc-status", "14")], "trailers": [], "body": b""}, "(UNAVAILABLE)"),
        # An OK in the headers of a reply that goes on with a body is no status (grpc-go: "server
        # closed the stream without sending trailers"); the trailers' own status decides.
        (
            {"headers": [("grpc-status", "0")], "trailers": []},
            "without grpc-status (the stream ended without trailers)",
        ),
        ({"headers": [("grpc-status", "0")], "trailers": [("x", "y")]}, "without grpc-status"),
        (
            {"headers": [("grpc-status", "0")], "trailers": [("grpc-status", "14")]},
            "(UNAVAILABLE)",
        ),
    ],
)
def test_everything_but_serving_fails_with_its_reason(fields: dict, reason: str) -> None:
    with pytest.raises(h2probe.H2ProbeError) as raised:
        h2probe.check_grpc_response(_response(**fields))
    assert reason in str(raised.value)
    assert len(str(raised.value)) < 400  # an app's long status cannot flood our log


# --- the client against hostile servers --------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    tasks: set[asyncio.Task] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or the test is over: nothing to report
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _headers_frame(headers: list[tuple[str, str]], end_stream: bool = False) -> bytes:
    frame = HeadersFrame(1)
    frame.data = Encoder().encode(headers)
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _data_frame(data: bytes, end_stream: bool = False) -> bytes:
    frame = DataFrame(1)
    frame.data = data
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


async def _after_preface(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the client's preface and request (it fits in one read) and send our SETTINGS."""
    await reader.read(65536)
    writer.write(SettingsFrame(0).serialize())


def _serving_reply(message: bytes = b"\x08\x01") -> bytes:
    return (
        _headers_frame([(":status", "200"), ("content-type", "application/grpc")])
        + _data_frame(grpcwire.frame(message))
        + _headers_frame([("grpc-status", "0")], end_stream=True)
    )


async def test_a_well_formed_serving_reply_passes() -> None:
    requests: list[bytes] = []

    async def serving(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.read(65536))
        writer.write(SettingsFrame(0).serialize() + _serving_reply())
        await reader.read(65536)

    async with raw_server(serving) as port:
        await h2probe.grpc_probe(port, "hello.Greeter", timeout=2)
    assert requests[0].startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    # The request message, framed, is in the bytes sent.
    assert grpcwire.frame(b"\x0a\x0dhello.Greeter") in requests[0]


def _endless(frame: bytes) -> Handler:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_preface(reader, writer)
        while True:
            writer.write(frame * 64)
            await writer.drain()

    return flood


def _headers_then(frame: bytes) -> Handler:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_preface(reader, writer)
        writer.write(_headers_frame([(":status", "200"), ("content-type", "application/grpc")]))
        while True:
            writer.write(frame * 64)
            await writer.drain()

    return flood


def _open_header_block() -> Handler:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_preface(reader, writer)
        first = HeadersFrame(1)
        first.data = Encoder().encode([(":status", "200")])
        writer.write(first.serialize())  # no END_HEADERS: CONTINUATION frames must follow
        continuation = ContinuationFrame(1)
        continuation.data = b"\x00" * 1000
        while True:
            writer.write(continuation.serialize() * 16)
            await writer.drain()

    return flood


def _once(payload: bytes, *, preface: bool = True) -> Handler:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write((SettingsFrame(0).serialize() if preface else b"") + payload)
        await writer.drain()
        await reader.read(65536)

    return answer


HTTP1_ANSWER = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"


def _goaway() -> bytes:
    frame = GoAwayFrame(0)
    frame.error_code = 2
    return frame.serialize()


def _reset() -> bytes:
    frame = RstStreamFrame(1)
    frame.error_code = 8
    return frame.serialize()


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (_endless(PingFrame(0).serialize()), "more than 262144 bytes"),
        (_headers_then(_data_frame(b"x" * 1000)), "longer than"),
        (_open_header_block(), "more than|continuation frames"),
        (_once(HTTP1_ANSWER, preface=False), "not an HTTP/2 server: it answered 'HTTP/1.1 '"),
        (_once(b""), "connection closed before the response ended"),
        (_once(_reset()), r"stream reset by the app \(CANCEL\)"),
        (_once(_goaway()), r"GOAWAY \(INTERNAL_ERROR\)"),
        (_once(_headers_frame([(":status", "2xx")])), "not a status code"),
        (_once(_serving_reply(b"\x08\x02")), "NOT_SERVING"),
        (_once(_serving_reply(b"\xff")), "malformed gRPC health check reply"),
        (_once(_headers_frame([(":status", "200"), ("grpc-status", "12")], True)),
         r"\(UNIMPLEMENTED\)"),
        (_once(_headers_frame([(":status", "200")], True)), "without grpc-status"),
        (_once(_headers_frame([(b":status", b"200"), (b"x", b"\xff\xfe")], True)), "grpc-status"),
        (_once(_headers_frame([(":status", "200"), ("grpc-status", "0")])
               + _data_frame(grpcwire.frame(b"\x08\x01"), end_stream=True)),
         "ended without trailers"),
    ],
    ids=[
        "ping-flood", "data-flood", "continuation-flood", "http1-answer", "closed", "reset",
        "goaway", "bad-status", "not-serving", "garbage-message", "trailers-only",
        "no-grpc-status", "odd-header-bytes", "ok-in-headers-serving-body-no-trailers",
    ],
)  # fmt: skip
async def test_hostile_replies_fail_the_probe_with_their_reason(
    handler: Handler, reason: str
) -> None:
    async with raw_server(handler) as port:
        with pytest.raises(h2probe.H2ProbeError) as raised:
            await h2probe.grpc_probe(port, "", timeout=5)
    assert re.search(reason, str(raised.value)), raised.value


async def test_the_apps_bytes_quoted_in_a_protocol_error_are_cut_to_size() -> None:
    # h2 quotes an invalid header value whole: a hostile app must not fill our log line with it.
    value = b" \x1b[31m" + b"y" * 12_000 + b" "
    handler = _once(_headers_frame([(b":status", b"200"), (b"x", value)]))
    async with raw_server(handler) as port:
        with pytest.raises(h2probe.H2ProbeError) as raised:
            await h2probe.grpc_probe(port, "", timeout=5)
    reason = str(raised.value)
    assert reason.startswith("HTTP/2 protocol error: ") and len(reason) < 400
    assert "\x1b" not in reason


async def test_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    async with raw_server(silent) as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await h2probe.grpc_probe(port, "", timeout=0.3)
        assert loop.time() - started < 1.5


async def test_h2c_get_reads_the_status_and_stops_at_the_body_cap() -> None:
    async def big_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _after_preface(reader, writer)
        writer.write(_headers_frame([(":status", "204")]))
        while True:  # never ends the stream
            writer.write(_data_frame(b"y" * 8000))
            await writer.drain()

    async with raw_server(big_body) as port:
        status = await h2probe.h2c_get("127.0.0.1", port, "/healthz", [], timeout=5)
    assert status == 204


async def test_a_probe_header_http2_forbids_fails_the_h2c_try_not_the_prober() -> None:
    from queueproxy.config import ProbeSpec
    from queueproxy.readiness import attempt

    requests: list[bytes] = []

    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()

    async with raw_server(http1) as port:
        with pytest.raises(h2probe.H2ProbeError, match="not valid in HTTP/2"):
            await h2probe.h2c_get("127.0.0.1", port, "/", [(":evil", "x")], timeout=2)
        spec = ProbeSpec("http", "127.0.0.1", port, headers=((":evil", "x"),))
        # The prober checks its headers first: ":evil" is no token (RFC 9110 section 5.1), so
        # neither try sends it (Go's client refuses it too); the probe fails with that reason.
        reason = await attempt(spec, 2.0, h2c_first=True)
    assert reason is not None and "invalid header field name ':evil'" in reason
    assert requests == []


@pytest.mark.parametrize(
    ("seconds", "header"),
    [(0.1, "100m"), (1, "1000m"), (0.0001, "1m"), (99_999.999, "99999999m"),
     (100_000, "100000S"), (10**12, "99999999S")],
)  # fmt: skip
def test_grpc_timeout_has_at_most_eight_digits(seconds: float, header: str) -> None:
    assert h2probe.grpc_timeout(seconds) == header
