"""Wiring: build every part from the configuration, open the listeners, run until drained.

The one place where the parts meet, like Knative's `sharedmain`: the data path, the breaker, the
statistics ticker, the probes, the drain and the endpoint servers are all constructed here.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import uvloop

from queueproxy.breaker import Breaker
from queueproxy.config import Config
from queueproxy.endpoints import Request, Response, not_found, serve
from queueproxy.http11 import DATE
from queueproxy.proxy import DataPath

log = logging.getLogger("queueproxy")

# Knative's upstream keep-alive pool: CC idle connections, or 1000 when unlimited (§9.2).
UNLIMITED_IDLE_CONNECTIONS = 1000
# Hijacked connections (websockets) get this long after the listeners close (§8).
HIJACK_DRAIN_SECONDS = 60.0
REPORTING_PERIOD = 1.0


class Sidecar:
    """Everything one queue-proxy process runs."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        cc = config.container_concurrency
        self.breaker = Breaker.for_container_concurrency(cc)
        self.data_path = DataPath(
            loop,
            "127.0.0.1",
            config.user_port,
            self.breaker,
            cc if cc > 0 else UNLIMITED_IDLE_CONNECTIONS,
        )
        self.servers: list[asyncio.Server] = []
        self.stopping = asyncio.Event()
        self.ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        config = self.config
        host = config.bind_address or None
        self.servers.append(
            await self.loop.create_server(
                self.data_path.protocol_factory,
                host,
                config.queue_serving_port,
                reuse_address=True,
                backlog=1024,
            )
        )
        self.servers.append(await serve(self.loop, self.admin, host, config.admin_port))
        self._tick()

    def _tick(self) -> None:
        DATE.refresh()
        self.ticker = self.loop.call_later(REPORTING_PERIOD, self._tick)

    def admin(self, request: Request) -> Response:
        return not_found(request)

    def request_stop(self) -> None:
        self.stopping.set()

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish, give tunnels a bounded grace."""
        for server in self.servers:
            server.close()
        for conn in list(self.data_path.connections):
            conn.shutdown()
        while any(c.tunnel_upstream is None and c.exchanges for c in self.data_path.connections):
            await asyncio.sleep(0.05)
        deadline = self.loop.time() + HIJACK_DRAIN_SECONDS
        while self.data_path.connections and self.loop.time() < deadline:
            if not any(c.exchanges for c in self.data_path.connections):
                break
            await asyncio.sleep(0.2)
        for conn in list(self.data_path.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.data_path.pool.close()
        if self.ticker is not None:
            self.ticker.cancel()


async def _serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    sidecar = Sidecar(config, loop)
    try:
        await sidecar.start()
    except OSError as error:
        print(f"queueproxy: cannot listen: {error}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.request_stop)
    print(
        f"queueproxy: serving on :{config.queue_serving_port} -> 127.0.0.1:{config.user_port}",
        file=sys.stderr,
        flush=True,
    )
    await sidecar.stopping.wait()
    await sidecar.shutdown()
    return 0


def run(config: Config) -> int:
    return uvloop.run(_serve(config))
