"""Listening sockets bound without the event loop's resolver.

`loop.create_server(factory, host, port)` passes its host through getaddrinfo even when it is an
address or None. On uvloop that is a round trip to libuv's thread pool (which starts its threads
for it) and, for a `str` host, a load of the `idna` codec: 1-2 ms of every start for the
sidecar's four ports. An address needs no resolving, so `listen` makes the sockets the loop would
make and hands them to it; only a host name still goes through the loop.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl import SSLContext

# What getaddrinfo(None, port, AI_PASSIVE) lists on Linux, in its order: all IPv4 addresses, then
# all IPv6 addresses, one socket each (IPv6 only on the second, as asyncio and uvloop set it).
ALL_INTERFACES = ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))


def address_family(host: str) -> socket.AddressFamily | None:
    """AF_INET or AF_INET6 for an IP address in text form, None for anything else (a name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def bind(host: str | None, port: int, backlog: int) -> list[socket.socket] | None:
    """Bound, listening TCP sockets for `host`:`port` with SO_REUSEADDR (and IPV6_V6ONLY on an
    IPv6 one), as `create_server` makes them: one for an address, one per family for None or ""
    (every interface; IPv6 left out on a kernel without it). None for a host name. Raises
    OSError naming the address that could not be bound, after closing what was opened."""
    if host:
        family = address_family(host)
        if family is None:
            return None
        addresses: tuple[tuple[socket.AddressFamily, str], ...] = ((family, host),)
    else:
        addresses = ALL_INTERFACES
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            try:
                sock = socket.create_server((address, port), family=family, backlog=backlog)
            except OSError as error:
                if host or family != socket.AF_INET6 or error.errno != errno.EAFNOSUPPORT:
                    raise
                continue
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def listen(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], asyncio.BaseProtocol],
    host: str | None,
    port: int,
    backlog: int = 100,
    ssl: SSLContext | None = None,
) -> list[asyncio.Server]:
    """Serve `factory`'s protocols on `host`:`port` (over TLS with `ssl`): one server per socket
    `bind` makes, or the loop's own `create_server` for a host name. `backlog` as in
    `socket.listen` (100 is asyncio's default). Raises OSError naming the address and port
    when it cannot be resolved or bound."""
    sockets = bind(host, port, backlog)
    if sockets is None:
        try:
            server = await loop.create_server(
                factory, host, port, reuse_address=True, backlog=backlog, ssl=ssl
            )
        except socket.gaierror as error:
            # The resolver's own words name neither the address nor the port.
            reason = f"cannot resolve listen address {host!r} for port {port}: {error.strerror}"
            raise OSError(error.errno, reason) from None
        return [server]
    servers: list[asyncio.Server] = []
    try:
        for sock in sockets:
            server = await loop.create_server(factory, sock=sock, backlog=backlog, ssl=ssl)
            servers.append(server)
    except BaseException:
        for server in servers:
            server.close()
        for sock in sockets[len(servers) :]:
            sock.close()
        raise
    return servers
