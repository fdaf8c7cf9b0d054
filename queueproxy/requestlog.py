"""Request logs: one line per request, rendered from a Go template, on stdout
(docs/contract.md#request-logs).

`RequestLogger` builds the template input Knative's `pkg/http/request_log.go` builds (`.Request`,
`.Response`, `.Revision`, `.TraceID`) from plain values the data path already has, renders the
line and hands the bytes to a sink. `LineWriter` is the sink for stdout: it never blocks the
event loop.

Two departures from Knative, both so a bad template is visible rather than silent:
- a template that does not parse (or uses syntax outside our subset, see `gotemplate`) logs the
  fallback line for every request, where Knative logs one error and turns request logs off;
- a template that fails while rendering logs the fallback line, as Knative does.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from queueproxy.gofloat import format_go_float

FALLBACK_LINE = (
    "Invalid request log template: method: {method}, response code: {status}, "
    "latency: {latency}, url: {url}\n"
)

RawHeaders = Sequence[tuple[bytes, bytes]]


def _text(value: str | bytes) -> str:
    # Go strings are bytes: undecodable bytes pass through to the output unchanged.
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def canonical_header_name(name: str) -> str:
    """Go's `textproto.CanonicalMIMEHeaderKey`: `x-b3-traceid` -> `X-B3-Traceid`; names with
    characters outside the HTTP token set are left as they are."""
    if not all(c in _TOKEN_CHARS for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class GoHeader(Mapping[str, list[str]]):
    """`http.Header`: canonical name -> list of values, built on first use. `index` of a missing
    name gives Go's nil slice, which prints as `[]`."""

    zero_value: tuple[str, ...] = ()

    def __init__(self, raw: RawHeaders) -> None:
        self._raw = raw
        self._built: dict[str, list[str]] | None = None

    def _values(self) -> dict[str, list[str]]:
        if self._built is None:
            built: dict[str, list[str]] = {}
            for name, value in self._raw:
                key = canonical_header_name(name.decode("latin-1"))
                if key != "Host":  # Go moves Host out of the header map into Request.Host
                    built.setdefault(key, []).append(_text(value))
            self._built = built
        return self._built

    def __getitem__(self, key: str) -> list[str]:
        return self._values()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())


# The template input. Attribute names are Go's, since templates name them.
class _URL:
    __slots__ = ("_target", "Path", "RawQuery")

    def __init__(self, target: str) -> None:
        self._target = target
        path, _, query = target.partition("?")
        self.Path, self.RawQuery = path, query

    def __str__(self) -> str:
        return self._target


class _Request:
    __slots__ = ("Method", "RequestURI", "URL", "Proto", "Host", "RemoteAddr", "ContentLength",
                 "Header", "UserAgent", "Referer")  # fmt: skip

    def __init__(self, **fields: Any) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


class _Response:
    __slots__ = ("Code", "Size", "Latency")

    def __init__(self, code: int, size: int, latency: float) -> None:
        self.Code, self.Size, self.Latency = code, size, latency


class _Revision:
    __slots__ = ("Name", "Namespace", "Service", "Configuration", "PodName", "PodIP")

    def __init__(self, **fields: str) -> None:
        for name, value in fields.items():
            setattr(self, name, value)


class _Input:
    __slots__ = ("Request", "Response", "Revision", "TraceID")

    def __init__(self, request: _Request, response: _Response, revision: _Revision, trace_id: str):
        self.Request = request
        self.Response = response
        self.Revision = revision
        self.TraceID = trace_id


_WANTED_HEADERS = (b"user-agent", b"referer", b"host", b"traceparent", b"x-b3-traceid")


def _first_values(headers: RawHeaders) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in _WANTED_HEADERS and lowered not in found:
            found[lowered] = _text(value)
    return found


def trace_id(traceparent: str, b3_trace_id: str) -> str:
    """HEAD's `ExtractTraceID`: the 2nd field of `traceparent`, else `X-B3-Traceid`."""
    if traceparent:
        parts = traceparent.split("-", 2)
        if len(parts) >= 2:
            return parts[1]
    return b3_trace_id


