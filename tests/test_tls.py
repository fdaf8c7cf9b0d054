"""TLS on the TLS serving port: certificates made by the test, a real sidecar, real clients."""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme

from queueproxy.config import load
from queueproxy.tls import CertificateWatcher, build_context
from tests.harness import (
    free_port,
    knative_env,
    run_to_exit,
    running,
    start_sampleapp,
    start_sidecar,
)


def write_pair(ca: trustme.CA, directory: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    (directory / "tls.crt").write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    (directory / "tls.key").write_bytes(cert.private_key_pem.bytes())


def client_context(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def https_get(port: int, context: ssl.SSLContext) -> tuple[int, bytes, str]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        return response.status, response.read(), connection.sock.version()  # type: ignore[union-attr]
    finally:
        connection.close()


@pytest.fixture(scope="module")
def app():
    with running(start_sampleapp(TARGET="TLS")) as process:
        yield process


def sidecar_env(app_port: int, certs: Path, **extra: str) -> dict[str, str]:
    return knative_env(
        app_port,
        free_port(),
        QUEUE_SERVING_TLS_PORT=str(free_port()),
        QUEUEPROXY_CERTS_DIR=str(certs),
        **extra,
    )


def test_serves_the_data_path_over_tls_13_by_default(app, tmp_path):
    ca = trustme.CA()
    write_pair(ca, tmp_path)
    env = sidecar_env(app.port, tmp_path)
    with running(start_sidecar(env)) as sidecar:
        tls_port = int(env["QUEUE_SERVING_TLS_PORT"])
        status, body, version = https_get(tls_port, client_context(ca))
        assert (status, body, version) == (200, b"Hello TLS!\n", "TLSv1.3")
        with pytest.raises(ssl.SSLError):
            https_get(tls_port, client_context(ca, ssl.TLSVersion.TLSv1_2))
        # The plain port and the admin port stay plain HTTP.
        plain = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=5)
        plain.request("GET", "/")
        assert plain.getresponse().read() == b"Hello TLS!\n"
        admin = http.client.HTTPConnection("127.0.0.1", sidecar.port_of("QUEUEPROXY_ADMIN_PORT"))
        admin.request("GET", "/nothing")
        assert admin.getresponse().status == 404


def test_minimum_version_12_admits_a_tls_12_client(app, tmp_path):
    ca = trustme.CA()
    write_pair(ca, tmp_path)
    env = sidecar_env(
        app.port,
        tmp_path,
        QUEUE_PROXY_TLS_MIN_VERSION="1.2",
        QUEUE_PROXY_TLS_CIPHER_SUITES="TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",  # trustme: ECDSA
    )
    with running(start_sidecar(env)):
        context = client_context(ca, ssl.TLSVersion.TLSv1_2)
        status, body, version = https_get(int(env["QUEUE_SERVING_TLS_PORT"]), context)
        assert (status, body, version) == (200, b"Hello TLS!\n", "TLSv1.2")
        # Only the configured suite is offered: a client that wants another one is refused.
        other = client_context(ca, ssl.TLSVersion.TLSv1_2)
        other.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")
        with pytest.raises(ssl.SSLError):
            https_get(int(env["QUEUE_SERVING_TLS_PORT"]), other)


def test_no_certificates_no_tls_listener(app, tmp_path):
    env = sidecar_env(app.port, tmp_path)
    with running(start_sidecar(env)):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(env["QUEUE_SERVING_TLS_PORT"])), 2)


def test_rotated_certificate_is_served_to_new_connections_without_dropping_old_ones(app, tmp_path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_pair(old_ca, tmp_path)
    env = sidecar_env(app.port, tmp_path, QUEUEPROXY_CERT_RELOAD_SECONDS="0.2")
    with running(start_sidecar(env)):
        tls_port = int(env["QUEUE_SERVING_TLS_PORT"])
        kept = http.client.HTTPSConnection(
            "127.0.0.1", tls_port, context=client_context(old_ca), timeout=5
        )
        kept.request("GET", "/")
        assert kept.getresponse().read() == b"Hello TLS!\n"

        write_pair(new_ca, tmp_path)
        for _ in range(50):  # up to 5 s for the 0.2 s reload to pick it up
            try:
                status, _, _ = https_get(tls_port, client_context(new_ca))
                break
            except ssl.SSLCertVerificationError:
                time.sleep(0.1)
        else:
            raise AssertionError("the new certificate was never served")
        assert status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            https_get(tls_port, client_context(old_ca))
        # The connection opened before the rotation still works.
        kept.request("GET", "/")
        assert kept.getresponse().read() == b"Hello TLS!\n"
        kept.close()


def test_unloadable_certificate_at_start_exits_1(tmp_path):
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    env = sidecar_env(free_port(), tmp_path)
    result = run_to_exit(env)
    assert result.returncode == 1
    assert "queueproxy: cannot start" in result.stderr


def _handshake(server_context: ssl.SSLContext, ca: trustme.CA) -> None:
    """A full TLS handshake in memory against `server_context`, trusting only `ca`."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(to_server, to_client, server_side=True)
    client = client_context(ca).wrap_bio(to_client, to_server, server_hostname="localhost")
    pending = [client, server]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        if not pending:
            return
    raise AssertionError("handshake did not finish")


async def test_a_mismatched_new_pair_is_refused_and_the_old_one_still_served(tmp_path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    write_pair(old_ca, tmp_path)
    config = load(["--local"], {"QUEUEPROXY_CERTS_DIR": str(tmp_path)})
    log = logging.getLogger("test_tls")
    context = build_context(config, log)
    watcher = CertificateWatcher(context, str(tmp_path), 3600, asyncio.get_running_loop(), log)
    try:
        old_key = (tmp_path / "tls.key").read_bytes()
        write_pair(new_ca, tmp_path)
        (tmp_path / "tls.key").write_bytes(old_key)  # new certificate, old key: no pair
        watcher._check()
        _handshake(context, old_ca)
        write_pair(new_ca, tmp_path)
        watcher._check()
        _handshake(context, new_ca)
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(context, old_ca)
    finally:
        watcher.stop()
