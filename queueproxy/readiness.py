"""Probing the user container for readiness (docs/contract.md#probing-the-app).

Two layers, as in Knative's `pkg/queue/readiness/probe.go` and `pkg/queue/health/probe.go`:

- `ProbeSchedule` is the pure retry logic for one probe: which attempt to make when, and when the
  run is over. It opens no sockets and reads no clock; the caller passes `now`.
- `Prober` runs the schedules on asyncio with the TCP, HTTP and gRPC checks (the last over h2c,
  queueproxy/h2probe.py), single-flight: concurrent callers share the run in flight, and a call
  after it finishes starts a new run (no caching).

Aggressive mode (`period_seconds == 0`, Knative's default): attempt at once and every 50 ms, each
with a 100 ms timeout, until `success_threshold` consecutive successes, giving up after 10 s.
Normal mode: one attempt with `timeout_seconds`; kubelet applies the thresholds to our answer.
As in Knative, the count of consecutive successes survives from one run to the next (a failure
resets it), so once the app has proven itself a single success answers the next health check.

Readiness changes are logged once per transition, never once per failed attempt (Knative users
get a line every 50 ms while their app starts, knative/serving#10236).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from queueproxy.config import ProbeSpec

# Knative's readiness/probe.go constants.
AGGRESSIVE_INTERVAL = 0.05
AGGRESSIVE_ATTEMPT_TIMEOUT = 0.1
AGGRESSIVE_BUDGET = 10.0  # PollTimeout: "equal to the queue-proxy's ExecProbe timeout"
# Kubernetes' own default for timeoutSeconds; the reconciler never sends less when period > 0.
DEFAULT_TIMEOUT_SECONDS = 1.0

# Kubelet's User-Agent with its version fields left empty, exactly as Knative sends it.
PROBE_USER_AGENT = "kube-probe//"
# The status decides the probe; the body is read only so the app sees a clean close.
MAX_DISCARDED_BODY = 64 * 1024
# How many finished runs `Prober.last_results` keeps for debugging.
KEPT_RESULTS = 10


# NamedTuples, not frozen dataclasses: as immutable, and defining these four as slotted frozen
# dataclasses cost ~2 ms of every start.
class Attempt(NamedTuple):
    timeout: float


class Wait(NamedTuple):
    until: float


class Done(NamedTuple):
    ready: bool
    reason: str  # why not ready; "" when ready


Action = Attempt | Wait | Done


class ProbeSchedule:
    """One run of one probe. Call `next_action(now)`; after an `Attempt`, report its outcome with
    `record(now, ok, error)`; after a `Wait`, call `next_action` again at `until`."""

    __slots__ = (
        "aggressive",
        "timeout",
        "success_threshold",
        "consecutive",
        "interval",
        "deadline",
        "failures",
        "last_error",
        "_origin",
        "_tick",
        "_next_at",
        "_attempt_started",
        "_done",
    )

    def __init__(
        self,
        now: float,
        *,
        aggressive: bool,
        timeout: float,
        success_threshold: int = 1,
        consecutive: int = 0,
        interval: float = AGGRESSIVE_INTERVAL,
        budget: float = AGGRESSIVE_BUDGET,
    ) -> None:
        self.aggressive = aggressive
        self.timeout = timeout
        self.success_threshold = max(success_threshold, 1)
        self.consecutive = consecutive
        self.interval = interval
        self.deadline = now + budget
        self.failures = 0
        self.last_error = ""
        self._origin = now
        self._tick = 0
        self._next_at = now
        self._attempt_started: float | None = None
        self._done: Done | None = None

    @classmethod
    def for_probe(
        cls, spec: ProbeSpec, now: float, *, consecutive: int = 0, budget: float = AGGRESSIVE_BUDGET
    ) -> ProbeSchedule:
        if spec.period_seconds == 0:
            return cls(
                now,
                aggressive=True,
                timeout=AGGRESSIVE_ATTEMPT_TIMEOUT,
                success_threshold=spec.success_threshold,
                consecutive=consecutive,
                budget=budget,
            )
        timeout = (
            float(spec.timeout_seconds) if spec.timeout_seconds > 0 else DEFAULT_TIMEOUT_SECONDS
        )
        return cls(now, aggressive=False, timeout=timeout, consecutive=consecutive)

    def next_action(self, now: float) -> Action:
        if self._attempt_started is not None:
            raise RuntimeError("next_action() called while an attempt is in flight")
        if self._done is not None:
            return self._done
        if self.aggressive and now >= self.deadline:
            return self._finish(False, self._give_up_reason())
        if now < self._next_at:
            return Wait(self._next_at)
        self._attempt_started = now
        return Attempt(self.timeout)

    def record(self, now: float, ok: bool, error: str = "") -> None:
        if self._attempt_started is None:
            raise RuntimeError("record() called without an attempt in flight")
        self._attempt_started = None
        if ok:
            self.consecutive += 1
        else:
            self.consecutive = 0
            self.failures += 1
            self.last_error = error
        if not self.aggressive:
            self._finish(ok, "" if ok else error)
        elif self.consecutive >= self.success_threshold:
            self._finish(True, "")
        else:
            self._next_at = self._next_tick(now)

    def _next_tick(self, now: float) -> float:
        # Attempts start on a fixed 50 ms grid, like Go's ticker (multiplying, not adding, keeps
        # the grid exact). An attempt that overran its tick is followed at once, as Go's ticker
        # delivers the one tick it buffered meanwhile.
        self._tick += 1
        tick_at = self._origin + self._tick * self.interval
        if tick_at >= now:
            return tick_at
        self._tick = int((now - self._origin) / self.interval)
        return now

    def _finish(self, ready: bool, reason: str) -> Done:
        self._done = Done(ready, reason)
        return self._done

    def _give_up_reason(self) -> str:
        if self.consecutive:
            return (
                f"{self.consecutive} of {self.success_threshold} consecutive successes before the "
                f"aggressive probe gave up (failed {self.failures} times: {self.last_error})"
            )
        return f"aggressive probe error (failed {self.failures} times): {self.last_error}"


class ProbeRun(NamedTuple):
    """One finished `Prober.probe()` run, kept in `Prober.last_results`."""

    started: float
    finished: float
    ready: bool
    reason: str


class Prober:
    """Single-flight readiness check of every configured probe, run in parallel; all must pass.

    `probe()` is what a health check awaits; callback-style callers use `probe_future()` and add
    a done callback. A cancelled caller never cancels the shared run: Knative's poll is likewise
    not tied to the kubelet request that started it. `clock` must keep the event loop's time
    (monotonic seconds); `budget` shortens the aggressive 10 s poll for tests.
    """

    def __init__(
        self,
        probes: Sequence[ProbeSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
        budget: float = AGGRESSIVE_BUDGET,
        http2_auto_detection: bool = False,
    ) -> None:
        self.probes = tuple(probes)
        self._h2c_first = http2_auto_detection
        self._clock = clock
        self._log = log if log is not None else logging.getLogger("queueproxy")
        self._budget = budget
        self._consecutive = [0] * len(self.probes)
        self._in_flight: asyncio.Future[bool] | None = None
        self._ready: bool | None = True if not self.probes else None
        self.last_results: deque[ProbeRun] = deque(maxlen=KEPT_RESULTS)

    @property
    def ready(self) -> bool:
        """The outcome of the last finished run (False before the first one)."""
        return bool(self._ready)

    @property
    def always_ready(self) -> bool:
        return not self.probes

    def probe_future(self) -> asyncio.Future[bool]:
        """The run in flight, or a new one. Don't cancel it: other callers share it."""
        if self._in_flight is None or self._in_flight.done():
            loop = asyncio.get_running_loop()
            if not self.probes:
                done = loop.create_future()
                done.set_result(True)
                return done
            self._in_flight = loop.create_task(self._run())
            self._in_flight.add_done_callback(self._forget)
        return self._in_flight

    async def probe(self) -> bool:
        return await asyncio.shield(self.probe_future())

    def _forget(self, _: asyncio.Future[bool]) -> None:
        self._in_flight = None

    async def _run(self) -> bool:
        started = self._clock()
        try:
            if len(self.probes) == 1:
                ready, reason = await self._run_one(0)
            else:
                ready, reason = await self._run_all()
        except Exception as error:  # a bug here must not take the health checks down with it
            self._log.exception("readiness probe crashed")
            ready, reason = False, f"probe crashed: {error!r}"
        self.last_results.append(ProbeRun(started, self._clock(), ready, reason))
        self._transition(ready, reason)
        return ready

    async def _run_all(self) -> tuple[bool, str]:
        # Stop at the first failure: the answer is "not ready" whatever the others say.
        tasks = [asyncio.ensure_future(self._run_one(index)) for index in range(len(self.probes))]
        try:
            for next_done in asyncio.as_completed(tasks):
                ready, reason = await next_done
                if not ready:
                    return False, reason
            return True, ""
        finally:
            for task in tasks:
                task.cancel()

    async def _run_one(self, index: int) -> tuple[bool, str]:
        spec = self.probes[index]
        schedule = ProbeSchedule.for_probe(
            spec, self._clock(), consecutive=self._consecutive[index], budget=self._budget
        )
        try:
            while True:
                action = schedule.next_action(self._clock())
                if isinstance(action, Attempt):
                    error = await attempt(spec, action.timeout, h2c_first=self._h2c_first)
                    schedule.record(self._clock(), error is None, error or "")
                elif isinstance(action, Wait):
                    await asyncio.sleep(max(action.until - self._clock(), 0.0))
                else:
                    return action.ready, action.reason
        finally:
            self._consecutive[index] = schedule.consecutive

    def _transition(self, ready: bool, reason: str) -> None:
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            self._log.info("ready")
        else:
            self._log.warning("not ready: %s", reason)


