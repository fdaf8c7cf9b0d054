"""HTTP/2 end to end: real clients (httpx, raw h2 frames) -> the sidecar process -> an h2c app.

Covers prior knowledge and `Upgrade: h2c` on the one main port next to HTTP/1.1, each stream as
one request (breaker slot, queue, 503 on overflow, statistics), resets both ways, drain with
GOAWAY, and what hostile clients can send (malformed requests, floods) -- see docs/http2.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import httpx
import pytest
import trustme
from aiohttp import web
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.h2_app import Record, serve_h2_app
from tests.harness import (
    Process,
    free_port,
    knative_env,
    rss_kib,
    running,
    serve_app,
    start_sidecar,
    wait_for_port,
)
from tests.test_tls import write_pair

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def stack(**env: str) -> AsyncIterator[tuple[Process, Record]]:
    async with serve_h2_app() as (app_port, record):
        sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port(), **env))
        with running(sidecar):
            yield sidecar, record


def h2_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(http2=True, http1=False, timeout=10)


# -- A raw HTTP/2 client, for what httpx will not send ----------------------------------------


class RawH2:
    """A blocking h2 client on a plain socket: frames in, events out."""

    def __init__(self, port: int, upgrade: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events: list[object] = []
        self.closed = False
        self.pending = bytearray()

    def start(self) -> RawH2:
        self.h2.initiate_connection()
        self.flush()
        return self

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, path: str, end: bool = True, extra: list | None = None) -> int:
        sid = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"x"),
            (b":path", path.encode()),
            *(extra or []),
        ]
        self.h2.send_headers(sid, headers, end_stream=end)
        self.flush()
        return sid

    def read(self, timeout: float = 5.0) -> list[object]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.h2.receive_data(self._goaways(data))
        for event in events:
            if isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        self.events += events
        return events

    def _goaways(self, data: bytes) -> bytes:
        """Take GOAWAY frames out before h2 sees them: h2 refuses every frame after one, where
        RFC 9113 §6.8 lets the streams it names finish. They become ConnectionTerminated."""
        self.pending += data
        passed = bytearray()
        while len(self.pending) >= 9:
            length = int.from_bytes(self.pending[:3], "big")
            if len(self.pending) < 9 + length:
                break
            frame = bytes(self.pending[: 9 + length])
            del self.pending[: 9 + length]
            if frame[3] == 0x7:  # GOAWAY
                parsed, _ = Frame.parse_frame_header(memoryview(frame[:9]))
                parsed.parse_body(memoryview(frame[9:]))
                event = ConnectionTerminated()
                event.error_code = parsed.error_code
                event.last_stream_id = parsed.last_stream_id
                self.events.append(event)
            else:
                passed += frame
        return bytes(passed)

    def until(self, condition, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(f"not reached; events: {self.events[-10:]}")
            self.read(max(0.05, deadline - time.monotonic()))

    def response(self, sid: int, timeout: float = 5.0) -> tuple[int, bytes]:
        self.until(
            lambda: any(isinstance(e, StreamEnded) and e.stream_id == sid for e in self.events),
            timeout,
        )
        status = next(
            int(dict(e.headers)[b":status"])
            for e in self.events
            if isinstance(e, ResponseReceived) and e.stream_id == sid
        )
        body = b"".join(
            e.data for e in self.events if isinstance(e, DataReceived) and e.stream_id == sid
        )
        return status, body

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw(port: int) -> Iterator[RawH2]:
    client = RawH2(port).start()
    try:
        yield client
    finally:
        client.close()


# -- Plain h2c with prior knowledge -------------------------------------------------------------


async def test_prior_knowledge_get_and_1mib_post() -> None:
    async with stack() as (sidecar, record), h2_client() as client:
        response = await client.get(f"{sidecar.url}/a?b=c", headers={"x-test": "1"})
        assert response.http_version == "HTTP/2"
        assert (response.status_code, response.text) == (200, "hello h2 /a?b=c")
        body = bytes(range(256)) * 4096
        response = await client.post(f"{sidecar.url}/echo", content=body)
        assert response.status_code == 200
        assert response.text == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
    method, path, headers = record.requests[0]
    assert (method, path, headers[b"x-test"]) == (b"GET", b"/a?b=c", b"1")
    assert headers[b":authority"] == sidecar.url.removeprefix("http://").encode()
    assert headers[b"x-forwarded-for"] == b"127.0.0.1"


async def test_trailers_pass_through() -> None:
    async with stack() as (sidecar, _):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/trailers")
        status, body = await asyncio.to_thread(client.response, sid)
        client.close()
    assert (status, body) == (200, b"with trailers")
    trailers = [e for e in client.events if type(e).__name__ == "TrailersReceived"]
    assert [dict(t.headers) for t in trailers] == [{b"x-checksum": b"abc"}]


async def test_early_hints_are_forwarded_before_the_response() -> None:
    async with stack() as (sidecar, _):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/early")
        assert await asyncio.to_thread(client.response, sid) == (200, b"after hints")
        client.close()
    kinds = [type(e).__name__ for e in client.events if getattr(e, "stream_id", 0) == sid]
    assert kinds.index("InformationalResponseReceived") < kinds.index("ResponseReceived")
    [hints] = [e for e in client.events if type(e).__name__ == "InformationalResponseReceived"]
    assert dict(hints.headers) == {b":status": b"103", b"link": b"</a.css>"}


def _upgrade(port: int, path: str, settings: bytes) -> tuple[bytes, RawH2]:
    client = RawH2(port)
    client.sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: {settings.decode()}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.sock.recv(1)
    return head, client


async def test_upgrade_h2c_turns_the_request_into_stream_1() -> None:
    async with stack() as (sidecar, record):
        probe = H2Connection(H2Configuration(client_side=True))
        settings = probe.initiate_upgrade_connection()
        head, client = await asyncio.to_thread(_upgrade, sidecar.port, "/up", settings)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"upgrade: h2c" in head.lower()
        client.h2.initiate_upgrade_connection()
        client.flush()
        status, body = await asyncio.to_thread(client.response, 1)
        assert (status, body) == (200, b"hello h2 /up")
        # The connection goes on as HTTP/2.
        sid = client.request("/next")
        assert await asyncio.to_thread(client.response, sid) == (200, b"hello h2 /next")
        client.close()
    assert [r[1] for r in record.requests] == [b"/up", b"/next"]


async def test_upgrade_h2c_with_a_body_or_bad_settings_is_served_as_http1() -> None:
    async with stack() as (sidecar, record):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(
            b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
            b"Content-Length: 5\r\n\r\nhello"
            b"GET /q HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: !!\r\n\r\n"
        )
        answer = b""
        while answer.count(b"hello h1") < 2:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, answer
            answer += chunk
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b" 101 " not in answer
    assert [r[0] for r in record.requests] == [b"HTTP/1.1"] * 2


async def test_http1_and_h2c_on_the_same_port_at_once() -> None:
    async with stack() as (sidecar, record), h2_client() as h2c, aiohttp.ClientSession() as h1:

        async def one_h1() -> str:
            async with h1.get(f"{sidecar.url}/one") as response:
                assert response.version == aiohttp.HttpVersion11
                return await response.text()

        async def one_h2() -> str:
            response = await h2c.get(f"{sidecar.url}/two")
            assert response.http_version == "HTTP/2"
            return response.text

        results = await asyncio.gather(one_h1(), one_h2(), one_h1(), one_h2())
    assert results == ["hello h1", "hello h2 /two"] * 2


# -- Each stream is one request -----------------------------------------------------------------


async def test_cc2_ten_streams_on_one_connection_never_more_than_two_at_the_app() -> None:
    async with stack(CONTAINER_CONCURRENCY="2") as (sidecar, record), h2_client() as client:
        responses = await asyncio.gather(
            *(client.get(f"{sidecar.url}/slow?ms=150") for _ in range(10))
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert record.max_active == 2
    assert record.completed == 10


async def test_overflow_is_a_503_on_one_stream_while_the_others_carry_on() -> None:
    # CC=1: one at the app, ten queued, the twelfth is turned away.
    async with stack(CONTAINER_CONCURRENCY="1") as (sidecar, record), h2_client() as client:
        first = asyncio.ensure_future(client.get(f"{sidecar.url}/slow?ms=400"))
        await asyncio.sleep(0.1)
        rest = [asyncio.ensure_future(client.get(f"{sidecar.url}/slow?ms=10")) for _ in range(11)]
        responses = [await first] + [await r for r in rest]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [503]
    [rejected] = [r for r in responses if r.status_code == 503]
    assert rejected.text == "pending request queue full\n"
    assert record.completed == 11


async def test_statistics_count_streams() -> None:
    async with stack() as (sidecar, _), h2_client() as client, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{sidecar.port_of('QUEUEPROXY_METRICS_PORT')}/metrics"
        windows: dict[float, float] = {}

        async def scrape() -> None:
            async with http.get(url) as response:
                text = await response.text()
            values = {f.name: f.samples[0].value for f in text_string_to_metric_families(text)}
            windows[values["process_uptime"]] = values["queue_requests_per_second"]

        await scrape()
        first = max(windows)
        responses = await asyncio.gather(*(client.get(f"{sidecar.url}/s{i}") for i in range(7)))
        assert all(r.status_code == 200 for r in responses)
        for _ in range(10):
            await asyncio.sleep(0.25)
            await scrape()
    assert sum(v for uptime, v in windows.items() if uptime > first) == 7


async def test_a_client_reset_frees_the_slot_and_cancels_the_app_stream() -> None:
    async with stack(CONTAINER_CONCURRENCY="1") as (sidecar, record):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        held = client.request("/hold")
        await asyncio.sleep(0.2)
        assert record.active == 1
        client.h2.reset_stream(held, ErrorCodes.CANCEL)
        client.flush()
        sid = client.request("/after")
        assert await asyncio.to_thread(client.response, sid) == (200, b"hello h2 /after")
        client.close()
    assert record.resets == 1


async def test_an_app_reset_resets_the_client_stream_with_its_code() -> None:
    async with stack() as (sidecar, _):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/reset?code=11")
        await asyncio.to_thread(
            client.until, lambda: any(isinstance(e, StreamReset) for e in client.events)
        )
        [reset] = [e for e in client.events if isinstance(e, StreamReset)]
        assert (reset.stream_id, reset.error_code) == (sid, ErrorCodes.ENHANCE_YOUR_CALM)
        other = client.request("/other")
        assert await asyncio.to_thread(client.response, other) == (200, b"hello h2 /other")
        client.close()


async def test_the_revision_timeout_answers_504_on_that_stream_alone() -> None:
    async with stack(REVISION_TIMEOUT_SECONDS="1") as (sidecar, _):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/hold")
        status, body = await asyncio.to_thread(client.response, sid)
        assert (status, body) == (504, b"request timeout")
        other = client.request("/other")
        assert await asyncio.to_thread(client.response, other) == (200, b"hello h2 /other")
        client.close()


async def test_drain_sends_goaway_and_open_streams_finish() -> None:
    async with stack() as (sidecar, record):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        sid = client.request("/slow?ms=1500")
        await asyncio.sleep(0.2)
        sidecar.proc.send_signal(15)
        status, body = await asyncio.to_thread(client.response, sid)
        assert (status, body) == (200, b"hello h2 /slow?ms=1500")
        await asyncio.to_thread(
            client.until, lambda: any(isinstance(e, ConnectionTerminated) for e in client.events)
        )
        [goaway] = [e for e in client.events if isinstance(e, ConnectionTerminated)]
        assert goaway.error_code == ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == sid
        client.close()
        assert await asyncio.to_thread(sidecar.proc.wait, 10) == 0


# -- Bad requests and floods --------------------------------------------------------------------


async def test_malformed_request_is_a_stream_error_and_the_connection_serves_on() -> None:
    async with stack() as (sidecar, record):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        for bad in ([(b"connection", b"close")], [(b"te", b"gzip")], [(b"X-Upper", b"1")]):
            client.h2.config.validate_outbound_headers = False
            client.h2.config.normalize_outbound_headers = False
            sid = client.request("/bad", extra=bad)
            await asyncio.to_thread(
                client.until,
                lambda sid=sid: any(
                    isinstance(e, StreamReset) and e.stream_id == sid for e in client.events
                ),
            )
            reset = next(e for e in client.events if isinstance(e, StreamReset))
            assert reset.error_code == ErrorCodes.PROTOCOL_ERROR
        sid = client.request("/good")
        assert await asyncio.to_thread(client.response, sid) == (200, b"hello h2 /good")
        client.close()
    assert [r[1] for r in record.requests] == [b"/good"]


def _headers_block(client: RawH2) -> bytes:
    return client.h2.encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", b"/r")]
    )


@pytest.mark.parametrize("kind", ["rapid_reset", "continuation", "ping"])
async def test_floods_end_the_attackers_connection_and_others_are_served(kind: str) -> None:
    async with stack() as (sidecar, record), h2_client() as client:
        rss_before = rss_kib(sidecar.pid)
        attacker = RawH2(sidecar.port)
        frames = []
        if kind == "rapid_reset":
            for index in range(2000):
                sid = 1 + 2 * index
                headers = HeadersFrame(sid, _headers_block(attacker), flags=["END_HEADERS"])
                frames += [headers.serialize(), RstStreamFrame(sid, 8).serialize()]
        elif kind == "continuation":
            frames.append(HeadersFrame(1, _headers_block(attacker)).serialize())
            filler = ContinuationFrame(1, b"\x40\x01a\x01b" * 3000)
            frames += [filler.serialize()] * 200
        else:
            frames += [PingFrame(0, b"12345678").serialize()] * 5000
        victim = asyncio.ensure_future(client.get(f"{sidecar.url}/victim"))
        closed, codes = await asyncio.to_thread(_flood_with, attacker, b"".join(frames))
        response = await victim
        assert (response.status_code, response.text) == (200, "hello h2 /victim")
        grown = rss_kib(sidecar.pid) - rss_before
        assert grown < 50 * 1024, f"RSS grew {grown} KiB"
    # The attacker's connection is closed; its GOAWAY says why, unless a reset destroyed it (the
    # attacker was still sending when we closed). Budgets: ENHANCE_YOUR_CALM; h2's cap of 64
    # CONTINUATION frames per header block: PROTOCOL_ERROR.
    assert closed, f"attacker not cut off; GOAWAY codes {codes}"
    expected = ErrorCodes.PROTOCOL_ERROR if kind == "continuation" else ErrorCodes.ENHANCE_YOUR_CALM
    assert codes in ([], [expected])
    # The rapid-reset budget stops the stream storm well before 2000 app requests.
    assert len(record.requests) < 1000, len(record.requests)


def _flood_with(client: RawH2, frames: bytes) -> tuple[bool, list[int]]:
    """Send the flood, then read raw bytes until the sidecar closes (or 15 s pass): whether it
    closed, and the error codes of the GOAWAY frames it sent."""
    client.start()
    with contextlib.suppress(OSError):
        client.sock.sendall(frames)
    received = bytearray()
    closed = False
    deadline = time.monotonic() + 15
    client.sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            closed = True
            break
        received += chunk
    client.close()
    codes = []
    pos = 0
    while pos + 9 <= len(received):
        length = int.from_bytes(received[pos : pos + 3], "big")
        if received[pos + 3] == 0x7 and pos + 9 + length <= len(received):
            codes.append(int.from_bytes(received[pos + 13 : pos + 17], "big"))
        pos += 9 + length
    return closed, codes


# -- TLS: ALPN h2 on the TLS port -----------------------------------------------------------------


async def test_tls_port_offers_h2_and_http11_by_alpn(tmp_path) -> None:
    ca = trustme.CA()
    write_pair(ca, tmp_path)
    tls_port = free_port()
    async with stack(QUEUE_SERVING_TLS_PORT=str(tls_port), QUEUEPROXY_CERTS_DIR=str(tmp_path)) as (
        sidecar,
        record,
    ):
        await asyncio.to_thread(wait_for_port, tls_port)
        context = ssl.create_default_context()
        ca.configure_trust(context)
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            response = await client.get(f"https://127.0.0.1:{tls_port}/secure")
        assert response.http_version == "HTTP/2"
        assert (response.status_code, response.text) == (200, "hello h2 /secure")
        # A client that offers only http/1.1 gets HTTP/1.1 (and the app's HTTP/1 answer).
        async with httpx.AsyncClient(http2=False, verify=context) as client:
            response = await client.get(f"https://127.0.0.1:{tls_port}/plain")
        assert response.http_version == "HTTP/1.1"
        assert response.text == "hello h1"


# -- Flow control is the back-pressure ------------------------------------------------------------


async def test_a_queued_streams_body_is_not_acknowledged_until_it_has_a_slot() -> None:
    async with stack(CONTAINER_CONCURRENCY="1") as (sidecar, record):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        await asyncio.to_thread(client.read, 1)  # the server's SETTINGS
        busy = client.request("/slow?ms=800")
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"x"),
                (b":path", b"/echo"),
            ],
        )
        body = b"b" * (256 * 1024)
        window = client.h2.local_flow_control_window(sid)
        assert window == 65535
        for start in range(0, window, 16384):
            client.h2.send_data(sid, body[start : min(start + 16384, window)])
        client.flush()
        await asyncio.to_thread(client.read, 0.4)
        # Queued behind the busy stream: not a byte of the body is acknowledged.
        assert client.h2.local_flow_control_window(sid) == 0
        assert len(record.requests) == 1
        sent = window

        def send_rest() -> None:
            nonlocal sent
            while sent < len(body):
                room = client.h2.local_flow_control_window(sid)
                if room <= 0:
                    client.read(5)
                    continue
                chunk = body[sent : sent + min(room, 16384)]
                client.h2.send_data(sid, chunk, end_stream=sent + len(chunk) == len(body))
                sent += len(chunk)
                client.flush()

        await asyncio.to_thread(send_rest)
        assert await asyncio.to_thread(client.response, busy) == (200, b"hello h2 /slow?ms=800")
        status, answer = await asyncio.to_thread(client.response, sid)
        assert (status, answer) == (200, f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode())
        client.close()


async def test_a_client_that_does_not_read_holds_a_bounded_amount_in_the_sidecar() -> None:
    size = 32 * 1024 * 1024
    async with stack() as (sidecar, record):
        warm = await asyncio.to_thread(RawH2(sidecar.port).start)
        assert await asyncio.to_thread(warm.response, warm.request("/warm")) == (
            200,
            b"hello h2 /warm",
        )
        warm.close()
        before = rss_kib(sidecar.pid)
        client = RawH2(sidecar.port).start()
        # Windows that would let the sidecar send it all: only its socket buffer stops it.
        client.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.h2.increment_flow_control_window(2**31 - 1 - 65535)
        client.flush()
        sid = client.request(f"/big?n={size}")
        await asyncio.sleep(1.5)  # not reading
        grown = rss_kib(sidecar.pid) - before
        assert grown < 8 * 1024, f"{grown} KiB held for a client that does not read"
        # It then reads everything.
        status, body = await asyncio.to_thread(client.response, sid, 30)
        assert (status, len(body)) == (200, size)
        client.close()


async def test_probes_are_answered_on_http2_as_on_http1() -> None:
    async with stack() as (sidecar, record), h2_client() as client:
        probe = {"K-Network-Probe": "probe", "K-Network-Hash": "abc"}
        response = await client.get(f"{sidecar.url}/anything", headers=probe)
        assert (response.status_code, response.headers["k-network-hash"]) == (200, "abc")
        health = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"}
        response = await client.get(f"{sidecar.url}/", headers=health)
        assert (response.status_code, response.text) == (200, "queue")
        bad = {"User-Agent": "kube-probe/1.30", "K-Network-Probe": "nope"}
        response = await client.get(f"{sidecar.url}/", headers=bad)
        assert response.status_code == 400
    assert record.requests == []  # none of them reached the app


async def test_streams_are_logged_and_counted_in_user_metrics() -> None:
    template = "{{.Request.Method}} {{.Request.RequestURI}} {{.Request.Proto}} {{.Response.Code}}"
    async with stack(
        SERVING_ENABLE_REQUEST_LOG="true",
        SERVING_REQUEST_LOG_TEMPLATE=template,
        SERVING_REQUEST_METRICS_BACKEND="prometheus",
    ) as (sidecar, _):
        async with h2_client() as client:
            responses = await asyncio.gather(*(client.get(f"{sidecar.url}/m{i}") for i in range(3)))
        assert [r.status_code for r in responses] == [200] * 3
        port = sidecar.port_of("QUEUEPROXY_USER_METRICS_PORT")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        sidecar.terminate()
        output = sidecar.output()
    counts = [
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "revision_request_count"
        for s in f.samples
        if s.labels.get("response_code") == "200"
    ]
    assert counts == [3]
    for index in range(3):
        assert f"GET /m{index} HTTP/2.0 200" in output


async def test_streams_over_the_concurrency_limit_are_refused_one_by_one() -> None:
    async with stack() as (sidecar, record):
        client = await asyncio.to_thread(RawH2(sidecar.port).start)
        await asyncio.to_thread(client.read, 1)
        # This client ignores the server's limit of 250 (h2 would enforce it on our side).
        client.h2.remote_settings.update({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        client.h2.remote_settings.acknowledge()
        # Streams 1..509 stay open (no END_STREAM): the last five are over the 250 allowed.
        for _ in range(255):
            client.request("/open", end=False)
        await asyncio.to_thread(
            client.until,
            lambda: sum(isinstance(e, StreamReset) for e in client.events) >= 5,
        )
        refused = [e for e in client.events if isinstance(e, StreamReset)]
        assert [e.stream_id for e in refused] == [1 + 2 * i for i in range(250, 255)]
        assert {e.error_code for e in refused} == {ErrorCodes.REFUSED_STREAM}
        assert not any(isinstance(e, ConnectionTerminated) for e in client.events)
        client.close()


async def test_an_http1_only_app_answers_h2c_requests_with_502() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="h1 only")

    application = web.Application()
    application.router.add_get("/", hello)
    async with serve_app(application) as app_port:
        env = knative_env(app_port, free_port())
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            async with h2_client() as client:
                response = await client.get(f"{sidecar.url}/")
            async with aiohttp.ClientSession() as http, http.get(f"{sidecar.url}/") as h1:
                assert (h1.status, await h1.text()) == (200, "h1 only")
    # As behind Knative's Go binary: HTTP/2 in is h2c out, which this app cannot speak.
    assert response.status_code == 502


async def test_an_app_that_is_not_listening_is_a_502_with_gos_text() -> None:
    app_port = free_port()  # nothing listens there
    sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port()))
    with running(sidecar):
        async with h2_client() as client:
            responses = await asyncio.gather(*(client.get(f"{sidecar.url}/{i}") for i in range(3)))
    for response in responses:
        assert response.status_code == 502
        assert response.text == f"dial tcp 127.0.0.1:{app_port}: connect: connection refused\n"
