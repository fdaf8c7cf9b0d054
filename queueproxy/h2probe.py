"""One-shot HTTP/2 cleartext requests for readiness probes: gRPC health checks and h2c GETs.

Knative's prober (`pkg/queue/health/probe.go`) dials the user container with h2c prior
knowledge for two kinds of probe, and so does this module:

- `grpc_probe`: `grpc.health.v1.Health/Check` with the probe's `service`, as kubelet's gRPC
  probe does (insecure, `User-Agent: kube-probe//`); ready only on `SERVING`. Everything else is
  not ready, each with its reason: NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, a grpc-status other
  than 0 (NOT_FOUND is what grpc-health answers for a service it does not know), a malformed
  reply, a reset, a closed or refused connection.
- `h2c_get`: the HTTP probe's GET over h2c, for `ENABLE_HTTP2_AUTO_DETECTION=true`.

The `h2` library (sans-IO HTTP/2) does the framing; it is imported on the first such probe, so a
sidecar whose probes are TCP or HTTP/1.1 never loads it. The gRPC messages are encoded by hand
in queueproxy/grpcwire.py, not with grpcio: see there why.

Bounded: the caller's timeout covers the whole exchange, and a connection that sends more than
`MAX_RECEIVED` bytes in all (frames, headers, body) fails the probe, so no app can make a probe
hold more than that, whatever it sends (CONTINUATION floods, endless DATA, huge headers).
Knative's prober sets SO_LINGER{1,1} on its gRPC probe socket; we don't: a lingering close can
block the event loop on Linux, and by the time we close, the exchange is over.
"""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from queueproxy import grpcwire

PROBE_USER_AGENT = "kube-probe//"  # kubelet's, version fields empty, as Knative sends it
MAX_BODY = 64 * 1024  # an HTTP probe reads this much of the body at most, then stops
MAX_GRPC_MESSAGE = 1024  # a HealthCheckResponse is 2 bytes; anything near this is not one
MAX_RECEIVED = 256 * 1024  # every byte the app sends on one probe connection, frames included
MAX_HEADER_LIST = 16 * 1024  # announced in our SETTINGS
_READ_SIZE = 16 * 1024
_FRAME_HEADER = 9
_SETTINGS = 0x4


class H2ProbeError(Exception):
    """The exchange did not produce a usable response; the message says why."""


@dataclass
class H2Response:
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)  # names lower case, no pseudo
    body: bytes = b""
    truncated: bool = False  # the body went past the cap and we stopped reading
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False

    def header(self, name: str) -> str | None:
        """The last value of `name` in the headers."""
        return _last(self.headers, name)


