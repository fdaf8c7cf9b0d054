"""Real processes on 127.0.0.1 for end-to-end tests: the sidecar, the sample app, free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same twice in this process: the kernel may hand a
    just-released port out again, and a sidecar given one port twice refuses to start."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then the exit code; SIGKILL (and -9) if it does not exit within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def knative_env(user_port: int, serving_port: int, **overrides: str) -> dict[str, str]:
    """The environment Knative's reconciler gives the queue-proxy container (§2.1)."""
    env = {
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "hello",
        "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001",
        "QUEUE_SERVING_PORT": str(serving_port),
        "QUEUE_SERVING_TLS_PORT": str(free_port()),
        "CONTAINER_CONCURRENCY": "0",
        "REVISION_TIMEOUT_SECONDS": "300",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS": "0",
        "REVISION_IDLE_TIMEOUT_SECONDS": "0",
        "SERVING_POD": "hello-00001-deployment-abc-xyz",
        "SERVING_POD_IP": "127.0.0.1",
        "SERVING_LOGGING_CONFIG": "",
        "SERVING_LOGGING_LEVEL": "info",
        "USER_PORT": str(user_port),
        "SYSTEM_NAMESPACE": "knative-serving",
        "SERVING_READINESS_PROBE": (
            f'{{"tcpSocket":{{"port":{user_port},"host":"127.0.0.1"}},"successThreshold":1}}'
        ),
        "QUEUEPROXY_BIND_ADDRESS": "127.0.0.1",
        "QUEUEPROXY_ADMIN_PORT": str(free_port()),
        "QUEUEPROXY_METRICS_PORT": str(free_port()),
        "QUEUEPROXY_USER_METRICS_PORT": str(free_port()),
        "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
    }
    env.update(overrides)
    return env


def _base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(extra)
    return env


@dataclass
class Process:
    proc: subprocess.Popen
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port_of(self, name: str) -> int:
        return int(self.env[name])

    def terminate(self, timeout: float = 15.0) -> int:
        return stop_process(self.proc, timeout)

    def output(self) -> str:
        out = self.proc.stdout.read() if self.proc.stdout else ""
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return out + err


def start_sidecar(env: Mapping[str, str], args: tuple[str, ...] = ()) -> Process:
    proc = subprocess.Popen(
        [sys.executable, "-m", "queueproxy", *args],
        env=_base_env(env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = int(env["QUEUE_SERVING_PORT"])
    try:
        wait_for_port(port, proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"sidecar did not start: {proc.communicate(timeout=5)}") from None
    return Process(proc, port, dict(env))


def start_sampleapp(**env: str) -> Process:
    port = int(env.get("PORT") or free_port())
    full = {"PORT": str(port), "HOST": "127.0.0.1", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sampleapp"],
        env=_base_env(full),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, timeout=20 + float(env.get("STARTUP_DELAY_SECONDS", 0)), proc=proc)
    return Process(proc, port, full)


@contextlib.contextmanager
def running(process: Process) -> Iterator[Process]:
    try:
        yield process
    finally:
        process.terminate()
        for stream in (process.proc.stdout, process.proc.stderr):
            if stream is not None:
                stream.close()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def raw_exchange(port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or `timeout` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(payload)
        chunks = []
        sock.settimeout(timeout)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not met within `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def run_to_exit(env: Mapping[str, str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run the sidecar with `env` until it exits by itself (start-up failures)."""
    return subprocess.run(
        [sys.executable, "-m", "queueproxy"],
        env=_base_env(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.asynccontextmanager
async def serve_app(application: web.Application) -> AsyncIterator[int]:
    """Serve an aiohttp app in the test's loop on a free 127.0.0.1 port; yield the port.

    Handlers are cancelled when their client goes away, so tests can see the proxy cut them."""
    runner = web.AppRunner(application, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()
