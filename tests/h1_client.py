"""Client side of the HTTP/1.1 conformance and fuzz tests.

- `ResponseReader`: reads responses from a raw socket with h11 in the client role (a parser
  independent of the sidecar's), so any framing mistake in what the proxy sent is an error.
- `GoodClient`: a well-behaved client on its own connection, run in a thread while a case runs;
  its requests carry `X-Good-Client: 1` so the app's recordings can tell them apart, and every
  answer must be a 200 naming its own target.
- `Stack`: one sidecar in front of one `RecordingUpstream`, started once per test module.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h11

from tests.harness import Process, free_port, knative_env, running, start_sidecar
from tests.recording_upstream import Recorded, RecordingUpstream

READ_DEADLINE = 5.0


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False  # its end arrived (False: the connection ended in its body)

    @property
    def echo(self) -> bytes | None:
        """The target the recording upstream answered for, if this came from it."""
        for name, value in self.headers:
            if name == b"x-echo-target":
                return value
        return None

    def describe(self) -> str:
        cut = "" if self.complete else " (truncated)"
        return f"{self.status}{cut} body={self.body[:60]!r}"


class ResponseReader:
    """h11 (client role) over a raw socket; one synthetic request is primed per response."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        self.informational: list[int] = []
        self.closed = False  # the proxy closed (EOF or reset)
        self.timed_out = False
        self.error: str | None = None  # h11 rejected what the proxy sent
        self.switched = False  # a 101 was read; what follows is not HTTP
        self.extra = b""  # bytes after a response that announced `Connection: close`
        self.last_version = b"1.1"

    def _http10_keep_alive(self, response: Response) -> bool:
        return self.last_version == b"1.0" and any(
            name.lower() == b"connection" and b"keep-alive" in value.lower()
            for name, value in response.headers
        )

    @property
    def must_close(self) -> bool:
        return self.conn.their_state is h11.MUST_CLOSE

    def _recv(self) -> bool:
        """Feed h11 what arrives; False on deadline."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            self.timed_out = True
            return False
        except OSError:
            data = b""
        if not data:
            self.closed = True
        self.conn.receive_data(data)
        return True

    def read(self, method: str = "GET", upgrade: bool = False) -> Response | None:
        """The next final response (1xx are noted), or None if none came."""
        conn = self.conn
        if self.error or self.switched or self.closed and not conn.trailing_data[0]:
            return None
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        if conn.our_state is h11.IDLE:
            headers = [("host", "x")]
            if upgrade:
                headers += [("connection", "upgrade"), ("upgrade", "websocket")]
            conn.send(h11.Request(method=method, target="/", headers=headers))
            conn.send(h11.EndOfMessage())
        response: Response | None = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self.closed and not conn.trailing_data[0]:
                    # The proxy closed: before a response, or inside its body (truncated).
                    if response is not None:
                        response.body = bytes(body)
                    return response
                self.error = f"h11 rejected what the proxy sent: {exc}"
                return response
            if event is h11.NEED_DATA:
                if self.closed or not self._recv():
                    if response is not None:
                        response.body = bytes(body)
                    return response
                continue
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.switched = True
                    return Response(101, list(event.headers), complete=True)
                self.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                self.last_version = event.http_version
                response = Response(event.status_code, list(event.headers))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                response.body = bytes(body)
                response.complete = True
                if conn.their_state is h11.MUST_CLOSE and self._http10_keep_alive(response):
                    # h11 never keeps an HTTP/1.0 connection alive; RFC 9112 §9.3 lets a
                    # `Connection: keep-alive` response do so: read on with a fresh h11.
                    trailing, closed = conn.trailing_data
                    self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
                    if trailing:  # h11 reads b"" as the peer's close
                        self.conn.receive_data(trailing)
                    if closed:
                        self.conn.receive_data(b"")
                return response
            elif isinstance(event, h11.ConnectionClosed):
                self.closed = True
                return None

    def wait_closed(self) -> bool:
        """After the last expected response: read to EOF; anything received is `extra`."""
        chunks = [self.conn.trailing_data[0]]
        while not self.closed:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self.timed_out = True
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
            chunks.append(data)
        self.extra = b"".join(chunks)
        return self.closed

    def read_raw(self, size: int) -> bytes:
        """After a 101: up to `size` bytes of the tunnel."""
        data = bytearray(self.conn.trailing_data[0])
        while len(data) < size and time.monotonic() < self.deadline:
            self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            data += chunk
        return bytes(data)


def connect(port: int, timeout: float = READ_DEADLINE) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send; False if the proxy has already closed (that is for the reader to judge)."""
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


