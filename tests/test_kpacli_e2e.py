"""`queueproxy kpa` end to end: a real sidecar in front of an aiohttp app in the test's loop holds
three requests (one of them sent as by the activator) while `python -m queueproxy kpa` scrapes
its :9090 and reports what Knative's autoscaler would decide."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from queueproxy import kpacli
from tests.harness import (
    ROOT,
    free_port,
    knative_env,
    running,
    serve_app,
    start_sidecar,
    until,
    wait_for_port,
)

POD = "hello-00001-deployment-5f7c9d8b6c-kpa01"

pytestmark = pytest.mark.timeout(60)


async def kpa(*args: str) -> tuple[int, str, str]:
    """Run `python -m queueproxy kpa ARGS…` without blocking the loop that serves the app."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "queueproxy",
        "kpa",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def reports(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_kpa_reports_the_held_load() -> None:
    release = asyncio.Event()
    active = 0

    async def work(request: web.Request) -> web.Response:
        nonlocal active
        active += 1
        try:
            await release.wait()
        finally:
            active -= 1
        return web.Response(text="ok\n")

    application = web.Application()
    application.router.add_get("/work", work)
    async with serve_app(application) as app_port, aiohttp.ClientSession() as client:
        env = knative_env(app_port, free_port(), SERVING_POD=POD)
        sidecar = await asyncio.to_thread(start_sidecar, env)
        with running(sidecar):
            metrics_port = sidecar.port_of("QUEUEPROXY_METRICS_PORT")
            await asyncio.to_thread(wait_for_port, metrics_port, 10.0, sidecar.proc)
            metrics = f"http://127.0.0.1:{metrics_port}/metrics"

            async def call(headers: dict[str, str]) -> int:
                async with client.get(f"{sidecar.url}/work", headers=headers) as response:
                    await response.read()
                    return response.status

            held = [
                asyncio.ensure_future(call(headers))
                for headers in ({}, {}, {"K-Proxy-Request": "activator"})
            ]
            try:
                await until(lambda: active == 3, timeout=10.0)
                stat = kpacli.Stat()

                async def loaded() -> bool:  # a whole 1 s window with all three in flight
                    nonlocal stat
                    stat = await kpacli.scrape(metrics)
                    return abs(stat.average_concurrent_requests - 3.0) < 1e-9

                deadline = asyncio.get_running_loop().time() + 10
                while not await loaded():
                    assert asyncio.get_running_loop().time() < deadline, stat
                    await asyncio.sleep(0.05)

                dead = f"127.0.0.1:{free_port()}"  # nothing listens there
                low, default, half_down = await asyncio.gather(
                    kpa(metrics, "--count", "3", "--json", "--target", "1"),
                    kpa(metrics, "--count", "1"),
                    kpa(metrics, dead, "--count", "2", "--json"),
                )
            finally:
                release.set()
            assert await asyncio.gather(*held) == [200, 200, 200]

    # 3 in flight, 1 of them counted by the activator: the KPA scales on the other 2.
    code, out, err = low
    assert code == 0, err
    lines = reports(out)
    assert len(lines) == 3
    times = [line["now"] for line in lines]
    assert times == sorted(times) and times[0] >= 1.0  # one report a second, the first at 1 s
    for line in lines:
        (pod,) = line["pods"]
        assert pod["pod_name"] == POD
        assert pod["average_concurrent_requests"] == pytest.approx(3.0)
        assert pod["average_proxied_concurrent_requests"] == pytest.approx(1.0)
        assert line["valid"] and line["ready_pods"] == 1
        assert line["stable_concurrency"] == pytest.approx(2.0)
        assert line["panic_concurrency"] == pytest.approx(2.0)
        # target 1 per pod at 70%: ceil(2 / 0.7) = 3 pods for 1 ready, over the 200% panic line.
        assert line["target"] == pytest.approx(0.7) and line["total"] == 1.0
        assert line["desired_pods"] == 3 and line["panicking"] is True
        assert line["excess_burst_capacity"] == math.floor(1 * 1 - 211 - 2)
        assert line["activator_in_path"] is True and line["scale_to_zero"] is False
    assert lines[0]["why"].startswith("entered panic")

    # The defaults (target 70): one pod is plenty.
    code, out, err = default
    assert code == 0, err
    (line,) = out.splitlines()
    assert "scraped 1/1" in line and "concurrency stable 2.000 panic 2.000" in line
    assert "target 70/pod  desired 1 " in line and "panic no" in line
    assert f"ebc {math.floor(100 - 211 - 2)}" in line

    # One of two pods unreachable: fewer than Knative's sample size answered, nothing recorded.
    code, out, err = half_down
    assert code == 0, err
    lines = reports(out)
    assert len(lines) == 2
    for line in lines:
        assert line["pods"][0]["pod_name"] == POD
        assert "error" in line["pods"][1]
        assert line["valid"] is False and line["why"].startswith("no data")
