"""Wiring: build every part from the configuration, open the listeners, run until drained.

The one place where the parts meet, like Knative's `sharedmain`: the data path, the breaker, the
statistics ticker, the probes, the drain and the endpoint servers are all constructed here, and
nothing else constructs them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, NoReturn

import uvloop

from queueproxy.breaker import Breaker
from queueproxy.config import Config
from queueproxy.drain import Drainer
from queueproxy.endpoints import Request, Response, Stream, not_found, serve
from queueproxy.health import HealthResponder
from queueproxy.http11 import DATE
from queueproxy.listen import listen
from queueproxy.logs import setup_logging
from queueproxy.observer import RequestObserver
from queueproxy.outcomes import Outcomes
from queueproxy.proxy import DataPath
from queueproxy.readiness import Prober
from queueproxy.requestlog import LineWriter, RequestLogger
from queueproxy.stats import RequestStats, StatsReport
from queueproxy.statwire import TEXT_CONTENT_TYPE, StatSnapshot
from queueproxy.timeouts import TimeoutRules
from queueproxy.usermetrics import UserMetrics, build_user_metrics

if TYPE_CHECKING:
    from queueproxy.live import LiveFeed, LiveState
    from queueproxy.tls import CertificateWatcher

# Knative's upstream keep-alive pool (`buildTransport`): CC idle connections, 1000 when unlimited.
UNLIMITED_IDLE_CONNECTIONS = 1000
# Hijacked connections (websockets) get this long after the listeners close (Knative's
# `hijackDrainDuration`).
HIJACK_DRAIN_SECONDS = 60.0
# The autoscaler's reporting period (`reportingPeriod`).
REPORTING_PERIOD = 1.0
LIVE_PATHS = (b"/live", b"/live.json", b"/live/events")
# The page is self-contained: the browser may load nothing from anywhere else.
LIVE_PAGE_HEADERS = (
    (b"Cache-Control", b"no-store"),
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"connect-src 'self'; img-src data:",
    ),
)
# A preStop /wait-for-drain not followed by SIGTERM this soon was a container restart.
SIGTERM_GRACE_AFTER_PRESTOP = 1.0


class Sidecar:
    """Everything one queue-proxy process runs."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        output: LineWriter,
    ) -> None:
        self.config = config
        self.loop = loop
        self.log = log
        self.started = time.monotonic()
        cc = config.container_concurrency
        self.breaker = Breaker.for_container_concurrency(cc)
        self.data_path = DataPath(
            loop,
            "127.0.0.1",
            config.user_port,
            self.breaker,
            cc if cc > 0 else UNLIMITED_IDLE_CONNECTIONS,
            TimeoutRules(
                config.revision_timeout_seconds,
                config.revision_response_start_timeout_seconds,
                config.revision_idle_timeout_seconds,
            ),
            read_header_timeout=config.read_header_timeout,
        )
        # uvloop's loop.time() ticks in whole milliseconds, too coarse for request latencies:
        # statistics, metrics and logs use time.monotonic(), as the data path's request stamps
        # do (timers stay on loop.time(); both read CLOCK_MONOTONIC).
        self.stats = RequestStats(time.monotonic())
        self.snapshot = StatSnapshot(
            namespace=config.serving_namespace,
            configuration=config.serving_configuration,
            revision=config.serving_revision,
            pod=config.serving_pod,
        )
        self.output = output
        self.user_metrics = self._build_user_metrics()
        self.outcomes = Outcomes(time.monotonic, config.rejection_log_interval)
        self.data_path.observer = self.observer = RequestObserver(
            time.monotonic,
            self.stats,
            self.user_metrics,
            self._build_request_log(),
            self.breaker,
            config.observability.era,
            self.outcomes,
            log,
        )
        self.prober = Prober(
            config.readiness_probes,
            clock=loop.time,
            log=log,
            http2_auto_detection=config.enable_http2_auto_detection,
        )
        self.drainer = Drainer(config.drain_quiet_period, loop)
        self.data_path.responder = HealthResponder(
            self.prober.probe_future, self.drainer, self.observer.probe_answered
        )
        self.live: LiveState | None = None
        self.feed: LiveFeed | None = None
        if config.live:
            # The live page is opt-in: its modules (and kpa's) load only when it is on.
            from queueproxy.live import LiveFeed, LiveState

            breaker = self.breaker
            self.live = LiveState(
                cc,
                breaker.queue_depth if breaker is not None else 0,
                config.drain_quiet_period,
                sampling=self._sample,
            )
            self.feed = LiveFeed(self.live)
        self.servers: list[asyncio.Server] = []
        self.cert_watcher: CertificateWatcher | None = None
        self.sigterm = asyncio.Event()
        self.ticker: asyncio.TimerHandle | None = None

    def _build_user_metrics(self) -> UserMetrics | None:
        config = self.config
        protocol = config.observability.request_metrics_protocol
        if protocol == "none":
            self.log.debug("user metrics off (request metrics protocol none)")
            return None
        if protocol != "prometheus":
            self.log.warning(
                f"request metrics protocol {protocol!r} (OTLP push) is not supported; "
                "user metrics are off (use prometheus)"
            )
            return None
        self.log.debug(
            f"user metrics on :{config.user_metrics_port} "
            f"({config.observability.era} names, Prometheus text)"
        )
        return build_user_metrics(
            era=config.observability.era,
            namespace=config.serving_namespace,
            service=config.serving_service,
            configuration=config.serving_configuration,
            revision=config.serving_revision,
            pod=config.serving_pod,
            container_concurrency=config.container_concurrency,
        )

    def _build_request_log(self) -> RequestLogger | None:
        config = self.config
        observability = config.observability
        if not observability.enable_request_log:
            self.log.debug("request log off")
            return None
        request_log = RequestLogger(
            observability.request_log_template,
            sink=self.output.write,
            enable_probe_request_log=observability.enable_probe_request_log,
            revision=config.serving_revision,
            namespace=config.serving_namespace,
            service=config.serving_service,
            configuration=config.serving_configuration,
            pod_name=config.serving_pod,
            pod_ip=config.serving_pod_ip,
        )
        if request_log.template_error is not None:
            self.log.error(f"Invalid request log template: {request_log.template_error}")
        return request_log

    async def start(self) -> None:
        config = self.config
        host = config.bind_address or None
        limit = config.read_header_timeout
        self.servers += await serve(self.loop, self.admin, host, config.admin_port, limit)
        self.servers += await serve(
            self.loop, self.autoscaler_metrics, host, config.metrics_port, limit
        )
        if self.user_metrics is not None:
            self.servers += await serve(
                self.loop, self.user_metrics_endpoint, host, config.user_metrics_port, limit
            )
        if _may_have_certificates(config.certs_dir):
            from queueproxy.tls import tls_enabled  # ssl contexts, hashlib, pathlib: on demand

            if tls_enabled(config.certs_dir):
                await self._start_tls(host)
        # The serving port opens last: once it answers, so do the admin and metrics ports
        # (what a caller waiting for the serving port, like a test or a local pod, assumes).
        self.servers += await listen(
            self.loop, self.data_path.protocol_factory, host, config.queue_serving_port, 4096
        )
        self._tick(self.loop.time())

    async def _start_tls(self, host: str | None) -> None:
        """The same data path over TLS on 8112; the admin port stays plain HTTP."""
        from queueproxy.tls import CertificateWatcher, build_context

        config = self.config
        context = build_context(config, self.log)
        self.cert_watcher = CertificateWatcher(
            context, config.certs_dir, config.cert_reload_seconds, self.loop, self.log
        )
        self.servers += await listen(
            self.loop,
            self.data_path.protocol_factory,
            host,
            config.queue_serving_tls_port,
            4096,
            ssl=context,
        )
        self.log.info(f"TLS on :{config.queue_serving_tls_port} with {config.certs_dir}")

    def _tick(self, due: float) -> None:
        """Cut the statistics window every second and refresh the Date header."""
        now = self.loop.time()
        reported_at = time.monotonic()
        report = self.stats.report(reported_at)
        self.snapshot.update(report, reported_at - self.started)
        DATE.refresh()
        if self.live is not None:
            self._live_tick(reported_at, report)
        for line in self.outcomes.summaries():
            self.log.warning(line)
        next_due = due + REPORTING_PERIOD
        if next_due <= now:  # the loop was blocked: skip, don't burst
            next_due = now + REPORTING_PERIOD
        self.ticker = self.loop.call_at(next_due, self._tick, next_due)

    # -- The live page (docs/contract.md#the-live-page) ------------------------------------------

    def _sample(self, samples: deque[tuple[float, float, float]] | None) -> None:
        self.observer.samples = samples

    def _live_tick(self, now: float, report: StatsReport) -> None:
        from queueproxy.live import DRAINING, NOT_READY, READY, Tick

        assert self.live is not None and self.feed is not None
        drainer = self.drainer
        deadline = drainer.deadline
        if drainer.draining:
            state = DRAINING
        else:
            state = READY if self.prober.ready else NOT_READY
        at_app, queued, _, _ = self.gauges()
        self.live.record(
            Tick(
                now=now,
                wall=time.time(),
                uptime=now - self.started,
                report=report,
                at_app=at_app,
                queued=queued,
                state=state,
                drain_left=None if deadline is None else deadline - self.loop.time(),
                rejected=dict(self.outcomes.counts),
            )
        )
        self.feed.publish()
        if self.config.local and self.live.watched(now) and not drainer.draining:
            # No kubelet probes a local pod: while the page is watched, probe as one would, so
            # ready / not ready is current (one shared run at a time).
            self.prober.probe_future()

    def live_endpoint(self, request: Request) -> Response | Stream:
        """GET /live, /live.json, /live/events (with an optional `?target=`)."""
        from urllib.parse import parse_qs

        from queueproxy.live import parse_target
        from queueproxy.live_page import PAGE

        assert self.live is not None and self.feed is not None
        if request.method not in (b"GET", b"HEAD"):
            return Response(405, b"method not allowed\n", headers=((b"Allow", b"GET, HEAD"),))
        if request.path == b"/live":
            return Response(200, PAGE, b"text/html; charset=utf-8", LIVE_PAGE_HEADERS)
        query = parse_qs(request.query.decode("latin-1"))
        try:
            target = parse_target(query.get("target", [""])[-1])
        except ValueError as error:
            return Response(400, f"{error}\n".encode())
        if request.path == b"/live.json":
            self.live.asked(time.monotonic())
            body = self.live.snapshot(target, history=True).encode()
            return Response(200, body, b"application/json", ((b"Cache-Control", b"no-store"),))
        if self.feed.full:
            return Response(503, b"too many live viewers\n")
        feed = self.feed
        return Stream(b"text/event-stream", lambda writer: feed.attach(writer, target))

    # -- Endpoints ------------------------------------------------------------------------------

    def autoscaler_metrics(self, request: Request) -> Response:
        """:9090/metrics, any method: the last completed window, encoded when it was cut."""
        if request.path != b"/metrics":
            return not_found(request)
        body, content_type = self.snapshot.body_for(request.headers.get(b"accept"))
        if content_type == TEXT_CONTENT_TYPE:
            body += self.our_metrics()
        return Response(200, body, content_type.encode())

    def user_metrics_endpoint(self, request: Request) -> Response:
        if request.path != b"/metrics" or request.method not in (b"GET", b"HEAD"):
            return not_found(request)
        assert self.user_metrics is not None
        body = self.user_metrics.render() + self.our_metrics()
        return Response(200, body, self.user_metrics.content_type.encode())

    def gauges(self) -> tuple[int, int, int, int]:
        """(at the app, queued, CC, queue capacity) now, read from the breaker; without one
        (CC = 0) every request in flight is at the app."""
        breaker = self.breaker
        if breaker is None:
            return self.stats.concurrency, 0, 0, 0
        return breaker.in_use, breaker.waiting, breaker.capacity, breaker.queue_depth

    def our_metrics(self) -> bytes:
        return self.outcomes.render(*self.gauges())

    def admin(self, request: Request) -> Response | Stream | asyncio.Future[Response]:
        if request.path in LIVE_PATHS and self.live is not None:
            return self.live_endpoint(request)
        if request.path != b"/wait-for-drain":
            return not_found(request)
        return asyncio.ensure_future(self.wait_for_drain())

    async def wait_for_drain(self) -> Response:
        """The user container's preStop hook: answer once the sidecar has drained."""
        self.loop.call_later(SIGTERM_GRACE_AFTER_PRESTOP, self._undo_drain_without_sigterm)
        self.log.info("preStop /wait-for-drain: draining")
        await self.drainer.drain()
        return Response(200)

    def _undo_drain_without_sigterm(self) -> None:
        if not self.sigterm.is_set() and self.drainer.draining:
            # No pod deletion followed: the app container is restarting. Be ready again.
            self.log.info("no SIGTERM followed the preStop hook: drain undone")
            self.drainer.reset()

    # -- Shutdown -------------------------------------------------------------------------------

    def on_signal(self, signum: int) -> None:
        if self.sigterm.is_set():
            self.exit_now(signum)
        self.log.info(f"received {signal.Signals(signum).name}: draining")
        self.sigterm.set()

    def exit_now(self, signum: int) -> NoReturn:
        """A second SIGTERM or SIGINT: exit at once, cutting whatever is in flight.

        Knative's signal handler does the same with status 1 (`knative.dev/pkg/signals`,
        `SetupSignalHandler`); local mode exits 128 + the signal number, as a shell reports a
        process a signal ended (130 for Ctrl-C). No clean-up runs: a drain that is stuck is
        what the second signal is for, and the kernel closes every socket.
        """
        status = 128 + signum if self.config.local else 1
        name = signal.Signals(signum).name
        os.write(2, f"queueproxy: second {name}: exiting now (status {status})\n".encode())
        os._exit(status)

    async def drain_and_stop(self) -> None:
        """Drain (probes fail, traffic still served), then stop the way Go's Shutdown does."""
        await self.sigterm.wait()
        while not await self.drainer.drain():
            pass  # a preStop reset raced the signal: drain again
        self.log.info("drained: closing listeners")
        for server in self.servers:
            server.close()
        connections = self.data_path.connections
        for conn in list(connections):
            conn.shutdown()
        # Ordinary requests: no limit (Kubernetes' grace period is the bound).
        while any(c.exchange is not None and c.tunnel_upstream is None for c in connections):
            await asyncio.sleep(0.05)
        deadline = self.loop.time() + HIJACK_DRAIN_SECONDS
        while any(c.tunnel_upstream is not None for c in connections):
            if self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.1)
        for conn in list(connections):
            if conn.tunnel_upstream is not None and conn.transport is not None:
                conn.transport.abort()
        # Every answer is complete, but a slow reader may not have received it yet: closing
        # flushes before it closes, so wait for that (at most a revision timeout), then cut.
        for conn in list(connections):
            conn.shutdown()
        deadline = self.loop.time() + max(self.config.revision_timeout_seconds, 1)
        while connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.data_path.pool.close()
        if self.data_path.h2_pool is not None:
            self.data_path.h2_pool.close()
        if self.feed is not None:
            self.feed.close()
        if self.ticker is not None:
            self.ticker.cancel()
        if self.cert_watcher is not None:
            self.cert_watcher.stop()
        self.log.info("shutdown complete")


