"""TLS on `QUEUE_SERVING_TLS_PORT` (8112) when Knative mounts certificates (docs/contract.md#tls).

Knative serves the main handler over TLS iff both `tls.crt` and `tls.key` exist in
`/var/lib/knative/certs` at start-up, re-reads them every minute and switches to a changed pair
without dropping connections. Here the pair is loaded into the one `SSLContext` the listener
uses: OpenSSL applies it to new handshakes only, so open connections keep going.

Settings mirror knative.dev/pkg's `QUEUE_PROXY_TLS_*`: minimum version (default 1.3), maximum,
TLS 1.2 cipher suites by Go name (Go, like OpenSSL, does not make TLS 1.3 suites configurable)
and curve preferences. Python's `ssl` can set one curve only, so the first one we can map is
used and the rest are logged as ignored. ALPN offers `h2` and `http/1.1`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
from pathlib import Path

from queueproxy.config import Config

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Go's crypto/tls names for the TLS 1.2 suites it allows, as OpenSSL names them.
_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_CURVES = {
    "CurveP256": "prime256v1",
    "P-256": "prime256v1",
    "CurveP384": "secp384r1",
    "P-384": "secp384r1",
    "CurveP521": "secp521r1",
    "P-521": "secp521r1",
    "X25519": "X25519",
}


def tls_enabled(certs_dir: str) -> bool:
    """Both files present. Any error other than "not there" is raised: Knative exits on it."""
    found = []
    for name in (CERT_FILE, KEY_FILE):
        try:
            os.stat(Path(certs_dir) / name)
        except FileNotFoundError:
            found.append(False)
        else:
            found.append(True)
    return all(found)


def build_context(config: Config, log: logging.Logger) -> ssl.SSLContext:
    """The server context for 8112, with the certificate pair loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.tls_min_version or "1.3"]
    if config.tls_max_version:
        context.maximum_version = _VERSIONS[config.tls_max_version]
    tls12_suites = [_CIPHERS[name] for name in config.tls_cipher_suites if name in _CIPHERS]
    if tls12_suites:
        context.set_ciphers(":".join(tls12_suites))
    curves = [_CURVES[name] for name in config.tls_curve_preferences if name in _CURVES]
    if curves:
        context.set_ecdh_curve(curves[0])
        ignored = [name for name in config.tls_curve_preferences if _CURVES.get(name) != curves[0]]
        if ignored:
            log.warning(f"TLS curve preferences {ignored} ignored: Python sets a single curve")
    # HTTP/2 first, as Go's server offers it (RFC 9113 §3.2); `proxy` hands h2 to `h2server`.
    context.set_alpn_protocols(["h2", "http/1.1"])
    certs = Path(config.certs_dir)
    context.load_cert_chain(certs / CERT_FILE, certs / KEY_FILE, password=_no_password)
    return context


def _no_password() -> bytes:
    # Without a callback OpenSSL asks the terminal for an encrypted key's passphrase and blocks;
    # Go's LoadX509KeyPair does not decrypt keys either, so such a key simply fails to load.
    return b""


def pair_digest(cert: bytes, key: bytes) -> str:
    """What Knative's CertWatcher compares: a SHA-256 of each file."""
    return hashlib.sha256(cert).hexdigest() + hashlib.sha256(key).hexdigest()


class CertificateWatcher:
    """Re-reads the pair every `interval` seconds and loads it into `context` when it changed.

    A pair that does not load (half-written, mismatched) is logged and the old one kept; the
    next look tries again, since the digest is only remembered once a pair has loaded.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        certs_dir: str,
        interval: float,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
    ) -> None:
        self.context = context
        self.cert_path = Path(certs_dir) / CERT_FILE
        self.key_path = Path(certs_dir) / KEY_FILE
        self.interval = interval
        self.loop = loop
        self.log = log
        self.digest = self._read_digest()
        self.handle: asyncio.TimerHandle | None = loop.call_later(interval, self._check)

    def _read_digest(self) -> str | None:
        try:
            return pair_digest(self.cert_path.read_bytes(), self.key_path.read_bytes())
        except OSError as error:
            self.log.error(f"cannot read the TLS certificate pair: {error}")
            return None

    def _check(self) -> None:
        digest = self._read_digest()
        if digest is not None and digest != self.digest:
            try:
                # A failed load_cert_chain leaves a context half-changed (new certificate, no
                # matching key: every later handshake fails), so the pair must load elsewhere first.
                scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                scratch.load_cert_chain(self.cert_path, self.key_path, password=_no_password)
                self.context.load_cert_chain(self.cert_path, self.key_path, password=_no_password)
            except (OSError, ssl.SSLError) as error:
                self.log.error(f"new TLS certificate not loaded, keeping the old one: {error}")
            else:
                self.digest = digest
                self.log.info("TLS certificate reloaded")
        self.handle = self.loop.call_later(self.interval, self._check)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
