"""Data path behaviour that needs a shortened bound: the data path runs in the test's own loop
on real sockets, with the request-head deadline (a minute in production) cut to a fraction."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from queueproxy.breaker import Breaker
from queueproxy.proxy import DataPath
from queueproxy.timeouts import TimeoutRules


async def _app() -> tuple[web.AppRunner, int]:
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_a_request_head_that_never_completes_is_cut_without_holding_others():
    runner, app_port = await _app()
    loop = asyncio.get_running_loop()
    path = DataPath(
        loop, "127.0.0.1", app_port, Breaker(1, 10), 1, TimeoutRules(30), read_header_timeout=0.5
    )
    server = await loop.create_server(path.protocol_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        silent_reader, _ = await asyncio.open_connection("127.0.0.1", port)
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        started = time.monotonic()
        # Meanwhile another client is served at once, through the only slot.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(3) == b"ok\n"
        for stalled in (silent_reader, slow_reader):
            assert await asyncio.wait_for(stalled.read(), 3) == b""  # closed by the proxy
        assert 0.4 < time.monotonic() - started < 2.5
        # The served client idled on its kept-alive connection all along and was not cut.
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)).startswith(
            b"HTTP/1.1 200"
        )
        writer.close()
    finally:
        server.close()
        path.pool.close()
        await runner.cleanup()


async def test_a_connection_goes_back_to_the_pool_being_read() -> None:
    """A slow client pauses reading from the app; if its exchange ends meanwhile, the connection
    must not sit in the pool unread: the app's close (or stray bytes) would go unnoticed and the
    next request, a POST perhaps, would be written into a closed socket."""
    from queueproxy.upstream import UpstreamConnection, UpstreamPool

    loop = asyncio.get_running_loop()
    closed_by_app = asyncio.Event()

    async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)
        writer.close()  # an app closing its idle keep-alive connection
        closed_by_app.set()

    server = await asyncio.start_server(app, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(loop, "127.0.0.1", port, 10)
    try:
        _, upstream = await loop.create_connection(
            lambda: UpstreamConnection(pool), "127.0.0.1", port
        )
        upstream.pause_reading()  # as `ClientConnection.pause_writing` does for a slow client
        pool.release(upstream)
        assert upstream.transport.is_reading()
        await asyncio.wait_for(closed_by_app.wait(), 2)
        for _ in range(100):  # the close is seen, and the connection leaves the pool
            if not pool.idle:
                break
            await asyncio.sleep(0.01)
        assert pool.idle == [] and upstream.closed
    finally:
        pool.close()
        server.close()


async def test_route_tag_fields_are_read_from_the_one_pass_and_from_repeated_heads():
    """`knative-serving-tag` / `-default-route` are noted while the upstream head is built (any
    case, first value wins, even when `Connection` names them) and kept for a repeated head,
    which skips that pass: each request on one connection gets its own label."""
    from prometheus_client.parser import text_string_to_metric_families

    from queueproxy.observer import RequestObserver
    from queueproxy.stats import RequestStats
    from queueproxy.usermetrics import RevisionMetrics

    runner, app_port = await _app()
    loop = asyncio.get_running_loop()
    path = DataPath(loop, "127.0.0.1", app_port, None, 0, TimeoutRules(30))
    metrics = RevisionMetrics(
        namespace="ns", service="s", configuration="c", revision="r", pod="p",
        container_concurrency=0,
    )  # fmt: skip
    path.observer = RequestObserver(
        time.monotonic, RequestStats(time.monotonic()), metrics, None, None, "v1.18"
    )
    server = await loop.create_server(path.protocol_factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    heads = [
        b"",
        b"KNATIVE-SERVING-TAG: canary\r\n",
        b"Knative-Serving-Tag: blue\r\nknative-serving-tag: green\r\n",
        b"Knative-Serving-Default-Route: true\r\n",
        b"Knative-Serving-Tag: t\r\nKnative-Serving-Default-Route: true\r\n",
        b"Connection: knative-serving-tag\r\nKnative-Serving-Tag: named\r\n",
    ]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for extra in heads * 2:  # the second round repeats each head
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(3) == b"ok\n"
        writer.close()
        await asyncio.sleep(0.05)
        (family,) = [
            f
            for f in text_string_to_metric_families(metrics.render().decode())
            if f.name == "revision_request_count"
        ]
        tags = {s.labels["route_tag"]: s.value for s in family.samples}
        assert tags == {
            "DISABLED": 2, "canary": 2, "blue": 2, "DEFAULT": 2, "UNDEFINED": 2, "named": 2
        }  # fmt: skip
    finally:
        server.close()
        path.pool.close()
        await runner.cleanup()
