"""HTTP/1.1 conformance of the data path: raw client bytes in, exact app-side bytes checked.

The sidecar fronts every request of an app; one framing mistake lets one client talk to the app
as if it were another. Every case of tests/conformance_cases.py runs twice against a real
sidecar process: once with an app that keeps its connections open (the sidecar pools them, and
a warm-up request before each case makes sure one is pooled) and once with an app that closes
after every response. While a case runs, a well-behaved client is served on another connection
and must get its 200s untouched.

For each case the test checks, with h11 as an independent parser on both sides:
- the client reads well-framed responses with the expected status codes, in order, and the
  connection is closed, or still usable (one more GET must come back 200 from the app), as the
  case says;
- the app saw exactly the case's expected requests (method, target, body, completeness), in
  order, and nothing else: no smuggled request, no bytes of the well-behaved client;
- everything the proxy sent to the app is well-formed (tests/recording_upstream.py);
- no response crossed connections (each app answer names its target, `X-Echo-Target`).

The decisions encoded in the cases (RFC 9112 / RFC 9110, strict):
- requests: a malformed request line or field line, bare CR or LF, obs-fold, control
  characters, non-token names, whitespace before the colon, HTTP/1.1 without exactly one valid
  Host → 400 and close; Content-Length must be 1*DIGIT and single, never together with
  Transfer-Encoding; Transfer-Encoding must be exactly `chunked` (400 or 501 otherwise); chunked
  bodies are checked byte by byte (400, and the app never gets a completed request); header
  block over 64 KiB → 431, request target too long → 414 or 431; CONNECT → 405;
  `Connection: Content-Length` (etc.) never removes framing; pipelined requests are answered in
  order and a bad one ends the connection after the good ones before it are answered;
- upgrades the app declines never turn the rest of the connection into a raw pipe;
- responses: 1xx are passed or dropped, never confused with the final response; 204/304 and
  responses to HEAD have no body whatever the app says; bytes after a response's end never
  reach anyone; invalid framing (CL+TE, bad or conflicting Content-Length, a 101 nobody asked
  for, a malformed status line, a head over 64 KiB) → 502; a body until close is re-framed
  chunked for HTTP/1.1 clients.

Run: `pytest tests/test_conformance.py` (-k keepalive / -k close for one mode).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tests.conformance_cases import CASES, MARK, AppRequest, Case, Outcome
from tests.h1_client import (
    READ_DEADLINE,
    GoodClient,
    Response,
    ResponseReader,
    Stack,
    connect,
    good_record_problems,
    send_quietly,
    sidecar_stack,
)
from tests.recording_upstream import Recorded, Script

MARKERS = {case.name: b"c%03d" % index for index, case in enumerate(CASES)}
assert all(len(marker) == len(MARK) for marker in MARKERS.values())


@pytest.fixture(scope="module", params=["keepalive", "close"])
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with sidecar_stack(keep_alive=request.param == "keepalive") as running_stack:
        yield running_stack


@dataclass
class Observation:
    responses: list[Response] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    closed: bool | None = None  # None: not established (a tunnel)
    extra: bytes = b""
    error: str | None = None
    timed_out: bool = False
    probe: Response | None = None
    probe_target: bytes = b""
    tunnel_echo: bytes | None = None

    @property
    def statuses(self) -> tuple[int, ...]:
        return tuple(response.status for response in self.responses)

    @property
    def truncated(self) -> bool:
        return bool(self.responses) and not self.responses[-1].complete

    def describe(self) -> str:
        lines = [
            f"client read: {[r.describe() for r in self.responses]} 1xx={self.informational}",
            f"  closed={self.closed} timed_out={self.timed_out} extra={self.extra[:120]!r}",
        ]
        if self.error:
            lines.append(f"  malformed response bytes: {self.error}")
        if self.probe_target:
            shown = self.probe.describe() if self.probe else None
            lines.append(f"  probe {self.probe_target!r}: {shown}")
        return "\n".join(lines)


def observe(
    stack: Stack,
    case: Case,
    sub: Callable[[bytes], bytes],
    marker: bytes,
    explore: bool = False,
) -> Observation:
    """Send the case's bytes on a fresh connection and read what comes back.

    `explore` (comparing proxies, tests/compare_haproxy.py): whatever statuses came, find out
    whether the connection is still usable, not only what the case's outcomes need."""
    obs = Observation()
    with connect(stack.port) as sock:
        # Substituted as a whole: a write boundary may fall inside the marker.
        stream = sub(b"".join(case.writes))
        offset = 0
        for index, data in enumerate(case.writes):
            if index:
                time.sleep(case.pause)
            if not send_quietly(sock, stream[offset : offset + len(data)]):
                break
            offset += len(data)
        reader = ResponseReader(sock, time.monotonic() + READ_DEADLINE)
        wanted = max(len(outcome.statuses) for outcome in case.outcomes)
        for index in range(wanted):
            method = case.methods[index] if index < len(case.methods) else "GET"
            response = reader.read(method, upgrade=case.upgrade and index == 0)
            if response is None:
                break
            obs.responses.append(response)
            if not response.complete or reader.switched or reader.must_close:
                break
        candidates = [
            o for o in case.outcomes if o.statuses == obs.statuses and o.truncated == obs.truncated
        ]
        if explore:
            found = Outcome(obs.statuses, None, truncated=obs.truncated)
            candidates = [] if reader.timed_out else [found]
        if reader.switched:
            if case.tunnel and send_quietly(sock, case.tunnel):
                obs.tunnel_echo = reader.read_raw(len(case.tunnel))
        elif reader.error or not candidates:
            obs.closed = reader.closed
        elif reader.closed or reader.must_close or obs.truncated:
            obs.closed = reader.wait_closed()
        elif any(outcome.closed is not True for outcome in candidates):
            # Is the connection still usable? One more request must come back from the app.
            obs.probe_target = b"/" + marker + b"/probe"
            reader.deadline = time.monotonic() + READ_DEADLINE
            request = b"GET %s HTTP/1.1\r\nHost: probe\r\n\r\n" % obs.probe_target
            obs.probe = reader.read() if send_quietly(sock, request) else None
            obs.closed = obs.probe is None and reader.closed and not reader.error
        else:
            obs.closed = reader.wait_closed()
        obs.informational = reader.informational
        obs.extra = reader.extra
        obs.error = reader.error
        obs.timed_out = reader.timed_out
    return obs


