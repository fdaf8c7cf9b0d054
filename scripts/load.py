#!/usr/bin/env python3
"""A small closed-loop load generator for the README's walkthrough: N clients, each sending
GET URL again as soon as its last answer is complete, over keep-alive HTTP/1.1, for S seconds.

    scripts/load.py --clients 6 --seconds 5 'http://127.0.0.1:8012/?sleep=200'

Prints the requests per second, the answers by status and the p50/p99 latency. It needs only
the standard library; `wrk` or `hey` do the same with more options, where installed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit


async def _one(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response with a Content-Length body; (status, the server keeps the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields.get("connection", "").lower() != "close"


async def _client(url: str, until: float, statuses: Counter, latencies: list[float]) -> None:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    while time.monotonic() < until:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            keep = True
            while keep and time.monotonic() < until:
                started = time.monotonic()
                writer.write(request)
                status, keep = await _one(reader)
                latencies.append(time.monotonic() - started)
                statuses[status] += 1
        except (OSError, asyncio.IncompleteReadError):
            statuses["error"] += 1
        finally:
            writer.close()


async def run(url: str, clients: int, seconds: float) -> str:
    statuses: Counter = Counter()
    latencies: list[float] = []
    until = time.monotonic() + seconds
    await asyncio.gather(*(_client(url, until, statuses, latencies) for _ in range(clients)))
    latencies.sort()

    def ms(q: float) -> str:
        if not latencies:
            return "-"
        return f"{latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000:.0f} ms"

    answers = ", ".join(f"{status}: {count}" for status, count in sorted(statuses.items(), key=str))
    return (
        f"{clients} clients, {seconds:g}s: {len(latencies)} requests "
        f"({len(latencies) / seconds:.1f}/s); {answers}; p50 {ms(0.5)}, p99 {ms(0.99)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (1)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long (5)")
    args = parser.parse_args()
    if args.clients < 1 or args.seconds <= 0:
        parser.error("--clients must be >= 1 and --seconds > 0")
    print(asyncio.run(run(args.url, args.clients, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
