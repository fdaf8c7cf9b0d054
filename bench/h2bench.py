"""HTTP/2 benchmark: h2load through queueproxy and HAProxy (`proto h2` both sides) to an h2c app.

The app is nghttpd (nghttp2's C server, `--no-tls`, serving a 13-byte file), so the proxies'
costs are not hidden behind a slow app. For each target and round: h2load's requests per second
and 99th-percentile request time, and the proxy's CPU microseconds per request (user + system, from
/proc/PID/stat deltas over the run). A unary-style GET at `-c10 -m10` by default.

    python bench/h2bench.py [--requests 20000] [--clients 10] [--streams 10] [--rounds 3] [--gib]

Needs h2load and nghttpd (apt-get install nghttp2-client nghttp2-server); HAProxy optional;
QP_GO_BINARY=path adds Knative's Go queue-proxy (as in bench.py). The p99 is computed from
h2load's per-request `--log-file`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from targets import Setup, free_port, launch, port_in_use, stop  # noqa: E402

HAPROXY_H2 = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend main
    bind 127.0.0.1:{port} proto h2
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{app_port} proto h2
"""


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_in_use(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing on {port}")
        time.sleep(0.05)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def h2load(port: int, requests: int, clients: int, streams: int) -> tuple[float, float]:
    """(requests per second, p99 request time in ms) of one h2load run; all must succeed."""
    with tempfile.NamedTemporaryFile("r", suffix=".tsv") as log:
        out = subprocess.run(
            [
                "h2load",
                "-n",
                str(requests),
                "-c",
                str(clients),
                "-m",
                str(streams),
                "--log-file",
                log.name,
                f"http://127.0.0.1:{port}/hello",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rate, _ = parse_h2load(out, requests)
        return rate, p99_ms(log.read())


def p99_ms(log: str) -> float:
    """The 99th percentile of h2load's `--log-file` (start µs, status, duration µs per line)."""
    durations = sorted(int(line.split("\t")[2]) for line in log.splitlines() if line)
    return durations[min(len(durations) - 1, int(len(durations) * 0.99))] / 1000


def parse_h2load(out: str, requests: int) -> tuple[float, float]:
    """(requests per second, mean request time in ms) from h2load's report; every one of
    `requests` must have succeeded (ValueError otherwise)."""
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done or int(done[2]) != requests:
        raise ValueError(f"not all {requests} requests succeeded:\n{out}")
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b", out)
    if not rate or not mean:
        raise ValueError(f"unexpected h2load output:\n{out}")
    return float(rate[1]), float(mean[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean[2]]


def gib_streams(proc: subprocess.Popen, port: int, upload: Path) -> str:
    """1 GiB downloaded, then 1 GiB uploaded, on one stream each: the proxy's peak RSS growth
    (sampled every 50 ms), which flow control keeps flat."""
    before = peak = rss_kib(proc.pid)
    lines = []
    for label, extra in (("download", []), ("upload", ["-d", str(upload)])):
        path = "/big" if label == "download" else "/hello"
        started = time.monotonic()
        run = subprocess.Popen(
            ["h2load", "-n1", "-c1", *extra, f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        while run.poll() is None:
            peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.05)
        assert "1 succeeded" in (run.stdout.read() if run.stdout else ""), label
        lines.append(f"1 GiB {label} in {time.monotonic() - started:.1f} s")
    lines.append(f"queueproxy RSS {before} KiB before, peak {peak} KiB (+{peak - before} KiB)")
    return "; ".join(lines)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--gib", action="store_true", help="also stream 1 GiB down and up through queueproxy"
    )
    args = parser.parse_args()
    for tool in ("h2load", "nghttpd"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install nghttp2-client nghttp2-server")
            return 1
    tick = os.sysconf("SC_CLK_TCK")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as work:
        docroot = Path(work) / "www"
        docroot.mkdir()
        (docroot / "hello").write_bytes(b"Hello World!\n")
        if args.gib:
            with open(docroot / "big", "wb") as big:
                big.truncate(1 << 30)  # sparse: costs no disk
            with open(Path(work) / "upload", "wb") as upload:
                upload.truncate(1 << 30)
        app_port = free_port()
        procs.append(
            subprocess.Popen(
                ["nghttpd", "--no-tls", "-d", str(docroot), "-n", "1", str(app_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        targets: dict[str, tuple[int, subprocess.Popen | None]] = {"direct": (app_port, None)}
        setup = Setup(
            app_port=app_port,
            concurrency=0,
            request_metrics="prometheus",
            workdir=Path(work),
            go_binary=os.environ.get("QP_GO_BINARY") or None,
        )
        qp_port = free_port()
        qp = launch("queueproxy", qp_port, setup)
        procs.append(qp)
        targets["queueproxy"] = (qp_port, qp)
        if setup.go_binary:
            go_port = free_port()
            go = launch("go", go_port, setup)
            procs.append(go)
            targets["go"] = (go_port, go)
        if shutil.which("haproxy"):
            ha_port = free_port()
            config = Path(work) / "haproxy.cfg"
            config.write_text(HAPROXY_H2.format(port=ha_port, app_port=app_port))
            ha = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(ha)
            targets["haproxy"] = (ha_port, ha)
        try:
            for name, (port, _) in targets.items():
                try:
                    wait_port(port)
                except TimeoutError:
                    print(f"{name} did not start")
                    if name == "queueproxy":
                        print((Path(work) / "queueproxy.log").read_text()[-2000:])
                    raise
            results: dict[str, list[tuple[float, float, float]]] = {t: [] for t in targets}
            for port, _ in targets.values():  # warm-up (and the lazy h2 import)
                h2load(port, 2000, args.clients, args.streams)
            for _ in range(args.rounds):
                for name, (port, proc) in targets.items():
                    before = cpu_ticks(proc.pid) if proc else 0
                    rate, p99_ms = h2load(port, args.requests, args.clients, args.streams)
                    used = (cpu_ticks(proc.pid) - before) / tick if proc else 0.0
                    results[name].append((rate, p99_ms, used * 1e6 / args.requests))
            print(
                f"h2load -c{args.clients} -m{args.streams} -n{args.requests}, "
                f"median of {args.rounds} rounds"
            )
            print(f"{'target':<12} {'req/s':>9} {'p99 ms':>8} {'proxy CPU us/req':>17}")
            for name, runs in results.items():
                rate = statistics.median(r[0] for r in runs)
                p99_ms = statistics.median(r[1] for r in runs)
                cpu = statistics.median(r[2] for r in runs)
                cpu_text = f"{cpu:17.0f}" if name != "direct" else f"{'-':>17}"
                print(f"{name:<12} {rate:9.0f} {p99_ms:8.2f} {cpu_text}")
            if args.gib:
                print(gib_streams(qp, qp_port, Path(work) / "upload"))
        finally:
            for proc in procs:
                stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
