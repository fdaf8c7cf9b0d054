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


# Values a SETTINGS frame may carry (RFC 9113 §6.5.2); any other is a connection error, which
# after a 101 would leave the client with a dead connection instead of its answer.
_SETTING_BOUNDS: Final = {
    0x2: (0, 1),  # ENABLE_PUSH
    0x4: (0, 2**31 - 1),  # INITIAL_WINDOW_SIZE
    0x5: (2**14, 2**24 - 1),  # MAX_FRAME_SIZE
    0x8: (0, 1),  # ENABLE_CONNECT_PROTOCOL (RFC 8441 §3)
}


def valid_settings(value: bytes) -> bool:
    """An HTTP2-Settings value: base64url (no padding needed) of whole 6-byte settings, each
    within its RFC 9113 §6.5.2 bounds (RFC 7540 §3.2.1); empty is allowed."""
    if value.translate(None, _BASE64URL):
        return False
    try:
        raw = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except ValueError:
        return False
    if len(raw) % 6:
        return False
    for pos in range(0, len(raw), 6):
        bounds = _SETTING_BOUNDS.get(int.from_bytes(raw[pos : pos + 2], "big"))
        if (
            bounds is not None
            and not bounds[0] <= int.from_bytes(raw[pos + 2 : pos + 6], "big") <= bounds[1]
        ):
            return False
    return True
