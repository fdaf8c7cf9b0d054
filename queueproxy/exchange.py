"""What a request is on its way through the sidecar, whichever protocol brought it: the
`Exchange` (one HTTP/1.x request and its response; HTTP/2's `h2stream.Stream` offers the same
attributes), its states, the hooks the data path reports to, and Knative's request-field rules
that both protocols apply.

`proxy.ClientConnection` (HTTP/1.x) and `h2server.H2ServerConnection` (HTTP/2) drive exchanges;
`breaker`, `health`, `observer` and `DataPath.release_slot` read them and never need to know
which protocol a request came by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from queueproxy.h1 import CHUNKED, IDEMPOTENT_METHODS, LENGTH, NO_BODY, RequestHead

if TYPE_CHECKING:
    from queueproxy.h2stream import Stream
    from queueproxy.proxy import ClientConnection
    from queueproxy.upstream import UpstreamConnection

QUEUE_FULL_BODY = b"pending request queue full\n"

# Request fields the app never gets as sent: Knative's routing fields are dropped (the
# header-pruning proxy of `pkg/http/proxy.go`), `K-Original-Host` becomes the Host, and `Host`
# and `Content-Length` are rendered by us.
STRIPPED_REQUEST_FIELDS = frozenset(
    {
        b"knative-serving-revision",
        b"knative-serving-namespace",
        b"k-original-host",
        b"host",
        b"content-length",
    }
)
# A request carrying one of these may be retried like an idempotent method (IETF
# draft-ietf-httpapi-idempotency-key-header; Go's transport honours both spellings).
IDEMPOTENCY_KEYS = (b"idempotency-key", b"x-idempotency-key")

# Fields read by what decides what a request is (`health`: probes; the route-tag label;
# `proxied`: the activator sent it), noted by `note_field` in the one pass over the request's
# fields that builds the upstream head, rather than each reader scanning the fields again
# (`Exchange.header`), which cost ~1.5k instructions per look-up.
KNATIVE_FIELDS = frozenset(
    {
        b"k-kubelet-probe",
        b"knative-serving-tag",
        b"knative-serving-default-route",
        b"k-proxy-request",
    }
)
# Every field that pass notes; one set test keeps the common field (Accept, Cookie...) from being
# compared with each of them in turn.
NOTED_FIELDS = KNATIVE_FIELDS | {b"user-agent", b"k-network-probe"}

# Exchange states
WAITING, QUEUED, CONNECTING, ACTIVE, TUNNEL, DONE = range(6)


class Observer(Protocol):
    """What the data path reports to statistics, metrics and logs (wired in `server`)."""

    def request_started(self, exchange: Exchange) -> None: ...

    def request_finished(self, exchange: Exchange) -> None: ...

    def probe_answered(self, exchange: Exchange) -> None: ...

    def rejected(self, reason: str, status: int, detail: bytes) -> None:
        """The sidecar answers `status` itself (0: cuts the connection), for `reason`."""
        ...


class LocalResponder(Protocol):
    """Answers health checks and network probes without the app (`health.HealthResponder`)."""

    def answer(self, conn: ClientConnection, exchange: Exchange) -> bool:
        """Answer `exchange` locally and return True, or return False to proxy it."""
        ...


class Exchange:
    """One request and its response."""

    __slots__ = (
        "conn",
        "method",
        "target",
        "version",
        "headers",
        "user_agent",
        "network_probe",
        "knative_fields",
        "proxied",
        "keep_alive",
        "upgrade",
        "retryable",
        "head",
        "body_chunked",
        "body",
        "body_bytes",
        "request_done",
        "replay",
        "upstream",
        "state",
        "has_slot",
        "started_at",
        "status",
        "response_started",
        "response_bytes",
        "response_framing",
        "response_length",
        "request_length",
        "replay_bytes",
        "counted",
        "dispatched_at",
    )

    def __init__(self, conn: ClientConnection, request: RequestHead) -> None:
        self.conn = conn
        self.method = request.method
        self.target = request.target
        self.version = request.version
        self.headers = request.headers
        self.user_agent = b""
        self.network_probe: bytes | None = None
        # First value of each KNATIVE_FIELDS field present (lower-case name), None when none is.
        self.knative_fields: dict[bytes, bytes] | None = None
        self.proxied = False
        self.keep_alive = request.keep_alive
        self.upgrade = b""  # the protocols offered to the app, when it may switch
        self.retryable = request.method in IDEMPOTENT_METHODS
        self.head = b""
        self.body_chunked = request.framing == CHUNKED
        # Request body not yet written upstream (waiting for a slot or a connection).
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.request_done = False
        # Everything written upstream so far, while it is small and no response byte came back.
        self.replay: list[bytes] | None = []
        self.upstream: UpstreamConnection | None = None
        self.state = WAITING
        self.has_slot = False
        self.started_at = 0.0
        self.status = 0
        self.response_started = False
        self.response_bytes = 0
        self.response_framing = NO_BODY  # how the response is framed towards the client
        self.response_length = -1  # the app's Content-Length, when it framed the body so
        self.request_length = request.length if request.framing == LENGTH else -1
        self.replay_bytes = 0
        self.counted = False  # reported to the observer (probes and local answers are not)
        self.dispatched_at = 0.0  # when it left the queue for the app

    def header(self, name: bytes) -> bytes | None:
        """First value of a request header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def note_field(exchange: Exchange | Stream, lname: bytes, value: bytes) -> None:
    """Record a NOTED_FIELDS field (lower-case `lname`) of the request, for HTTP/1 and HTTP/2
    alike. What a request is (probe, health check, proxied) is decided before hop-by-hop removal,
    as Knative's handlers see it, and a repeated field counts by its first value, as Go's
    `Header.Get` reads it."""
    if lname == b"user-agent":
        if not exchange.user_agent:
            exchange.user_agent = value
    elif lname == b"k-network-probe":
        if exchange.network_probe is None:
            exchange.network_probe = value
    else:
        fields = exchange.knative_fields
        if fields is None:
            fields = exchange.knative_fields = {}
        elif lname in fields:
            return
        fields[lname] = value
        if lname == b"k-proxy-request":
            exchange.proxied = value == b"activator"


