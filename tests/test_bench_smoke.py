"""The benchmark script: its command line, its plan, and the parsers of wrk and strace output.

Nothing here runs a load: `bench.py --dry-run` needs neither wrk nor a free CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
