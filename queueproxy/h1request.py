"""The request head an HTTP/1.x request is sent to the app with: Knative's header rules.

Sans-IO: `upstream_head` takes a parsed `h1.RequestHead` and returns bytes. It is where the
sidecar decides which of the client's fields the app sees (RFC 9110 §7.6.1 hop-by-hop fields and
those named in `Connection` go; Knative's routing fields go), how the request is framed for the
app (from `h1`'s one framing decision, never the client's fields as sent), and what it adds
(`X-Forwarded-For`, `Forwarded`). HTTP/2 streams apply the same tables in `h2stream`.
"""

from __future__ import annotations

from queueproxy.exchange import (
    FORWARDING_FIELDS,
    IDEMPOTENCY_KEYS,
    NOTED_FIELDS,
    STRIPPED_REQUEST_FIELDS,
    Exchange,
    forwarded_shim,
    note_field,
)
from queueproxy.h1 import CHUNKED, LENGTH, PROTECTED_FIELDS, ProtocolError, RequestHead, valid_host
from queueproxy.http11 import HOP_BY_HOP


def upstream_head(
    exchange: Exchange, request: RequestHead, client_ip: bytes, default_host: bytes
) -> bytes:
    """The head (request line to the empty line) that sends `request` to the app, after
    Knative's header rules (`pkg/http/header.go`, `pkg/queue/forwarded_shim.go`) and Go's
    `httputil.ReverseProxy`.

    `client_ip` (the peer's address) is appended to X-Forwarded-For; `default_host`
    ("host:port" of the app) is the Host when the request named none. On the way it notes on
    `exchange` what the fields say the request is (`exchange.note_field`), whether an
    idempotency key makes it retryable, and the protocols it may upgrade to.

    Raises `ProtocolError` (400) for a K-Original-Host that is not a valid Host value.
    """
    original_host = b""
    first: dict[bytes, bytes] = {}  # FORWARDING_FIELDS by first value, for the shim
    prior_xff: list[bytes] = []  # the X-Forwarded-For lines the app gets, before ours
    client_forwarded: list[bytes] = []
    sent_length = False  # `Content-Length: 0` is kept: some apps want it on a POST
    te_trailers = False
    # Fields named in Connection are hop-by-hop, except those that frame or route the
    # message: those are rendered below from the framing decision, never dropped.
    named = request.connection - PROTECTED_FIELDS if request.connection else None
    kept: list[bytes] = []
    append = kept.append
    for name, value in request.headers:
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"te":
                te_trailers = te_trailers or b"trailers" in value.lower()
            continue
        if lname in STRIPPED_REQUEST_FIELDS:
            if lname == b"k-original-host" and not original_host:
                original_host = value
            elif lname == b"content-length":
                sent_length = True
            continue
        # Noted before the Connection-named fields go: `Connection` cannot hide a probe.
        if lname in NOTED_FIELDS:
            note_field(exchange, lname, value)
        elif lname in FORWARDING_FIELDS:
            # The shim reads these before Go's proxy drops the fields `Connection` names.
            if lname not in first:
                first[lname] = value
            if named is not None and lname in named:
                continue
            if lname == b"x-forwarded-for":
                prior_xff.append(value)
                continue
            line = name + b": " + value + b"\r\n"
            if lname == b"forwarded":
                client_forwarded.append(line)
            append(line)
            continue
        if named is not None and lname in named:
            continue
        if lname in IDEMPOTENCY_KEYS:
            exchange.retryable = True
        append(name + b": " + value + b"\r\n")
    if original_host and not valid_host(original_host):
        # It becomes the Host the app sees: the same syntax as Host (RFC 9110 §7.2).
        raise ProtocolError(400, "Bad Request: invalid K-Original-Host header")
    host = original_host or request.host or default_host
    shim = forwarded_shim(first) if first else None
    # The shim sets Forwarded on the request; Go's proxy then drops it too when `Connection`
    # names it.
    if shim is not None and (named is None or b"forwarded" not in named):
        for line in client_forwarded:  # an empty first value: the shim's replaces them
            kept.remove(line)
        append(b"Forwarded: " + shim + b"\r\n")
    prior_xff.append(client_ip)
    append(b"X-Forwarded-For: " + b", ".join(prior_xff) + b"\r\n")
    if te_trailers:
        append(b"Te: trailers\r\n")
    if request.upgrade:
        # An h2c upgrade not granted by `ClientConnection._upgrade_h2c` is declined, never
        # offered to the app: the request is answered over HTTP/1.1, as RFC 9110 §7.8 allows.
        offered = b", ".join(
            p.strip(b" \t")
            for p in request.upgrade.split(b",")
            if p.strip(b" \t") and p.strip(b" \t").lower() != b"h2c"
        )
        if offered:
            exchange.upgrade = offered
            append(b"Connection: Upgrade\r\nUpgrade: " + offered + b"\r\n")
    framing = request.framing
    if framing == CHUNKED:
        append(b"Transfer-Encoding: chunked\r\n")
    elif framing == LENGTH or sent_length:
        append(b"Content-Length: %d\r\n" % request.length)
    return b"".join(
        (
            exchange.method,
            b" ",
            exchange.target,
            b" HTTP/1.1\r\nHost: ",
            host,
            b"\r\n",
            *kept,
            b"\r\n",
        )
    )
