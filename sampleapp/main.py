"""Process lifecycle: settings, routes, listen, wait for SIGTERM or SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial

import uvloop
from aiohttp import web

from sampleapp.config import ConfigError, Settings, load
from sampleapp.handlers import READINESS, Greeter, echo_headers, healthz, pid
from sampleapp.metrics import RequestMetrics, install, measured
from sampleapp.readiness import Readiness
from sampleapp.streams import (
    CHECKSUMS,
    PatternChecksums,
    download,
    server_sent_events,
    stream,
    upload,
    websocket_echo,
)
from sampleapp.work import FaultDice


def build_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[READINESS] = Readiness(settings.ready_after)
    app[CHECKSUMS] = PatternChecksums()
    greeter = Greeter(settings.target, FaultDice())
    metrics = RequestMetrics()
    install(app, metrics)
    router = app.router
    routes = (
        (router.add_get, "/", greeter.hello),  # add_get also routes HEAD
        (router.add_get, "/stream", stream),
        (router.add_get, "/sse", server_sent_events),
        (router.add_get, "/ws", websocket_echo),
        (partial(router.add_route, "*"), "/headers", echo_headers),
        (router.add_post, "/upload", upload),
        (router.add_put, "/upload", upload),
        (router.add_get, "/download", download),
        (router.add_get, "/healthz", healthz),
        (router.add_post, "/healthz", healthz),
        (router.add_get, "/pid", pid),
    )
    for add, path, handler in routes:
        add(path, measured(path, handler, metrics))
    return app


async def stop_signal(startup_delay: float) -> asyncio.Event | None:
    """An event set by SIGTERM or SIGINT, after waiting `startup_delay` seconds; None when a
    signal came during the delay (the process then ends before it ever listens)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if startup_delay:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), startup_delay)
    return None if stop.is_set() else stop


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; return the exit code."""
    loop = asyncio.get_running_loop()
    stop = await stop_signal(settings.startup_delay)
    if stop is None:
        return 0

    app = build_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,  # the benchmark target: no per-request log line
        keepalive_timeout=settings.keepalive_timeout,
        # aiohttp waits this long for running handlers once the listener is closed, then
        # cancels them (verified by the SIGTERM test).
        shutdown_timeout=settings.shutdown_grace,
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
        except OSError as error:
            print(
                f"sampleapp: cannot listen on {settings.host}:{settings.port}: {error}",
                file=sys.stderr,
            )
            return 1
        app[READINESS].listening(loop.time())
        port = runner.addresses[0][1]
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        print(f"sampleapp listening on http://{host}:{port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load(os.environ, sys.argv[1:] if argv is None else argv)
    except ConfigError as error:
        print(f"sampleapp: {error}", file=sys.stderr)
        return 1
    if settings.protocol == "grpc":
        try:
            from sampleapp import grpcapp  # grpcio loads only in this mode
        except ImportError as error:
            print(
                f"sampleapp: SAMPLEAPP_PROTOCOL=grpc needs grpcio ({error}): "
                "pip install 'queueproxy[grpc]'",
                file=sys.stderr,
            )
            return 1
        return asyncio.run(grpcapp.serve(settings))
    return uvloop.run(serve(settings))