def app_problems(
    expected: list[AppRequest], seen: list[Recorded], sub: Callable[[bytes], bytes]
) -> list[str]:
    if len(expected) != len(seen):
        return [f"the app saw {len(seen)} request(s), expected {len(expected)}"]
    problems = []
    for index, (want, got) in enumerate(zip(expected, seen, strict=True)):
        target = sub(want.target)
        target_ok = got.target.endswith(target) if want.suffix else got.target == target
        if (
            got.method != want.method
            or not target_ok
            or (want.body is not None and bytes(got.body) != want.body)
            or got.complete != want.complete
        ):
            state = "complete" if want.complete else "cut short"
            body = "?" if want.body is None else f"{len(want.body)}:{want.body[:60]!r}"
            problems.append(
                f"app request {index}: expected {want.method.decode()} {target[:80]!r} "
                f"body={body} {state}; got {got.describe()}"
            )
    return problems


def outcome_problems(
    outcome: Outcome, obs: Observation, seen: list[Recorded], sub: Callable[[bytes], bytes]
) -> list[str]:
    problems = []
    if outcome.closed is not None and obs.closed is not None and outcome.closed != obs.closed:
        want = "closed" if outcome.closed else "left open"
        problems.append(f"connection should be {want} after the last response")
    if outcome.closed and obs.extra:
        problems.append(f"bytes after the last response: {obs.extra[:120]!r}")
    for index, body in enumerate(outcome.bodies):
        if body is not None and obs.responses[index].body != body:
            problems.append(f"response {index} body {obs.responses[index].body[:80]!r} != {body!r}")
    expected = list(outcome.app)
    if obs.probe_target and obs.probe is not None:
        expected.append(AppRequest(b"GET", obs.probe_target))
    problems += app_problems(expected, seen, sub)
    return problems


def run_case(stack: Stack, case: Case) -> list[str]:
    marker = MARKERS[case.name]

    def sub(data: bytes) -> bytes:
        return data.replace(MARK, marker)

    upstream = stack.upstream
    if stack.keep_alive:
        stack.warm_up()
    upstream.wait_quiet()
    upstream.reset()
    if case.response is not None:
        upstream.script(b"/" + marker + b"/", Script(sub(case.response), case.response_close))
    good = GoodClient(stack.port).start()
    try:
        obs = observe(stack, case, sub, marker)
    finally:
        good_errors = good.finish()
    upstream.wait_quiet()
    records = upstream.records()
    seen = [record for record in records if not record.good]

    problems: list[str] = []
    if obs.error:
        problems.append(f"malformed response to the client: {obs.error}")
    candidates = [
        o for o in case.outcomes if o.statuses == obs.statuses and o.truncated == obs.truncated
    ]
    if not candidates:
        wanted = [(o.statuses, "cut" if o.truncated else "") for o in case.outcomes]
        cut = " (last one cut short)" if obs.truncated else ""
        problems.append(f"client read statuses {obs.statuses}{cut}, expected one of {wanted}")
    else:
        results = [outcome_problems(outcome, obs, seen, sub) for outcome in candidates]
        if all(results):
            problems += results[0]
    if obs.probe_target and obs.probe is not None:
        probe = obs.probe
        if probe.status != 200 or probe.echo != obs.probe_target or not probe.complete:
            problems.append(
                f"follow-up request on the same connection got {probe.describe()} "
                f"answering {probe.echo!r}"
            )
    if obs.probe_target and obs.probe is None and not obs.closed:
        problems.append("follow-up request on the same connection got no answer")
    if case.tunnel and obs.tunnel_echo != case.tunnel:
        problems.append(f"tunnel echoed {obs.tunnel_echo!r}, sent {case.tunnel!r}")
    targets = {record.target for record in seen}
    for response in [*obs.responses, *([obs.probe] if obs.probe else [])]:
        if response.echo is not None and (
            response.echo.startswith(b"/good/") or response.echo not in targets
        ):
            problems.append(f"the client got the answer to someone else's {response.echo!r}")
    problems += [f"upstream: {error}" for error in upstream.errors()]
    problems += good_errors
    for record in records:
        if record.good:
            problems += good_record_problems(record)
    if problems:
        mode = "keep-alive upstream" if stack.keep_alive else "closing upstream"
        problems.insert(0, f"case {case.name} ({mode}, marker {marker.decode()}):")
        problems.append(obs.describe())
        problems.append("app saw: " + ("; ".join(r.describe() for r in seen) or "nothing"))
    return problems


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_conformance(stack: Stack, case: Case) -> None:
    problems = run_case(stack, case)
    assert not problems, "\n".join(problems)


def test_corpus_size() -> None:
    assert len(CASES) >= 150
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
