"""Property test of the data path's HTTP/1.1 framing: mutated request streams, h11 as the oracle.

Hypothesis builds pipelines of 1-4 valid requests (bodies framed by Content-Length or chunked),
mutates them (insert, delete, replace or duplicate bytes, among them CR, LF, NUL, SP, HTAB, `:`,
`,`, digits and hex; duplicate or case-flip whole lines) and writes them in random pieces to a
real sidecar in front of tests/recording_upstream.py, while a well-behaved client is served on
another connection. Invariants:

1. The app never sees more requests than h11 (server role) accepts from the client's bytes, and
   the ones it sees are h11's, in order, same method, target and body (h11 is laxer than the
   sidecar's rules in places, so the property is one-directional). The requests that both h11
   and a strict reference reading of RFC 9112 accept (`strict_requests`, deliberately
   conservative: it stops at anything unusual) must all reach the app.
2. The client reads well-framed responses (h11, client role): first the app's answers to exactly
   the requests the app saw, in order, then at most one error from the proxy; never more
   responses than requests. Everything the proxy sends the app is well-formed.
3. The well-behaved client is never disturbed, and none of its bytes reach the fuzzed requests.

Time-boxed: examples stop after `FUZZ_SECONDS` (45 s) of wall clock; the number run is printed
(`pytest -s tests/test_h1_fuzz.py`). Batches use fixed seeds (0, 1, 2...), so a run is reproducible.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

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

FUZZ_SECONDS = float(os.environ.get("H1_FUZZ_SECONDS", "45"))
# H1_FUZZ_COLLECT=1: keep going after a failing example and list every failure at the end.
COLLECT = os.environ.get("H1_FUZZ_COLLECT") == "1"
MAX_EXAMPLES = int(os.environ.get("H1_FUZZ_EXAMPLES", "5000"))
BATCH = 20
IDLE_AFTER = 0.15  # no byte for this long after the expected responses: the proxy is done

Req = tuple[bytes, bytes, bytes]  # method, target, body


@pytest.fixture(scope="module")
def fuzz_stack() -> Iterator[Stack]:
    with sidecar_stack(keep_alive=True) as running_stack:
        yield running_stack


# -- Oracles ---------------------------------------------------------------------------------


def h11_requests(data: bytes) -> tuple[list[Req], bool]:
    """Complete requests h11 accepts from `data`, in order; and whether it read a further head."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    accepted: list[Req] = []
    current: list[bytes] | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            break
        if isinstance(event, h11.Request):
            current = [bytes(event.method), bytes(event.target), b""]
        elif isinstance(event, h11.Data):
            assert current is not None
            current[2] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            assert current is not None
            accepted.append((current[0], current[1], current[2]))
            current = None
            try:
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
            except h11.LocalProtocolError:
                break
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
        else:  # NEED_DATA, PAUSED (upgrade, CONNECT), ConnectionClosed
            break
    return accepted, current is not None


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (/[A-Za-z0-9/_.~:,;=&?!$'()*+@-]*) HTTP/1\.([01])")
_FIELD = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?)[ \t]*"
)
_HOST = re.compile(rb"[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*")
_UNUSUAL = {
    b"upgrade",
    b"expect",
    b"te",
    b"trailer",
    b"keep-alive",
    b"proxy-connection",
    b"http2-settings",
}


def strict_requests(data: bytes) -> list[Req]:
    """The leading requests that are valid beyond doubt by the sidecar's rules (RFC 9112).

    Conservative on purpose: it stops at the first thing it is not sure the rules accept."""
    accepted: list[Req] = []
    pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return accepted
        lines = data[pos:end].split(b"\r\n")
        if any(b"\r" in line or b"\n" in line for line in lines):
            return accepted
        match = _REQUEST_LINE.fullmatch(lines[0])
        if not match or match[1] in (b"HEAD", b"CONNECT", b"OPTIONS", b"PRI"):
            return accepted
        method, target, minor = match[1], match[2], match[3]
        fields: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            field = _FIELD.fullmatch(line)
            if not field:
                return accepted
            fields.append((field[1].lower(), field[2]))

        def values(name: bytes, fields: list[tuple[bytes, bytes]] = fields) -> list[bytes]:
            return [value for key, value in fields if key == name]

        hosts = values(b"host")
        if len(hosts) > 1 or (minor == b"1" and not hosts):
            return accepted
        if hosts and not _HOST.fullmatch(hosts[0]):
            return accepted
        if any(name in _UNUSUAL for name, _ in fields):
            return accepted
        tokens = [t.strip().lower() for v in values(b"connection") for t in v.split(b",")]
        if any(token not in (b"close", b"keep-alive") for token in tokens):
            return accepted
        lengths, codings = values(b"content-length"), values(b"transfer-encoding")
        if len(lengths) > 1 or len(codings) > 1 or (lengths and codings):
            return accepted
        pos = end + 4
        if lengths:
            if not re.fullmatch(rb"[0-9]{1,12}", lengths[0]):
                return accepted
            size = int(lengths[0])
            if pos + size > len(data):
                return accepted
            body = data[pos : pos + size]
            pos += size
        elif codings:
            if minor == b"0" or codings[0].lower() != b"chunked":
                return accepted
            parsed = _strict_chunked(data, pos)
            if parsed is None:
                return accepted
            body, pos = parsed
        else:
            body = b""
        accepted.append((method, target, body))
        if b"close" in tokens or (minor == b"0" and b"keep-alive" not in tokens):
            return accepted


