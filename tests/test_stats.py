"""The statistics window (contract §4.1), as tables of event scripts in milliseconds."""

from __future__ import annotations

import random

import pytest

from queueproxy.stats import RequestStats, StatsReport

# Script steps: ("in"|"out"|"pin"|"pout", ms) move a request; ("report", ms, expected) cuts a
# window, expected = (average, proxied average, count, proxied count).
# fmt: off
CASES = {
    "two 500 ms requests in one second": [
        ("in", 0), ("out", 500), ("in", 500), ("out", 1000),
        ("report", 1000, (1.0, 0.0, 2, 0)),
    ],
    "one request for half the window": [
        ("in", 250), ("out", 750),
        ("report", 1000, (0.5, 0.0, 1, 0)),
    ],
    "overlapping requests": [
        ("in", 0), ("in", 250), ("out", 750), ("out", 1000),
        ("report", 1000, (1.5, 0.0, 2, 0)),
    ],
    "three overlapping requests, partly outside the window": [
        ("in", 0), ("in", 100), ("in", 200),
        ("report", 1000, (2.7, 0.0, 3, 0)),
        ("out", 1500), ("out", 1500), ("out", 2000),
        ("report", 2000, (2.0, 0.0, 0, 0)),
    ],
    "request spanning several windows": [
        ("in", 0),
        ("report", 1000, (1.0, 0.0, 1, 0)),
        ("report", 2000, (1.0, 0.0, 0, 0)),
        ("report", 3000, (1.0, 0.0, 0, 0)),
        ("out", 3500),
        ("report", 4000, (0.5, 0.0, 0, 0)),
        ("report", 5000, (0.0, 0.0, 0, 0)),
    ],
    "request arriving mid window and leaving in a later one": [
        ("in", 600),
        ("report", 1000, (0.4, 0.0, 1, 0)),
        ("out", 1200),
        ("report", 2000, (0.2, 0.0, 0, 0)),
    ],
    "proxied requests are a subset of all requests": [
        ("in", 0), ("pin", 0), ("pout", 500), ("out", 1000),
        ("report", 1000, (1.5, 0.5, 2, 1)),
    ],
    "only proxied requests": [
        ("pin", 0), ("pin", 500), ("pout", 1000),
        ("report", 1000, (1.5, 1.5, 2, 2)),
        ("pout", 1500),
        ("report", 2000, (0.5, 0.5, 0, 0)),
    ],
    "aborted request leaves after a moment": [
        ("in", 100), ("out", 150),
        ("report", 1000, (0.05, 0.0, 1, 0)),
        ("report", 2000, (0.0, 0.0, 0, 0)),
    ],
    "idle window": [
        ("report", 1000, (0.0, 0.0, 0, 0)),
    ],
    "no time in the window": [
        ("report", 0, (0.0, 0.0, 0, 0)),
    ],
    "report twice at the same instant": [
        ("in", 0),
        ("report", 1000, (1.0, 0.0, 1, 0)),
        ("report", 1000, (0.0, 0.0, 0, 0)),
        ("report", 2000, (1.0, 0.0, 0, 0)),
    ],
    "request in and out at the same instant": [
        ("in", 300), ("out", 300),
        ("report", 1000, (0.0, 0.0, 1, 0)),
    ],
    "an event stamped before the last one counts at the last one": [
        ("in", 500), ("out", 400),
        ("report", 1000, (0.0, 0.0, 1, 0)),
    ],
    "an event stamped before the window start counts at the start": [
        ("in", 0),
        ("report", 1000, (1.0, 0.0, 1, 0)),
        ("out", 900),
        ("report", 2000, (0.0, 0.0, 0, 0)),
    ],
    "a report stamped before the last event closes the window at the event": [
        ("in", 0), ("out", 800),
        ("report", 700, (1.0, 0.0, 1, 0)),
        ("report", 1800, (0.0, 0.0, 0, 0)),
    ],
}
# fmt: on


