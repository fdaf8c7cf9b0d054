"""HTTP/2 limits and flood accounting, sans-IO (docs/http2.md#limits).

The values follow Go's `golang.org/x/net/http2` server as Knative runs it (`http2.Server{}`
defaults, `vendor/knative.dev/pkg/network/h2c.go`) where it has one, and our HTTP/1 limits
otherwise. `FloodGuard` bounds what a peer can make us do per second with frames that cost us
work but no flow-control credit: streams it opens and resets at once (rapid reset,
CVE-2023-44487), and PING and SETTINGS frames (each asks for an answer). CONTINUATION floods
(CVE-2024-27316) are bounded by h2 itself (at most 64 frames of MAX_FRAME_SIZE per header block,
then a connection error) and by MAX_HEADER_LIST_SIZE once decoded. Everything here takes times
as arguments.
"""

from __future__ import annotations

from typing import Final

MAX_CONCURRENT_STREAMS: Final = 250
"""SETTINGS_MAX_CONCURRENT_STREAMS we advertise: Go's `defaultMaxStreams`."""

INITIAL_WINDOW: Final = 65535
"""SETTINGS_INITIAL_WINDOW_SIZE for each stream, both as server and as the app's client (the
RFC 9113 §6.9.2 default). A stream never has more than this much body buffered in the sidecar."""

CONNECTION_WINDOW: Final = 1 << 20
"""Connection-level receive window towards clients: Go's `MaxUploadBufferPerConnection`
default. Bounds the request bodies buffered for one client connection."""

UPSTREAM_CONNECTION_WINDOW: Final = 1 << 30
"""Connection-level receive window towards the app (Go's `transportDefaultConnFlow`). The
connection is shared by the streams of many clients; only the per-stream windows bound memory,
so one slow reader cannot stall the others on the same app connection."""

MAX_HEADER_LIST_SIZE: Final = 64 * 1024
"""SETTINGS_MAX_HEADER_LIST_SIZE: the same 64 KiB our HTTP/1 parser allows for a head."""

MAX_FRAME_SIZE: Final = 16384
"""SETTINGS_MAX_FRAME_SIZE: the RFC 9113 minimum, which every peer must accept."""

MAX_INFORMATIONAL_BYTES: Final = MAX_HEADER_LIST_SIZE
"""Header fields of all the 1xx responses of one stream from the app, together (counted as
HPACK does, 32 bytes per field plus name and value). 1xx responses carry no flow control: an app
sending them without end to a client that does not read would fill the sidecar's memory. Go's
transport has the same rule (its total 1xx header size is capped at its header list limit)."""

MAX_QUEUED_CONTROL_FRAMES: Final = 10000
"""PING and SETTINGS frames an app may send while it does not read our answers (Go's
`maxQueuedControlFrames`); one more and its connection is closed."""

MAX_ENCODER_TABLE: Final = 4096
"""Most bytes our HPACK encoder keeps in its dynamic table per connection, whatever the peer's
SETTINGS_HEADER_TABLE_SIZE allows: Go's `maxEncoderHeaderTableSize` default."""

MAX_CLOSED_STREAMS: Final = 1024
"""Closed streams remembered per connection to tell a late frame from a protocol error (h2
keeps 65536 by default: several MiB per long-lived connection)."""


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `take` spends one if it can."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"token bucket needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


# (rate per second, burst) for each kind of frame that costs work but carries no flow-control
# credit. Generous for real clients: gRPC keepalive PINGs come every few seconds, and a client
# that cancels many calls at once (a fan-out losing its deadline) resets a few hundred streams.
RESET_RATE: Final = (100.0, 500.0)
PING_RATE: Final = (20.0, 100.0)
SETTINGS_RATE: Final = (10.0, 50.0)


class FloodGuard:
    """Per-connection budgets; a `False` answer means: GOAWAY ENHANCE_YOUR_CALM and close."""

    __slots__ = ("resets", "pings", "settings", "tripped")

    def __init__(self, now: float) -> None:
        self.resets = TokenBucket(*RESET_RATE, now)
        self.pings = TokenBucket(*PING_RATE, now)
        self.settings = TokenBucket(*SETTINGS_RATE, now)
        self.tripped = ""  # what ran out, for the log

    def _check(self, bucket: TokenBucket, now: float, name: str) -> bool:
        if bucket.take(now):
            return True
        self.tripped = name
        return False

    def reset(self, now: float) -> bool:
        """A stream ended by a reset before its response did: the client's RST_STREAM, or ours
        for a malformed request (each cost us a header decode and maybe an app request)."""
        return self._check(self.resets, now, "stream resets")

    def ping(self, now: float) -> bool:
        return self._check(self.pings, now, "PING frames")

    def settings_frame(self, now: float) -> bool:
        return self._check(self.settings, now, "SETTINGS frames")
