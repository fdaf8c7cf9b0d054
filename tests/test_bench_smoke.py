"""The benchmark script: its command line, its plan, the parsers of wrk and strace output, the
start-time report and the floor program it is measured against.

Nothing here runs a load: `bench.py --dry-run` needs neither wrk nor a free CPU."""

from __future__ import annotations

import argparse
import http.server
import importlib.util
import io
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness import free_port, stop_process, wait_for_port

BENCH = Path(__file__).resolve().parent.parent / "bench"
# Loaded by path under its own name: bench/ is a directory of scripts, not a package.
_spec = importlib.util.spec_from_file_location("bench_measure", BENCH / "measure.py")
assert _spec and _spec.loader
measure = importlib.util.module_from_spec(_spec)
sys.modules["bench_measure"] = measure  # dataclasses look the module up by name
_spec.loader.exec_module(measure)
parse_strace_summary, parse_wrk = measure.parse_strace_summary, measure.parse_wrk

WRK_OUTPUT = """\
Running 2s test @ http://127.0.0.1:8012/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms  400.00us  12.00ms   90.00%
    Req/Sec    33.00k     1.00k   35.00k    80.00%
  Latency Distribution
     50%  850.00us
     75%    1.60ms
     90%    1.80ms
     99%    1.02s
  66000 requests in 2.00s, 10.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 6000
Requests/sec:  33000.00
Transfer/sec:      5.00MB
"""

STRACE_SUMMARY = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.600000           6    100000           write
 30.00    0.300000           4     70000     10000 read
 10.00    0.100000          10     10000           epoll_pwait
------ ----------- ----------- --------- --------- ----------------
100.00    1.000000           5    180000     10000 total
"""


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_help_lists_the_options() -> None:
    done = bench("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--scenarios", "--strace", "--json", "--cpu-quota"):
        assert option in done.stdout


def test_dry_run_plan_as_json() -> None:
    done = bench("--dry-run", "--quick", "--scenarios", "get-c50,quota", "--json", "-")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["dry_run"] is True
    assert [s["name"] for s in plan["scenarios"]] == ["get-c50", "quota"]
    assert plan["targets"][:2] == ["direct", "queueproxy"]
    assert "go" not in plan["targets"]  # no QP_GO_BINARY in this environment
    assert plan["options"]["rounds"] == 1 and plan["options"]["duration"] == 2.0
    assert isinstance(plan["estimated_seconds"], int)


def test_baseline_checkout_joins_the_targets(tmp_path: Path) -> None:
    root = BENCH.parent
    done = bench("--dry-run", "--quick", "--baseline", str(root), "--json", "-")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["targets"][:3] == ["direct", "queueproxy", "baseline"]
    done = bench("--dry-run", "--quick", "--baseline", str(tmp_path), "--json", "-")
    assert done.returncode == 0, done.stderr
    assert "baseline" not in json.loads(done.stdout)["targets"]
    assert "holds no queueproxy package" in done.stderr


def test_unknown_scenario_is_refused() -> None:
    done = bench("--dry-run", "--scenarios", "get-c50,nope")
    assert done.returncode == 2
    assert "choose from" in done.stderr


def test_parse_wrk() -> None:
    sample = parse_wrk(WRK_OUTPUT)
    assert (sample.requests, sample.seconds, sample.non2xx) == (66000, 2.0, 6000)
    assert sample.ok_rps == 30000.0
    assert sample.socket_errors == 5
    assert sample.p50_ms == 0.85 and sample.p99_ms == 1020.0


def test_parse_strace_summary() -> None:
    assert parse_strace_summary(STRACE_SUMMARY) == {
        "write": 100000,
        "read": 70000,
        "epoll_pwait": 10000,
    }


H2LOAD_OUTPUT = """\
finished in 5.33ms, 18761.73 req/s, 768.42KB/s
requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx
                     min         max         mean         sd        +/- sd
time for request:       12us      3.03ms       156us       543us    96.00%
time for connect:      100us       230us       165us        92us   100.00%
"""


def test_h2load_report_parser() -> None:
    spec = importlib.util.spec_from_file_location("bench_h2bench", BENCH / "h2bench.py")
    assert spec and spec.loader
    h2bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(h2bench)
    rate, mean_ms = h2bench.parse_h2load(H2LOAD_OUTPUT, 100)
    assert (rate, round(mean_ms, 6)) == (18761.73, 0.156)
    slower = H2LOAD_OUTPUT.replace("156us", "1.50ms")
    assert h2bench.parse_h2load(slower, 100)[1] == 1.5
    failed = H2LOAD_OUTPUT.replace("100 succeeded, 0 failed", "99 succeeded, 1 failed")
    with pytest.raises(ValueError):
        h2bench.parse_h2load(failed, 100)
    # p99 from h2load's per-request log: 100 requests of 1..100 ms -> the 99th slowest.
    log = "".join(f"1700000000{i:06d}\t200\t{(101 - i) * 1000}\n" for i in range(1, 101))
    assert h2bench.p99_ms(log) == 100.0
    assert h2bench.p99_ms(log + "1700000000000999\t200\t5000000\n") == 100.0


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    # report.py imports its siblings by their plain names, as bench.py runs it.
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_report"] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


STARTS = {
    "queueproxy": {"ready_ms": [80.0, 70.0, 90.0], "idle_rss_mib": [24.5, 24.6, 24.7]},
    "haproxy": {"ready_ms": [40.0, 41.0, 39.0], "idle_rss_mib": [15.0, 15.0, 15.0]},
    "floor": {"ready_ms": [52.0, 48.0, 50.0], "idle_rss_mib": [20.0, 20.1, 20.2]},
}


def test_start_report_shows_the_floor_and_the_share_over_it(report: ModuleType) -> None:
    assert report.over_floor(STARTS) == {"queueproxy": 30.0}
    assert report.over_floor({"queueproxy": STARTS["queueproxy"]}) == {}  # no floor, no share
    options = argparse.Namespace(
        starts=3, concurrency=10, user_metrics="prometheus", duration=2.0, rounds=1
    )
    meta = {
        "date": "now",
        "cpus": 2,
        "commit": "abc",
        "loadavg_before": [0.1, 0, 0],
        "loadavg_after": [0.2, 0, 0],
    }
    out = io.StringIO()
    report.print_report([], STARTS, options, meta, out)
    rows = {line.split(" | ")[0]: line for line in out.getvalue().splitlines() if line[:2] == "| "}
    assert rows["| queueproxy"] == "| queueproxy | 80 | 70 | 90 | 30 | 24.6 |"
    assert rows["| HAProxy"] == "| HAProxy | 40 | 39 | 41 | – | 15.0 |"
    assert rows["| floor: asyncio + uvloop TCP relay"].endswith("| 50 | 48 | 52 | – | 20.1 |")
    start = report.to_json([], STARTS, options, meta)["start"]
    assert start["floor"]["ready_ms_median"] == 50.0 and "over_floor_ms" not in start["floor"]
    assert start["queueproxy"]["over_floor_ms"] == 30.0
    assert start["queueproxy"]["ready_ms"] == [80.0, 70.0, 90.0]
    assert "over_floor_ms" not in start["haproxy"]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_floor_relays_requests_to_the_app() -> None:
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    port = free_port()
    floor = subprocess.Popen(
        [sys.executable, str(BENCH / "floor.py"), str(port), str(app.server_address[1])]
    )
    try:
        wait_for_port(port, proc=floor)
        for path in ("/", "/second"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                assert (answer.status, answer.read()) == (200, f"hello {path}".encode())
    finally:
        stop_process(floor, 5)
        app.shutdown()
        app.server_close()