class RequestLogger:
    """Renders one line per finished request and passes it to `sink` (e.g. `LineWriter.write`)."""

    def __init__(
        self,
        template: str,
        *,
        sink: Callable[[bytes], None],
        enable_probe_request_log: bool = False,
        revision: str = "",
        namespace: str = "",
        service: str = "",
        configuration: str = "",
        pod_name: str = "",
        pod_ip: str = "",
    ) -> None:
        # An empty template turns request logs off, as in Knative.
        self.enabled = bool(template)
        if not template.endswith("\n"):
            template += "\n"  # one entry per line, as Knative ensures
        self.template_error: str | None = None
        # The template engine loads with the first logger: a pod without request logs (the
        # default) never imports it.
        from queueproxy import gotemplate

        self._render_error = gotemplate.TemplateExecError
        try:
            self._template: gotemplate.Template | None = gotemplate.parse(template)
        except gotemplate.TemplateError as error:
            self._template = None
            self.template_error = str(error)
        self._sink = sink
        self._log_probes = enable_probe_request_log
        self._revision = _Revision(
            Name=revision,
            Namespace=namespace,
            Service=service,
            Configuration=configuration,
            PodName=pod_name,
            PodIP=pod_ip,
        )

    def log(
        self,
        *,
        method: str | bytes,
        target: str | bytes,
        proto: str,
        headers: RawHeaders,
        remote_addr: str,
        content_length: int,
        status: int,
        size: int,
        latency: float,
        probe: bool = False,
    ) -> None:
        """One finished request. `proto` like "HTTP/1.1"; `content_length` -1 when unknown
        (chunked), as Go's; `size` = response body bytes; `latency` in seconds; `probe` marks
        requests that are logged only with `enable_probe_request_log`."""
        if not self.enabled or (probe and not self._log_probes):
            return
        method, target = _text(method), _text(target)
        line = None
        if self._template is not None:
            seen = _first_values(headers)
            request = _Request(
                Method=method,
                RequestURI=target,
                URL=_URL(target),
                Proto=proto,
                Host=seen.get(b"host", ""),
                RemoteAddr=remote_addr,
                ContentLength=content_length,
                Header=GoHeader(headers),
                UserAgent=seen.get(b"user-agent", ""),
                Referer=seen.get(b"referer", ""),
            )
            trace = trace_id(seen.get(b"traceparent", ""), seen.get(b"x-b3-traceid", ""))
            data = _Input(request, _Response(status, size, latency), self._revision, trace)
            try:
                line = self._template.render(data)
            except self._render_error:
                line = None
        if line is None:
            line = FALLBACK_LINE.format(
                method=method, status=status, latency=format_go_float(latency), url=target
            )
        self._sink(line.encode("utf-8", "surrogateescape"))


class LineWriter:
    """Writes lines to a file descriptor from a background thread, never blocking the caller.

    Why a thread and not `loop.add_writer` on a non-blocking fd: O_NONBLOCK is a property of the
    open file description, which stdout shares with everything else in the process (and with
    whatever the container runtime attached). Setting it would make every other write to stdout
    (process logs, a stray print, a library) fail with EAGAIN instead of waiting. A thread keeps
    stdout blocking for everyone and moves the waiting off the event loop. Lines wait in a buffer
    of at most `max_pending_bytes`; when a slow reader lets it fill, new lines are dropped and
    counted in `dropped_lines`, and the proxy carries on.
    """

    def __init__(self, fd: int = 1, max_pending_bytes: int = 4 * 1024 * 1024) -> None:
        self._fd = fd
        self._max_pending_bytes = max_pending_bytes
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0  # queued plus being written, so the bound holds for both
        self._condition = threading.Condition(threading.Lock())
        self._closing = False
        self.dropped_lines = 0
        self.write_errors = 0
        self._thread = threading.Thread(
            target=self._run, name="queueproxy-line-writer", daemon=True
        )
        self._thread.start()

    def write(self, line: bytes) -> None:
        with self._condition:
            if self._closing or self._pending_bytes + len(line) > self._max_pending_bytes:
                self.dropped_lines += 1
                return
            self._pending.append(line)
            self._pending_bytes += len(line)
            self._condition.notify()

    def close(self, timeout: float = 2.0) -> bool:
        """Stop accepting lines and wait up to `timeout` for the queued ones to be written.
        Returns whether everything was written."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if not self._pending:
                    return
                batch = list(self._pending)
                self._pending.clear()
            data = b"".join(batch)
            try:
                self._write_all(data)
            except OSError:
                # stdout gone (EPIPE, EBADF): nothing sensible to report it to; count and go on.
                with self._condition:
                    self.write_errors += 1
                    self.dropped_lines += len(batch)
            with self._condition:
                self._pending_bytes -= len(data)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
