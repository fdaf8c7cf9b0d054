"""Requests the sidecar answers itself on the main port, in Knative's order
(docs/contract.md#health-checks-and-network-probes):

1. health checks (User-Agent `kube-probe/…`, `Knative-Activator-Probe…`,
   `Knative-Autoscaling-Probe…`, on any path and method): `K-Network-Probe: queue` is answered
   from a fresh probe of the app; anything else is a 400; while draining, `503 shutting down`;
2. network probes (`K-Network-Probe: probe`): 200 echoing `K-Network-Hash`;
3. everything else restarts the drain's quiet period and goes on to the app, except requests that
   carry only the legacy `K-Kubelet-Probe` header, which skip the breaker and the statistics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from queueproxy.exchange import DONE, Exchange
from queueproxy.outcomes import BAD_REQUEST, DRAINING
from queueproxy.proxy import ClientConnection

HEALTH_CHECK_AGENTS = (b"kube-probe/", b"Knative-Activator-Probe", b"Knative-Autoscaling-Probe")
# Their first bytes: one look at the first byte settles it for every other client's agent, which
# is cheaper than `startswith` with its argument parsing on every request.
_AGENT_INITIALS = frozenset(agent[0] for agent in HEALTH_CHECK_AGENTS)
SHUTTING_DOWN = b"shutting down\n"
UNEXPECTED_PROBE_VALUE = b"unexpected probe header value (not logged)"
MISSING_HASH = b'a probe request must contain a non-empty "K-Network-Hash" header\n'


class Drain(Protocol):
    @property
    def draining(self) -> bool: ...

    def touch(self) -> None: ...


class HealthResponder:
    """Implements the data path's `LocalResponder` protocol."""

    def __init__(
        self,
        probe_app: Callable[[], asyncio.Future[bool]],
        drain: Drain,
        on_probe: Callable[[Exchange], None] | None = None,
    ) -> None:
        self.probe_app = probe_app
        self.drain = drain
        self.on_probe = on_probe

    def answer(self, conn: ClientConnection, exchange: Exchange) -> bool:
        agent = exchange.user_agent
        if agent and agent[0] in _AGENT_INITIALS and agent.startswith(HEALTH_CHECK_AGENTS):
            self._health_check(conn, exchange)
            return True
        if exchange.network_probe == b"probe":
            self._network_probe(conn, exchange)
            return True
        self.drain.touch()
        fields = exchange.knative_fields
        if exchange.network_probe is None and fields is not None and b"k-kubelet-probe" in fields:
            conn.start_upstream(exchange)  # Knative's ProxyHandler: no stats, no breaker
            return True
        return False

    def _health_check(self, conn: ClientConnection, exchange: Exchange) -> None:
        if self.drain.draining:
            self._respond(conn, exchange, 503, SHUTTING_DOWN)
            return
        value = exchange.network_probe
        if value != b"queue":
            body = b"unexpected probe header value: " + (value or b"") + b"\n"
            # The client's value goes back to it (Knative's answer), never into our log.
            self._respond(conn, exchange, 400, body, logged=UNEXPECTED_PROBE_VALUE)
            return
        # Shared by every health check while it runs (single-flight); never cancelled here.
        probe = self.probe_app()
        probe.add_done_callback(lambda done: self._probed(conn, exchange, done))

    def _probed(self, conn: ClientConnection, exchange: Exchange, done: asyncio.Future) -> None:
        if exchange.state == DONE or conn.closed:
            return  # the prober gave up waiting
        ready = not done.cancelled() and done.exception() is None and done.result()
        if ready:
            self._respond(conn, exchange, 200, b"queue")
        else:
            self._respond(conn, exchange, 503, b"")

    def _network_probe(self, conn: ClientConnection, exchange: Exchange) -> None:
        if self.drain.draining:
            self._respond(conn, exchange, 503, SHUTTING_DOWN)
            return
        digest = exchange.header(b"k-network-hash")
        if not digest:
            self._respond(conn, exchange, 400, MISSING_HASH)
            return
        self._respond(conn, exchange, 200, b"", headers=((b"K-Network-Hash", digest),))

    def _respond(
        self,
        conn: ClientConnection,
        exchange: Exchange,
        status: int,
        body: bytes,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        logged: bytes | None = None,
    ) -> None:
        """`logged`: what the rejection log line says instead of `body`."""
        if status == 400 or body == SHUTTING_DOWN:
            reason = BAD_REQUEST if status == 400 else DRAINING
            conn.rejected(reason, status, body if logged is None else logged)
        conn.respond_locally(exchange, status, body, headers)
        if self.on_probe is not None:
            self.on_probe(exchange)
