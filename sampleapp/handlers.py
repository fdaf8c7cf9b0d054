"""The greeting with its knobs, and the small endpoints: /healthz, /pid, /headers."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from sampleapp.knobs import GreetingKnobs, KnobError, bool_knob
from sampleapp.readiness import Readiness
from sampleapp.streams import bad_request, client_gone, digest_body, send_pattern
from sampleapp.work import FaultDice, ballast, largest_prime_at_most

READINESS = web.AppKey("readiness", Readiness)

_TEXT = "text/plain"
_NO_BODY_STATUSES = frozenset({204, 304})  # HTTP forbids a body with these


class Greeter:
    """`GET /`: the benchmark target, so a request without a query string does nothing else."""

    def __init__(self, target: str, dice: FaultDice) -> None:
        self._greeting = f"Hello {target}!\n".encode()
        self._dice = dice

    async def hello(self, request: web.Request) -> web.StreamResponse:
        if not request.query_string:
            return web.Response(body=self._greeting, content_type=_TEXT, charset="utf-8")
        try:
            knobs = GreetingKnobs.parse(request.query)
        except KnobError as error:
            return bad_request(error)
        return await self._with_knobs(request, knobs)

    async def _with_knobs(self, request: web.Request, knobs: GreetingKnobs) -> web.StreamResponse:
        report = [self._greeting.decode()]
        # Held until the handler returns, so the memory is in use while prime and sleep run.
        held = ballast(knobs.bloat_mib) if knobs.bloat_mib else None
        if held is not None:
            report.append(f"bloat: {knobs.bloat_mib} MiB\n")
        if knobs.prime is not None:
            # On the event loop on purpose: a CPU-bound request holds the whole app, as one
            # busy worker would, and the proxy in front sees the queueing that follows.
            report.append(f"prime: {largest_prime_at_most(knobs.prime)}\n")
        if knobs.sleep_ms:
            await asyncio.sleep(knobs.sleep_ms / 1000)
            report.append(f"sleep: {knobs.sleep_ms:g} ms\n")

        if knobs.fail and self._dice.roll(knobs.seed) < knobs.fail:
            return web.Response(status=500, text=f"injected failure (fail={knobs.fail:g})\n")
        if knobs.reset:
            return abort(request)
        if knobs.status in _NO_BODY_STATUSES:
            return web.Response(status=knobs.status)
        if knobs.bytes is not None:
            return await send_pattern(
                request, knobs.bytes, status=knobs.status, drop_after=knobs.drop_after
            )
        return web.Response(status=knobs.status, text="".join(report), content_type=_TEXT)


def abort(request: web.Request) -> web.Response:
    """Reset the connection: the client gets no response at all."""
    if request.transport is not None:
        request.transport.abort()
    # aiohttp's attempt to send this finds the connection closed and gives up quietly.
    return web.Response(status=500)


async def healthz(request: web.Request) -> web.Response:
    """GET: 200 when ready, 503 when not. POST ?ready=0|1: flip the switch."""
    readiness = request.app[READINESS]
    if request.method == "POST":
        try:
            if "ready" not in request.query:
                raise KnobError("ready", "", "0 or 1 (it is required)")
            readiness.switched_on = bool_knob(request.query, "ready")
        except KnobError as error:
            return bad_request(error)
        return web.Response(text=f"ready={int(readiness.switched_on)}\n")
    if readiness.is_ready(asyncio.get_running_loop().time()):
        return web.Response(text="ok")
    return web.Response(status=503, text="not ready")


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=f"{os.getpid()}\n")


async def echo_headers(request: web.Request) -> web.Response:
    """The request as the app saw it, headers in wire order with duplicates kept."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    try:
        body = await digest_body(request) if request.body_exists else None
    except ConnectionError:
        return client_gone()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "http_version": f"{request.version.major}.{request.version.minor}",
            "remote_addr": peer[0] if peer else None,
            "remote_port": peer[1] if peer else None,
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in request.raw_headers
            ],
            "body": body,
        }
    )