def run_script(
    stats: RequestStats, start: float, script: list[tuple]
) -> list[tuple[StatsReport, tuple]]:
    reports = []
    for step in script:
        kind, ms = step[0], step[1]
        now = start + ms / 1000
        if kind == "report":
            reports.append((stats.report(now), step[2]))
        elif kind in ("in", "pin"):
            stats.request_in(now, proxied=kind == "pin")
        else:
            stats.request_out(now, proxied=kind == "pout")
    return reports


# A large clock origin checks that a long-running monotonic clock costs no precision.
@pytest.mark.parametrize("start", [0.0, 987654.321])
@pytest.mark.parametrize("name", list(CASES))
def test_event_script(name: str, start: float) -> None:
    stats = RequestStats(start)
    for got, (average, proxied, count, proxied_count) in run_script(stats, start, CASES[name]):
        assert got.average_concurrency == pytest.approx(average, abs=1e-9)
        assert got.average_proxied_concurrency == pytest.approx(proxied, abs=1e-9)
        assert got.request_count == count
        assert got.proxied_request_count == proxied_count


def test_instantaneous_concurrency_follows_events() -> None:
    stats = RequestStats(0.0)
    stats.request_in(0.1, proxied=False)
    stats.request_in(0.2, proxied=True)
    assert (stats.concurrency, stats.proxied_concurrency) == (2, 1)
    stats.report(1.0)
    assert (stats.concurrency, stats.proxied_concurrency) == (2, 1)
    stats.request_out(1.1, proxied=True)
    stats.request_out(1.2, proxied=False)
    assert (stats.concurrency, stats.proxied_concurrency) == (0, 0)


class KnativeStyleStats:
    """Reference: Knative's accumulate-on-every-event formulation, written out plainly."""

    def __init__(self, now: float) -> None:
        self.concurrency = self.proxied_concurrency = 0.0
        self.last_change = now
        self.reset()

    def reset(self) -> None:
        self.count = self.proxied_count = 0
        self.area = self.proxied_area = self.seconds = 0.0

    def compute(self, now: float) -> None:
        dt = now - self.last_change
        if dt > 0:
            self.seconds += dt
            self.area += self.concurrency * dt
            self.proxied_area += self.proxied_concurrency * dt
            self.last_change = now

    def event(self, now: float, arriving: bool, proxied: bool) -> None:
        self.compute(now)
        step = 1 if arriving else -1
        self.concurrency += step
        if proxied:
            self.proxied_concurrency += step
        if arriving:
            self.count += 1
            self.proxied_count += proxied

    def report(self, now: float) -> tuple[float, float, int, int]:
        self.compute(now)
        average = self.area / self.seconds if self.seconds > 0 else 0.0
        proxied = self.proxied_area / self.seconds if self.seconds > 0 else 0.0
        result = (average, proxied, self.count, self.proxied_count)
        self.reset()
        return result


@pytest.mark.parametrize("seed", range(20))
def test_matches_knative_formulation_on_random_scripts(seed: int) -> None:
    rng = random.Random(seed)
    start = rng.uniform(0, 1e6)
    ours, reference = RequestStats(start), KnativeStyleStats(start)
    open_requests: list[bool] = []  # proxied flag of each request in flight
    now = start
    for _ in range(2000):
        # Mostly forward, sometimes a small step back, as clocks read on different paths can do.
        now += rng.uniform(-0.002, 0.05)
        roll = rng.random()
        if roll < 0.05:
            got, want = ours.report(now), reference.report(now)
            assert as_tuple(got) == pytest.approx(want, abs=1e-6)
        elif roll < 0.55 or not open_requests:
            proxied = rng.random() < 0.3
            open_requests.append(proxied)
            ours.request_in(now, proxied)
            reference.event(now, arriving=True, proxied=proxied)
        else:
            proxied = open_requests.pop(rng.randrange(len(open_requests)))
            ours.request_out(now, proxied)
            reference.event(now, arriving=False, proxied=proxied)
    got, want = ours.report(now + 1), reference.report(now + 1)
    assert got.average_concurrency > 0  # requests are still open: the comparison means something
    assert as_tuple(got) == pytest.approx(want, abs=1e-6)


def as_tuple(report: StatsReport) -> tuple[float, float, int, int]:
    return (
        report.average_concurrency,
        report.average_proxied_concurrency,
        report.request_count,
        report.proxied_request_count,
    )
