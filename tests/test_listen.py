"""Listening sockets made without the event loop's resolver (queueproxy/listen.py): the same
sockets `create_server` makes, served by the loop, and no `idna` codec or resolver thread."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from queueproxy.listen import address_family, bind, listen
from tests.harness import free_port


def _options(sock: socket.socket) -> tuple[int, int | None]:
    reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    v6only = None
    if sock.family == socket.AF_INET6:
        v6only = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    return reuse, v6only


def _has_ipv6() -> bool:
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("host", "family"),
    [
        ("127.0.0.1", socket.AF_INET),
        ("0.0.0.0", socket.AF_INET),
        ("::1", socket.AF_INET6),
        ("::", socket.AF_INET6),
        ("localhost", None),
        ("example.com", None),
        ("127.1", None),  # inet_aton would take it; getaddrinfo decides, as before
        ("fe80::1%lo", None),  # a scope needs resolving too
    ],
)
def test_address_family(host: str, family: socket.AddressFamily | None) -> None:
    assert address_family(host) == family


def test_an_address_gets_one_socket_like_create_servers() -> None:
    port = free_port()
    sockets = bind("127.0.0.1", port, 7)
    assert sockets is not None and len(sockets) == 1
    with sockets[0] as sock:
        assert sock.getsockname() == ("127.0.0.1", port)
        assert sock.type == socket.SOCK_STREAM
        assert _options(sock) == (1, None)
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # listening: the kernel accepts before anyone calls accept()


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 in this kernel")
def test_every_interface_gets_an_ipv4_and_an_ipv6_only_socket() -> None:
    # What uvloop's create_server(None, port) binds: 0.0.0.0, then :: with IPV6_V6ONLY, so IPv4
    # clients keep plain IPv4 peer addresses (no ::ffff: mapping).
    port = free_port()
    for host in (None, ""):
        sockets = bind(host, port, 100)
        assert sockets is not None
        try:
            assert [(s.family, s.getsockname()[:2]) for s in sockets] == [
                (socket.AF_INET, ("0.0.0.0", port)),
                (socket.AF_INET6, ("::", port)),
            ]
            assert [_options(s) for s in sockets] == [(1, None), (1, 1)]
        finally:
            for sock in sockets:
                sock.close()


def test_a_host_name_is_left_to_the_loop() -> None:
    assert bind("localhost", free_port(), 100) is None


def test_a_taken_port_names_the_address_and_leaks_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=r"0\.0\.0\.0") as raised:
            bind(None, port, 100)
        assert raised.value.errno == 98  # EADDRINUSE
    if _has_ipv6():
        # Now the IPv4 bind works and IPv6 is taken: the IPv4 socket must be closed again.
        with socket.socket(socket.AF_INET6) as taken6:
            taken6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            taken6.bind(("::", port))
            taken6.listen()
            with pytest.raises(OSError, match="::") as raised6:
                bind(None, port, 100)
            # (The traceback keeps bind's frame alive: a leaked socket would still listen.)
            again = bind("0.0.0.0", port, 100)
            assert again is not None and raised6.value.errno == 98
            again[0].close()


async def _roundtrip(port: int, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"ping")
    await writer.drain()
    data = await reader.read(100)
    writer.close()
    return data


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert isinstance(self.transport, asyncio.Transport)
        self.transport.write(data.upper())
        self.transport.close()


@pytest.mark.parametrize("host", ["127.0.0.1", None, "localhost"])
async def test_listen_serves_the_protocol_on_each_socket(host: str | None) -> None:
    port = free_port()
    loop = asyncio.get_running_loop()
    servers = await listen(loop, _Echo, host, port)
    try:
        assert len(servers) == (2 if host is None and _has_ipv6() else 1)
        assert await _roundtrip(port) == b"PING"
        if host is None and _has_ipv6():
            assert await _roundtrip(port, "::1") == b"PING"
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


def test_binding_an_address_loads_no_idna_codec_nor_resolver_threads() -> None:
    code = (
        "import asyncio, os, sys, uvloop\n"
        "from queueproxy.listen import listen\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    for host in ('127.0.0.1', None):\n"
        "        for server in await listen(loop, asyncio.Protocol, host, 0):\n"
        "            server.close()\n"
        "    print('encodings.idna' in sys.modules, len(os.listdir('/proc/self/task')))\n"
        "uvloop.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "1"]


@pytest.mark.parametrize("host", ["[::1]", "garbage!!"])
async def test_a_name_that_does_not_resolve_is_an_error_naming_it_and_the_port(host: str) -> None:
    # Before, the loop's bare gaierror reached the operator: "cannot start: [Errno -2] Name or
    # service not known", with no word of which address or port.
    port = free_port()
    with pytest.raises(OSError) as raised:
        await listen(asyncio.get_running_loop(), _Echo, host, port)
    assert repr(host) in str(raised.value) and str(port) in str(raised.value)