async def h2c_exchange(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    authority: str | None = None,
    max_body: int = MAX_BODY,
    max_received: int = MAX_RECEIVED,
) -> H2Response:
    """One request on a new h2c (prior knowledge) connection to host:port, closed afterwards.

    Reads the response until the stream ends or the body passes `max_body` (then `truncated`).
    Raises H2ProbeError on a reset stream, GOAWAY or close before the end, an HTTP/2 protocol
    error (an HTTP/1 server answering our preface lands here), or more than `max_received`
    bytes; OSError when the connection fails. No timeout of its own: wrap it in one.
    """
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.exceptions import H2Error
    from h2.settings import SettingCodes, Settings

    reader, writer = await asyncio.open_connection(host, port)
    try:
        # Header bytes as they come (decoded as Latin-1 below): a non-UTF-8 value from the app
        # must fail the probe with a reason, not raise from inside h2.
        connection = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        connection.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_CONCURRENT_STREAMS: 1,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            },
        )
        connection.initiate_connection()
        stream_id = connection.get_next_available_stream_id()
        target = authority or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        request = [
            (":method", method),
            (":scheme", "http"),
            (":authority", target),
            (":path", path),
            *headers,
        ]
        try:
            connection.send_headers(stream_id, request, end_stream=not body)
        except H2Error as error:  # a probe header HTTP/2 forbids (a pseudo-header, say)
            raise H2ProbeError(f"request not valid in HTTP/2: {error}") from None
        if body:  # a probe's body is a few bytes, far inside the initial 64 KiB window
            connection.send_data(stream_id, body, end_stream=True)
        writer.write(connection.data_to_send())
        response = H2Response()
        received = 0
        head = b""
        try:
            while not response.ended and not response.truncated:
                data = await reader.read(_READ_SIZE)
                if not data:
                    raise H2ProbeError("connection closed before the response ended")
                if received < _FRAME_HEADER:
                    head += data[: _FRAME_HEADER - received]
                    if len(head) == _FRAME_HEADER and head[3] != _SETTINGS:
                        # RFC 9113 section 3.4: the server's preface starts with SETTINGS. An
                        # HTTP/1-only app answers our preface with an HTTP/1 error instead: say
                        # so now rather than wait for a "frame" of millions of bytes to fill up.
                        answer = _printable(head.decode("latin-1"))
                        raise H2ProbeError(f"not an HTTP/2 server: it answered {answer!r}")
                received += len(data)
                if received > max_received:
                    raise H2ProbeError(f"the app sent more than {max_received} bytes")
                for event in connection.receive_data(data):
                    _apply(event, stream_id, response, connection, max_body)
                writer.write(connection.data_to_send())
            connection.close_connection()
            writer.write(connection.data_to_send())
        except H2Error as error:
            # h2's text can quote what the app sent (a whole header value): cut it to size.
            raise H2ProbeError(f"HTTP/2 protocol error: {_printable(str(error))}") from None
        return response
    finally:
        writer.close()


def _apply(event: Any, stream_id: int, response: H2Response, connection: Any, limit: int) -> None:
    from h2 import events

    if isinstance(event, events.ConnectionTerminated):
        raise H2ProbeError(f"GOAWAY ({_error_name(event.error_code)}) before the response ended")
    if getattr(event, "stream_id", stream_id) != stream_id:
        return  # nothing else is open; h2 has already refused anything the app tried
    if isinstance(event, events.ResponseReceived):
        for name, value in _text(event.headers):
            if name == ":status":
                if not (len(value) == 3 and value.isdigit()):
                    raise H2ProbeError(f":status {_printable(value)!r} is not a status code")
                response.status = int(value)
            elif not name.startswith(":"):
                response.headers.append((name, value))
    elif isinstance(event, events.DataReceived):
        # Acknowledged as read: the cap, not the window, bounds what we hold.
        connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
        if len(response.body) + len(event.data) > limit:
            response.truncated = True
        else:
            response.body += event.data
    elif isinstance(event, events.TrailersReceived):
        response.trailers.extend(_text(event.headers))
    elif isinstance(event, events.StreamEnded):
        response.ended = True
    elif isinstance(event, events.StreamReset):
        raise H2ProbeError(f"stream reset by the app ({_error_name(event.error_code)})")


def _text(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


def _error_name(code: Any) -> str:
    return getattr(code, "name", str(code))


async def grpc_probe(port: int, service: str, timeout: float, host: str = "127.0.0.1") -> None:
    """`grpc.health.v1.Health/Check` on host:port; returns when SERVING, else raises
    H2ProbeError (or OSError, TimeoutError) saying why not. `timeout` is in seconds and also goes
    to the app as `grpc-timeout`."""
    headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", PROBE_USER_AGENT),
        ("grpc-timeout", grpc_timeout(timeout)),
    ]
    body = grpcwire.frame(grpcwire.encode_health_check_request(service))
    async with asyncio.timeout(timeout):
        response = await h2c_exchange(
            host,
            port,
            "POST",
            grpcwire.HEALTH_CHECK_PATH,
            headers,
            body,
            max_body=grpcwire.PREFIX_LENGTH + MAX_GRPC_MESSAGE,
        )
    check_grpc_response(response)


