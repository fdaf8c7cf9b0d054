"""A stand-in for the app that sees the exact bytes the sidecar sends it.

A raw asyncio TCP server (not aiohttp: a framework would normalise what we want to inspect) in a
thread of its own, so synchronous tests and module-scoped fixtures can share it. Everything that
reaches it is parsed with h11, an HTTP/1.1 implementation independent of the sidecar's, plus a
strict check of each request head's bytes (CRLF line ends, no obs-fold, no control characters,
one Host, never Content-Length together with Transfer-Encoding). Any complaint is recorded as an
error: the proxy emitted something malformed.

Each request is recorded (method, target, headers, body, whether it was complete) and answered
`200` with a body naming its target (`ok GET /x`, header `X-Echo-Target`), so a client can tell
which request a response belongs to. A test can instead script the raw bytes of the answer to the
first request whose target contains a marker (response-side cases), including a `101` after which
the connection echoes whatever it receives.

Modes: `keep_alive=True` keeps every connection open (the sidecar pools them); `False` answers
with `Connection: close` and closes, so every request arrives on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import threading
import time
from dataclasses import dataclass, field

import h11

MAX_HEAD = 1 << 20
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass
class Recorded:
    """One request as the app saw it."""

    conn_id: int
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False  # its end (Content-Length reached or last chunk) arrived
    aborted: bool = False  # the connection ended before its end
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    tunnel: bytearray = field(default_factory=bytearray)  # bytes received after a scripted 101

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]

    @property
    def good(self) -> bool:
        """Sent by the well-behaved concurrent client (it marks its requests)."""
        return bool(self.values(b"x-good-client"))

    def copy(self) -> Recorded:
        return Recorded(
            self.conn_id,
            self.method,
            self.target,
            self.version,
            list(self.headers),
            bytearray(self.body),
            self.complete,
            self.aborted,
            list(self.trailers),
            bytearray(self.tunnel),
        )

    def describe(self) -> str:
        state = "complete" if self.complete else ("aborted" if self.aborted else "incomplete")
        body = bytes(self.body)
        shown = body if len(body) <= 60 else body[:60] + b"..."
        return (
            f"{self.method.decode('latin-1')} {self.target[:80].decode('latin-1')} "
            f"body={len(body)}:{shown!r} {state} conn={self.conn_id}"
        )


@dataclass(frozen=True)
class Script:
    """Raw bytes to answer with instead of the default 200."""

    raw: bytes
    close_after: bool = False  # close the connection after writing `raw`


def head_problems(head: bytes) -> list[str]:
    """What is wrong with a request head the proxy sent, by the strict rules of RFC 9112."""
    problems = []
    if not head.endswith(b"\r\n\r\n"):
        return [f"head does not end with CRLF CRLF: {head[-20:]!r}"]
    lines = head[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line or b"\r" in line:
            problems.append(f"bare CR or LF in {line[:80]!r}")
        if _CTL.search(line.replace(b"\t", b" ")):
            problems.append(f"control character in {line[:80]!r}")
    request_line, *fields = lines
    parts = request_line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        problems.append(f"malformed request line {request_line[:80]!r}")
    names = []
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            problems.append(f"obs-fold line {line[:80]!r}")
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            problems.append(f"malformed field line {line[:80]!r}")
            continue
        names.append(name.lower())
    if names.count(b"host") != 1:
        problems.append(f"{names.count(b'host')} Host fields")
    if names.count(b"content-length") > 1:
        problems.append("several Content-Length fields")
    if b"content-length" in names and b"transfer-encoding" in names:
        problems.append("Content-Length and Transfer-Encoding together")
    if names.count(b"transfer-encoding") > 1:
        problems.append("several Transfer-Encoding fields")
    return problems


class RecordingUpstream:
    """See the module docstring. Methods are thread-safe; the server runs in its own thread."""

    def __init__(self, keep_alive: bool = True) -> None:
        self.keep_alive = keep_alive
        self.port = 0
        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        self._errors: list[str] = []
        self._scripts: dict[bytes, Script] = {}
        self._busy: set[int] = set()  # connections in the middle of a request
        # Last change to a request not sent by the well-behaved client (that one never stops).
        self._last_activity = time.monotonic()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- Lifecycle (test thread) ---------------------------------------------------------------

    def start(self) -> RecordingUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_HEAD)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="recording-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("recording upstream did not start")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    # -- Test-thread API -----------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._errors.clear()
            self._scripts.clear()
            self._busy.clear()  # a connection left hanging earlier is not this test's business
            self._last_activity = time.monotonic()

    def script(self, marker: bytes, script: Script) -> None:
        """Answer the first request whose target contains `marker` with `script`."""
        with self._lock:
            self._scripts[marker] = script

    def records(self) -> list[Recorded]:
        with self._lock:
            return [record.copy() for record in self._records]

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def wait_quiet(self, idle: float = 0.03, cap: float = 1.0, busy_ok: bool = False) -> bool:
        """Wait until no request is half-received (unless `busy_ok`) and no request other than
        the well-behaved client's changed for `idle` seconds."""
        deadline = time.monotonic() + cap
        while time.monotonic() < deadline:
            with self._lock:
                settled = time.monotonic() - self._last_activity >= idle
                quiet = settled and (busy_ok or not self._busy)
            if quiet:
                return True
            time.sleep(0.005)
        return False

    # -- Server side (upstream thread) ---------------------------------------------------------

    def _error(self, conn_id: int, message: str) -> None:
        with self._lock:
            self._errors.append(f"upstream conn {conn_id}: {message}")

    def _touch(self, record: Recorded | None) -> None:
        if record is None or not record.good:
            with self._lock:
                self._last_activity = time.monotonic()

    def _set_busy(self, conn_id: int, busy: bool) -> None:
        with self._lock:
            if busy:
                self._busy.add(conn_id)
            else:
                self._busy.discard(conn_id)

    def _take_script(self, target: bytes) -> Script | None:
        with self._lock:
            for marker in list(self._scripts):
                if marker in target:
                    return self._scripts.pop(marker)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn_id = next(self._ids)
        try:
            await self._conversation(conn_id, reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 - any surprise is a finding, not a crash
            self._error(conn_id, f"upstream crashed: {exc!r}")
        finally:
            self._set_busy(conn_id, False)
            self._tasks.discard(task)
            writer.close()

    async def _conversation(
        self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        current: Recorded | None = None
        eof = False
        while True:
            before = conn.trailing_data[0]
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if eof:
                    # The proxy closed in the middle of a request: an abort, not malformed bytes.
                    if current is not None and not current.complete:
                        current.aborted = True
                        self._touch(current)
                    elif before.strip():
                        self._error(conn_id, f"closed after a partial head {before[:80]!r}")
                else:
                    self._error(conn_id, f"h11 rejected what the proxy sent: {exc}")
                return
            if event is h11.NEED_DATA:
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    eof = True
                    if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                        return
                else:
                    self._set_busy(conn_id, True)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                consumed = before[: len(before) - len(conn.trailing_data[0])]
                for problem in head_problems(consumed):
                    self._error(conn_id, problem)
                current = Recorded(
                    conn_id,
                    bytes(event.method),
                    bytes(event.target),
                    bytes(event.http_version),
                    [(bytes(n), bytes(v)) for n, v in event.headers],
                )
                with self._lock:
                    self._records.append(current)
                self._touch(current)
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += event.data
                self._touch(current)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
                current.complete = True
                self._set_busy(conn_id, False)
                self._touch(current)
                if not await self._answer(conn_id, conn, current, reader, writer):
                    return
                current = None
            elif isinstance(event, h11.ConnectionClosed):
                return
            elif event is h11.PAUSED:
                self._error(conn_id, "h11 paused unexpectedly")
                return

    async def _answer(
        self,
        conn_id: int,
        conn: h11.Connection,
        record: Recorded,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer `record`; False when the connection is done."""
        script = self._take_script(record.target)
        if script is not None:
            if script.raw[9:12] == b"101":
                writer.write(script.raw)
                await self._echo(record, conn.trailing_data[0], reader, writer)
                return False
            # Keep h11's state machine in step with a synthetic answer it never sends.
            headers = [("content-length", "0")]
            if script.close_after or not self.keep_alive:
                headers.append(("connection", "close"))
            conn.send(h11.Response(status_code=200, headers=headers))
            conn.send(h11.EndOfMessage())
            writer.write(script.raw)
        else:
            # CONNECT must never reach the app; if it does, a 2xx would make h11 switch protocols.
            status = 405 if record.method == b"CONNECT" else 200
            body = b"ok " + record.method + b" " + record.target + b"\n"
            headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
            if re.fullmatch(rb"[\x21-\x7e]+", record.target):
                headers.append(("x-echo-target", record.target.decode("ascii")))
            if not self.keep_alive:
                headers.append(("connection", "close"))
            data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
            if record.method != b"HEAD":
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
            writer.write(data)
        await writer.drain()
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
            return False
        conn.start_next_cycle()
        return True

    async def _echo(
        self,
        record: Recorded,
        pending: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """After a scripted 101: record and echo everything until the proxy closes."""
        data = pending
        while True:
            if data:
                record.tunnel += data
                writer.write(data)
                await writer.drain()
            data = await reader.read(65536)
            self._touch(record)
            if not data:
                return