def _strict_chunked(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked body without extensions or trailers: (body, position after it), or None."""
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = data[pos:eol]
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size_text):
            return None
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            return (bytes(body), pos + 2) if data[pos : pos + 2] == b"\r\n" else None
        if data[pos + size : pos + size + 2] != b"\r\n":
            return None
        body += data[pos : pos + size]
        pos += size + 2


# -- Generation ------------------------------------------------------------------------------

NASTY = b"\r\n\x00 \t:,;0123456789abcdefABCDEFx-"


@st.composite
def request_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A pipeline of valid requests, then mutations, then where to split the writes."""
    parts = []
    count = draw(st.integers(1, 4))
    for index in range(count):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH"]))
        target = b"/f/%d" % index + draw(st.sampled_from([b"", b"?q=1", b"/x", b"/a,b"]))
        headers = [b"Host: x"]
        headers += draw(
            st.lists(
                st.sampled_from([b"X-A: 1", b"Accept: */*", b"User-Agent: fuzz", b"X-B: a b"]),
                max_size=2,
            )
        )
        if index == count - 1 and draw(st.integers(0, 5)) == 0:
            headers.append(b"Connection: close")
        framing = draw(st.sampled_from(["none", "length", "chunked"]))
        body = draw(st.binary(max_size=24)) if framing != "none" else b""
        encoded = body
        if framing == "length":
            headers.append(b"Content-Length: %d" % len(body))
        elif framing == "chunked":
            headers.append(b"Transfer-Encoding: chunked")
            cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=3)))
            pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
            encoded = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
        headers = draw(st.permutations(headers))
        head = b"\r\n".join([method + b" " + target + b" HTTP/1.1", *headers])
        parts.append(head + b"\r\n\r\n" + encoded)
    stream = bytearray(b"".join(parts))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "dup", "line", "case"]))
        at = draw(st.integers(0, 1 << 16)) % (len(stream) + 1)
        if kind == "insert":
            stream[at:at] = bytes([draw(st.sampled_from(NASTY))])
        elif kind == "delete":
            del stream[at : at + draw(st.integers(1, 3))]
        elif kind == "replace" and at < len(stream):
            stream[at] = draw(st.sampled_from(NASTY))
        elif kind == "dup":
            stream[at:at] = stream[at : at + draw(st.integers(1, 8))]
        elif kind in ("line", "case"):
            start = stream.rfind(b"\r\n", 0, at) + 2 if stream.rfind(b"\r\n", 0, at) >= 0 else 0
            stop = stream.find(b"\r\n", at)
            if stop < 0:
                continue
            line = bytes(stream[start : stop + 2])
            stream[start : stop + 2] = line + line if kind == "line" else line.swapcase()
    data = bytes(stream)
    splits = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=4))))
    return data, splits


# -- The property ----------------------------------------------------------------------------


@dataclass
class FuzzStats:
    started: float = 0.0
    examples: int = 0
    failed: bool = False
    failures: list[str] = field(default_factory=list)


STATS = FuzzStats()


def read_responses(reader: ResponseReader, methods: list[bytes], at_least: int) -> list[Response]:
    """Responses until the proxy closes, or it has sent `at_least` and then stays quiet."""
    responses: list[Response] = []
    while not reader.error and not reader.closed and not reader.must_close:
        if len(responses) >= at_least:
            reader.deadline = time.monotonic() + IDLE_AFTER
        index = len(responses)
        method = methods[index].decode("latin-1") if index < len(methods) else "GET"
        if not method.isalpha() or method.upper() != method:
            method = "GET"
        response = reader.read(method)
        if response is None:
            break
        responses.append(response)
        if not response.complete:
            break
    return responses


