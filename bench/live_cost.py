#!/usr/bin/env python3
"""What the live page and our own metrics add per request: an in-process micro benchmark.

    .venv/bin/python bench/live_cost.py [--requests 300000]

Runs the data path's per-request observer calls (`RequestObserver.request_started` and
`request_finished`, with the statistics window and the v1.19 user metrics, as in a pod) on a
synthetic exchange, in three settings, best of five runs each:

- `without`: the observer without the wait/app histograms and without live sampling (what the
  data path paid before issue 11);
- `metrics`: with the histograms (always on);
- `watched`: with the histograms and the live page's latency samples (while it is watched).

Prints nanoseconds per request for each and the differences. Figures: docs/design.md.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from types import SimpleNamespace

from queueproxy.breaker import Breaker
from queueproxy.live import SAMPLE_LIMIT
from queueproxy.observer import RequestObserver
from queueproxy.stats import RequestStats
from queueproxy.usermetrics import build_user_metrics

SETTINGS = ("without", "metrics", "watched")


class _NoHistograms:
    """An `Outcomes` stand-in whose `observe` does nothing: the 'before' baseline."""

    def observe(self, wait: float, app: float) -> None:
        pass


def _observer(setting: str) -> RequestObserver:
    metrics = build_user_metrics(
        era="v1.19",
        namespace="default",
        service="hello",
        configuration="hello",
        revision="hello-00001",
        pod="pod",
        container_concurrency=10,
    )
    observer = RequestObserver(
        time.monotonic, RequestStats(time.monotonic()), metrics, None, Breaker(10, 100), "v1.19"
    )
    if setting == "without":
        observer.outcomes = _NoHistograms()  # type: ignore[assignment]
    if setting == "watched":
        observer.samples = deque(maxlen=SAMPLE_LIMIT)
    return observer


def _run(setting: str, requests: int) -> float:
    observer = _observer(setting)
    now = time.monotonic()
    exchange = SimpleNamespace(
        started_at=now,
        dispatched_at=now + 0.001,
        proxied=False,
        status=200,
        network_probe=None,
        method=b"GET",
        headers=[(b"host", b"example")],
        body_chunked=False,
        request_length=-1,
        knative_fields=None,
    )
    started, finished = observer.request_started, observer.request_finished
    begin = time.perf_counter()
    for _ in range(requests):
        started(exchange)  # type: ignore[arg-type]
        finished(exchange)  # type: ignore[arg-type]
    return (time.perf_counter() - begin) / requests * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300_000)
    args = parser.parse_args()
    best = {s: min(_run(s, args.requests) for _ in range(5)) for s in SETTINGS}
    for setting, ns in best.items():
        print(f"{setting:8} {ns:7.0f} ns per request")
    print(f"histograms add      {best['metrics'] - best['without']:5.0f} ns per request")
    print(f"live sampling adds  {best['watched'] - best['metrics']:5.0f} ns per request")
    print(f"both add            {best['watched'] - best['without']:5.0f} ns per request")


if __name__ == "__main__":
    main()
