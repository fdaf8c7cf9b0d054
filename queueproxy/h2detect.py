"""Telling HTTP/2 from HTTP/1.1 on the one serving port, sans-IO and without `h2`
(docs/http2.md#how-a-connection-becomes-http2).

`proxy.ClientConnection` asks these before it hands a connection to `h2server`; they cost the
HTTP/1 path nothing it does not already do, and loading this module loads no HTTP/2 code.
"""

from __future__ import annotations

import base64
from typing import Final

from queueproxy.h1 import NO_BODY, RequestHead

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 §3.4): prior knowledge of HTTP/2."""

_BASE64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="


def preface_state(seen: bytes) -> int:
    """1: `seen` holds the whole preface; 0: it is a proper prefix of it (read more); -1: it is
    not HTTP/2 (at least one byte differs)."""
    size = min(len(seen), len(PREFACE))
    if seen[:size] != PREFACE[:size]:
        return -1
    return 1 if size == len(PREFACE) else 0


def h2c_upgrade_settings(request: RequestHead) -> bytes | None:
    """The `HTTP2-Settings` value of an `Upgrade: h2c` request we grant, or None to decline it
    and serve the request over HTTP/1.1 (RFC 9110 §7.8 lets a server ignore an upgrade).

    Granted (RFC 7540 §3.2, Go's `h2c.NewHandler` as Knative serves it) only for an HTTP/1.1
    request that offers `h2c` in `Upgrade`, names `HTTP2-Settings` in `Connection`, carries
    exactly one valid `HTTP2-Settings` and has no body: a body would have to be read whole under
    HTTP/1.1 framing before the switch, so that upgrade is declined, as HAProxy does. The caller
    declines over TLS itself (h2c is cleartext only).
    """
    if (
        request.version != b"1.1"
        or request.framing != NO_BODY
        or b"http2-settings" not in request.connection
        or b"h2c" not in [p.strip(b" \t").lower() for p in request.upgrade.split(b",")]
    ):
        return None
    settings = [v for n, v in request.headers if n.lower() == b"http2-settings"]
    if len(settings) != 1 or not valid_settings(settings[0]):
        return None
    return settings[0]


def valid_settings(value: bytes) -> bool:
    """An HTTP2-Settings value: base64url (no padding needed) of whole 6-byte settings
    (RFC 7540 §3.2.1); empty is allowed."""
    if value.translate(None, _BASE64URL):
        return False
    try:
        raw = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return False
    return len(raw) % 6 == 0
