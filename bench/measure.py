"""Scenarios and measuring one target: wrk for the load, /proc for CPU and memory, strace for
syscalls."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    """What wrk sends: GET `path`, or POST a body of `body_bytes` when that is > 0."""

    path: str
    connections: int
    body_bytes: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    path: str
    connections: int
    body_bytes: int = 0
    quota: bool = False

    @property
    def load(self) -> Load:
        return Load(self.path, self.connections, self.body_bytes)


@dataclass
class Sample:
    """One wrk run against one target. CPU figures are the proxy's, per request served."""

    requests: int
    seconds: float
    ok_rps: float  # 2xx/3xx responses per second
    non2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_user_us: float | None = None
    cpu_sys_us: float | None = None
    rss_mib: float | None = None


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the whole process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _latency_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(output: str) -> Sample:
    """The figures of `wrk --latency` output (the proxy's CPU and RSS are filled in later)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", output)
    if not total:
        raise ValueError(f"unexpected wrk output:\n{output}")
    requests = int(total.group(1))
    seconds = float(total.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[total.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    bad = int(non2xx.group(1)) if non2xx else 0
    return Sample(
        requests=requests,
        seconds=seconds,
        ok_rps=(requests - bad) / seconds if seconds else 0.0,
        non2xx=bad,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        p50_ms=_latency_ms(output, "50%"),
        p99_ms=_latency_ms(output, "99%"),
    )


def post_script(directory: Path, body_bytes: int) -> Path:
    """A wrk Lua script that POSTs `body_bytes` bytes."""
    script = directory / f"post-{body_bytes}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("a", {body_bytes})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return script


def wrk_command(url: str, load: Load, duration: float, script: Path | None) -> list[str]:
    command = ["wrk", "-t1", f"-c{load.connections}", f"-d{duration:g}s", "--timeout", "10s"]
    return [*command, *(["-s", str(script)] if script else []), "--latency", url]


def run_wrk(
    url: str, load: Load, duration: float, proxy_pid: int | None, script: Path | None = None
) -> Sample:
    """One wrk run; with `proxy_pid`, that process's CPU delta and RSS over the run."""
    before = cpu_times(proxy_pid) if proxy_pid else (0.0, 0.0)
    output = subprocess.run(
        wrk_command(url, load, duration, script),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    sample = parse_wrk(output)
    if proxy_pid and sample.requests:
        after = cpu_times(proxy_pid)
        sample.cpu_user_us = (after[0] - before[0]) / sample.requests * 1e6
        sample.cpu_sys_us = (after[1] - before[1]) / sample.requests * 1e6
        sample.rss_mib = rss_mib(proxy_pid)
    return sample


# One row of `strace -c`: % time, seconds, usecs/call, calls, [errors,] syscall.
_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$")


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per syscall from the summary table `strace -c` writes (the total row excluded)."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = _STRACE_ROW.match(line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = counts.get(match.group(2), 0) + int(match.group(1))
    return counts


def _traced(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return line.split()[1] != "0"
    return False


def syscalls_during(
    pid: int, url: str, load: Load, duration: float, script: Path | None
) -> tuple[dict[str, int], int]:
    """`strace -c -f -p PID` around one wrk run: calls per syscall, and the requests served."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as summary:
        strace = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", summary.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 5
            while not _traced(pid):
                if strace.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("strace could not attach (ptrace not permitted?)")
                time.sleep(0.01)
            time.sleep(0.2)  # -f attaches the other threads one by one
            sample = run_wrk(url, load, duration, None, script)
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(30)
        return parse_strace_summary(Path(summary.name).read_text()), sample.requests
