"""Isolation end to end: one request, one connection or one port must not hurt the others.

Real sidecar processes on 127.0.0.1, driven over raw sockets wherever the exact bytes matter:

- No request is sent to the app twice unless it is safe to repeat (retry policy, RFC 9110 §9.2.2).
- Bytes an app sends past the end of a response do not leak into the next request's answer.
- Every port bounds what one client can make the sidecar hold: header lines, request targets,
  pipelined backlogs, and how long a request head may take (QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS).
- A drain delivers every byte already accepted for a slow client before the process exits.
- A connection ends exactly where HTTP says it does (`Connection: close`, a malformed request).

Client sockets run in threads (the apps under test run in the test's event loop), and every
read and write has a deadline, so a wedged sidecar fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import itertools
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from tests.harness import (
    Process,
    free_port,
    knative_env,
    rss_kib,
    running,
    start_sampleapp,
    start_sidecar,
    wait_for_port,
)

MIB = 1 << 20
# Peak RSS a flood may add to the sidecar. Each flood here is 30-256 MiB: anything that buffers
# it shows up as hundreds of MiB, while a bounded sidecar stays within a few.
RSS_BUDGET_MIB = 48

T = TypeVar("T")


# -- A raw-socket app -------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the app read it."""

    conn: int  # which upstream connection (0, 1, ... in accept order)
    index: int  # its position on that connection: 0 is the first request
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


# Writes the answer (or not) and says whether to keep serving the connection.
Answer = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


def ok_response(seen: Seen) -> bytes:
    """200 whose body is the request path, so a client can tell whose answer it got."""
    body = seen.path.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def answer_ok(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok_response(seen))
    return True


class RawApp:
    """An HTTP/1.1 app on raw asyncio streams: the test decides every byte of every answer."""

    def __init__(self, answer: Answer = answer_ok) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.port = 0
        self._connections = itertools.count()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    def paths(self) -> list[str]:
        return [seen.path for seen in self.seen]

    async def __aenter__(self) -> RawApp:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=4 * MIB)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._connections)
        self._writers.add(writer)
        try:
            for index in itertools.count():
                seen = await self._read(reader, conn, index)
                if seen is None:
                    return
                self.seen.append(seen)
                if not await self.answer(seen, writer):
                    return
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, conn: int, index: int) -> Seen | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the proxy closed the connection
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        return Seen(conn, index, method, target, headers, body)


@contextlib.asynccontextmanager
async def sidecar_for(app_port: int, **env: str) -> AsyncIterator[Process]:
    """A sidecar in front of `app_port`; stopped from a thread, as the app may be in this loop."""
    sidecar = await asyncio.to_thread(start_sidecar, knative_env(app_port, free_port(), **env))
    try:
        yield sidecar
    finally:
        await asyncio.to_thread(sidecar.terminate, 5.0)
        for stream in (sidecar.proc.stdout, sidecar.proc.stderr):
            if stream is not None:
                stream.close()


# -- Raw-socket clients (blocking: run them in threads) ---------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]  # lower-case names
    body: bytes


