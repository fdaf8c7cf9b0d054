"""The start-time floor: the smallest asyncio + uvloop program that gets a request to the app.

    python bench/floor.py PORT APP_PORT

A TCP relay on 127.0.0.1:PORT: each accepted connection gets its own connection to the app on
127.0.0.1:APP_PORT, and bytes are copied both ways until either side closes. So the app's 200
comes back through it, as through a proxy, but nothing is parsed, configured, probed, counted or
logged. It takes the two start-up measures queueproxy takes (the collector off until it listens,
its socket bound without the loop's resolver), so the floor carries no cost queueproxy has shed.
Its start time (bench.py's "floor" row, timed like the proxies: spawn to the first 200 through
it) is what the interpreter, `site`, asyncio and uvloop cost on this machine before any code of
a sidecar runs; a proxy's start minus this floor is its own share.
"""

from __future__ import annotations

import gc

# As queueproxy's main() does: importing makes no garbage, and collecting during asyncio's and
# uvloop's imports alone costs ~3 ms here. A floor without this would flatter the share on top.
gc.disable()

import asyncio  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import uvloop  # noqa: E402


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _relay(port: int, app_port: int) -> None:
    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            app_reader, app_writer = await asyncio.open_connection("127.0.0.1", app_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_copy(reader, app_writer), _copy(app_reader, writer))

    # Bound here rather than by asyncio: a host name there costs a getaddrinfo round trip on
    # uvloop's thread pool and the `idna` codec, which a floor should not pay.
    server = await asyncio.start_server(connected, sock=socket.create_server(("127.0.0.1", port)))
    gc.enable()
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_relay(int(sys.argv[1]), int(sys.argv[2])))
