"""The sample app's own request metrics on /metrics, read from a real process like Prometheus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sampleapp.metrics import RequestMetrics
from tests.sampleapp_helpers import RunningApp, start_app

Labels = tuple[tuple[str, str], ...]


@pytest.fixture
def app() -> Iterator[RunningApp]:
    running = start_app(TARGET="Metrics")
    yield running
    assert running.stop() == 0


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        await response.read()
        return response.status


async def scrape(session: aiohttp.ClientSession, app: RunningApp) -> list[Sample]:
    async with session.get(f"{app.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name.startswith("sampleapp_")
        for sample in family.samples
    ]


def values(samples: list[Sample], name: str) -> dict[Labels, float]:
    """`name`'s samples by their labels, sorted by label name."""
    return {tuple(sorted(s.labels.items())): s.value for s in samples if s.name == name}


def bucket(samples: list[Sample], path: str, code: str, le: str) -> float:
    """How many `path` requests answered `code` took at most `le` seconds."""
    (value,) = (
        s.value
        for s in samples
        if s.name == "sampleapp_request_duration_seconds_bucket"
        and s.labels == {"path": path, "code": code, "le": le}
    )
    return value


async def test_counts_and_latency_by_route_and_code(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        assert await get(session, f"{app.url}/") == 200
    for _ in range(2):
        assert await get(session, f"{app.url}/?status=503") == 503
    assert await get(session, f"{app.url}/?sleep=200") == 200
    assert await get(session, f"{app.url}/no/such/page") == 404
    assert await get(session, f"{app.url}/stream?chunks=3&interval=150") == 200
    await scrape(session, app)  # scrapes are not counted: this one must not show below

    samples = await scrape(session, app)
    assert values(samples, "sampleapp_requests_total") == {
        (("code", "200"), ("path", "/")): 4,
        (("code", "503"), ("path", "/")): 2,
        (("code", "200"), ("path", "/stream")): 1,
        # Answered by the router, not the app: `/no/such/page` is not counted.
    }
    assert values(samples, "sampleapp_request_duration_seconds_count") == values(
        samples, "sampleapp_requests_total"
    )
    # Cumulative buckets: the sleeping request is the only one of the four past 0.1 s.
    assert bucket(samples, "/", "200", "0.1") == 3
    assert bucket(samples, "/", "200", "0.25") == 4
    assert bucket(samples, "/", "200", "10.0") == 4
    # A stream counts until its last chunk: two 150 ms pauses.
    assert bucket(samples, "/stream", "200", "0.25") == 0
    assert bucket(samples, "/stream", "200", "+Inf") == 1
    sums = values(samples, "sampleapp_request_duration_seconds_sum")
    assert 0.2 <= sums[(("code", "200"), ("path", "/"))] < 1.0
    assert values(samples, "sampleapp_requests_in_progress") == {(): 0}


async def test_in_progress_counts_requests_until_they_finish(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    slow = asyncio.ensure_future(get(session, f"{app.url}/?sleep=1000"))
    socket = await session.ws_connect(f"{app.url}/ws")
    await socket.send_str("hi")
    assert (await socket.receive_str()) == "hi"
    await asyncio.sleep(0.2)
    assert values(await scrape(session, app), "sampleapp_requests_in_progress") == {(): 2}
    await socket.close()
    assert await slow == 200
    samples = await scrape(session, app)
    assert values(samples, "sampleapp_requests_in_progress") == {(): 0}
    # The websocket's exchange counts from the upgrade until it closed: past the 0.2 s pause.
    assert bucket(samples, "/ws", "101", "0.1") == 0
    assert bucket(samples, "/ws", "101", "+Inf") == 1


async def test_client_chosen_paths_add_no_series(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    statuses = await asyncio.gather(
        *(get(session, f"{app.url}/flood/{index}?q={index}") for index in range(100)),
        *(get(session, f"{app.url}/headers?q={index}") for index in range(100)),
    )
    assert statuses == [404] * 100 + [200] * 100
    samples = await scrape(session, app)
    assert values(samples, "sampleapp_requests_total") == {
        (("code", "200"), ("path", "/headers")): 100
    }
    paths = {s.labels["path"] for s in samples if "path" in s.labels}
    assert paths == {"/headers"}


async def test_head_and_error_statuses_are_counted(
    app: RunningApp, session: aiohttp.ClientSession
) -> None:
    async with session.head(f"{app.url}/") as response:
        assert response.status == 200
    assert await get(session, f"{app.url}/?status=500") == 500
    samples = await scrape(session, app)
    assert values(samples, "sampleapp_requests_total") == {
        (("code", "200"), ("path", "/")): 1,
        (("code", "500"), ("path", "/")): 1,
    }


def test_buckets_are_cumulative_and_a_bound_belongs_to_its_own_bucket() -> None:
    metrics = RequestMetrics()
    for seconds in (0.0, 0.001, 0.0011, 10.0, 10.5):
        metrics.observe("/", 200, seconds)
    registry = CollectorRegistry()
    registry.register(metrics)
    samples = [s for family in registry.collect() for s in family.samples]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 2
    assert buckets["0.0025"] == 3
    assert buckets["5.0"] == 3
    assert buckets["10.0"] == 4
    assert buckets["+Inf"] == 5
    assert values(samples, "sampleapp_request_duration_seconds_sum") == {
        (("code", "200"), ("path", "/")): pytest.approx(20.5021)
    }
    assert values(samples, "sampleapp_requests_total") == {(("code", "200"), ("path", "/")): 5}
