"""`queueproxy kpa URL…`: scrape queue-proxies' :9090 like Knative's autoscaler and print what the
KPA (`queueproxy.kpa`) would decide.

Scraping follows `pkg/autoscaler/metrics/stats_scraper.go` `serviceScraper.scrapePods` and
`http_scrape_client.go` `httpScrapeClient.Do`: once a second (`scrapeTickInterval`, which is
also the bucket size, so the scrape period is fixed), every URL in parallel, with
`Accept: application/protobuf`, a 3 s timeout, a 2xx status and a `Content-Type` of exactly
`application/protobuf` required, and at most 336 bytes of body read. The `Stat` is decoded here
by hand. The pods that answered are summed and scaled to the number of URLs (the ready pods); if
fewer answered than Knative's sample size for that many pods, nothing is recorded for that
second, as Knative does. Simplification: Knative scrapes a random sample of that size; this
command scrapes every URL and uses all the pods that answered.

A report (a `decide`) comes every `--interval` seconds (Knative's decider ticks every 2 s,
`pkg/autoscaler/scaling/multiscaler.go` `tickInterval`; the default here is 1 s). The URLs are
the ready pods; like an autoscaler that has just started (`autoscaler.go` `newAutoscaler`), the
model starts in panic when there are more than one, holding their number until a stable window
has passed. `--json` prints one object per report: the `Decision` fields and `pods`, each URL's
`Stat` or `error`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from urllib.parse import urlsplit

from queueproxy.h1 import parse_response_head
from queueproxy.h1body import body_reader
from queueproxy.kpa import LINEAR, WEIGHTED_EXPONENTIAL, Decision, KpaConfig, KpaModel, Stat
from queueproxy.statwire import decode_varint

SCRAPE_PERIOD = 1.0  # seconds; `collector.go` `scrapeTickInterval`
SCRAPE_TIMEOUT = 3.0  # seconds; `stats_scraper.go` `httpClientTimeout`
BODY_LIMIT = 6 * 10 + 256 + 20  # bytes (336); `http_scrape_client.go` `statFromProto`
PROTOBUF = "application/protobuf"
_DOUBLE_FIELDS = {
    2: "average_concurrent_requests",
    3: "average_proxied_concurrent_requests",
    4: "request_count",
    5: "proxied_request_count",
    6: "process_uptime",
}


def decode_stat(data: bytes) -> Stat:
    """The proto3 `Stat` (`pkg/autoscaler/metrics/stat.proto`): 1 `pod_name` string, 2–6
    doubles, 7 `timestamp` int64 (ignored). Missing fields are 0; unknown fields are skipped;
    a truncated message raises `ValueError`."""
    values: dict[str, float | str] = {}
    pos = 0
    while pos < len(data):
        key, pos = decode_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = decode_varint(data, pos)
        elif wire == 1:
            if pos + 8 > len(data):
                raise ValueError("truncated double")
            if number in _DOUBLE_FIELDS:
                values[_DOUBLE_FIELDS[number]] = struct.unpack_from("<d", data, pos)[0]
            pos += 8
        elif wire == 2:
            length, pos = decode_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated string")
            if number == 1:
                values["pod_name"] = data[pos : pos + length].decode()
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(data):
        raise ValueError("truncated fixed32")
    return Stat(**values)  # type: ignore[arg-type]


def sample_size(population: int) -> int:
    """How many pods Knative scrapes per tick (`pkg/autoscaler/metrics/sample_size.go`
    `populationMeanSampleSize`): all of them up to 3, then `ceil(N·X / (N + X − 1))` with
    X = 1.96²·100/5² ≈ 15.4."""
    if population <= 3:
        return max(population, 0)
    x = 1.96 * 1.96 * 100.0 / (5.0 * 5.0)
    return math.ceil(population * x / (population + x - 1))


def aggregate(stats: Sequence[Stat], ready_pods: int) -> Stat:
    """One revision-wide stat from the pods scraped: each sum × ready / scraped
    (`stats_scraper.go` `computeAverages` and `Stat.average`); named `service-scraper`."""
    scale = ready_pods / len(stats)

    def total(field: str) -> float:
        return sum(getattr(stat, field) for stat in stats) * scale

    return Stat(
        pod_name="service-scraper",
        average_concurrent_requests=total("average_concurrent_requests"),
        average_proxied_concurrent_requests=total("average_proxied_concurrent_requests"),
        request_count=total("request_count"),
        proxied_request_count=total("proxied_request_count"),
    )


def metrics_url(url: str) -> str:
    """`host:port` or a URL without a path means that host's `/metrics`."""
    if "://" not in url:
        url = "http://" + url
    scheme, rest = url.split("://", 1)
    if "/" not in rest:
        rest += "/metrics"
    return f"{scheme}://{rest}"


async def scrape(url: str) -> Stat:
    """One pod, as `httpScrapeClient.Do`; raises on any failure (3 s in all)."""
    return await asyncio.wait_for(_scrape(url), SCRAPE_TIMEOUT)