def _may_have_certificates(certs_dir: str) -> bool:
    """False only when nothing is at `certs_dir`: then `tls.tls_enabled` is False too, and the
    TLS module need not be imported. Anything else (even an error) is for `tls_enabled` to judge."""
    try:
        os.lstat(certs_dir or ".")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


async def _serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    # Process and request logs share one stdout writer that never blocks the event loop.
    output = LineWriter()
    log = setup_logging(
        config.serving_logging_level,
        config.serving_namespace,
        config.serving_revision,
        config.serving_pod,
        sink=output.write,
    )
    sidecar = Sidecar(config, loop, log, output)
    # Before the listeners open: a signal as soon as the port answers must drain, not kill.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, sidecar.on_signal, signum)
    try:
        await sidecar.start()
    except OSError as error:
        print(f"queueproxy: cannot start: {error}", file=sys.stderr, flush=True)
        return 1
    # What start-up built lives as long as the process: out of the collector's sight, later
    # full collections stop walking it (main() held the collector off while it was built).
    gc.freeze()
    gc.enable()
    log.info(
        f"queue-proxy serving on :{config.queue_serving_port} for 127.0.0.1:{config.user_port}, "
        f"containerConcurrency={config.container_concurrency}"
    )
    await sidecar.drain_and_stop()
    output.close()
    return 0


def run(config: Config) -> int:
    return uvloop.run(_serve(config))
