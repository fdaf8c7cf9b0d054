"""The sample app: its pure parts directly, its HTTP surface through a real process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from sampleapp.config import ConfigError, Settings, load
from sampleapp.knobs import DownloadKnobs, GreetingKnobs, KnobError, StreamKnobs
from sampleapp.pattern import CHUNK_SIZE, pattern_bytes, pattern_chunks, pattern_sha256
from sampleapp.readiness import Readiness
from sampleapp.work import SEQUENCE_RESTART_SECONDS, FaultDice, largest_prime_at_most
from tests.sampleapp_helpers import (
    RunningApp,
    connection_refused,
    expected_pattern,
    free_port,
    read_line,
    run_app_command,
    start_app,
)

TARGET = "Sample Tests"
MIB = 1 << 20


# Pure parts: settings, knobs, work, readiness, pattern.


def test_settings_defaults() -> None:
    assert load({}) == Settings(
        target="World",
        host="0.0.0.0",
        port=8080,
        startup_delay=0.0,
        ready_after=0.0,
        keepalive_timeout=75.0,
        shutdown_grace=30.0,
    )


def test_settings_from_environment() -> None:
    settings = load(
        {
            "TARGET": "Knative",
            "HOST": "127.0.0.1",
            "PORT": "0",
            "STARTUP_DELAY_SECONDS": "1.5",
            "READY_AFTER_SECONDS": "2",
            "KEEPALIVE_TIMEOUT_SECONDS": "0.25",
            "SHUTDOWN_GRACE_SECONDS": "0",
        }
    )
    assert settings == Settings("Knative", "127.0.0.1", 0, 1.5, 2.0, 0.25, 0.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "http"),
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("STARTUP_DELAY_SECONDS", "inf"),
        ("READY_AFTER_SECONDS", "soon"),
        ("KEEPALIVE_TIMEOUT_SECONDS", "nan"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
    ],
)
def test_settings_reject_bad_values(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load({name: value})
    assert f"{name}={value!r}" in str(error.value)


def test_flags_win_over_the_environment() -> None:
    environ = {"TARGET": "Env", "PORT": "9000", "READY_AFTER_SECONDS": "3"}
    settings = load(environ, ["--target", "Flag", "--port=0", "--shutdown-grace", "1.5"])
    assert settings == Settings("Flag", "0.0.0.0", 0, 0.0, 3.0, 75.0, 1.5)


def test_a_flag_replaces_a_bad_variable() -> None:
    assert load({"PORT": "http"}, ["--port", "8081"]).port == 8081


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "http"], "argument --port: 'http': expected a port number"),
        (["--ready-after", "-1"], "argument --ready-after: '-1': expected a number of seconds"),
        (["--prot", "1"], "unrecognized arguments: --prot 1"),
    ],
)
def test_bad_flags_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({}, argv)


def test_help_lists_every_flag_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load({"PORT": "not read"}, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag, variable in [
        ("--port", "$PORT"),
        ("--host", "$HOST"),
        ("--target", "$TARGET"),
        ("--startup-delay", "$STARTUP_DELAY_SECONDS"),
        ("--ready-after", "$READY_AFTER_SECONDS"),
        ("--keepalive-timeout", "$KEEPALIVE_TIMEOUT_SECONDS"),
        ("--shutdown-grace", "$SHUTDOWN_GRACE_SECONDS"),
        ("--protocol", "$SAMPLEAPP_PROTOCOL"),
        ("--grpc", "--protocol grpc"),
    ]:
        assert flag in out and variable in out


def _primes_by_sieve(limit: int) -> list[int]:
    is_prime = [True] * (limit + 1)
    is_prime[:2] = [False, False]
    for n in range(2, int(limit**0.5) + 1):
        if is_prime[n]:
            is_prime[n * n :: n] = [False] * len(range(n * n, limit + 1, n))
    return [n for n, prime in enumerate(is_prime) if prime]


def test_largest_prime_agrees_with_a_sieve() -> None:
    primes = _primes_by_sieve(1000)
    for limit in range(1000):
        below = [p for p in primes if p <= limit]
        assert largest_prime_at_most(limit) == (below[-1] if below else None), limit


@pytest.mark.parametrize(
    ("limit", "largest"), [(7919, 7919), (7920, 7919), (104_728, 104_723), (104_729, 104_729)]
)
def test_largest_prime_of_larger_limits(limit: int, largest: int) -> None:
    assert largest_prime_at_most(limit) == largest


def test_greeting_knobs_parse() -> None:
    query = {
        "bloat": "3",
        "prime": "10",
        "sleep": "1.5",
        "fail": "0.25",
        "seed": "7",
        "reset": "true",
        "status": "418",
        "bytes": "9",
        "drop_after": "4",
        "cache_buster": "anything",
    }
    assert GreetingKnobs.parse(query) == GreetingKnobs(
        bloat_mib=3,
        prime=10,
        sleep_ms=1.5,
        fail=0.25,
        seed=7,
        reset=True,
        status=418,
        bytes=9,
        drop_after=4,
    )
    assert GreetingKnobs.parse({}) == GreetingKnobs()


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("sleep", "-1"),
        ("sleep", "600001"),
        ("sleep", "nan"),
        ("prime", "0"),
        ("prime", "10000001"),
        ("prime", "2.5"),
        ("bloat", "1025"),
        ("status", "199"),
        ("status", "600"),
        ("bytes", str(2 * 1024**3 + 1)),
        ("fail", "1.01"),
        ("seed", "-3"),
        ("reset", "yes"),
        ("drop_after", "-1"),
    ],
)
def test_greeting_knobs_reject(knob: str, value: str) -> None:
    with pytest.raises(KnobError) as error:
        GreetingKnobs.parse({knob: value})
    assert f"{knob}={value!r}" in str(error.value)


def test_download_and_stream_knobs() -> None:
    assert DownloadKnobs.parse({"bytes": "5", "chunked": "1"}) == DownloadKnobs(5, True, None)
    with pytest.raises(KnobError, match="bytes"):
        DownloadKnobs.parse({})
    assert StreamKnobs.parse_stream({}) == StreamKnobs(count=5, interval_ms=100.0, size=None)
    assert StreamKnobs.parse_stream({"chunks": "0", "interval": "0", "size": "7"}) == StreamKnobs(
        0, 0.0, 7
    )
    assert StreamKnobs.parse_sse({"events": "2", "interval": "5"}) == StreamKnobs(2, 5.0)
    with pytest.raises(KnobError, match="size='0'"):
        StreamKnobs.parse_stream({"size": "0"})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_fault_dice_replays_each_seed_independently() -> None:
    reference = random.Random(7)
    expected = [reference.random() for _ in range(5)]
    dice = FaultDice(clock=FakeClock())
    interleaved = []
    for _ in range(5):
        interleaved.append(dice.roll(7))
        dice.roll(8)
        dice.roll(None)
    assert interleaved == expected


def test_fault_dice_restarts_a_seed_after_a_quiet_second() -> None:
    clock = FakeClock()
    dice = FaultDice(clock=clock)
    first_run = []
    for _ in range(6):
        first_run.append(dice.roll(7))
        clock.now += 0.9  # gaps under a second: one run
    clock.now += 0.1  # 1.0 s since the last draw: the next request starts a new run
    second_run = [dice.roll(7) for _ in range(6)]
    reference = random.Random(7)
    assert first_run == second_run == [reference.random() for _ in range(6)]


def test_fault_dice_forgets_the_least_recent_seed() -> None:
    dice = FaultDice(max_seeds=2, clock=FakeClock())
    first_draw_of_1 = dice.roll(1)
    dice.roll(2)
    dice.roll(3)  # evicts seed 1
    assert dice.roll(1) == first_draw_of_1
    reference = random.Random(3)
    reference.random()
    assert dice.roll(3) == reference.random()  # seed 3 was kept and continues


def test_readiness_waits_for_listening_and_the_delay() -> None:
    readiness = Readiness(ready_after=2.0)
    assert not readiness.is_ready(100.0)  # not listening yet
    readiness.listening(now=10.0)
    assert not readiness.is_ready(11.99)
    assert readiness.is_ready(12.0)
    readiness.switched_on = False
    assert not readiness.is_ready(50.0)
    readiness.switched_on = True
    assert readiness.is_ready(50.0)


@pytest.mark.parametrize(
    "size", [0, 1, 62, 63, 64, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5]
)
def test_pattern_chunks_concatenate_to_the_pattern(size: int) -> None:
    chunks = list(pattern_chunks(size))
    assert all(0 < len(chunk) <= CHUNK_SIZE for chunk in chunks)
    assert b"".join(chunks) == expected_pattern(size) == pattern_bytes(size)
    assert pattern_sha256(size) == hashlib.sha256(expected_pattern(size)).hexdigest()


# The HTTP surface, against one shared process unless a test needs its own settings.


@pytest.fixture(scope="module")
def app() -> Iterator[RunningApp]:
    running = start_app(TARGET=TARGET)
    yield running
    assert running.stop() == 0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_listening_line(app: RunningApp) -> None:
    assert app.listening_line == f"sampleapp listening on http://127.0.0.1:{app.port}"


async def test_greeting_names_the_target(app: RunningApp, session: aiohttp.ClientSession) -> None:
    async with session.get(app.url + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert await response.text() == f"Hello {TARGET}!\n"


async def test_pid(app: RunningApp, session: aiohttp.ClientSession) -> None:
    assert await fetch(session, app.url + "/pid") == (200, f"{app.proc.pid}\n")


@pytest.mark.parametrize(("sleep_ms", "shown"), [("250", "250"), ("120.5", "120.5")])
async def test_sleep_lasts_at_least_as_asked(
    app: RunningApp, session: aiohttp.ClientSession, sleep_ms: str, shown: str
) -> None:
    started = time.monotonic()
    status, body = await fetch(session, f"{app.url}/?sleep={sleep_ms}")
    assert time.monotonic() - started >= float(sleep_ms) / 1000
    assert status == 200
    assert body == f"Hello {TARGET}!\nsleep: {shown} ms\n"


@pytest.mark.parametrize(("limit", "shown"), [(1, "None"), (2, "2"), (1000, "997"), (7920, "7919")])
async def test_prime(
    app: RunningApp, session: aiohttp.ClientSession, limit: int, shown: str
) -> None:
    assert await fetch(session, f"{app.url}/?prime={limit}") == (
        200,
        f"Hello {TARGET}!\nprime: {shown}\n",
    )


async def test_bloat_is_resident_while_the_request_runs(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    baseline = peak = rss_kib(app.proc.pid)
    request = asyncio.create_task(fetch(session, f"{app.url}/?bloat=64&sleep=700"))
    while not request.done():
        peak = max(peak, rss_kib(app.proc.pid))
        await asyncio.sleep(0.02)
    assert await request == (200, f"Hello {TARGET}!\nbloat: 64 MiB\nsleep: 700 ms\n")
    assert peak - baseline >= 60 * 1024


async def test_knobs_combine_in_order(app: RunningApp, session: aiohttp.ClientSession) -> None:
    status, body = await fetch(session, f"{app.url}/?sleep=10&prime=30&bloat=1&status=202")
    assert status == 202
    assert body == f"Hello {TARGET}!\nbloat: 1 MiB\nprime: 29\nsleep: 10 ms\n"


@pytest.mark.parametrize("size", [0, 1, 100_000, 1_000_000])
async def test_bytes_replace_the_greeting(
    app: RunningApp, session: aiohttp.ClientSession, size: int
) -> None:
    async with session.get(f"{app.url}/?bytes={size}") as response:
        assert response.status == 200
        assert response.content_length == size
        assert response.content_type == "application/octet-stream"
        assert await response.read() == expected_pattern(size)


@pytest.mark.parametrize("status", [201, 404, 418, 503, 599])
async def test_status(app: RunningApp, session: aiohttp.ClientSession, status: int) -> None:
    assert await fetch(session, f"{app.url}/?status={status}") == (status, f"Hello {TARGET}!\n")


async def test_status_without_body(app: RunningApp, session: aiohttp.ClientSession) -> None:
    assert await fetch(session, f"{app.url}/?status=204") == (204, "")


async def test_status_with_bytes(app: RunningApp, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{app.url}/?status=201&bytes=70") as response:
        assert response.status == 201
        assert await response.read() == expected_pattern(70)


@pytest.mark.parametrize(
    ("path", "knob", "value"),
    [
        ("/?sleep=abc", "sleep", "abc"),
        ("/?sleep=600001", "sleep", "600001"),
        ("/?prime=0", "prime", "0"),
        ("/?bloat=2048", "bloat", "2048"),
        ("/?status=100", "status", "100"),
        ("/?bytes=-5", "bytes", "-5"),
        ("/?fail=2", "fail", "2"),
        ("/?sleep=1&reset=maybe", "reset", "maybe"),
        ("/download", "bytes", ""),
        ("/download?bytes=1&chunked=2", "chunked", "2"),
        ("/stream?chunks=many", "chunks", "many"),
        ("/sse?interval=-1", "interval", "-1"),
        ("/healthz?ready=2", "ready", "2"),
    ],
)
async def test_bad_knob_is_400_naming_it(
    app: RunningApp, session: aiohttp.ClientSession, path: str, knob: str, value: str
) -> None:
    method = "POST" if path.startswith("/healthz") else "GET"
    async with session.request(method, app.url + path) as response:
        assert response.status == 400
        assert f"{knob}={value!r}" in await response.text()


async def test_fail_always_and_never(app: RunningApp, session: aiohttp.ClientSession) -> None:
    status, body = await fetch(session, f"{app.url}/?fail=1")
    assert (status, body.startswith("injected failure")) == (500, True)
    assert (await fetch(session, f"{app.url}/?fail=0"))[0] == 200


async def test_seeded_failures_follow_the_seed(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    seed = 20261126  # used by no other test against the shared app
    reference = random.Random(seed)
    expected = [500 if reference.random() < 0.5 else 200 for _ in range(20)]
    seen = [(await fetch(session, f"{app.url}/?fail=0.5&seed={seed}"))[0] for _ in range(20)]
    assert seen == expected
    assert set(seen) == {200, 500}
    # A second run of the same requests, after a quiet second, replays the same failures.
    await asyncio.sleep(SEQUENCE_RESTART_SECONDS)
    again = [(await fetch(session, f"{app.url}/?fail=0.5&seed={seed}"))[0] for _ in range(20)]
    assert again == expected


async def test_reset_aborts_without_a_response(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(session, f"{app.url}/?reset=1")
    assert (await fetch(session, app.url + "/"))[0] == 200  # the app lives on


async def test_stream_chunks_arrive_one_by_one(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    pieces: list[bytes] = []
    arrivals: list[float] = []
    async with session.get(f"{app.url}/stream?chunks=4&interval=150") as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.headers
        piece = b""
        async for data, end_of_http_chunk in response.content.iter_chunks():
            piece += data
            # aiohttp may also report the zero-size terminator as an (empty) end of chunk.
            if end_of_http_chunk and piece:
                pieces.append(piece)
                arrivals.append(time.monotonic())
                piece = b""
    assert pieces == [f"chunk {i}\n".encode() for i in range(4)]
    assert arrivals[-1] - started >= 0.45  # three intervals
    assert arrivals[-1] - arrivals[0] >= 0.3  # spread out, not delivered at once


async def test_stream_chunks_of_a_size(app: RunningApp, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{app.url}/stream?chunks=3&interval=0&size=1000") as response:
        assert await response.read() == expected_pattern(1000) * 3


async def test_server_sent_events(app: RunningApp, session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    events: list[str] = []
    async with session.get(f"{app.url}/sse?events=3&interval=100") as response:
        assert response.content_type == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache"
        async for line in response.content:
            if line.startswith(b"data: "):
                events.append(line.decode())
    assert events == ["data: 0\n", "data: 1\n", "data: 2\n"]
    assert time.monotonic() - started >= 0.2


async def test_websocket_echoes_text_and_binary(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    blob = bytes(range(256)) * 100
    async with session.ws_connect(app.url + "/ws") as socket_:
        await socket_.send_str("hello ✓")
        assert await socket_.receive_str(timeout=5) == "hello ✓"
        await socket_.send_bytes(blob)
        assert await socket_.receive_bytes(timeout=5) == blob


async def test_headers_echo_keeps_duplicates_and_describes_the_body(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    headers = CIMultiDict([("X-Dup", "first"), ("X-Single", "1"), ("X-Dup", "second")])
    async with session.post(
        f"{app.url}/headers?a=1&a=2", headers=headers, data=b"payload"
    ) as response:
        echo = await response.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/headers"
    assert echo["query_string"] == "a=1&a=2"
    assert echo["http_version"] == "1.1"
    assert echo["remote_addr"] == "127.0.0.1"
    sent = [pair for pair in echo["headers"] if pair[0].startswith("X-")]
    assert sent == [["X-Dup", "first"], ["X-Single", "1"], ["X-Dup", "second"]]
    assert echo["body"] == {"bytes": 7, "sha256": hashlib.sha256(b"payload").hexdigest()}


async def test_headers_echo_any_method_without_body(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    async with session.request("PATCH", app.url + "/headers") as response:
        echo = await response.json()
    assert (echo["method"], echo["body"]) == ("PATCH", None)


async def test_upload_of_10_mib_streamed_and_sized(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    body = random.Random(5).randbytes(10 * MIB)
    want = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}

    async def pieces() -> AsyncIterator[bytes]:
        for offset in range(0, len(body), 256 * 1024):
            yield body[offset : offset + 256 * 1024]

    async with session.post(app.url + "/upload", data=pieces()) as response:  # chunked
        assert await response.json() == want
    async with session.put(app.url + "/upload", data=body) as response:  # Content-Length
        assert await response.json() == want


@pytest.mark.parametrize("chunked", [False, True])
async def test_download_matches_its_checksum(
    app: RunningApp, session: aiohttp.ClientSession, chunked: bool
) -> None:
    size = 3_000_000  # over a MiB: the checksum is computed off the event loop
    suffix = "&chunked=1" if chunked else ""
    async with session.get(f"{app.url}/download?bytes={size}{suffix}") as response:
        body = await response.read()
        assert response.content_length == (None if chunked else size)
        assert response.headers["X-Sha256"] == hashlib.sha256(body).hexdigest()
    assert body == expected_pattern(size)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("drop_after", [0, 100_000])
async def test_download_dropped_mid_body(
    app: RunningApp, session: aiohttp.ClientSession, chunked: bool, drop_after: int
) -> None:
    suffix = "&chunked=1" if chunked else ""
    received = b""
    async with session.get(
        f"{app.url}/download?bytes=1000000&drop_after={drop_after}{suffix}"
    ) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in response.content.iter_any():
                received += data
    assert received == expected_pattern(drop_after)


async def test_healthz_flips(app: RunningApp, session: aiohttp.ClientSession) -> None:
    healthz = app.url + "/healthz"
    assert await fetch(session, healthz) == (200, "ok")
    try:
        async with session.post(healthz + "?ready=0") as response:
            assert (response.status, await response.text()) == (200, "ready=0\n")
        assert await fetch(session, healthz) == (503, "not ready")
        assert (await fetch(session, app.url + "/"))[0] == 200  # still serves traffic
    finally:
        async with session.post(healthz + "?ready=1") as response:
            assert response.status == 200
    assert await fetch(session, healthz) == (200, "ok")


async def test_default_keepalive_keeps_idle_connections(app: RunningApp) -> None:
    with socket.create_connection(("127.0.0.1", app.port), timeout=5) as connection:
        _exchange_one_request(connection)
        connection.settimeout(0.6)
        with pytest.raises(TimeoutError):
            connection.recv(1)


def _exchange_one_request(connection: socket.socket) -> None:
    connection.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    received = b""
    while not received.endswith(b"!\n"):
        data = connection.recv(4096)
        assert data, f"closed early after {received!r}"
        received += data


# Settings that need their own process.


def test_keepalive_timeout_closes_idle_connections() -> None:
    running = start_app(KEEPALIVE_TIMEOUT_SECONDS="0.3")
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as connection:
            _exchange_one_request(connection)
            assert connection.recv(1) == b""  # closed by the app, well before the 5 s timeout
    finally:
        assert running.stop() == 0


async def test_startup_delay_then_ready_after(session: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    running = start_app(STARTUP_DELAY_SECONDS="0.5", READY_AFTER_SECONDS="1")
    try:
        assert time.monotonic() - started >= 0.5
        assert await fetch(session, running.url + "/healthz") == (503, "not ready")
        assert (await fetch(session, running.url + "/"))[0] == 200
        while (await fetch(session, running.url + "/healthz"))[0] != 200:
            assert time.monotonic() - started < 15, "never became ready"
            await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 1.5
    finally:
        assert running.stop() == 0


async def test_sigterm_lets_the_request_in_flight_finish() -> None:
    running = start_app(SHUTDOWN_GRACE_SECONDS="10")
    async with aiohttp.ClientSession() as client:
        await fetch(client, running.url + "/")  # a warm connection for the slow request
        slow = asyncio.create_task(fetch(client, running.url + "/?sleep=1000"))
        await asyncio.sleep(0.3)
        running.proc.send_signal(signal.SIGTERM)
        refused_while_in_flight = False
        while not slow.done() and not refused_while_in_flight:
            refused_while_in_flight = connection_refused(running.port)
            await asyncio.sleep(0.01)
        assert refused_while_in_flight  # stopped accepting, yet kept serving
        assert await slow == (200, "Hello World!\nsleep: 1000 ms\n")
    assert running.proc.wait(10) == 0


async def test_sigterm_cancels_requests_past_the_grace() -> None:
    running = start_app(SHUTDOWN_GRACE_SECONDS="0.3")
    async with aiohttp.ClientSession() as client:
        slow = asyncio.create_task(fetch(client, running.url + "/?sleep=20000"))
        await asyncio.sleep(0.3)
        running.proc.send_signal(signal.SIGTERM)
        outcome = await asyncio.gather(slow, return_exceptions=True)
    assert isinstance(outcome[0], aiohttp.ClientError)
    assert running.proc.wait(10) == 0  # long before the 20 s sleep would end


def test_sigint_exits_0() -> None:
    running = start_app()
    running.proc.send_signal(signal.SIGINT)
    assert running.proc.wait(10) == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "eighty"), ("SHUTDOWN_GRACE_SECONDS", "-5"), ("READY_AFTER_SECONDS", "later")],
)
def test_bad_environment_exits_1_naming_it(name: str, value: str) -> None:
    proc = run_app_command([sys.executable, "-m", "sampleapp"], HOST="127.0.0.1", **{name: value})
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f"{name}={value!r}" in stderr


def test_port_in_use_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_app_command(
            [sys.executable, "-m", "sampleapp"], HOST="127.0.0.1", PORT=str(port)
        )
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in stderr


def test_console_script_serves_and_stops() -> None:
    script = Path(sys.executable).with_name("sampleapp")
    port = free_port()
    proc = run_app_command([str(script)], HOST="127.0.0.1", PORT=str(port))
    try:
        assert read_line(proc, 20) == f"sampleapp listening on http://127.0.0.1:{port}\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_console_script_takes_flags_over_the_environment() -> None:
    script = Path(sys.executable).with_name("sampleapp")
    port = free_port()
    proc = run_app_command(
        [str(script), "--host", "127.0.0.1", "--port", str(port), "--target", "Flags"],
        PORT="1",  # would fail to bind: the flag must win
        TARGET="Env",
    )
    try:
        assert read_line(proc, 20) == f"sampleapp listening on http://127.0.0.1:{port}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.read() == b"Hello Flags!\n"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_console_script_help_prints_options_and_exits() -> None:
    script = Path(sys.executable).with_name("sampleapp")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: sampleapp")
    assert "--target TARGET" in done.stdout


def test_port_0_picks_a_free_port() -> None:
    proc = run_app_command([sys.executable, "-m", "sampleapp"], HOST="127.0.0.1", PORT="0")
    try:
        line = read_line(proc, 20)
        assert line.startswith("sampleapp listening on http://127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert port != 0
        assert not connection_refused(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