def split_replies(data: bytes) -> tuple[list[Reply], bytes]:
    """Cut complete responses off `data`; return them and what is left.

    Bodies are framed by Content-Length; 1xx, 204 and 304 have none whatever their headers say
    (RFC 9112 §6.3), and a response with neither takes the rest of `data` (read until close)."""
    replies = []
    while (end := data.find(b"\r\n\r\n")) >= 0:
        lines = data[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        rest = data[end + 4 :]
        if 100 <= status < 200 or status in (204, 304):
            length = 0
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
        else:
            length = len(rest)
        if len(rest) < length:
            break
        replies.append(Reply(status, headers, rest[:length]))
        data = rest[length:]
    return replies, data


def read_until_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything until the peer closes (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
    except TimeoutError:
        pass
    except ConnectionResetError:
        return b"".join(chunks), True
    return b"".join(chunks), False


def exchange(port: int, payload: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send `payload` on a new connection; what comes back, and whether the sidecar closed."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(payload)
        return read_until_eof(sock, timeout)


def read_one(sock: socket.socket, timeout: float = 5.0) -> Reply:
    """One response on a kept-alive connection."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        replies, _ = split_replies(data)
        if replies and (b"content-length" in replies[0].headers or replies[0].status == 204):
            return replies[0]
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a whole response: {data[:200]!r}")
        data += chunk


@dataclass
class Flood:
    """What happened to one flooding client."""

    sent: int  # bytes the kernel accepted from us
    total: int  # bytes we meant to send
    reply: bytes
    closed: bool  # the sidecar closed or reset the connection
    stalled: bool  # we stopped because sends made no progress (back-pressure)
    seconds: float
    sock: socket.socket | None = field(default=None, repr=False)

    @property
    def status_431_or_414(self) -> bool:
        return self.reply[9:13] in (b"431 ", b"414 ")

    def cut_off(self) -> bool:
        """Refused before it was all accepted: 431/414, or closed, while we still had bytes."""
        return self.sent < self.total and (self.closed or self.status_431_or_414)


def flood(
    port: int,
    prefix: bytes,
    filler: bytes,
    size: int,
    suffix: bytes = b"",
    *,
    deadline: float = 20.0,
    linger: float = 3.0,
    stall: float | None = None,
    read: bool = True,
    keep_open: bool = False,
) -> Flood:
    """Send `prefix`, `size` bytes of repeated `filler`, then `suffix`, without blocking.

    Stops when the sidecar closes the connection, `deadline` passes, sends make no progress for
    `stall` seconds, or `linger` seconds after everything was sent. With `read`, replies are
    collected as they come; without, the client never reads (a pipelining client that does not
    care about answers). With `keep_open` the socket is returned open in `Flood.sock`."""
    block = filler * max(1, 65536 // len(filler))
    total = len(prefix) + size + len(suffix)
    sock = socket.create_connection(("127.0.0.1", port), 5)
    sock.setblocking(False)
    pending = memoryview(prefix)
    filled = 0
    suffix_queued = False
    sent = 0
    reply = bytearray()
    closed = stalled = False
    started = last_progress = time.monotonic()
    done_at: float | None = None
    try:
        while (now := time.monotonic()) - started < deadline:
            if not pending:
                if filled < size:
                    piece = block[: size - filled]
                    filled += len(piece)
                    pending = memoryview(piece)
                elif not suffix_queued and suffix:
                    suffix_queued = True
                    pending = memoryview(suffix)
                elif done_at is None:
                    done_at = now
            if done_at is not None and (not read or now - done_at >= linger):
                break
            readable, writable, _ = select.select(
                [sock] if read else [], [sock] if pending else [], [], 0.05
            )
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                reply += chunk
            if writable:
                try:
                    count = sock.send(pending[:65536])
                except BlockingIOError:
                    count = 0
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                pending = pending[count:]
                sent += count
                if count:
                    last_progress = now
            elif pending and stall is not None and now - last_progress > stall:
                stalled = True
                break
    finally:
        if not keep_open:
            sock.close()
    return Flood(
        sent,
        total,
        bytes(reply),
        closed,
        stalled,
        time.monotonic() - started,
        sock if keep_open else None,
    )


async def in_threads(*calls: Callable[[], T]) -> list[T]:
    """Run blocking calls at once, each on its own thread (asyncio's default pool has only
    cpu_count + 4 workers, fewer than some tests need at the same time)."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(len(calls))
    try:
        return list(await asyncio.gather(*(loop.run_in_executor(pool, call) for call in calls)))
    finally:
        pool.shutdown(wait=False)


# -- Memory -----------------------------------------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key}")


class PeakRss:
    """The sidecar's peak RSS growth over a `with` block, in MiB.

    The kernel's high-water mark (VmHWM) catches peaks between samples; if it did not move
    (start-up had already set it higher), a 10 ms sampler gives the peak instead."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = self.hwm_before = self.hwm_after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_kib(self.pid)
        self.hwm_before = status_kib(self.pid, "VmHWM")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError, RuntimeError):
            self.hwm_after = status_kib(self.pid, "VmHWM")

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))

    @property
    def growth_mib(self) -> float:
        peak = self.hwm_after if self.hwm_after > self.hwm_before else self.peak
        return (peak - self.before) / 1024


# -- 1. No request is sent twice unless repeating it is safe ----------------------------------


async def drop_reused(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    """Answers `/warm` and any first request on a connection; a `/drop...` request that comes
    on a reused connection is read in full and then the connection is closed unanswered, as
    when an app's keep-alive timeout fires while the request is in flight. `/drop-partial`
    first sends part of a response head, so the app had begun to answer."""
    if seen.path.startswith("/drop") and seen.index > 0:
        if seen.path == "/drop-partial":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
            await writer.drain()
        return False
    writer.write(ok_response(seen))
    return True


RETRY_CASES = [
    # method, path, extra headers, body, expected status, times the app sees the request
    ("POST", "/drop", "", b"order=1", 502, 1),
    ("PATCH", "/drop", "", b"op=inc", 502, 1),
    # Idempotent (RFC 9110 §9.2.2) and so MAY be retried, but the policy retries only safe
    # methods or requests that carry an Idempotency-Key.
    ("PUT", "/drop", "", b"v=1", 502, 1),
    ("DELETE", "/drop", "", b"", 502, 1),
    ("GET", "/drop", "", b"", 200, 2),
    ("POST", "/drop", "Idempotency-Key: k1\r\n", b"order=2", 200, 2),
    # The app had started its response: whatever happened to the request, it is not retried.
    ("GET", "/drop-partial", "", b"", 502, 1),
]


@pytest.mark.parametrize(
    "method, path, extra, body, status, times",
    RETRY_CASES,
    ids=["post", "patch", "put", "delete", "get", "post-idempotency-key", "get-partial-head"],
)
async def test_a_request_is_retried_only_when_safe_and_only_once(
    method: str, path: str, extra: str, body: bytes, status: int, times: int
) -> None:
    async with RawApp(drop_reused) as app, sidecar_for(app.port) as sidecar:
        # One answered request leaves a kept-alive connection in the sidecar's pool.
        warm, _ = await asyncio.to_thread(
            exchange, sidecar.port, b"GET /warm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert warm.startswith(b"HTTP/1.1 200"), warm[:200]
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reply, closed = await asyncio.to_thread(exchange, sidecar.port, request)
    replies, rest = split_replies(reply)
    assert closed and rest == b""
    assert [r.status for r in replies] == [status], reply[:300]
    attempts = [seen for seen in app.seen if seen.path == path]
    assert len(attempts) == times, [(s.method, s.conn, s.index) for s in attempts]
    assert attempts[0].index > 0  # the first try went on the pooled connection
    if times == 2:
        retry = attempts[1]
        assert (retry.conn, retry.index) != (attempts[0].conn, attempts[0].index)
        assert retry.index == 0  # on a fresh connection, not another pooled one
        assert retry.body == body and retry.method == method
        assert replies[0].body == path.encode()


# -- 2. Stray bytes after a response ----------------------------------------------------------

STRAY_CASES = {
    # first bytes of the answer to A, bytes that follow after a pause (or b"")
    "204-with-body": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", b""),
    "200-overlong": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", b""),
    "204-body-late": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"hello"),
    "200-overlong-late": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhe", b"llo"),
}


@pytest.mark.parametrize("case", list(STRAY_CASES))
async def test_bytes_past_a_response_do_not_hang_or_answer_the_next_request(case: str) -> None:
    first, late = STRAY_CASES[case]

    async def answer(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        if seen.path != "/a":
            return await answer_ok(seen, writer)
        await asyncio.sleep(0.5)  # hold the only slot so that B queues behind A
        writer.write(first)
        if late:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(late)
        return True

    async with (
        RawApp(answer) as app,
        sidecar_for(app.port, CONTAINER_CONCURRENCY="1", REVISION_TIMEOUT_SECONDS="10") as sidecar,
    ):

        def client(path: str, delay: float) -> tuple[bytes, bool, float]:
            time.sleep(delay)
            started = time.monotonic()
            request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            # 6 s: past the 5 s bound asserted below, short of the 10 s revision timeout.
            reply, closed = exchange(sidecar.port, request, timeout=6.0)
            return reply, closed, time.monotonic() - started

        (a_reply, a_closed, _), (b_reply, b_closed, b_seconds) = await in_threads(
            lambda: client("/a", 0.0), lambda: client("/b", 0.2)
        )
    b_replies, b_rest = split_replies(b_reply)
    assert b_closed and b_seconds < 5, (b_seconds, b_reply[:300])
    assert [(r.status, r.body) for r in b_replies] == [(200, b"/b")], b_reply[:300]
    assert b_rest == b""
    # A's response is framed as HTTP says, whatever the app sent after it.
    a_replies, a_rest = split_replies(a_reply)
    assert a_closed and a_rest == b"", a_reply[:300]
    assert len(a_replies) == 1, a_reply[:300]
    if case.startswith("204"):
        assert a_replies[0].status == 204 and a_replies[0].body == b""
        # RFC 9110 §8.6: no Content-Length in a 204 (Go's server deletes it, too).
        assert b"content-length" not in a_replies[0].headers, a_reply[:300]
    else:
        assert (a_replies[0].status, a_replies[0].body) == (200, b"he")
        assert a_replies[0].headers[b"content-length"] == b"2"


# -- 3. Bounds on every port ------------------------------------------------------------------

UNFINISHED_HEADER = b"GET / HTTP/1.1\r\nHost: x\r\nX: "


async def test_unfinished_header_lines_are_refused_early_with_flat_memory() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        with PeakRss(sidecar.pid) as rss:
            floods = await in_threads(
                *[lambda: flood(sidecar.port, UNFINISHED_HEADER, b"a", 32 * MIB)] * 8
            )
        # The sidecar still serves.
        reply, _ = await asyncio.to_thread(
            exchange, sidecar.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert [f.cut_off() for f in floods] == [True] * 8, (rss.growth_mib, floods)
    assert rss.growth_mib < RSS_BUDGET_MIB, rss.growth_mib
    assert reply.startswith(b"HTTP/1.1 200")


async def test_one_huge_header_line_does_not_stall_other_clients() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:

        def twenty_gets() -> list[tuple[int, bytes, float]]:
            time.sleep(0.3)  # let the flood get going first
            results = []
            for index in range(20):
                started = time.monotonic()
                request = f"GET /g{index} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                reply, _ = exchange(sidecar.port, request.encode(), timeout=5.0)
                replies, _ = split_replies(reply)
                status, body = (replies[0].status, replies[0].body) if replies else (0, reply)
                results.append((status, body, time.monotonic() - started))
            return results

        big, gets = await in_threads(
            lambda: flood(sidecar.port, UNFINISHED_HEADER, b"a", 64 * MIB, linger=1.0),
            twenty_gets,
        )
    assert [(status, body) for status, body, _ in gets] == [
        (200, f"/g{index}".encode()) for index in range(20)
    ]
    # A hang check, not a speed target: each GET alone takes milliseconds.
    assert max(seconds for _, _, seconds in gets) < 2.0, gets
    assert big.cut_off(), big


ENDPOINT_PORTS = (
    "QUEUEPROXY_ADMIN_PORT",
    "QUEUEPROXY_METRICS_PORT",
    "QUEUEPROXY_USER_METRICS_PORT",
)
# The user metrics port (:9091) is only served when request metrics are on.
USER_METRICS_ON = '{"requestMetrics":{"protocol":"prometheus"}}'


async def endpoint_ports(sidecar: Process) -> list[int]:
    """The endpoint ports, once they listen (the main port is opened first)."""
    ports = [sidecar.port_of(name) for name in ENDPOINT_PORTS]
    for port in ports:
        await asyncio.to_thread(wait_for_port, port, 10.0, sidecar.proc)
    return ports


async def test_endpoint_ports_refuse_huge_request_targets_with_flat_memory() -> None:
    async with (
        RawApp() as app,
        sidecar_for(app.port, OBSERVABILITY_CONFIG=USER_METRICS_ON) as sidecar,
    ):
        ports = await endpoint_ports(sidecar)
        # Just over Go's limit for a request line (MaxHeaderBytes 1 MiB + 4 KiB of slack).
        complete = await in_threads(
            *[
                lambda port=port: flood(
                    port, b"GET /", b"a", MIB + 8192, b" HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                for port in ports
            ]
        )
        with PeakRss(sidecar.pid) as rss:
            unfinished = await in_threads(
                *[lambda port=port: flood(port, b"GET /", b"a", 32 * MIB) for port in ports]
            )
    for name, result in zip(ENDPOINT_PORTS, complete, strict=True):
        # 414 or 431, or the connection closed without an answer; never a 404 for the path.
        assert result.status_431_or_414 or (result.closed and not result.reply), (
            name,
            result.reply[:100],
        )
    assert [f.cut_off() for f in unfinished] == [True] * 3, (rss.growth_mib, unfinished)
    assert rss.growth_mib < RSS_BUDGET_MIB, rss.growth_mib


PARTIAL_HEAD = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: "
FIRST_REQUESTS = {
    "QUEUE_SERVING_PORT": b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n",
    "QUEUEPROXY_ADMIN_PORT": b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",  # a kept-alive 404
    "QUEUEPROXY_METRICS_PORT": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    "QUEUEPROXY_USER_METRICS_PORT": b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
}


def seconds_until_closed(port: int, first: bytes | None) -> float | None:
    """Leave a partial request head on a connection (after one whole exchange if `first`);
    the seconds until the sidecar closes it, or None if it stays open for 6 s."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        if first is not None:
            sock.sendall(first)
            read_one(sock)
        sock.sendall(PARTIAL_HEAD)
        started = time.monotonic()
        _, closed = read_until_eof(sock, 6.0)
        return time.monotonic() - started if closed else None


@pytest.mark.parametrize("kept_alive", [False, True], ids=["first-head", "second-head"])
async def test_a_request_head_must_arrive_within_the_header_timeout_on_every_port(
    kept_alive: bool,
) -> None:
    async with (
        RawApp() as app,
        sidecar_for(
            app.port,
            QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS="1",
            OBSERVABILITY_CONFIG=USER_METRICS_ON,
        ) as sidecar,
    ):
        await endpoint_ports(sidecar)
        names = list(FIRST_REQUESTS)
        waits = await in_threads(
            *[
                lambda name=name: seconds_until_closed(
                    sidecar.port_of(name), FIRST_REQUESTS[name] if kept_alive else None
                )
                for name in names
            ]
        )
    closed_after = dict(zip(names, waits, strict=True))
    # Closed after about the 1 s timeout: not at once (a slow client is allowed its second),
    # and not after the 60 s default.
    assert all(wait is not None and 0.5 <= wait < 5 for wait in waits), closed_after


PIPELINED = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


async def test_pipelined_flood_behind_wait_for_drain_is_bounded_and_sigterm_still_exits() -> None:
    async with (
        RawApp() as app,
        sidecar_for(app.port, QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="0.5") as sidecar,
    ):
        admin = sidecar.port_of("QUEUEPROXY_ADMIN_PORT")
        await asyncio.to_thread(wait_for_port, admin, 10.0, sidecar.proc)
        with PeakRss(sidecar.pid) as rss:
            # Never reads: once the sidecar stops reading, our sends stall and we stop.
            backlog = await asyncio.to_thread(
                flood,
                admin,
                b"GET /wait-for-drain HTTP/1.1\r\nHost: a\r\n\r\n",
                PIPELINED,
                30 * MIB,
                deadline=15.0,
                stall=2.0,
                read=False,
                keep_open=True,
            )
        try:
            # The flooding connection stays open and unread: it must not hold the exit up.
            sidecar.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = await asyncio.to_thread(_wait_or_none, sidecar, 10.0)
            exit_seconds = time.monotonic() - started
        finally:
            if backlog.sock is not None:
                backlog.sock.close()
    outcome = {"rss_growth_mib": rss.growth_mib, "exit_code": code, "exit_seconds": exit_seconds}
    assert rss.growth_mib < RSS_BUDGET_MIB and code == 0, (outcome, backlog)


async def test_pipelined_flood_on_the_main_port_is_bounded() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        with PeakRss(sidecar.pid) as rss:
            backlog = await asyncio.to_thread(
                flood,
                sidecar.port,
                b"",
                PIPELINED,
                30 * MIB,
                deadline=15.0,
                stall=2.0,
                read=False,
            )
        reply, _ = await asyncio.to_thread(
            exchange, sidecar.port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    assert rss.growth_mib < RSS_BUDGET_MIB, (rss.growth_mib, backlog)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]


# -- 4. A drain delivers everything -----------------------------------------------------------


def download_socket(port: int, size: int) -> socket.socket:
    """A connection that asked the sample app for `size` bytes, with a small receive buffer and
    an Ethernet-sized MSS: the sidecar's kernel send buffer then autotunes to a few hundred KiB,
    as in a pod, instead of loopback's 4 MiB (which would hold, and so deliver, whatever the
    sidecar itself still had queued when it dropped the connection)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(f"GET /download?bytes={size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Download:
    status: int
    sha256_header: str  # X-Sha256: the app's checksum of the whole body
    sha256: str  # of what arrived
    received: int
    cut: bool  # EOF or reset before the whole body


def read_download(
    sock: socket.socket,
    size: int,
    rate: float | None = None,
    after_first_mib: Callable[[], None] | None = None,
) -> Download:
    """Read the response head and `size` body bytes, at `rate` bytes/s if given."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(16384)
        if not chunk:
            raise AssertionError(f"no response head: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    digest = hashlib.sha256(body)
    received = len(body)
    cut = False
    started = time.monotonic()
    while received < size:
        try:
            chunk = sock.recv(min(16384, size - received))
        except (ConnectionResetError, TimeoutError):
            cut = True
            break
        if not chunk:
            cut = True
            break
        digest.update(chunk)
        previous, received = received, received + len(chunk)
        if after_first_mib is not None and previous < MIB <= received:
            after_first_mib()
        if rate is not None and (ahead := received / rate - (time.monotonic() - started)) > 0:
            time.sleep(ahead)
    return Download(
        int(status_line.split(b" ", 2)[1]),
        headers.get(b"x-sha256", b"").decode(),
        digest.hexdigest(),
        received,
        cut,
    )


def _wait_or_none(process: Process, timeout: float) -> int | None:
    try:
        return process.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


async def test_drain_delivers_a_slow_download_to_the_last_byte() -> None:
    size = 12 * MIB
    with running(await asyncio.to_thread(start_sampleapp)) as app:
        env = knative_env(app.port, free_port(), QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="0.5")
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):

            def download() -> Download:
                with download_socket(sidecar.port, size) as sock:
                    # ~1 MiB/s: the download outlasts the 0.5 s quiet period by ~11 s.
                    return read_download(
                        sock, size, MIB, lambda: sidecar.proc.send_signal(signal.SIGTERM)
                    )

            result = await asyncio.to_thread(download)
            code = await asyncio.to_thread(_wait_or_none, sidecar, 10.0)
    assert result.status == 200
    assert (result.received, result.cut) == (size, False), f"{size - result.received} bytes lost"
    assert result.sha256 == result.sha256_header
    assert code == 0


def kernel_queued(sidecar_port: int, sock: socket.socket) -> int:
    """Bytes of the sidecar's response the kernel holds for `sock`: the sidecar's send queue
    (/proc/net/tcp tx_queue of its end of the connection) plus our unread receive queue."""
    client_port = sock.getsockname()[1]
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
            if (local, remote) == (sidecar_port, client_port):
                send_queue = int(fields[4].split(":")[0], 16)
                break
        else:
            raise AssertionError("the sidecar's end of the connection is not in /proc/net/tcp")
    unread = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return send_queue + unread


async def test_drain_delivers_what_is_queued_for_a_client_that_is_not_reading() -> None:
    """The deterministic form of the slow download: the app's whole response is already in the
    sidecar, part of it still in the sidecar's own buffer because the kernel's is full, when the
    drain ends. (Whether a 1 MiB/s reader's tail is in that state at that moment is chance.)"""
    with running(await asyncio.to_thread(start_sampleapp)) as app:
        env = knative_env(app.port, free_port(), QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS="0.5")
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):

            def kernel_capacity() -> int:
                # What the kernels hold for a client that reads nothing: once this stops
                # growing, the rest of a big response waits in the sidecar or the app.
                with download_socket(sidecar.port, 4 * MIB) as sock:
                    readings = [-1]
                    for _ in range(40):
                        time.sleep(0.1)
                        readings.append(kernel_queued(sidecar.port, sock))
                        if readings[-1] == readings[-2] == readings[-3] > 0:
                            break
                    return readings[-1]

            capacity = await asyncio.to_thread(kernel_capacity)
            # 40 KiB more than the kernels take (which varies by ~10 KiB from one connection to
            # the next): that much stays in the sidecar's buffer, under its 64 KiB high-water
            # mark, so the sidecar reads the whole response and the request is done.
            size = capacity + 40 * 1024

            def stalled_download() -> Download:
                with download_socket(sidecar.port, size) as sock:
                    time.sleep(0.3)
                    sidecar.proc.send_signal(signal.SIGTERM)
                    time.sleep(2.0)  # well past the 0.5 s quiet period
                    return read_download(sock, size)

            result = await asyncio.to_thread(stalled_download)
            code = await asyncio.to_thread(_wait_or_none, sidecar, 10.0)
    assert result.status == 200
    assert (result.received, result.cut) == (size, False), (
        f"{size - result.received} of {size} bytes lost (kernel capacity {capacity})"
    )
    assert result.sha256 == result.sha256_header
    assert code == 0


# -- 5. Where a connection ends ---------------------------------------------------------------


async def test_connection_close_ends_the_connection_after_one_response() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        payload = (
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reply, closed = await asyncio.to_thread(exchange, sidecar.port, payload)
        await asyncio.sleep(0.2)  # anything sent on to the app would have arrived by now
    replies, rest = split_replies(reply)
    assert closed
    assert [(r.status, r.body) for r in replies] == [(200, b"/a")], reply[:300]
    assert rest == b""
    assert app.paths() == ["/a"]


async def test_a_request_followed_by_garbage_is_answered_then_400_then_eof() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        payload = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n"
        reply, closed = await asyncio.to_thread(exchange, sidecar.port, payload)
    replies, rest = split_replies(reply)
    assert closed
    assert [r.status for r in replies][:2] == [200, 400], reply[:300]
    assert replies[0].body == b"/a"
    assert len(replies) == 2 and rest == b"", reply[:300]
    assert app.paths() == ["/a"]


# -- Found by trying to break it (inputs the first tests did not have) -------------------------


@pytest.mark.parametrize("name", ENDPOINT_PORTS)
async def test_unread_answers_on_an_endpoint_port_do_not_grow_memory(name: str) -> None:
    """A client that pipelines scrapes and never reads: answering stops with reading."""
    async with (
        RawApp() as app,
        sidecar_for(app.port, OBSERVABILITY_CONFIG=USER_METRICS_ON) as sidecar,
    ):
        await endpoint_ports(sidecar)
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        with PeakRss(sidecar.pid) as rss:
            floods = await in_threads(
                *[
                    lambda: flood(
                        sidecar.port_of(name),
                        b"",
                        request,
                        10 * MIB,
                        deadline=10.0,
                        stall=1.0,
                        read=False,
                    )
                    for _ in range(3)
                ]
            )
    assert rss.growth_mib < RSS_BUDGET_MIB, (rss.growth_mib, floods)


async def test_an_endpoint_request_with_a_body_is_answered_at_once_and_closed() -> None:
    """No endpoint reads a body: waiting for a 1 TB one would hold the connection forever."""
    async with (
        RawApp() as app,
        sidecar_for(app.port, OBSERVABILITY_CONFIG=USER_METRICS_ON) as sidecar,
    ):
        port = (await endpoint_ports(sidecar))[1]  # the autoscaler's
        reply, closed = await asyncio.to_thread(
            exchange,
            port,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
        )
    replies, _ = split_replies(reply)
    assert closed and [r.status for r in replies] == [200]
    assert replies[0].headers[b"connection"] == b"close"


async def test_an_idle_kept_alive_endpoint_connection_is_closed_after_the_header_timeout() -> None:
    async with (
        RawApp() as app,
        sidecar_for(
            app.port,
            QUEUEPROXY_READ_HEADER_TIMEOUT_SECONDS="1",
            OBSERVABILITY_CONFIG=USER_METRICS_ON,
        ) as sidecar,
    ):
        port = (await endpoint_ports(sidecar))[1]

        def idle_after_one_scrape() -> bool:
            with socket.create_connection(("127.0.0.1", port), 5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_one(sock).status == 200
                return read_until_eof(sock, 5.0)[1]

        assert await asyncio.to_thread(idle_after_one_scrape)


@pytest.mark.parametrize(
    "hidden",
    [
        b"K-Network-Probe: probe\r\nK-Network-Hash: h\r\nConnection: k-network-probe\r\n",
        b"User-Agent: kube-probe/1.30\r\nK-Network-Probe: queue\r\nConnection: user-agent\r\n",
    ],
    ids=["network-probe", "health-check"],
)
async def test_connection_cannot_hide_a_probe_from_the_sidecar(hidden: bytes) -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        reply, _ = await asyncio.to_thread(
            exchange,
            sidecar.port,
            b"GET /p HTTP/1.1\r\nHost: x\r\n" + hidden + b"Connection: close\r\n\r\n",
        )
    assert [r.status for r in split_replies(reply)[0]] == [200]
    assert app.seen == [], "a probe is answered by the sidecar, never forwarded"


async def test_an_invalid_k_original_host_is_refused() -> None:
    async with RawApp() as app, sidecar_for(app.port) as sidecar:
        reply, closed = await asyncio.to_thread(
            exchange,
            sidecar.port,
            b"GET / HTTP/1.1\r\nHost: a\r\nK-Original-Host: evil.com/ x\ty\r\n\r\n",
        )
    assert closed and [r.status for r in split_replies(reply)[0]] == [400]
    assert app.seen == []