async def attempt(spec: ProbeSpec, timeout: float, *, h2c_first: bool = False) -> str | None:
    """One check of `spec` within `timeout` seconds: None on success, else why it failed.

    gRPC probes are `grpc.health.v1.Health/Check` over h2c (queueproxy/h2probe.py). With
    `h2c_first` (ENABLE_HTTP2_AUTO_DETECTION), an HTTP probe is tried over h2c first and, unless
    that answers ready, again over HTTP/1.1, every time: Knative's GET-based detection since
    knative-v1.21 (`pkg/queue/health/probe.go`). Each of the two tries gets `timeout`.
    """
    try:
        if spec.kind == "http":
            _check_headers(spec.headers)
        if spec.kind == "grpc":
            await _h2probe().grpc_probe(spec.port, spec.grpc_service, timeout, spec.host)
            return None
        if spec.kind == "http":
            if not (h2c_first and spec.scheme.upper() == "HTTP"):
                return await _http_attempt(spec, timeout)
            h2c_error = await _h2c_attempt(spec, timeout)
            if h2c_error is None:
                return None
            http1_error = await attempt(spec, timeout)
            return None if http1_error is None else f"{http1_error} (over h2c: {h2c_error})"
        # TCP, and exec (rewritten to TCP by the reconciler): connect and close.
        async with asyncio.timeout(timeout):
            transport, _ = await asyncio.get_running_loop().create_connection(
                asyncio.Protocol, spec.host, spec.port
            )
        transport.close()
        return None
    except TimeoutError:
        return f"{spec.kind} probe of {spec.host}:{spec.port} timed out after {timeout:g}s"
    except (OSError, EOFError, InvalidProbeRequest, *_LOADED_ERRORS) as error:
        why = str(error) or type(error).__name__
        return f"{spec.kind} probe of {spec.host}:{spec.port} failed: {why}"