async def _scrape(url: str) -> Stat:
    # A plain HTTP/1.1 GET over asyncio streams, read with our own framing rules (h1): the
    # sidecar's package keeps aiohttp out (docs/design.md), and this is one small request.
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs can be scraped: {url}")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(parts.hostname, port)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: {PROTOBUF}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        response = parse_response_head(head, b"GET", False)
        if not 200 <= response.status < 300:
            raise ValueError(f"GET {url} returned HTTP status {response.status}")
        content_type = next(
            (v.decode() for n, v in response.headers if n.lower() == b"content-type"), None
        )
        if content_type != PROTOBUF:
            raise ValueError(f"unsupported metric type {content_type!r}")
        body_reader_ = body_reader(response.framing, response.length)
        body = b""
        while body_reader_ is not None and not body_reader_.done and len(body) < BODY_LIMIT:
            data = await reader.read(BODY_LIMIT)
            if not data:
                break
            chunks, _ = body_reader_.read(data, 0)
            body += b"".join(chunks)
    finally:
        writer.close()
    return decode_stat(body[:BODY_LIMIT])


async def scrape_all(urls: Sequence[str]) -> list[Stat | BaseException]:
    return await asyncio.gather(*(scrape(url) for url in urls), return_exceptions=True)


def format_decision(decision: Decision, scraped: int, pods: int) -> str:
    """One human line: `t=` is `decision.now`, seconds since the command started."""
    d = decision
    head = f"t={d.now:6.1f}s scraped {scraped}/{pods}"
    if not d.valid:
        return f"{head}  {d.why}"
    return (
        f"{head}  concurrency stable {d.stable_concurrency:.3f} panic {d.panic_concurrency:.3f}"
        f"  target {d.target:g}/pod  desired {d.desired_pods}"
        f" (stable {d.desired_stable_pods}, panic {d.desired_panic_pods})"
        f"  panic {'YES' if d.panicking else 'no'}  ebc {d.excess_burst_capacity}"
        f"  activator {'in path' if d.activator_in_path else 'out'}"
        f"{'  SCALE TO ZERO' if d.scale_to_zero else ''}  | {d.why}"
    )


def describe(error: object) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def report_json(decision: Decision, urls: Sequence[str], results: Sequence[object]) -> str:
    """One JSON object: the `Decision` fields (`now` = seconds since the command started) and
    `pods`, each pod's scraped `Stat` or `error`, in the order of the URLs."""
    pods: list[dict[str, object]] = []
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, Stat):
            pods.append({"url": url, **asdict(result)})
        else:
            pods.append({"url": url, "error": describe(result)})
    return json.dumps({**asdict(decision), "pods": pods})


async def run(args: argparse.Namespace, config: KpaConfig) -> int:
    urls = [metrics_url(url) for url in args.urls]
    pods, needed = len(urls), sample_size(len(urls))
    start = time.monotonic()
    model = KpaModel(config, now=0.0, ready_pods=pods)
    results: list[Stat | BaseException] = []
    next_scrape, next_report, reports = 0.0, args.interval, 0
    while args.count is None or reports < args.count:
        await asyncio.sleep(max(0.0, min(next_scrape, next_report) - (time.monotonic() - start)))
        now = time.monotonic() - start
        if now >= next_scrape:
            results = await scrape_all(urls)
            stats = [result for result in results if isinstance(result, Stat)]
            now = time.monotonic() - start
            if stats and len(stats) >= needed:
                model.record(now, aggregate(stats, pods))
            while next_scrape <= now:
                next_scrape += SCRAPE_PERIOD
        if now >= next_report:
            decision = model.decide(now, pods)
            scraped = sum(isinstance(result, Stat) for result in results)
            if args.json:
                print(report_json(decision, urls, results), flush=True)
            else:
                print(format_decision(decision, scraped, pods), flush=True)
                for url, result in zip(urls, results, strict=True):
                    if not isinstance(result, Stat):
                        print(f"  {url}: {describe(result)}", file=sys.stderr, flush=True)
            reports += 1
            while next_report <= now:
                next_report += args.interval
    return 0


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="queueproxy kpa",
        description="Scrape queue-proxy :9090 endpoints once a second and print what Knative's "
        "Pod Autoscaler would decide (config-autoscaler defaults unless overridden).",
    )
    p.add_argument("urls", nargs="+", metavar="URL", help="a pod's :9090, e.g. http://IP:9090")
    p.add_argument("--cc", type=int, default=0, help="containerConcurrency (0 = unlimited)")
    p.add_argument("--target", type=_positive, help="autoscaling.knative.dev/target per pod")
    p.add_argument("--interval", type=_positive, default=1.0, help="seconds between reports")
    p.add_argument("--count", type=int, help="stop after this many reports")
    p.add_argument("--json", action="store_true", help="one JSON object per report")
    p.add_argument("--stable-window", type=_positive, default=60.0, help="seconds (60)")
    p.add_argument("--panic-window-percentage", type=_positive, default=10.0)
    p.add_argument("--target-burst-capacity", type=float, default=211.0)
    p.add_argument("--algorithm", choices=(LINEAR, WEIGHTED_EXPONENTIAL), default=LINEAR)
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if args.count is not None and args.count < 1:
        parser().error("--count must be at least 1")
    try:
        config = KpaConfig(
            stable_window=args.stable_window,
            panic_window_percentage=args.panic_window_percentage,
            target_burst_capacity=args.target_burst_capacity,
            container_concurrency=args.cc,
            target=args.target,
            aggregation_algorithm=args.algorithm,
        )
    except ValueError as error:
        parser().error(str(error))
    try:
        return asyncio.run(run(args, config))
    except KeyboardInterrupt:
        return 130
