"""The sample app's gRPC mode (issue 10): a real `python -m sampleapp --grpc` process and a real
grpcio client, plus the committed stubs and the mode's settings.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sampleapp.config import ConfigError, load
from sampleapp.grpcapp import MAX_MESSAGE_BYTES, MAX_TRAILER_BYTES, MAX_TRAILERS
from sampleapp.protos import hello_pb2, hello_pb2_grpc
from tests.harness import ROOT
from tests.sampleapp_helpers import RunningApp, read_line, run_app_command, start_app

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    running = start_app(SAMPLEAPP_PROTOCOL="grpc", TARGET="gRPC")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def channel(app: RunningApp) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{app.port}") as opened:
        yield opened


@pytest.fixture
def greeter(channel: grpc.Channel) -> hello_pb2_grpc.GreeterStub:
    return hello_pb2_grpc.GreeterStub(channel)


def check(channel: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_listening_line_names_grpc(app: RunningApp) -> None:
    assert app.listening_line == f"sampleapp listening on grpc://127.0.0.1:{app.port}"


def test_say_hello_greets_the_target(greeter: hello_pb2_grpc.GreeterStub) -> None:
    reply, call = greeter.SayHello.with_call(hello_pb2.HelloRequest(), timeout=5)
    assert reply.message == "Hello gRPC!"
    assert call.code() is grpc.StatusCode.OK


def test_stream_sends_each_reply_as_it_is_made(greeter: hello_pb2_grpc.GreeterStub) -> None:
    started = time.monotonic()
    arrivals = []
    for reply in greeter.StreamHellos(
        hello_pb2.StreamRequest(count=4, interval_ms=150), timeout=10
    ):
        arrivals.append((reply.index, time.monotonic() - started))
        assert reply.message == "Hello gRPC!"
    assert [index for index, _ in arrivals] == [0, 1, 2, 3]
    times = [at for _, at in arrivals]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Each message arrives on its own, about 150 ms after the one before (not all at the end).
    assert all(0.12 <= gap <= 0.6 for gap in gaps), gaps
    assert arrivals[0][1] < 0.5


def test_stream_defaults_to_five_replies(greeter: hello_pb2_grpc.GreeterStub) -> None:
    replies = list(greeter.StreamHellos(hello_pb2.StreamRequest(interval_ms=0), timeout=10))
    assert [reply.index for reply in replies] == [0, 1, 2, 3, 4]


def test_sleep_holds_the_call(greeter: hello_pb2_grpc.GreeterStub) -> None:
    started = time.monotonic()
    reply = greeter.Sleep(hello_pb2.SleepRequest(milliseconds=300), timeout=5)
    elapsed = time.monotonic() - started
    assert reply.message == "Hello gRPC!"
    assert 0.3 <= elapsed < 2.0


def test_sleep_past_the_deadline_is_deadline_exceeded(greeter: hello_pb2_grpc.GreeterStub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        greeter.Sleep(hello_pb2.SleepRequest(milliseconds=5000), timeout=0.3)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_largest_fail_allowed_still_ends_with_the_requested_status(
    greeter: hello_pb2_grpc.GreeterStub,
) -> None:
    # Every byte percent-encoded, and every trailer byte used: still within a client's limit.
    message = "\x01" * MAX_MESSAGE_BYTES
    trailers = {f"k{i:02}": "v" * (MAX_TRAILER_BYTES // MAX_TRAILERS - 3) for i in range(32)}
    request = hello_pb2.FailRequest(code=14, message=message, trailers=trailers)
    with pytest.raises(grpc.RpcError) as raised:
        greeter.Fail(request, timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == message


def test_fail_ends_with_the_requested_status_message_and_trailers(
    greeter: hello_pb2_grpc.GreeterStub,
) -> None:
    request = hello_pb2.FailRequest(
        code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        message="quota gone: ünïcode ok",
        trailers={"x-reason": "test", "retry-after-ms": "250"},
    )
    with pytest.raises(grpc.RpcError) as raised:
        greeter.Fail(request, timeout=5)
    error = raised.value
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "quota gone: ünïcode ok"
    trailers = dict(error.trailing_metadata())
    assert trailers["x-reason"] == "test"
    assert trailers["retry-after-ms"] == "250"


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        (hello_pb2.FailRequest(code=0), "code"),
        (hello_pb2.FailRequest(code=17), "code"),
        (hello_pb2.FailRequest(code=13, trailers={"grpc-status": "0"}), "trailers"),
        (hello_pb2.FailRequest(code=13, trailers={"Upper": "x"}), "trailers"),
        (hello_pb2.FailRequest(code=13, trailers={"x-bin": "x"}), "trailers"),
        (hello_pb2.FailRequest(code=13, trailers={"x": "line\nbreak"}), "trailers[x]"),
        (hello_pb2.FailRequest(code=13, trailers={f"k{i}": "v" for i in range(33)}), "trailers"),
        (hello_pb2.FailRequest(code=13, trailers={"big": "v" * 5000}), "trailers"),
        (hello_pb2.FailRequest(code=13, message="x" * 100_000), "message"),
        (hello_pb2.FailRequest(code=13, message="é" * 257), "message"),
    ],
    ids=[
        "ok",
        "17",
        "reserved",
        "upper",
        "binary",
        "newline",
        "too-many",
        "too-big",
        "long-message",
        "long-message-in-utf8",
    ],
)
def test_fail_refuses_what_it_cannot_send(
    greeter: hello_pb2_grpc.GreeterStub, request_: hello_pb2.FailRequest, named: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        greeter.Fail(request_, timeout=5)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"bad {named}=")


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda g: g.Sleep(hello_pb2.SleepRequest(milliseconds=-1), timeout=5), "milliseconds"),
        (lambda g: g.Sleep(hello_pb2.SleepRequest(milliseconds=float("nan")), timeout=5),
         "milliseconds"),
        (lambda g: g.Sleep(hello_pb2.SleepRequest(milliseconds=1e9), timeout=5), "milliseconds"),
        (lambda g: list(g.StreamHellos(hello_pb2.StreamRequest(count=100_001), timeout=5)),
         "count"),
        (lambda g: list(g.StreamHellos(hello_pb2.StreamRequest(interval_ms=-5), timeout=5)),
         "interval_ms"),
    ],
    ids=["negative-sleep", "nan-sleep", "huge-sleep", "huge-count", "negative-interval"],
)  # fmt: skip
def test_knobs_out_of_range_are_invalid_argument_naming_the_field(
    greeter: hello_pb2_grpc.GreeterStub, call: object, named: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        call(greeter)  # type: ignore[operator]
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"bad {named}=")


def test_health_flips_with_readiness_set(channel: grpc.Channel) -> None:
    switch = hello_pb2_grpc.ReadinessStub(channel)
    assert check(channel) == SERVING
    assert check(channel, "hello.Greeter") == SERVING
    try:
        reply = switch.Set(hello_pb2.SetReadinessRequest(serving=False), timeout=5)
        assert reply.status == "NOT_SERVING"
        assert check(channel) == NOT_SERVING
        assert check(channel, "hello.Greeter") == NOT_SERVING
        # The greeting itself still answers: readiness is what the probe sees, not an outage.
        assert hello_pb2_grpc.GreeterStub(channel).SayHello(hello_pb2.HelloRequest()).message
    finally:
        reply = switch.Set(hello_pb2.SetReadinessRequest(serving=True), timeout=5)
    assert reply.status == "SERVING"
    assert check(channel) == SERVING


def test_health_watch_sees_the_flip(channel: grpc.Channel) -> None:
    statuses: list[int] = []
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="hello.Greeter"), timeout=10
    )

    def collect() -> None:
        for reply in watch:
            statuses.append(reply.status)
            if len(statuses) == 3:
                return

    reader = threading.Thread(target=collect)
    reader.start()
    switch = hello_pb2_grpc.ReadinessStub(channel)
    try:
        deadline = time.monotonic() + 5
        while not statuses and time.monotonic() < deadline:
            time.sleep(0.02)
        switch.Set(hello_pb2.SetReadinessRequest(serving=False), timeout=5)
        while len(statuses) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        switch.Set(hello_pb2.SetReadinessRequest(serving=True), timeout=5)
        reader.join(10)
        watch.cancel()
    assert statuses == [SERVING, NOT_SERVING, SERVING]


def test_unknown_health_service_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        check(channel, "no.such.Service")
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_ready_after_keeps_health_not_serving_then_serving() -> None:
    running = start_app(SAMPLEAPP_PROTOCOL="grpc", READY_AFTER_SECONDS="0.8")
    try:
        listening = time.monotonic()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
            assert check(opened) == NOT_SERVING
            while check(opened) != SERVING:
                assert time.monotonic() - listening < 5
                time.sleep(0.05)
        assert time.monotonic() - listening >= 0.6
    finally:
        assert running.stop() == 0


def test_sigterm_lets_running_calls_finish_and_reports_not_serving() -> None:
    running = start_app(SAMPLEAPP_PROTOCOL="grpc", SHUTDOWN_GRACE_SECONDS="5")
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as opened:
        watch = health_pb2_grpc.HealthStub(opened).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert next(watch).status == SERVING
        slow = hello_pb2_grpc.GreeterStub(opened).Sleep.future(
            hello_pb2.SleepRequest(milliseconds=800), timeout=10
        )
        time.sleep(0.3)
        running.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING  # at once, while the slow call still runs
        assert not slow.done()
        assert slow.result(timeout=10).message == "Hello World!"
    assert running.proc.wait(10) == 0


@pytest.mark.parametrize(
    ("argv", "env"),
    [([], {"SAMPLEAPP_PROTOCOL": "grpcc"}), (["--protocol", "h3"], {})],
    ids=["variable", "flag"],
)
def test_bad_protocol_exits_1_naming_it(argv: list[str], env: dict[str, str]) -> None:
    proc = run_app_command([sys.executable, "-m", "sampleapp", *argv], HOST="127.0.0.1", **env)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert ("SAMPLEAPP_PROTOCOL='grpcc'" if env else "--protocol: 'h3'") in stderr
    assert "expected one of http, grpc" in stderr


def test_grpc_flag_and_variable_choose_the_mode() -> None:
    assert load({}, ["--grpc"]).protocol == "grpc"
    assert load({"SAMPLEAPP_PROTOCOL": "grpc"}).protocol == "grpc"
    assert load({"SAMPLEAPP_PROTOCOL": "grpc"}, ["--protocol", "http"]).protocol == "http"
    assert load({}).protocol == "http"
    with pytest.raises(ConfigError, match="SAMPLEAPP_PROTOCOL='HTTP'"):
        load({"SAMPLEAPP_PROTOCOL": "HTTP"})


def test_grpc_port_in_use_exits_1() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_app_command(
            [sys.executable, "-m", "sampleapp", "--grpc"], HOST="127.0.0.1", PORT=str(port)
        )
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr


def test_http_mode_never_loads_grpcio() -> None:
    code = (
        "import sys, asyncio\n"
        "from sampleapp.main import build_app\n"
        "from sampleapp.config import load\n"
        "build_app(load({}))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'grpc_health', 'google', 'h2'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_console_script_with_grpc_flag_serves_grpc() -> None:
    script = Path(sys.executable).with_name("sampleapp")
    proc = run_app_command([str(script), "--grpc", "--host", "127.0.0.1", "--port", "0"])
    try:
        line = read_line(proc, 20)
        match = re.fullmatch(r"sampleapp listening on grpc://127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        with grpc.insecure_channel(f"127.0.0.1:{match[1]}") as opened:
            stub = hello_pb2_grpc.GreeterStub(opened)
            assert stub.SayHello(hello_pb2.HelloRequest(), timeout=5).message == "Hello World!"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


# --- the committed stubs ---------------------------------------------------------------------

GENERATED = ("hello_pb2.py", "hello_pb2.pyi", "hello_pb2_grpc.py")
# Lines that carry the generator's version and nothing else.
_VERSION_LINES = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|    \d+,)$", re.MULTILINE
)


def test_regenerating_the_stubs_gives_the_committed_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for name in GENERATED:
        fresh = (tmp_path / "sampleapp" / "protos" / name).read_text()
        committed = (ROOT / "sampleapp" / "protos" / name).read_text()
        # A newer grpcio-tools only changes its version stamps; anything else is a stale stub.
        assert _VERSION_LINES.sub("", fresh) == _VERSION_LINES.sub("", committed), name


def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    [spec] = [r for r in requirements if re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0] == name]
    return tuple(int(part) for part in spec.split(">=")[1].split("."))


def test_the_grpc_extra_requires_what_the_committed_stubs_check_for() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["grpc"]
    stubs = ROOT / "sampleapp" / "protos"
    grpc_stamp = re.search(
        r"GRPC_GENERATED_VERSION = '([\d.]+)'", (stubs / "hello_pb2_grpc.py").read_text()
    )
    protobuf_stamp = re.search(
        r"# Protobuf Python Version: ([\d.]+)", (stubs / "hello_pb2.py").read_text()
    )
    assert grpc_stamp and protobuf_stamp
    assert _floor(extra, "grpcio") >= tuple(int(p) for p in grpc_stamp[1].split("."))
    assert _floor(extra, "protobuf") >= tuple(int(p) for p in protobuf_stamp[1].split("."))


# --- python -m sampleapp.client -------------------------------------------------------------------


def client(app: RunningApp, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sampleapp.client", "--address", f"127.0.0.1:{app.port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )


def test_client_calls_each_rpc(app: RunningApp) -> None:
    assert client(app, "hello").stdout == "Hello gRPC!\n"
    assert client(app, "sleep", "10").stdout == "Hello gRPC!\n"
    streamed = client(app, "stream", "--count", "2", "--interval", "50").stdout.splitlines()
    assert [line.split()[0] for line in streamed] == ["0", "1"]
    assert all(line.endswith("ms Hello gRPC!") for line in streamed)
    assert client(app, "health").stdout == "SERVING\n"
    try:
        assert client(app, "ready", "0").stdout == "NOT_SERVING\n"
        assert client(app, "health", "hello.Greeter").stdout == "NOT_SERVING\n"
    finally:
        assert client(app, "ready", "1").stdout == "SERVING\n"


def test_client_reports_a_failed_call_and_exits_1(app: RunningApp) -> None:
    done = client(app, "fail", "14", "try later", "--trailer", "retry-after=1")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == ["UNAVAILABLE: try later", "retry-after: 1"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("stream", "--count", "-1"), "--count"),
        (("stream", "--count", str(2**32)), "--count"),
        (("fail", "-1"), "code"),
        (("--timeout", "nan", "hello"), "--timeout"),
        (("--timeout", "-1", "hello"), "--timeout"),
        (("--timeout", "0", "hello"), "--timeout"),
    ],
)
def test_client_refuses_arguments_out_of_range_with_a_usage_error(
    args: tuple[str, ...], named: str
) -> None:
    # Refused before any call (nothing listens on port 1): exit 2 naming the argument; it was a
    # protobuf traceback (uint32 fields) or a DEADLINE_EXCEEDED without a call (timeouts).
    done = subprocess.run(
        [sys.executable, "-m", "sampleapp.client", "--address", "127.0.0.1:1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"argument {named}" in done.stderr
