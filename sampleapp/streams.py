"""Bodies that take time or size: chunked streams, SSE, websockets, uploads, downloads.

Nothing here holds a whole body: uploads are hashed as they arrive, and downloads are slices of
one precomputed block (see pattern.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Mapping

from aiohttp import WSMsgType, web

from sampleapp.knobs import DownloadKnobs, KnobError, StreamKnobs
from sampleapp.pattern import pattern_bytes, pattern_chunks, pattern_sha256

_INLINE_CHECKSUM_BYTES = 1 << 20  # hashing a MiB takes about a millisecond: not worth a thread


class PatternChecksums:
    """SHA-256 of pattern bodies by size, computed once per size, big ones off the event loop."""

    def __init__(self, max_sizes: int = 64) -> None:
        self._max_sizes = max_sizes
        self._by_size: OrderedDict[int, asyncio.Future[str]] = OrderedDict()

    async def sha256(self, size: int) -> str:
        if size <= _INLINE_CHECKSUM_BYTES:
            return pattern_sha256(size)
        future = self._by_size.get(size)
        if future is None:
            # hashlib releases the GIL on large updates, so the loop keeps serving meanwhile.
            future = asyncio.get_running_loop().run_in_executor(None, pattern_sha256, size)
            self._by_size[size] = future
            if len(self._by_size) > self._max_sizes:
                self._by_size.popitem(last=False)
        # Shielded: one client giving up must not cancel the result others are waiting for.
        return await asyncio.shield(future)


CHECKSUMS = web.AppKey("checksums", PatternChecksums)


def bad_request(error: KnobError) -> web.Response:
    return web.Response(status=400, text=f"{error}\n")


def client_gone() -> web.Response:
    """What to return when the client left mid-request: aiohttp finds nobody to send it to."""
    return web.Response(status=400, text="client closed the request\n")


async def send_pattern(
    request: web.Request,
    size: int,
    *,
    status: int = 200,
    chunked: bool = False,
    drop_after: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Stream `size` pattern bytes; with `drop_after`, close the connection after that many."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = "application/octet-stream"
    if not chunked:
        response.content_length = size
    body_size = size if drop_after is None else min(size, drop_after)
    truncated = body_size < size
    try:
        # Without a length aiohttp frames the body as chunked (close-delimited for HTTP/1.0).
        await response.prepare(request)
        for chunk in pattern_chunks(body_size):
            await response.write(chunk)
        if truncated and request.transport is not None:
            # close(), not abort(): what was written still reaches the client, then a FIN
            # arrives where the rest of the body should have been.
            request.transport.close()
            return response
        await response.write_eof()
    except ConnectionError:
        pass  # the client left: nobody to tell, and nothing worth a traceback in the log
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    """`GET /stream?chunks=N&interval=ms&size=B`: chunked, each chunk sent as soon as written."""
    try:
        knobs = StreamKnobs.parse_stream(request.query)
    except KnobError as error:
        return bad_request(error)
    response = web.StreamResponse()
    response.content_type = "text/plain" if knobs.size is None else "application/octet-stream"
    payload = None if knobs.size is None else pattern_bytes(knobs.size)
    await response.prepare(request)
    try:
        for index in range(knobs.count):
            if index:
                await asyncio.sleep(knobs.interval_ms / 1000)
            await response.write(payload or f"chunk {index}\n".encode())
        await response.write_eof()
    except ConnectionError:
        pass
    return response


async def server_sent_events(request: web.Request) -> web.StreamResponse:
    """`GET /sse?events=N&interval=ms`: `data: <i>` events, each flushed on its own."""
    try:
        knobs = StreamKnobs.parse_sse(request.query)
    except KnobError as error:
        return bad_request(error)
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    try:
        for index in range(knobs.count):
            if index:
                await asyncio.sleep(knobs.interval_ms / 1000)
            await response.write(f"data: {index}\n\n".encode())
        await response.write_eof()
    except ConnectionError:
        pass
    return response


async def websocket_echo(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type is WSMsgType.TEXT:
            await socket.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await socket.send_bytes(message.data)
    return socket


async def digest_body(request: web.Request) -> dict[str, int | str]:
    """Length and SHA-256 of the request body, read as it arrives."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


async def upload(request: web.Request) -> web.Response:
    try:
        return web.json_response(await digest_body(request))
    except ConnectionError:
        return client_gone()


async def download(request: web.Request) -> web.StreamResponse:
    """`GET /download?bytes=N[&chunked=1][&drop_after=B]`, with the body's SHA-256 in X-Sha256."""
    try:
        knobs = DownloadKnobs.parse(request.query)
    except KnobError as error:
        return bad_request(error)
    checksum = await request.app[CHECKSUMS].sha256(knobs.bytes)
    return await send_pattern(
        request,
        knobs.bytes,
        chunked=knobs.chunked,
        drop_after=knobs.drop_after,
        headers={"X-Sha256": checksum},
    )
