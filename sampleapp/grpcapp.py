"""The gRPC mode (`sampleapp --grpc`, `SAMPLEAPP_PROTOCOL=grpc`): the same app as gRPC over h2c.

Services (sampleapp/protos/hello.proto):
- `hello.Greeter`: `SayHello` -> "Hello {TARGET}!"; `StreamHellos` (server streaming, `count`
  replies `interval_ms` apart); `Sleep` (holds the call `milliseconds`); `Fail` (ends with the
  requested status, message and trailing metadata).
- `grpc.health.v1.Health` (grpcio-health-checking): `Check`/`Watch` for "" and "hello.Greeter",
  SERVING once `READY_AFTER_SECONDS` have passed since listening and while not switched off.
- `hello.Readiness/Set`: switches the health status, as `POST /healthz?ready=0|1` does in HTTP mode.

A request outside a knob's range ends with INVALID_ARGUMENT and the message the HTTP mode gives in
its 400 body. grpcio is imported only by this module, which `main` loads only in gRPC mode, so the
HTTP mode starts as it did without it; grpcio comes with the `grpc` extra
(`pip install 'queueproxy[grpc]'`).

Runs on asyncio's own loop: grpc.aio drives its completion queue from the loop it is given, and
uvloop is not among the loops it supports.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
from collections.abc import AsyncIterator, Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sampleapp.config import Settings
from sampleapp.knobs import MAX_DELAY_MS, KnobError
from sampleapp.main import stop_signal
from sampleapp.protos import hello_pb2, hello_pb2_grpc
from sampleapp.readiness import Readiness

GREETER = "hello.Greeter"
# Health/Check answers for these names: "" is the whole server, by gRPC's health protocol.
HEALTH_SERVICES = ("", GREETER)
MAX_STREAM_COUNT = 100_000  # the /stream knob's limit
# Trailing metadata a client can ask Fail for: gRPC's key syntax, no reserved `grpc-` keys, no
# binary `-bin` keys (values are text), and small enough for any client's header list limit
# (grpcio's default is 8 KiB for all metadata).
MAX_TRAILERS = 32
MAX_TRAILER_BYTES = 4096
# Fail's status message travels percent-encoded in the same trailers (`grpc-message`, up to 3
# bytes per byte): with this cap and the trailers' own, the whole stays under 8 KiB. Unbounded, a
# long message made the client end the call RESOURCE_EXHAUSTED instead of the status asked for.
MAX_MESSAGE_BYTES = 512
_TRAILER_KEY = re.compile(r"[0-9a-z_.-]+")
_TRAILER_VALUE = re.compile(r"[\x20-\x7e]*")
_FAILURE_CODES = {code.value[0]: code for code in grpc.StatusCode if code.value[0] != 0}
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Greeter(hello_pb2_grpc.GreeterServicer):
    def __init__(self, target: str) -> None:
        self._greeting = f"Hello {target}!"

    async def SayHello(
        self, request: hello_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> hello_pb2.HelloReply:
        return hello_pb2.HelloReply(message=self._greeting)

    async def StreamHellos(
        self, request: hello_pb2.StreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[hello_pb2.StreamReply]:
        count = request.count if request.HasField("count") else 5
        interval_ms = request.interval_ms if request.HasField("interval_ms") else 100.0
        if count > MAX_STREAM_COUNT:
            await _invalid(context, KnobError("count", str(count), f"0..{MAX_STREAM_COUNT}"))
        await _check_milliseconds(context, "interval_ms", interval_ms)
        for index in range(count):
            if index:
                await asyncio.sleep(interval_ms / 1000)
            # Each reply goes out as it is yielded: the proxy in front must pass it on at once.
            yield hello_pb2.StreamReply(index=index, message=self._greeting)

    async def Sleep(
        self, request: hello_pb2.SleepRequest, context: grpc.aio.ServicerContext
    ) -> hello_pb2.HelloReply:
        await _check_milliseconds(context, "milliseconds", request.milliseconds)
        await asyncio.sleep(request.milliseconds / 1000)
        return hello_pb2.HelloReply(message=self._greeting)

    async def Fail(
        self, request: hello_pb2.FailRequest, context: grpc.aio.ServicerContext
    ) -> hello_pb2.HelloReply:
        if request.code not in _FAILURE_CODES:
            await _invalid(context, KnobError("code", str(request.code), "a gRPC status in 1..16"))
        size = len(request.message.encode())
        if size > MAX_MESSAGE_BYTES:
            limit = f"at most {MAX_MESSAGE_BYTES} bytes (UTF-8)"
            await _invalid(context, KnobError("message", f"{size} bytes", limit))
        trailers = _trailers(request.trailers)
        if isinstance(trailers, KnobError):
            await _invalid(context, trailers)
        await context.abort(
            _FAILURE_CODES[request.code], request.message, trailing_metadata=trailers
        )
        raise AssertionError("abort() returns only by raising")


def _trailers(requested: Mapping[str, str]) -> tuple[tuple[str, str], ...] | KnobError:
    if len(requested) > MAX_TRAILERS:
        return KnobError("trailers", f"{len(requested)} entries", f"at most {MAX_TRAILERS}")
    size = 0
    for key, value in requested.items():
        if not _TRAILER_KEY.fullmatch(key) or key.startswith("grpc-") or key.endswith("-bin"):
            return KnobError(
                "trailers", key, "keys of 0-9 a-z _ . -, not starting grpc- nor ending -bin"
            )
        if not _TRAILER_VALUE.fullmatch(value):
            return KnobError(f"trailers[{key}]", value, "printable ASCII")
        size += len(key) + len(value)
    if size > MAX_TRAILER_BYTES:
        return KnobError("trailers", f"{size} bytes", f"at most {MAX_TRAILER_BYTES} bytes")
    return tuple(sorted(requested.items()))


async def _check_milliseconds(context: grpc.aio.ServicerContext, field: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= MAX_DELAY_MS):
        await _invalid(context, KnobError(field, f"{value:g}", f"a number in 0..{MAX_DELAY_MS:g}"))


async def _invalid(context: grpc.aio.ServicerContext, error: KnobError) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class HealthSwitch(hello_pb2_grpc.ReadinessServicer):
    """Keeps grpc.health.v1's answer equal to `Readiness.is_ready` (sampleapp/readiness.py)."""

    def __init__(self, readiness: Readiness, servicer: health.aio.HealthServicer) -> None:
        self.readiness = readiness
        self.servicer = servicer

    async def sync(self) -> str:
        ready = self.readiness.is_ready(asyncio.get_running_loop().time())
        status = health_pb2.HealthCheckResponse.SERVING if ready else _NOT_SERVING
        for service in HEALTH_SERVICES:
            await self.servicer.set(service, status)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)

    async def Set(
        self, request: hello_pb2.SetReadinessRequest, context: grpc.aio.ServicerContext
    ) -> hello_pb2.SetReadinessReply:
        self.readiness.switched_on = request.serving
        return hello_pb2.SetReadinessReply(status=await self.sync())


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; return the exit code (1 when the port cannot be bound)."""
    loop = asyncio.get_running_loop()
    stop = await stop_signal(settings.startup_delay)
    if stop is None:
        return 0

    server = grpc.aio.server(
        options=[
            # grpcio binds with SO_REUSEPORT by default: a second app on a taken port would
            # share it silently instead of failing as the HTTP mode does.
            ("grpc.so_reuseport", 0),
            # The HTTP mode's keep-alive timeout: an idle connection is closed (with GOAWAY).
            ("grpc.max_connection_idle_ms", max(1, int(settings.keepalive_timeout * 1000))),
        ]
    )
    health_servicer = health.aio.HealthServicer()
    switch = HealthSwitch(Readiness(settings.ready_after), health_servicer)
    hello_pb2_grpc.add_GreeterServicer_to_server(Greeter(settings.target), server)
    hello_pb2_grpc.add_ReadinessServicer_to_server(switch, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port = server.add_insecure_port(f"{host}:{settings.port}")
    except RuntimeError as error:  # grpcio >= 1.5x raises; older ones returned 0
        port, why = 0, str(error)
    else:
        why = "address in use or not available"
    if port == 0:
        print(
            f"sampleapp: cannot listen on {settings.host}:{settings.port}: {why}", file=sys.stderr
        )
        return 1

    switch.readiness.listening(loop.time())
    await switch.sync()
    await server.start()
    # Health turns SERVING by itself once READY_AFTER_SECONDS have passed.
    ready_later = asyncio.ensure_future(_sync_after(switch, settings.ready_after))
    try:
        print(f"sampleapp listening on grpc://{host}:{port}", flush=True)
        await stop.wait()
        # Health answers NOT_SERVING from here on; running calls get the grace period.
        await health_servicer.enter_graceful_shutdown()
    finally:
        ready_later.cancel()
        await server.stop(settings.shutdown_grace)
    return 0


async def _sync_after(switch: HealthSwitch, delay: float) -> None:
    await asyncio.sleep(delay)
    await switch.sync()
