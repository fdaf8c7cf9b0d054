"""Benchmark: the sample app direct and through each proxy, side by side in one run.

Targets, all started at once on their own ports and measured in alternating rounds: the sample
app direct; queueproxy; HAProxy (1 thread, `maxconn` = CC) when it is installed; Knative's Go
queue-proxy when QP_GO_BINARY (or --go-binary) names a built `cmd/queue` binary; and, for a
before/after comparison in one run, queueproxy from another checkout when --baseline DIR (or
QP_BASELINE) names one (e.g. `git worktree add /tmp/qp-main main`). The queue-proxies get the
same Knative environment.

Scenarios (--scenarios, comma-separated; default all; `none` times the starts only):
  get-c50     GET / at 50 connections
  get-c500    GET / at 500 connections
  post-64k    POST /upload with a 64 KiB body at 50 connections
  queue-c200  GET /?sleep=20 at 200 connections: at CC=10 the proxies queue
  quota       GET / at 50 connections, each proxy in turn under a CPU quota (cgroup v2 cpu.max or
              v1 cpu.cfs_quota_us; default 250m; the app unlimited); skipped with a message
              where cgroups cannot be written

Per scenario and target: 2xx responses per second, ratios to direct and to HAProxy, p50/p99,
non-2xx responses, the proxy's CPU microseconds per request (user and system, from
/proc/PID/stat deltas over each run) and its RSS. With --strace, syscalls per request
(`strace -c -f -p PID` during one extra round). Then each proxy's start time: from spawning it to
its first successful request through it, median of --starts starts, taken in turn with the same
figure for a floor: bench/floor.py, the smallest asyncio + uvloop program that gets a request to
the app (a TCP relay: it parses nothing, so it answers with the app's own 200), run by the same
interpreter. A queueproxy's start minus the floor is the share of its own code; the rest is the
interpreter, `site`, asyncio and uvloop. --json writes all of it.

    python bench/bench.py [--quick] [--scenarios get-c50,quota] [--rounds 3] [--duration 5]
                          [--strace] [--json results.json]
    python bench/bench.py --scenarios none --targets queueproxy --starts 15

Needs wrk (apt-get install wrk; haproxy and strace optional). Everything listens on 127.0.0.1.
HTTP/2 (h2load through queueproxy and HAProxy `proto h2` to an h2c app) is bench/h2bench.py.
Absolute figures move between runs and machines: compare the ratios taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from measure import Scenario, post_script, run_wrk, syscalls_during
from report import ScenarioResult, TargetResult, print_report, to_json, write_json
from targets import (
    GO_FIXED_PORTS,
    ROOT,
    CpuQuota,
    QuotaUnavailable,
    Setup,
    free_port,
    launch,
    launch_app,
    port_in_use,
    stop,
    time_starts,
    wait_ok,
)

SCENARIOS = {
    s.name: s
    for s in (
        Scenario("get-c50", "GET / at 50 connections", "/", 50),
        Scenario("get-c500", "GET / at 500 connections", "/", 500),
        Scenario("post-64k", "POST /upload, 64 KiB body, at 50 connections", "/upload", 50, 65536),
        Scenario("queue-c200", "GET /?sleep=20 at 200 connections (queueing)", "/?sleep=20", 200),
        Scenario("quota", "GET / at 50 connections, proxies under a CPU quota", "/", 50, 0, True),
    )
}
KINDS = ("direct", "queueproxy", "baseline", "haproxy", "go")


@dataclass
class Endpoint:
    kind: str
    port: int
    pid: int | None  # the proxy's process; None for direct

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


# --- Running ----------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_scenario(
    scenario: Scenario, endpoints: dict[str, Endpoint], options: argparse.Namespace, workdir: Path
) -> ScenarioResult:
    load = scenario.load
    script = post_script(workdir, load.body_bytes) if load.body_bytes else None
    result = ScenarioResult(scenario, {kind: TargetResult() for kind in endpoints})
    quotas: dict[str, CpuQuota] = {}
    try:
        if scenario.quota:
            try:
                for kind, endpoint in endpoints.items():
                    if endpoint.pid:
                        quotas[kind] = quota = CpuQuota(kind, options.cpu_quota)
                        quota.enter(endpoint.pid)  # can the process be moved? (cgroup v2 rules)
                        quota.leave(endpoint.pid)
            except (QuotaUnavailable, OSError) as error:
                result.skipped = f"CPU quota unavailable: {error}"
                progress(f"{scenario.name}: skipped, {result.skipped}")
                return result
            if quotas:
                description = next(iter(quotas.values())).description
                result.cpu_quota = f"{options.cpu_quota}m, {description}"
        kinds = list(endpoints)
        for index in range(options.rounds):
            shift = index % len(kinds)  # alternate who goes first
            for kind in kinds[shift:] + kinds[:shift]:
                endpoint, quota = endpoints[kind], quotas.get(kind)
                if quota and endpoint.pid:
                    quota.enter(endpoint.pid)
                try:
                    sample = run_wrk(
                        endpoint.url(load.path), load, options.duration, endpoint.pid, script
                    )
                finally:
                    if quota and endpoint.pid:
                        quota.leave(endpoint.pid)
                result.targets[kind].samples.append(sample)
            progress(f"{scenario.name}: round {index + 1}/{options.rounds} done")
        for kind, quota in quotas.items():
            result.targets[kind].throttling = quota.throttling()
        if options.strace and not scenario.quota:
            for kind, endpoint in endpoints.items():
                if endpoint.pid:
                    try:
                        counts, requests = syscalls_during(
                            endpoint.pid, endpoint.url(load.path), load, options.duration, script
                        )
                    except RuntimeError as error:
                        progress(f"{scenario.name}: no syscall counts for {kind}: {error}")
                        continue
                    result.targets[kind].syscalls = counts
                    result.targets[kind].syscall_requests = requests
            progress(f"{scenario.name}: strace round done")
    finally:
        for quota in quotas.values():
            quota.remove()
    return result


def run(
    options: argparse.Namespace, kinds: list[str], workdir: Path
) -> tuple[list[ScenarioResult], dict[str, dict[str, list[float]]]]:
    """Start the app and every proxy, run the scenarios, then time fresh starts of each proxy."""
    app_port = free_port()
    setup = Setup(
        app_port=app_port,
        concurrency=options.concurrency,
        request_metrics="" if options.user_metrics == "none" else options.user_metrics,
        workdir=workdir,
        go_binary=options.go_binary,
        baseline=Path(options.baseline).resolve() if options.baseline else None,
    )
    proxies = [kind for kind in kinds if kind != "direct"]
    with ExitStack() as app_stack:
        app = launch_app(app_port, workdir)
        app_stack.callback(stop, app)
        wait_ok(app_port, app)
        results: list[ScenarioResult] = []
        if options.scenarios:  # else start times only
            with ExitStack() as stack:
                endpoints = {}
                if "direct" in kinds:
                    endpoints["direct"] = Endpoint("direct", app_port, None)
                procs = {}
                for kind in proxies:
                    port = free_port()
                    procs[kind] = proc = launch(kind, port, setup)
                    stack.callback(stop, proc)
                    endpoints[kind] = Endpoint(kind, port, proc.pid)
                for kind in proxies:
                    wait_ok(endpoints[kind].port, procs[kind], timeout=30)
                progress(f"started: {', '.join(f'{k} :{e.port}' for k, e in endpoints.items())}")
                results = [
                    run_scenario(SCENARIOS[name], endpoints, options, workdir)
                    for name in options.scenarios
                ]
        starts: dict[str, dict[str, list[float]]] = {}
        if options.starts and proxies:
            # Start for start in turn, so a busy moment of the machine touches every target.
            timed = [*proxies, "floor"]
            starts = {kind: {"ready_ms": [], "idle_rss_mib": []} for kind in timed}
            for _ in range(options.starts):
                for kind in timed:
                    ready_ms, idle_rss = time_starts(kind, setup, 1)
                    starts[kind]["ready_ms"] += ready_ms
                    starts[kind]["idle_rss_mib"] += idle_rss
            progress("start times done")
    return results, starts


# --- Command line -----------------------------------------------------------------------------


def _first_line(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else None


def _git_commit(directory: Path) -> str | None:
    """The short commit checked out in `directory`, None when it is not a git checkout."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # The sidecar runs on this interpreter: a build without PGO/LTO (pyenv's default) costs
        # the Python part of each request noticeably more than the image's CPython does.
        "python_executable": sys.executable,
        "commit": _git_commit(ROOT),
        "wrk": _first_line(["wrk", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "loadavg_before": list(os.getloadavg()),
    }


def choose_targets(options: argparse.Namespace) -> list[str]:
    kinds = []
    for kind in options.targets:
        if kind == "baseline" and not options.baseline:
            continue  # only on request
        elif kind == "baseline" and not Path(options.baseline, "queueproxy").is_dir():
            progress(f"baseline: {options.baseline} holds no queueproxy package, left out")
        elif kind == "haproxy" and shutil.which("haproxy") is None:
            progress("HAProxy: not installed (apt-get install haproxy), left out")
        elif kind == "go" and not options.go_binary:
            progress("Knative queue-proxy (Go): set QP_GO_BINARY to a built cmd/queue to add it")
        elif kind == "go" and not os.access(options.go_binary, os.X_OK):
            progress(f"Knative queue-proxy (Go): {options.go_binary} is not executable, left out")
        elif kind == "go" and any(port_in_use(port) for port in GO_FIXED_PORTS):
            progress("Knative queue-proxy (Go): one of its fixed ports 8022/9090/9091 is taken")
        else:
            kinds.append(kind)
    return kinds


def _names(allowed: tuple[str, ...] | list[str], none: bool = False) -> Any:
    """A comma-separated list of `allowed` names; with `none`, "none" is the empty list."""

    def parse(text: str) -> list[str]:
        if none and text.strip() == "none":
            return []
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            choices = [*allowed, "none"] if none else allowed
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return names

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        type=_names(list(SCENARIOS), none=True),
        default=list(SCENARIOS),
        help="'none': start times only",
    )
    parser.add_argument("--targets", type=_names(KINDS), default=list(KINDS))
    parser.add_argument("--rounds", type=int, help="alternating rounds per scenario (3)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (5)")
    parser.add_argument("--starts", type=int, help="starts timed per proxy, 0 = none (5)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 3 starts")
    parser.add_argument("--concurrency", type=int, default=10, help="CONTAINER_CONCURRENCY (10)")
    parser.add_argument("--cpu-quota", type=int, default=250, help="millicores for 'quota' (250)")
    parser.add_argument(
        "--user-metrics",
        choices=("prometheus", "none"),
        default="prometheus",
        help="SERVING_REQUEST_METRICS_BACKEND for both queue-proxies (Knative's default: "
        "prometheus)",
    )
    parser.add_argument("--strace", action="store_true", help="count syscalls in an extra round")
    parser.add_argument("--go-binary", default=os.environ.get("QP_GO_BINARY") or None)
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        default=os.environ.get("QP_BASELINE") or None,
        help="also run queueproxy from this checkout (before/after in one run)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    options = parser.parse_args(argv)
    for name, normal, quick in (("rounds", 3, 1), ("duration", 5.0, 2.0), ("starts", 5, 3)):
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else normal)
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    out = sys.stderr if options.json == "-" else sys.stdout
    kinds = choose_targets(options)
    proxies = [kind for kind in kinds if kind != "direct"]
    if options.dry_run:
        runs = len(options.scenarios) * options.rounds * len(kinds)
        plan = {
            "targets": kinds,
            "scenarios": [asdict(SCENARIOS[name]) for name in options.scenarios],
            "wrk_runs": runs,
            "estimated_seconds": round(
                runs * (options.duration + 0.2)
                + options.strace * len(options.scenarios) * len(proxies) * options.duration
                + options.starts * (len(proxies) + 1 if proxies else 0) * 1.0
            ),
            "options": vars(options),
        }
        print(json.dumps(plan, indent=2), file=out)
        if options.json:
            write_json(options.json, {"dry_run": True, **plan})
        return 0
    wanted = ("wrk" if options.scenarios else "", "strace" if options.strace else "")
    missing = [tool for tool in wanted if tool]
    missing = [tool for tool in missing if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"not installed: {', '.join(missing)} (apt-get install {missing[0]})")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    meta = environment() | {"go_binary": options.go_binary if "go" in kinds else None}
    if "baseline" in kinds:
        meta["baseline"] = options.baseline
        meta["baseline_commit"] = _git_commit(Path(options.baseline))
    with tempfile.TemporaryDirectory(prefix="queueproxy-bench-") as workdir:
        try:
            results, starts = run(options, kinds, Path(workdir))
        except (RuntimeError, TimeoutError) as error:
            logs = "".join(
                f"\n--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:])
                for log in sorted(Path(workdir).glob("*.log"))
            )
            raise SystemExit(f"benchmark failed: {error}{logs}") from None
    meta["loadavg_after"] = list(os.getloadavg())
    print_report(results, starts, options, meta, out)
    if options.json:
        write_json(options.json, to_json(results, starts, options, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
