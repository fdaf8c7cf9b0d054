"""The live page's state: the last minutes second by second, recent events, latency quantiles and
what Knative's autoscaler would decide for this pod (docs/contract.md#the-live-page).

`LiveState` is sans-IO: the server hands it one `Tick` a second (from the statistics tick it
already runs) and asks it for snapshots; it reads no clock and opens no socket. `LiveFeed` sends
the snapshots to server-sent-event viewers through the endpoint server's `StreamWriter`s.

What it costs. Every tick appends one `Point` to a bounded ring (`HISTORY_SECONDS`), whether or
not anyone watches, so a viewer who arrives sees the last minutes. Everything else happens only
while the page is watched (an event stream is open, or `/live.json` was asked for within
`WATCH_LINGER` seconds): the per-request latency samples (`RequestObserver.samples`, one tuple
appended per request), the KPA models and the JSON snapshots, built once per tick per target.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from queueproxy.endpoints import StreamWriter
from queueproxy.kpa import Decision, KpaConfig, KpaModel, Stat
from queueproxy.outcomes import quantile
from queueproxy.stats import StatsReport

HISTORY_SECONDS = 300
MAX_EVENTS = 30
MAX_VIEWERS = 8
MAX_TARGETS = 8  # distinct KPA targets modelled at once (least recently asked for dropped)
# New targets replayed per tick at most: each replay is up to HISTORY_SECONDS model steps, and a
# client asking for a new target per request must not turn that into unbounded work.
MAX_REPLAYS_PER_TICK = 4
SAMPLE_LIMIT = 4096  # latency samples kept (the newest)
LATENCY_WINDOW = 60.0  # seconds of samples the quantiles cover
WATCH_LINGER = 60.0  # a /live.json request keeps the page "watched" this long
TARGET_RANGE = (0.01, 100000.0)

READY, NOT_READY, DRAINING = "ready", "not ready", "draining"


@dataclass(frozen=True, slots=True)
class Tick:
    """What the server reads once a second. `now` is monotonic seconds, `wall` Unix seconds;
    `report` is the window the autoscaler's statistics just cut; gauges are read from the
    breaker; `rejected` holds the running totals by reason; `drain_left` is the quiet period
    still to run (None when not draining)."""

    now: float
    wall: float
    uptime: float
    report: StatsReport
    at_app: int
    queued: int
    state: str
    drain_left: float | None
    rejected: dict[str, int]


@dataclass(frozen=True, slots=True)
class Point:
    """One second of the chart: the numbers the autoscaler scrapes (`stats.StatsReport` per
    second), the gauges at the tick, and the rejections during the second."""

    wall: float
    concurrency: float
    proxied_concurrency: float
    rps: float
    proxied_rps: float
    at_app: int
    queued: int
    rejected: int

    def row(self) -> list[float]:
        return [
            round(self.wall, 3),
            round(self.concurrency, 4),
            round(self.proxied_concurrency, 4),
            round(self.rps, 4),
            self.at_app,
            self.queued,
            self.rejected,
        ]


class Busy(Exception):
    """`MAX_REPLAYS_PER_TICK` new KPA targets were modelled in this tick already."""


def parse_target(text: str) -> float | None:
    """The `target` query parameter: the `autoscaling.knative.dev/target` annotation this pod's
    KPA view assumes. Empty means none; raises ValueError outside `TARGET_RANGE`."""
    if not text:
        return None
    why = f"target must be a number in [{TARGET_RANGE[0]}, {TARGET_RANGE[1]:g}]"
    try:
        value = float(text)
    except ValueError:
        # Not float's message: it quotes the client's text, which the 400 would echo back.
        raise ValueError(why) from None
    if not TARGET_RANGE[0] <= value <= TARGET_RANGE[1]:  # NaN fails too
        raise ValueError(why)
    return value


class LiveState:
    """The last minutes of this pod, and snapshots of it for the page."""

    def __init__(
        self,
        container_concurrency: int,
        queue_capacity: int,
        quiet_period: float,
        sampling: Callable[[deque[tuple[float, float, float]] | None], None],
        reporting_period: float = 1.0,
    ) -> None:
        self.container_concurrency = container_concurrency
        self.queue_capacity = queue_capacity
        self.quiet_period = quiet_period
        self.reporting_period = reporting_period
        self._sampling = sampling
        self.history: deque[Point] = deque(maxlen=HISTORY_SECONDS)
        self.events: deque[tuple[float, str]] = deque(maxlen=MAX_EVENTS)
        self.last: Tick | None = None
        self.viewers = 0
        self.watched_until = -math.inf
        self.samples: deque[tuple[float, float, float]] | None = None
        self._models: OrderedDict[float | None, tuple[KpaModel, Decision | None]] = OrderedDict()
        self._snapshots: dict[tuple[float | None, bool], str] = {}
        self._replays = 0

    # -- Input ---------------------------------------------------------------------------------

    def record(self, tick: Tick) -> None:
        """One tick: history, events, and (while watched) the KPA models."""
        previous = self.last
        period = self.reporting_period
        rejected_now = sum(tick.rejected.values())
        rejected_before = sum(previous.rejected.values()) if previous is not None else 0
        report = tick.report
        point = Point(
            tick.wall,
            report.average_concurrency,
            report.average_proxied_concurrency,
            report.request_count / period,
            report.proxied_request_count / period,
            tick.at_app,
            tick.queued,
            rejected_now - rejected_before,
        )
        self.history.append(point)
        self._events(previous, tick)
        self.last = tick
        self._snapshots.clear()
        self._replays = 0
        if self.watched(tick.now):
            self._start_watching()
            for target, (model, _) in self._models.items():
                self._models[target] = (model, self._step(model, tick.now, point))
        else:
            self._stop_watching()

    def _events(self, previous: Tick | None, tick: Tick) -> None:
        if previous is None:
            self.events.append((tick.wall, f"page started: {tick.state}"))
            return
        if tick.state != previous.state:
            text = f"{previous.state} → {tick.state}"
            if tick.state == DRAINING:
                text += f" (drain started, quiet period {self.quiet_period:g}s)"
            self.events.append((tick.wall, text))
        for reason, count in tick.rejected.items():
            more = count - previous.rejected.get(reason, 0)
            if more > 0:
                self.events.append((tick.wall, f"{reason} × {more}"))

    # -- Watching ------------------------------------------------------------------------------

    def watched(self, now: float) -> bool:
        return self.viewers > 0 or now < self.watched_until

    def asked(self, now: float) -> None:
        """A `/live.json` request: keep the watched-only parts going for a while."""
        self.watched_until = now + WATCH_LINGER
        self._start_watching()

    def watch(self) -> None:
        """Start the watched-only parts now (a viewer arrived), not at the next tick."""
        self._start_watching()

    def _start_watching(self) -> None:
        if self.samples is None:
            self.samples = deque(maxlen=SAMPLE_LIMIT)
            self._sampling(self.samples)

    def _stop_watching(self) -> None:
        if self.samples is not None:
            self.samples = None
            self._sampling(None)
        self._models.clear()

    # -- The KPA view --------------------------------------------------------------------------

    def kpa_config(self, target: float | None) -> KpaConfig:
        return KpaConfig(container_concurrency=self.container_concurrency, target=target)

    @staticmethod
    def _step(model: KpaModel, now: float, point: Point) -> Decision:
        stat = Stat(
            average_concurrent_requests=point.concurrency,
            average_proxied_concurrent_requests=point.proxied_concurrency,
            request_count=point.rps,
            proxied_request_count=point.proxied_rps,
        )
        model.record(now, stat)
        return model.decide(now, ready_pods=1)

    def decision(self, target: float | None) -> Decision | None:
        """This pod alone through Knative's KPA with `target`; a model met for the first time
        replays the history (at most `HISTORY_SECONDS` steps). Raises `Busy` past
        `MAX_REPLAYS_PER_TICK` new targets in one tick."""
        entry = self._models.get(target)
        if entry is None:
            if self._replays >= MAX_REPLAYS_PER_TICK:
                raise Busy
            self._replays += 1
            model = KpaModel(self.kpa_config(target))
            decision = None
            last = self.last
            if last is not None and self.history:
                # Tick times on the monotonic clock, counted back from the last one.
                newest = self.history[-1].wall
                for point in self.history:
                    decision = self._step(model, last.now - (newest - point.wall), point)
            entry = (model, decision)
            self._models[target] = entry
            while len(self._models) > MAX_TARGETS:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(target)
        return entry[1]

    # -- Output --------------------------------------------------------------------------------

    def latency(self, now: float) -> dict[str, object]:
        samples = self.samples
        recent = [s for s in samples if s[0] >= now - LATENCY_WINDOW] if samples else []
        waits = [s[1] for s in recent]
        apps = [s[2] for s in recent]
        return {
            "window": LATENCY_WINDOW,
            "requests": len(recent),
            "wait": {"p50": quantile(waits, 0.5), "p99": quantile(waits, 0.99)},
            "app": {"p50": quantile(apps, 0.5), "p99": quantile(apps, 0.99)},
        }

    def snapshot(self, target: float | None, history: bool) -> str:
        """The page's data as JSON text (docs/contract.md#the-live-page), at the last tick;
        built at most once per tick for each (target, history)."""
        key = (target, history)
        text = self._snapshots.get(key)
        if text is None:
            text = json.dumps(self._snapshot(target, history), separators=(",", ":"))
            if len(self._snapshots) < 2 * MAX_TARGETS:
                self._snapshots[key] = text
        return text

    def _snapshot(self, target: float | None, history: bool) -> dict[str, object]:
        tick = self.last
        if tick is None:
            return {"state": "starting"}
        config = self.kpa_config(target)
        try:
            kpa = _kpa_view(config, target, self.decision(target))
        except Busy:
            why = "too many new targets this second: ask again in a second"
            kpa = _kpa_view(config, target, None) | {"why": why}
        report = tick.report
        period = self.reporting_period
        data: dict[str, object] = {
            "time": round(tick.wall, 3),
            "uptime": round(tick.uptime, 1),
            "state": tick.state,
            "drain": None
            if tick.drain_left is None
            else {"quiet_period": self.quiet_period, "left": round(max(tick.drain_left, 0.0), 1)},
            "cc": self.container_concurrency,
            "queue_capacity": self.queue_capacity,
            "at_app": tick.at_app,
            "queued": tick.queued,
            "stat": {
                "concurrency": report.average_concurrency,
                "proxied_concurrency": report.average_proxied_concurrency,
                "rps": report.request_count / period,
                "proxied_rps": report.proxied_request_count / period,
            },
            "rejected": tick.rejected,
            "latency": self.latency(tick.now),
            "events": [{"time": round(t, 3), "text": text} for t, text in self.events],
            "kpa": kpa,
            "point": self.history[-1].row() if self.history else None,
        }
        if history:
            data["history"] = [point.row() for point in self.history]
        return data


def _kpa_view(config: KpaConfig, target: float | None, decision: Decision | None) -> dict:
    view: dict[str, object] = {
        "target_annotation": target,
        "total": config.total,
        "target": config.target_value,
        "stable_window": config.stable_window,
        "panic_window": config.panic_window,
    }
    if decision is None:
        return view | {"valid": False, "why": "no statistics yet"}
    return view | {
        "valid": decision.valid,
        "stable": round(decision.stable_concurrency, 4),
        "panic": round(decision.panic_concurrency, 4),
        "desired": decision.desired_pods,
        "desired_stable": decision.desired_stable_pods,
        "desired_panic": decision.desired_panic_pods,
        "panicking": decision.panicking,
        "activator_in_path": decision.activator_in_path,
        "scale_to_zero": decision.scale_to_zero,
        "why": decision.why,
    }


class LiveFeed:
    """Server-sent-event viewers: at most `MAX_VIEWERS`, each sent one snapshot per tick."""

    def __init__(self, state: LiveState) -> None:
        self.state = state
        self.viewers: dict[StreamWriter, float | None] = {}

    @property
    def full(self) -> bool:
        return len(self.viewers) >= MAX_VIEWERS

    def attach(self, writer: StreamWriter, target: float | None) -> None:
        """A new viewer: the snapshot with history at once, then one per tick."""
        self.viewers[writer] = target
        self.state.viewers = len(self.viewers)
        writer.on_close = lambda: self._detach(writer)
        self.state.watch()
        # `retry`: EventSource reconnects after a second when the stream is cut.
        writer.write(b"retry: 1000\n" + _event(self.state.snapshot(target, history=True)))

    def _detach(self, writer: StreamWriter) -> None:
        self.viewers.pop(writer, None)
        self.state.viewers = len(self.viewers)

    def publish(self) -> None:
        """After `LiveState.record`: the new snapshot to every viewer (too slow ones are cut)."""
        for writer, target in list(self.viewers.items()):
            if writer.open:
                writer.write(_event(self.state.snapshot(target, history=False)))

    def close(self) -> None:
        for writer in list(self.viewers):
            writer.close()


def _event(text: str) -> bytes:
    return b"data: " + text.encode() + b"\n\n"
