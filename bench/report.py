"""The figures of a run: medians over the rounds, ratios, the printed tables and the JSON."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from measure import Sample, Scenario
from targets import LABELS


@dataclass
class TargetResult:
    samples: list[Sample] = field(default_factory=list)
    syscalls: dict[str, int] | None = None  # calls per syscall during the strace round
    syscall_requests: int = 0  # requests served during the strace round
    throttling: dict[str, int] | None = None  # the quota cgroup's cpu.stat after the rounds


@dataclass
class ScenarioResult:
    scenario: Scenario
    targets: dict[str, TargetResult]
    skipped: str | None = None
    cpu_quota: str | None = None  # how the quota was applied


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def summarise(target: TargetResult) -> dict[str, Any]:
    samples = target.samples
    requests = sum(s.requests for s in samples)
    summary: dict[str, Any] = {
        key: _median([getattr(s, key) for s in samples])
        for key in ("ok_rps", "p50_ms", "p99_ms", "cpu_user_us", "cpu_sys_us", "rss_mib")
    }
    summary["all_rps"] = _median([s.requests / s.seconds for s in samples if s.seconds])
    summary["non2xx_share"] = sum(s.non2xx for s in samples) / requests if requests else None
    summary["socket_errors"] = sum(s.socket_errors for s in samples)
    if target.syscalls is not None and target.syscall_requests:
        per = target.syscall_requests
        summary["syscalls_per_request"] = sum(target.syscalls.values()) / per
        summary["syscalls_by_name_per_request"] = {
            name: calls / per
            for name, calls in sorted(target.syscalls.items(), key=lambda item: -item[1])
        }
    if target.throttling:
        periods = target.throttling.get("nr_periods", 0)
        throttled = target.throttling.get("nr_throttled", 0)
        summary["throttled_share"] = throttled / periods if periods else None
    return summary


def summaries(result: ScenarioResult) -> dict[str, dict[str, Any]]:
    table = {kind: summarise(target) for kind, target in result.targets.items()}
    for summary in table.values():
        for reference in ("direct", "haproxy"):
            base = table.get(reference, {}).get("ok_rps")
            rps = summary["ok_rps"]
            summary[f"vs_{reference}"] = rps / base if rps is not None and base else None
    return table


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def print_report(
    results: list[ScenarioResult],
    starts: dict[str, dict[str, list[float]]],
    options: argparse.Namespace,
    meta: dict[str, Any],
    out: TextIO,
) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    say(
        f"\nqueueproxy benchmark, {meta['date']}, {meta['cpus']} CPUs, commit {meta['commit']}, "
        f"load average {meta['loadavg_before'][0]:.2f} before / "
        f"{meta['loadavg_after'][0]:.2f} after"
    )
    say(
        f"CC={options.concurrency}, request metrics {options.user_metrics}; wrk -t1 "
        f"-d{options.duration:g}s; medians of {options.rounds} alternating rounds; req/s = 2xx/s"
    )
    if meta.get("python_executable"):
        say(f"queueproxy on Python {meta['python']} ({meta['python_executable']})")
    if meta.get("baseline"):
        say(f"baseline: queueproxy from {meta['baseline']} (commit {meta.get('baseline_commit')})")
    for result in results:
        scenario = result.scenario
        say(f"\n## {scenario.name}: {scenario.title} (-c{scenario.connections})")
        if result.skipped:
            say(f"skipped: {result.skipped}")
            continue
        if result.cpu_quota:
            say(f"CPU quota {result.cpu_quota}")
        cc = options.concurrency
        if cc and scenario.connections > 11 * cc:
            say(
                f"note: {scenario.connections} connections exceed what CC={cc} admits ({cc} in "
                f"flight + Knative's queue of {10 * cc}): the queue-proxies answer the excess "
                "with an immediate 503, HAProxy queues it. req/s counts 2xx only; latencies "
                "include the fast 503s."
            )
        say(
            "| target | req/s | vs direct | vs HAProxy | p50 ms | p99 ms | non-2xx "
            "| CPU µs/req user + sys | RSS MiB |"
        )
        say("|---|---|---|---|---|---|---|---|---|")
        table = summaries(result)
        for kind, row in table.items():
            user, system = row["cpu_user_us"], row["cpu_sys_us"]
            cpu = "–" if user is None else f"{user:.1f} + {system:.1f} = {user + system:.1f}"
            non2xx = row["non2xx_share"] or 0.0
            errors = f", {row['socket_errors']} socket errors" if row["socket_errors"] else ""
            say(
                f"| {LABELS[kind]} | {_fmt(row['ok_rps'], ',.0f')} | {_fmt(row['vs_direct'])} "
                f"| {_fmt(row['vs_haproxy'])} | {_fmt(row['p50_ms'])} | {_fmt(row['p99_ms'])} "
                f"| {non2xx:.1%}{errors} | {cpu} | {_fmt(row['rss_mib'], '.1f')} |"
            )
        throttled = [
            f"{LABELS[kind]} {row['throttled_share']:.0%}"
            for kind, row in table.items()
            if row.get("throttled_share") is not None
        ]
        if throttled:
            say(f"periods throttled: {', '.join(throttled)}")
    traced = [
        (result.scenario.name, kind, row)
        for result in results
        for kind, row in summaries(result).items()
        if "syscalls_per_request" in row
    ]
    if traced:
        say("\n## syscalls per request (strace -c -f -p PID during one extra round)")
        say("| scenario | target | total | most frequent |")
        say("|---|---|---|---|")
        for name, kind, row in traced:
            top = list(row["syscalls_by_name_per_request"].items())[:5]
            listed = ", ".join(f"{calls:.2f} {syscall}" for syscall, calls in top)
            say(f"| {name} | {LABELS[kind]} | {row['syscalls_per_request']:.2f} | {listed} |")
    if starts:
        say(
            f"\n## start: spawn to first successful request through it, {options.starts} starts "
            "(app already listening)"
        )
        say(
            "floor: bench/floor.py, the smallest asyncio + uvloop program that gets a request to "
            "the app (a TCP relay answering with the app's 200), same interpreter; "
            "over floor = a queueproxy's median minus the floor's: its own code's share"
        )
        say("| target | median ms | min ms | max ms | over floor ms | idle RSS MiB |")
        say("|---|---|---|---|---|---|")
        shares = over_floor(starts)
        for kind, figures in starts.items():
            ready = figures["ready_ms"]
            say(
                f"| {LABELS[kind]} | {statistics.median(ready):.0f} | {min(ready):.0f} "
                f"| {max(ready):.0f} | {_fmt(shares.get(kind), '.0f')} "
                f"| {statistics.median(figures['idle_rss_mib']):.1f} |"
            )


def over_floor(starts: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Each queueproxy's median start minus the floor's (ms): what its own code adds to the
    interpreter, asyncio and uvloop. Empty without a floor; HAProxy and Go are not Python."""
    if not starts.get("floor", {}).get("ready_ms"):
        return {}
    floor = statistics.median(starts["floor"]["ready_ms"])
    return {
        kind: statistics.median(figures["ready_ms"]) - floor
        for kind, figures in starts.items()
        if kind in ("queueproxy", "baseline") and figures["ready_ms"]
    }


def _clean(value: Any) -> Any:
    """NaN and infinities become null, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def to_json(
    results: list[ScenarioResult],
    starts: dict[str, dict[str, list[float]]],
    options: argparse.Namespace,
    meta: dict[str, Any],
) -> dict[str, Any]:
    scenarios = {}
    for result in results:
        table = summaries(result) if not result.skipped else {}
        scenarios[result.scenario.name] = {
            **asdict(result.scenario),
            "skipped": result.skipped,
            "cpu_quota": result.cpu_quota,
            "targets": {
                kind: {"label": LABELS[kind], "summary": table[kind], **asdict(target)}
                for kind, target in result.targets.items()
                if not result.skipped
            },
        }
    shares = over_floor(starts)
    start_figures = {
        kind: {
            "label": LABELS[kind],
            **figures,
            "ready_ms_median": statistics.median(figures["ready_ms"]),
            **({"over_floor_ms": shares[kind]} if kind in shares else {}),
        }
        for kind, figures in starts.items()
    }
    return _clean(
        {"meta": meta, "options": vars(options), "scenarios": scenarios, "start": start_figures}
    )


def write_json(path: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if path == "-":
        print(text)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
        print(f"JSON written to {path}", file=sys.stderr)