# httptools is imported by the first HTTP probe (`_httptools`), h2probe (with grpcwire) by the
# first gRPC or h2c one (`_h2probe`): a pod probing over TCP, the default, loads neither. Until a
# module is loaded none of its errors can occur, so there is none to catch.
_LOADED_ERRORS: tuple[type[Exception], ...] = ()


@functools.cache
def _httptools() -> ModuleType:
    global _LOADED_ERRORS
    import httptools

    _LOADED_ERRORS += (httptools.HttpParserError,)
    return httptools


@functools.cache
def _h2probe() -> ModuleType:
    global _LOADED_ERRORS
    from queueproxy import h2probe

    _LOADED_ERRORS += (h2probe.H2ProbeError,)
    return h2probe


class InvalidProbeRequest(ValueError):
    """A probe header that cannot be sent; the message names it."""


# RFC 9110 section 5.1 (token) and 5.5 (field-value: no CR, LF or NUL).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
# RFC 3986 section 3.3 and 3.4: what may stand in a path and query as it is; anything else, and a
# `%` that starts no escape, is percent-encoded (as UTF-8).
_NOT_IN_TARGET = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~!$&'()*+,;=:@/?%]+")


def _check_headers(headers: Sequence[tuple[str, str]]) -> None:
    """Refuse what Go's client refuses (`net/http: invalid header field ...`): a value with CR or
    LF would smuggle a header (HTTP/1.1) or make a malformed field (HTTP/2)."""
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidProbeRequest(f"invalid header field name {name!r}")
        if _BAD_VALUE.search(value):
            raise InvalidProbeRequest(f"invalid header field value for {name!r}")