# What Knative's Forwarded shim reads, each by its first value (Go's `Header.Get`).
FORWARDING_FIELDS = frozenset(
    {b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)


def forwarded_shim(first: dict[bytes, bytes]) -> bytes | None:
    """Knative's Forwarded shim (`pkg/queue/forwarded_shim.go`): the `Forwarded` value that
    replaces the client's, or None to leave the request as it came. `first` maps each
    FORWARDING_FIELDS field the request has (lower-case name) to its first value, as
    `Header.Get` reads it: an empty first value counts as none, so an empty `Forwarded` is
    replaced when X-Forwarded-* fields came, and later lines of a repeated field are not read."""
    if first.get(b"forwarded"):
        return None
    xff = first.get(b"x-forwarded-for", b"")
    xfp = first.get(b"x-forwarded-proto", b"")
    xfh = first.get(b"x-forwarded-host", b"")
    if not (xff or xfp or xfh):
        return None
    return forwarded_value([xff] if xff else [], xfp, xfh)


def forwarded_value(xff: list[bytes], xfp: bytes, xfh: bytes) -> bytes:
    """Knative's Forwarded shim (`pkg/http/forwarded_shim.go`): RFC 7239 `Forwarded` from the
    X-Forwarded-* headers."""
    nodes = [n.strip() for value in xff for n in value.split(b",") if n.strip()] or [b""]
    elements = []
    for index, node in enumerate(nodes):
        pairs = []
        if node:
            pairs.append(b'for="[' + node + b']"' if b":" in node else b"for=" + node)
        if index == 0:
            if xfh:
                pairs.append(b"host=" + xfh)
            if xfp:
                pairs.append(b"proto=" + xfp)
        elements.append(b";".join(pairs))
    return b", ".join(element for element in elements if element)
