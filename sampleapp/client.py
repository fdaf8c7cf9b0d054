"""A command-line client for the gRPC mode, on the committed stubs (no grpcurl needed):

    python -m sampleapp.client hello                    # Hello {TARGET}!
    python -m sampleapp.client stream --count 3 --interval 200
    python -m sampleapp.client sleep 500
    python -m sampleapp.client fail 14 "try later" --trailer retry-after=1
    python -m sampleapp.client health [SERVICE]         # grpc.health.v1.Health/Check
    python -m sampleapp.client ready 0|1                # flip what Health answers

`--address` defaults to 127.0.0.1:8013, the sidecar's port for h2c revisions as
`make run ARGS=--grpc` starts it. Prints each reply on a line (a stream's with the milliseconds
since the call started); a failed call prints its status, message and trailing metadata to stderr
and exits 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sampleapp.protos import hello_pb2, hello_pb2_grpc


def _uint32(text: str) -> int:
    # The proto fields are uint32: protobuf raises on anything else, after the channel is open.
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is not in 0..{2**32 - 1}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sampleapp.client", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--address", default="127.0.0.1:8013", help="host:port (127.0.0.1:8013)")
    parser.add_argument(
        "--authority", help="the :authority to send (an ingress routes by it); default: --address"
    )
    parser.add_argument("--timeout", type=_seconds, default=30.0, help="deadline in seconds (30)")
    calls = parser.add_subparsers(dest="call", required=True)
    calls.add_parser("hello", help="Greeter/SayHello")
    stream = calls.add_parser("stream", help="Greeter/StreamHellos")
    stream.add_argument("--count", type=_uint32, default=5)
    stream.add_argument("--interval", type=float, default=100.0, help="milliseconds")
    sleep = calls.add_parser("sleep", help="Greeter/Sleep")
    sleep.add_argument("milliseconds", type=float)
    fail = calls.add_parser("fail", help="Greeter/Fail")
    fail.add_argument("code", type=_uint32, help="gRPC status code, 1..16")
    fail.add_argument("message", nargs="?", default="")
    fail.add_argument("--trailer", action="append", default=[], metavar="KEY=VALUE")
    health = calls.add_parser("health", help="grpc.health.v1.Health/Check")
    health.add_argument("service", nargs="?", default="")
    ready = calls.add_parser("ready", help="Readiness/Set")
    ready.add_argument("serving", choices=("0", "1"))
    return parser


def run(options: argparse.Namespace, channel: grpc.Channel) -> None:
    greeter = hello_pb2_grpc.GreeterStub(channel)
    deadline = options.timeout
    if options.call == "hello":
        print(greeter.SayHello(hello_pb2.HelloRequest(), timeout=deadline).message)
    elif options.call == "stream":
        request = hello_pb2.StreamRequest(count=options.count, interval_ms=options.interval)
        started = time.monotonic()
        for reply in greeter.StreamHellos(request, timeout=deadline):
            elapsed_ms = (time.monotonic() - started) * 1000
            print(f"{reply.index} {elapsed_ms:.0f}ms {reply.message}", flush=True)
    elif options.call == "sleep":
        request = hello_pb2.SleepRequest(milliseconds=options.milliseconds)
        print(greeter.Sleep(request, timeout=deadline).message)
    elif options.call == "fail":
        trailers = dict(item.partition("=")[::2] for item in options.trailer)
        request = hello_pb2.FailRequest(
            code=options.code, message=options.message, trailers=trailers
        )
        print(greeter.Fail(request, timeout=deadline).message)
    elif options.call == "health":
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=options.service), timeout=deadline)
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    else:
        switch = hello_pb2_grpc.ReadinessStub(channel)
        request = hello_pb2.SetReadinessRequest(serving=options.serving == "1")
        print(switch.Set(request, timeout=deadline).status)


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    channel_options = [("grpc.default_authority", options.authority)] if options.authority else []
    with grpc.insecure_channel(options.address, options=channel_options) as channel:
        try:
            run(options, channel)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            for key, value in error.trailing_metadata() or ():
                print(f"{key}: {value}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
