"""Run the HTTP/1.1 conformance corpus through the sidecar and through HAProxy; list differences.

Every case of tests/conformance_cases.py goes, byte for byte, to (a) the sidecar and (b) HAProxy
in HTTP mode, each in front of its own recording upstream that keeps its connections open. For
each case the script notes what the client read (final statuses, 1xx, a body cut short, a
response h11 rejects), whether the connection was then closed or still usable (one more GET on
it), and the requests the app saw (method, target, body, complete). Cases where the two differ
are printed as a markdown table. docs/haproxy-differences.md says why we answer as we do.

Run: `python -m tests.compare_haproxy` (`-k NAME` for cases whose name contains NAME).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conformance_cases import CASES, MARK, Case
from tests.h1_client import Stack, sidecar_stack
from tests.harness import Process, free_port, running, wait_for_port
from tests.recording_upstream import RecordingUpstream, Script
from tests.test_conformance import MARKERS, observe

HAPROXY_CONFIG = """\
global
    maxconn 1000
defaults
    mode http
    option http-keep-alive
    timeout connect 3s
    timeout client 3s
    timeout server 3s
    timeout http-request 3s
    timeout http-keep-alive 3s
frontend main
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server app 127.0.0.1:{upstream} maxconn 10
"""


@contextlib.contextmanager
def haproxy_stack() -> Iterator[Stack]:
    """HAProxy (`haproxy` on PATH, or /usr/sbin/haproxy) in front of a keep-alive upstream."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    upstream = RecordingUpstream(keep_alive=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "haproxy.log", "w") as log:
            port = free_port()
            config = Path(tmp) / "haproxy.cfg"
            config.write_text(HAPROXY_CONFIG.format(port=port, upstream=upstream.port))
            command = [binary, "-db", "-f", str(config)]
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for_port(port, proc=proc)
            except Exception:
                proc.kill()
                raise RuntimeError(Path(log.name).read_text()) from None
            with running(Process(proc, port)) as haproxy:
                stack = Stack(haproxy, upstream, keep_alive=True)
                stack.warm_up(timeout=20)
                yield stack
    finally:
        upstream.stop()


def short(data: bytes, size: int = 40) -> str:
    text = data.decode("latin-1")
    return text if len(text) <= size else f"{text[:size]}…({len(text)})"


def run(stack: Stack, case: Case) -> tuple[tuple[str, str, str], object]:
    """(what the client read, closing behaviour, what the app saw) for one case, and a key
    to compare results by."""
    marker = MARKERS[case.name]

    def sub(data: bytes) -> bytes:
        return data.replace(MARK, marker)

    upstream = stack.upstream
    stack.warm_up()
    upstream.wait_quiet()
    upstream.reset()
    if case.response is not None:
        upstream.script(b"/" + marker + b"/", Script(sub(case.response), case.response_close))
    obs = observe(stack, case, sub, marker, explore=True)
    upstream.wait_quiet()

    read = [f"{code}" for code in obs.informational]
    read += [f"{r.status}{'' if r.complete else ' cut'}" for r in obs.responses]
    if obs.error:
        read.append("malformed")
    if obs.timed_out and not obs.responses:
        read.append("no answer")

    if obs.closed is None:
        ok = obs.tunnel_echo == case.tunnel
        closing = "tunnel" if ok else f"tunnel echoed {short(obs.tunnel_echo or b'')}"
    elif obs.probe_target and obs.probe is not None:
        good = obs.probe.status == 200 and obs.probe.echo == obs.probe_target
        closing = "open" if good else f"open, next GET got {obs.probe.status}"
    elif obs.closed:
        closing = "closed" + (f" after {short(obs.extra)!r}" if obs.extra else "")
    else:
        closing = "left open, silent"

    seen, requests = [], []
    for record in upstream.records():
        if record.good or record.target == obs.probe_target:
            continue
        requests.append((record.method, record.target, bytes(record.body), record.complete))
        body = f" +{len(record.body)}B" if record.body else ""
        state = "" if record.complete else " (cut)"
        seen.append(f"{record.method.decode('latin-1')} {short(record.target)}{body}{state}")
    if upstream.errors():
        error = upstream.errors()[0].partition(": ")[2]  # without "upstream conn N"
        seen.append(f"app got malformed bytes: {error[:70]}")
    shown = (" ".join(read) or "-", closing, "; ".join(seen) or "-")
    # Bodies are compared in full; the table shows only their sizes.
    return shown, (shown, tuple(requests))


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    cases = [case for case in CASES if args.k in case.name]
    started = time.monotonic()
    differences = []
    with sidecar_stack(keep_alive=True) as ours, haproxy_stack() as theirs:
        for index, case in enumerate(cases, 1):
            (mine, mine_key), (other, other_key) = run(ours, case), run(theirs, case)
            if mine_key != other_key:
                differences.append((case.name, mine, other))
            print(f"\r{index}/{len(cases)} {case.name[:50]:50}", end="", file=sys.stderr)
    print(f"\r{len(cases)} cases in {time.monotonic() - started:.0f} s" + " " * 40, file=sys.stderr)
    print(f"{len(differences)} of {len(cases)} cases differ (statuses; connection; app saw)\n")
    print("| case | queueproxy | HAProxy |\n|---|---|---|")
    for name, mine, other in differences:
        print(f"| {name} | {cell('; '.join(mine))} | {cell('; '.join(other))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
