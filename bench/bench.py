"""Benchmark: the sample app direct, through queueproxy, and through HAProxy (when installed).

Uses wrk for load and /proc for CPU and memory. Prints, as medians over alternating rounds:
requests/s, p50/p99 latency, the proxy's CPU microseconds per request and its RSS; then the
sidecar's time from start to its first successful request, and its idle RSS.

    python bench/bench.py [--rounds 3] [--duration 5] [--connections 50] [--concurrency 10]

Everything listens on 127.0.0.1 and every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ok(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> float:
    """Poll until `url` answers 200; return when that happened (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic()
        except OSError:
            pass
        time.sleep(0.002)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def process(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("BENCH_VERBOSE") else subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None
    rss_mib: float | None


def parse_latency(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(url: str, duration: float, connections: int, proxy_pid: int | None) -> Round:
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    after = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        print(f"  warning: {non2xx.group(1)} non-2xx responses from {url}", file=sys.stderr)
    return Round(
        rps=rps,
        p50_ms=parse_latency(output, "50%"),
        p99_ms=parse_latency(output, "99%"),
        cpu_us=(after - before) / requests * 1e6 if proxy_pid and requests else None,
        rss_mib=rss_mib(proxy_pid) if proxy_pid else None,
    )


def sidecar_args(app_port: int, port: int, cc: int, user_metrics: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "queueproxy",
        "--port",
        str(port),
        "--upstream-port",
        str(app_port),
        "--concurrency",
        str(cc),
        "--admin-port",
        str(free_port()),
        "--metrics-port",
        str(free_port()),
        "--user-metrics-port",
        str(free_port()),
        "--user-metrics",
        user_metrics,
    ]


HAPROXY_CONFIG = """
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 60s
frontend main
    bind 127.0.0.1:{port}
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{app_port} maxconn {cc}
"""


@contextmanager
def haproxy(app_port: int, port: int, cc: int) -> Iterator[subprocess.Popen]:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as config:
        config.write(HAPROXY_CONFIG.format(port=port, app_port=app_port, cc=cc))
    try:
        with process(["haproxy", "-db", "-f", config.name]) as proc:
            yield proc
    finally:
        os.unlink(config.name)


def start_to_ready(app_port: int, cc: int, starts: int) -> tuple[list[float], list[float]]:
    """Time from spawning the sidecar to its first successful proxied request; idle RSS."""
    times, idle = [], []
    for _ in range(starts):
        port = free_port()
        started = time.monotonic()
        with process(sidecar_args(app_port, port, cc, "prometheus")) as proc:
            ready = wait_ok(f"http://127.0.0.1:{port}/")
            times.append((ready - started) * 1000)
            time.sleep(1.0)
            idle.append(rss_mib(proc.pid))
    return times, idle


def summarise(name: str, rounds: list[Round], direct_rps: float | None) -> str:
    rps = statistics.median(r.rps for r in rounds)
    ratio = f"{rps / direct_rps:.2f}" if direct_rps else "1.00"
    cpu = [r.cpu_us for r in rounds if r.cpu_us is not None]
    rss = [r.rss_mib for r in rounds if r.rss_mib is not None]
    return (
        f"| {name} | {rps:,.0f} | {ratio} | {statistics.median(r.p50_ms for r in rounds):.2f} | "
        f"{statistics.median(r.p99_ms for r in rounds):.2f} | "
        f"{f'{statistics.median(cpu):.1f} µs' if cpu else '–'} | "
        f"{f'{statistics.median(rss):.1f} MiB' if rss else '–'} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=10, help="containerConcurrency")
    parser.add_argument("--starts", type=int, default=5, help="sidecar starts to time")
    options = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    app_port = free_port()
    cc = options.concurrency
    targets: dict[str, Callable[[], tuple[str, int | None]]] = {}
    with process([sys.executable, "-m", "sampleapp"], {"PORT": str(app_port), "HOST": "127.0.0.1"}):
        wait_ok(f"http://127.0.0.1:{app_port}/")
        ports = {name: free_port() for name in ("metrics-off", "metrics-on", "haproxy")}
        with (
            process(sidecar_args(app_port, ports["metrics-off"], cc, "none")) as plain,
            process(sidecar_args(app_port, ports["metrics-on"], cc, "prometheus")) as metered,
        ):
            pids = {"metrics-off": plain.pid, "metrics-on": metered.pid}
            for name in ("metrics-off", "metrics-on"):
                wait_ok(f"http://127.0.0.1:{ports[name]}/")
            targets = {
                "direct to the app": lambda: (f"http://127.0.0.1:{app_port}/", None),
                f"queueproxy, CC={cc}, user metrics off": lambda: (
                    f"http://127.0.0.1:{ports['metrics-off']}/",
                    pids["metrics-off"],
                ),
                f"queueproxy, CC={cc}, user metrics on (prometheus)": lambda: (
                    f"http://127.0.0.1:{ports['metrics-on']}/",
                    pids["metrics-on"],
                ),
            }
            with ExitStack() as stack:
                if shutil.which("haproxy"):
                    hap = stack.enter_context(haproxy(app_port, ports["haproxy"], cc))
                    wait_ok(f"http://127.0.0.1:{ports['haproxy']}/")
                    targets[f"HAProxy, 1 thread, maxconn {cc}"] = lambda: (
                        f"http://127.0.0.1:{ports['haproxy']}/",
                        hap.pid,
                    )
                results: dict[str, list[Round]] = {name: [] for name in targets}
                for index in range(options.rounds):
                    for name, target in targets.items():
                        url, pid = target()
                        results[name].append(
                            run_wrk(url, options.duration, options.connections, pid)
                        )
                    print(f"round {index + 1}/{options.rounds} done", file=sys.stderr)
        ready_ms, idle_rss = start_to_ready(app_port, cc, options.starts)

    direct = statistics.median(r.rps for r in results["direct to the app"])
    print(
        f"\nwrk -t1 -c{options.connections} -d{options.duration:g}s, GET / on the sample app, "
        f"medians of {options.rounds} alternating rounds\n"
    )
    print("| target | req/s | vs direct | p50 ms | p99 ms | proxy CPU per request | proxy RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, rounds in results.items():
        print(summarise(name, rounds, None if name.startswith("direct") else direct))
    off = statistics.median(
        r.cpu_us or 0 for r in results[f"queueproxy, CC={cc}, user metrics off"]
    )
    on = statistics.median(
        r.cpu_us or 0 for r in results[f"queueproxy, CC={cc}, user metrics on (prometheus)"]
    )
    print(f"\nuser metrics cost: {on - off:+.1f} µs of proxy CPU per request")
    print(
        f"sidecar start to first successful request: median {statistics.median(ready_ms):.0f} ms "
        f"(min {min(ready_ms):.0f}, max {max(ready_ms):.0f}, {len(ready_ms)} starts); "
        f"idle RSS median {statistics.median(idle_rss):.1f} MiB"
    )


if __name__ == "__main__":
    main()