def grpc_timeout(seconds: float) -> str:
    """The `grpc-timeout` value for `seconds`: at most 8 digits and a unit (gRPC's
    PROTOCOL-HTTP2.md), in milliseconds rounded up, or whole seconds when that is too long."""
    milliseconds = max(math.ceil(seconds * 1000), 1)
    if milliseconds <= _MAX_TIMEOUT_VALUE:
        return f"{milliseconds}m"
    return f"{min(math.ceil(seconds), _MAX_TIMEOUT_VALUE)}S"


_MAX_TIMEOUT_VALUE = 99_999_999


def check_grpc_response(response: H2Response) -> None:
    """Raise H2ProbeError unless `response` is a well-formed Health/Check reply with SERVING.

    The status is read where gRPC's PROTOCOL-HTTP2.md puts it: in the trailers, or, for a
    Trailers-Only reply (no body, no trailers), in the headers. A `grpc-status` in the headers of
    a reply that goes on with a body counts for nothing, as in grpc-go (kubelet's client), which
    fails such a reply with "server closed the stream without sending trailers"."""
    if response.status != 200:
        raise H2ProbeError(f"gRPC health check answered HTTP status {response.status}")
    if response.truncated:
        raise H2ProbeError(f"gRPC health check reply longer than {MAX_GRPC_MESSAGE} bytes")
    trailers_only = not response.trailers and not response.body
    source = response.headers if trailers_only else response.trailers
    grpc_status = _last(source, "grpc-status")
    if grpc_status is None:
        where = "" if trailers_only or response.trailers else " (the stream ended without trailers)"
        raise H2ProbeError(f"gRPC health check reply without grpc-status{where}")
    if grpc_status != "0":
        message = urllib.parse.unquote(_last(source, "grpc-message") or "")
        name = _GRPC_STATUS_BY_TEXT.get(grpc_status)
        raise H2ProbeError(
            f"gRPC health check failed with grpc-status {_printable(grpc_status)}"
            + (f" ({name})" if name else "")
            + (f": {_printable(message)}" if message else "")
        )
    try:
        status = grpcwire.decode_health_check_response(
            grpcwire.unframe(response.body, MAX_GRPC_MESSAGE)
        )
    except grpcwire.WireError as error:
        raise H2ProbeError(f"malformed gRPC health check reply: {error}") from None
    if status != grpcwire.SERVING:
        raise H2ProbeError(f"gRPC health check status {grpcwire.status_name(status)}")


def _last(fields: list[tuple[str, str]], name: str) -> str | None:
    for key, value in reversed(fields):
        if key == name:
            return value
    return None


_GRPC_STATUS_BY_TEXT = {str(code): name for code, name in grpcwire.GRPC_STATUS.items()}


def _printable(text: str, limit: int = 200) -> str:
    # The app's words go into our log: no control characters, and not too many of them.
    cleaned = "".join(char if char.isprintable() else "?" for char in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


async def h2c_get(
    host: str, port: int, path: str, headers: Sequence[tuple[str, str]], timeout: float
) -> int:
    """The status of GET `path` over h2c within `timeout` seconds (the body is read up to
    MAX_BODY, then dropped). `headers` are the probe's own, names as given; a `Host` among
    them becomes the :authority, as HTTP/2 requires (RFC 9113 section 8.3.1)."""
    authority = None
    fields = [("user-agent", PROBE_USER_AGENT)]
    for name, value in headers:
        lowered = name.lower()
        if lowered == "host":
            authority = value
        elif lowered not in _NOT_IN_HTTP2:
            fields.append((lowered, value))
    if not any(name == "accept" for name, _ in fields):
        fields.append(("accept", "*/*"))
    async with asyncio.timeout(timeout):
        response = await h2c_exchange(host, port, "GET", path, fields, authority=authority)
    if response.status is None:
        raise H2ProbeError("no response status")
    return response.status


# Connection-specific fields are malformed in HTTP/2 (RFC 9113 section 8.2.2); User-Agent is
# kubelet's, as on the HTTP/1.1 path.
_NOT_IN_HTTP2 = frozenset(
    {"user-agent", "connection", "keep-alive", "proxy-connection", "transfer-encoding",
     "upgrade", "content-length", "te"}
)  # fmt: skip