def request_target(path: str) -> str:
    """The probe's `path` as an origin-form request-target (RFC 9112 section 3.2.1): a leading
    `/`, the fragment left out, and what a path or query may not hold percent-encoded, as Go's
    `url.URL` sends it (a space as `%20`, `€` as `%E2%82%AC`)."""
    path = path.partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    return _NOT_IN_TARGET.sub(
        lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode()), path
    )


async def _h2c_attempt(spec: ProbeSpec, timeout: float) -> str | None:
    target = request_target(spec.path)
    h2probe = _h2probe()
    try:
        status = await h2probe.h2c_get(spec.host, spec.port, target, spec.headers, timeout)
    except TimeoutError:
        return f"timed out after {timeout:g}s"
    except (OSError, h2probe.H2ProbeError) as error:
        return str(error) or type(error).__name__
    return None if 200 <= status < 400 else f"status code {status}"


async def _http_attempt(spec: ProbeSpec, timeout: float) -> str | None:
    https = spec.scheme.upper() == "HTTPS"
    httptools = _httptools()
    response = _ProbeResponse(httptools)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                spec.host, spec.port, ssl=_insecure_tls() if https else None
            )
            try:
                writer.write(_request_bytes(spec))
                await response.read(reader)
            finally:
                writer.close()
    except (TimeoutError, OSError, httptools.HttpParserError):
        # Once the status is in, trouble with the body doesn't change the verdict (Go's
        # prober closes the body unread).
        if response.status is None:
            raise
    if response.status is None:
        raise EOFError("connection closed before a response")
    if 200 <= response.status < 400:
        return None
    url = f"{spec.scheme.lower()}://{spec.host}:{spec.port}{spec.path}"
    return f"HTTP probe of {url} did not respond ready, got status code {response.status}"


def _request_bytes(spec: ProbeSpec) -> bytes:
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    host_line = f"Host: {host}:{spec.port}"
    lines = []
    for name, value in spec.headers:
        lowered = name.lower()
        if lowered == "host":
            host_line = f"Host: {value}"  # kubelet lets a probe name its virtual host
        elif lowered not in _OURS:
            lines.append(f"{name}: {value}")
    path = request_target(spec.path)
    head = [f"GET {path} HTTP/1.1", host_line, f"User-Agent: {PROBE_USER_AGENT}", *lines]
    if not any(name.lower() == "accept" for name, _ in spec.headers):
        head.append("Accept: */*")
    head += ["Connection: close", "", ""]
    # Values as UTF-8, the bytes Go writes for its strings (obs-text to an HTTP/1.1 reader).
    return "\r\n".join(head).encode()


# Go sends only the first User-Agent, and kubelet's comes first; framing headers are ours.
_OURS = frozenset({"user-agent", "connection", "content-length", "transfer-encoding"})


class _ProbeResponse:
    """Parser callbacks for the one response of a probe."""

    def __init__(self, httptools: ModuleType) -> None:
        self.status: int | None = None
        self.complete = False
        self._parser = httptools.HttpResponseParser(self)
        self._upgrade = httptools.HttpParserUpgrade

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        self.complete = True

    async def read(self, reader: asyncio.StreamReader) -> None:
        received = 0
        while not self.complete and received <= MAX_DISCARDED_BODY:
            data = await reader.read(16 * 1024)
            if not data:
                return
            received += len(data)
            try:
                self._parser.feed_data(data)
            except self._upgrade:
                return


@functools.cache
def _insecure_tls() -> ssl.SSLContext:
    # Probes skip verification, as Knative's prober does (InsecureSkipVerify).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
