"""gRPC end to end: a grpcio client -> the sidecar process (h2c) -> a grpcio server.

The service is registered with `grpc.method_handlers_generic_handler` and no (de)serializers, so
messages are raw bytes and no .proto is needed. Checks what gRPC lives on: trailers (grpc-status,
grpc-message, trailing metadata), messages of a server stream arriving as they are sent, and
deadlines.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.harness import free_port, knative_env, running, start_sidecar

pytestmark = pytest.mark.timeout(60)

SERVICE = "test.Echo"
STREAM_INTERVAL = 0.3


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    metadata = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "t-" + metadata.get("x-meta", "")),))
    return b"Hello " + request + b"!"


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for index in range(int(request)):
        if index:
            time.sleep(STREAM_INTERVAL)
        yield b"message %d" % index


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-why", "because"),))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today: " + request.decode())
    raise AssertionError("abort returns no more")


def _sleep(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(float(request))
    return b"woke"


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Sleep": grpc.unary_unary_rpc_method_handler(_sleep),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = knative_env(app_port, free_port(), CONTAINER_CONCURRENCY="4")
    try:
        with running(start_sidecar(env)) as sidecar:
            with grpc.insecure_channel(f"127.0.0.1:{sidecar.port}") as chan:
                yield chan
    finally:
        server.stop(0)


def test_unary_with_metadata_and_trailing_metadata(channel: grpc.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    response, outcome = call.with_call(b"world", metadata=(("x-meta", "m1"),), timeout=10)
    assert response == b"Hello world!"
    assert outcome.code() == grpc.StatusCode.OK
    assert ("x-trailer", "t-m1") in outcome.trailing_metadata()


def test_server_streaming_messages_arrive_as_sent(channel: grpc.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")
    arrivals = []
    messages = []
    for message in call(b"4", timeout=10):
        arrivals.append(time.monotonic())
        messages.append(message)
    assert messages == [b"message %d" % i for i in range(4)]
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    # Spaced as the server sent them, not batched at the end.
    assert all(gap > STREAM_INTERVAL / 2 for gap in gaps), gaps


def test_error_status_message_and_trailers(channel: grpc.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Fail")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"sorry", timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "not today: sorry"
    assert ("x-why", "because") in error.trailing_metadata()


def test_deadline_exceeded(channel: grpc.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Sleep")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"2", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The channel (one HTTP/2 connection through the sidecar) carries on.
    assert channel.unary_unary(f"/{SERVICE}/Unary")(b"again", timeout=10) == b"Hello again!"


def test_many_concurrent_calls_on_one_channel(channel: grpc.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")
    pending = [call.future(b"%d" % i, timeout=10) for i in range(40)]
    assert [f.result() for f in pending] == [b"Hello %d!" % i for i in range(40)]