_good_ids = itertools.count()


class GoodClient:
    """A well-behaved keep-alive client in a thread: GET after GET, each must come back 200."""

    def __init__(self, port: int, interval: float = 0.01) -> None:
        self.port = port
        self.interval = interval
        self.errors: list[str] = []
        self.answered = 0
        self.prefix = b"/good/%d/" % next(_good_ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="good-client", daemon=True)

    def start(self) -> GoodClient:
        self._thread.start()
        return self

    def finish(self) -> list[str]:
        self._stop.set()
        self._thread.join(READ_DEADLINE * 2)
        if self._thread.is_alive():
            self.errors.append("good client stuck")
        elif not self.answered and not self.errors:
            self.errors.append("good client got no answer at all")
        return self.errors

    def _run(self) -> None:
        try:
            sock = connect(self.port)
        except OSError as exc:
            self.errors.append(f"good client could not connect: {exc}")
            return
        with sock:
            reader = ResponseReader(sock, 0.0)
            for index in itertools.count():
                target = self.prefix + b"%d" % index
                request = b"GET %s HTTP/1.1\r\nHost: good\r\nX-Good-Client: 1\r\n\r\n" % target
                reader.deadline = time.monotonic() + READ_DEADLINE
                if not send_quietly(sock, request):
                    self.errors.append(f"good client: send failed for {target!r}")
                    return
                response = reader.read()
                if response is None or reader.error:
                    self.errors.append(
                        f"good client: no response to {target!r} "
                        f"(closed={reader.closed} timed_out={reader.timed_out} {reader.error})"
                    )
                    return
                if (
                    response.status != 200
                    or not response.complete
                    or response.echo != target
                    or response.body != b"ok GET " + target + b"\n"
                ):
                    self.errors.append(
                        f"good client: wrong answer to {target!r}: {response.describe()} "
                        f"echo={response.echo!r}"
                    )
                    return
                if reader.must_close:
                    self.errors.append(f"good client: connection closed after {target!r}")
                    return
                self.answered += 1
                if self._stop.wait(self.interval):
                    return


def good_record_problems(record: Recorded) -> list[str]:
    """A request of the good client as the app saw it must be exactly what it sent."""
    problems = []
    if (
        record.method != b"GET"
        or not record.target.startswith(b"/good/")
        or record.body
        or not record.complete
        or record.values(b"x-good-client") != [b"1"]
        or record.values(b"content-length") not in ([], [b"0"])
        or record.values(b"transfer-encoding")
    ):
        problems.append(f"good client's request altered on its way: {record.describe()}")
    return problems


@dataclass
class Stack:
    sidecar: Process
    upstream: RecordingUpstream
    keep_alive: bool
    warmups: Iterator[int] = field(default_factory=itertools.count)

    @property
    def port(self) -> int:
        return self.sidecar.port

    def warm_up(self, timeout: float = READ_DEADLINE) -> None:
        """One good request through the sidecar, so a pooled upstream connection exists."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            target = b"/warmup/%d" % next(self.warmups)
            with contextlib.suppress(OSError), connect(self.port) as sock:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: warm\r\n\r\n" % target)
                reader = ResponseReader(sock, time.monotonic() + 2)
                response = reader.read()
                if response is not None and response.status == 200 and response.echo == target:
                    return
                last = response.describe() if response else f"nothing ({reader.error})"
            time.sleep(0.05)
        raise AssertionError(f"the sidecar does not answer a plain GET: {last}")


@contextlib.contextmanager
def sidecar_stack(keep_alive: bool, **env: str) -> Iterator[Stack]:
    upstream = RecordingUpstream(keep_alive=keep_alive).start()
    try:
        serving = free_port()
        settings = {"CONTAINER_CONCURRENCY": "10", "REVISION_TIMEOUT_SECONDS": "10", **env}
        sidecar = start_sidecar(knative_env(upstream.port, serving, **settings))
        with running(sidecar):
            stack = Stack(sidecar, upstream, keep_alive)
            stack.warm_up(timeout=20)
            yield stack
    finally:
        upstream.stop()