def check_stream(stack: Stack, data: bytes, splits: list[int]) -> list[str]:
    upstream = stack.upstream
    upstream.wait_quiet()
    upstream.reset()
    oracle, _ = h11_requests(data)
    strict = strict_requests(data)
    must: list[Req] = []
    for strict_request, h11_request in zip(strict, oracle, strict=False):
        if strict_request != h11_request:
            break
        must.append(strict_request)
    good = GoodClient(stack.port).start()
    try:
        with connect(stack.port) as sock:
            bounds = [0, *splits, len(data)]
            for index, (start, stop) in enumerate(zip(bounds, bounds[1:], strict=False)):
                if index:
                    time.sleep(0.005)
                if not send_quietly(sock, data[start:stop]):
                    break
            reader = ResponseReader(sock, time.monotonic() + READ_DEADLINE)
            # Every request h11 accepts is answered by the app or ends in an error and a close:
            # the proxy only leaves the connection quiet when it waits for more bytes.
            responses = read_responses(reader, [m for m, _, _ in oracle], len(oracle))
            upstream.wait_quiet(idle=0.05, cap=0.5, busy_ok=True)
            answered = sum(1 for r in responses if r.echo is not None)
            forwarded = sum(1 for r in upstream.records() if not r.good and r.complete)
            if not reader.closed and not reader.error and forwarded > answered:
                # The app has answered more than the client read yet: give the proxy time.
                reader.deadline = time.monotonic() + READ_DEADLINE
                responses += read_responses(reader, [m for m, _, _ in oracle][len(responses) :], 1)
    finally:
        good_errors = good.finish()
    upstream.wait_quiet()
    records = upstream.records()
    seen = [r for r in records if not r.good]
    complete = [(r.method, r.target, bytes(r.body)) for r in seen if r.complete]

    problems = [f"upstream: {error}" for error in upstream.errors()] + good_errors
    for record in records:
        if record.good:
            problems += good_record_problems(record)
    if reader.error:
        problems.append(f"malformed response to the client: {reader.error}")
    if len(complete) > len(oracle) or complete != oracle[: len(complete)]:
        problems.append(f"the app saw requests h11 does not accept from the client: {complete}")
    if complete[: len(must)] != must:
        problems.append(f"valid requests did not reach the app: {must[len(complete) :]}")
    if any(not r.complete for r in seen[:-1]) or any(r.complete for r in seen[len(complete) :]):
        problems.append("an incomplete request to the app was followed by another")
    echoes = [r.echo for r in responses[: len(complete)]]
    if echoes != [target for _, target, _ in complete]:
        problems.append(f"app answers {echoes} do not match the app's requests in order")
    rest = responses[len(complete) :]
    if len(rest) > 1 or any(r.echo is not None or r.status < 400 for r in rest):
        problems.append(f"after the app's answers, more than one error: {rest}")
    if problems:
        problems.insert(0, f"stream {data!r} split at {splits}")
        problems.append(f"h11 accepts {oracle}; strict accepts {strict}")
        problems.append(f"client read {[r.describe() for r in responses]} closed={reader.closed}")
        problems.append("app saw " + "; ".join(r.describe() for r in seen))
    return problems


def run_batch(stack: Stack, batch: int) -> None:
    """`BATCH` examples from hypothesis seed `batch` (batches make the time cap exact)."""

    @seed(batch)
    @settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking against a live process
        suppress_health_check=list(HealthCheck),
    )
    @given(request_streams())
    def prop(stream: tuple[bytes, list[int]]) -> None:
        if not STATS.failed and time.monotonic() - STATS.started > FUZZ_SECONDS:
            return
        STATS.examples += 1
        problems = check_stream(stack, *stream)
        if problems and COLLECT:
            STATS.failures.append("\n".join(problems))
        elif problems:
            STATS.failed = True
            raise AssertionError("\n".join(problems))

    prop()


def test_h1_fuzz(fuzz_stack: Stack) -> None:
    STATS.started = time.monotonic()
    try:
        for batch in itertools.count():
            if time.monotonic() - STATS.started > FUZZ_SECONDS or STATS.examples >= MAX_EXAMPLES:
                break
            run_batch(fuzz_stack, batch)
    finally:
        elapsed = time.monotonic() - STATS.started
        print(f"\nh1 fuzz: {STATS.examples} examples in {elapsed:.1f}s")
        for failure in STATS.failures:
            print("\n--- failing example\n" + failure)
    assert not STATS.failures, f"{len(STATS.failures)} failing examples (printed with -s)"
    assert STATS.examples >= 20, "too few examples ran to mean anything"


def test_oracles_agree_on_valid_streams() -> None:
    """The reference readers themselves: a clean pipeline is read the same by both."""
    data = (
        b"GET /f/0 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /f/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /f/2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    expected = [(b"GET", b"/f/0", b""), (b"POST", b"/f/1", b"hello"), (b"PUT", b"/f/2", b"abcde")]
    assert h11_requests(data) == (expected, False)
    assert strict_requests(data) == expected
    assert strict_requests(data.replace(b"Host: x\r\nContent", b"Host: x\nContent")) == expected[:1]
    assert strict_requests(data.replace(b"3\r\nabc", b"3 \r\nabc")) == expected[:2]
    assert strict_requests(b"GET /f HTTP/1.0\r\n\r\n" + data) == [(b"GET", b"/f", b"")]
