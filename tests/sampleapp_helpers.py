"""Run the sample app as a real process on 127.0.0.1 and wait for its listening line."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.harness import ROOT, free_port, stop_process

APP_VARIABLES = (
    "TARGET",
    "PORT",
    "HOST",
    "STARTUP_DELAY_SECONDS",
    "READY_AFTER_SECONDS",
    "KEEPALIVE_TIMEOUT_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "SAMPLEAPP_PROTOCOL",
)
# What every pattern body is made of (sampleapp/pattern.py), restated here so the tests
# check the documented contract rather than the code under test.
PATTERN_ALPHABET = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\n"


def expected_pattern(size: int) -> bytes:
    """Byte k is PATTERN_ALPHABET[k % 63]."""
    return (PATTERN_ALPHABET * (size // len(PATTERN_ALPHABET) + 1))[:size]


def app_environment(**env: str) -> dict[str, str]:
    """The test runner's environment without the app's own variables, plus `env`."""
    base = {key: value for key, value in os.environ.items() if key not in APP_VARIABLES}
    return {**base, **env}


def run_app_command(command: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=app_environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class RunningApp:
    proc: subprocess.Popen
    port: int
    listening_line: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit code; an app that ignores the signal fails the test."""
        code = stop_process(self.proc, timeout)
        assert code != -signal.SIGKILL, "the app did not exit on SIGTERM"
        return code


def start_app(timeout: float = 10.0, **env: str) -> RunningApp:
    """`python -m sampleapp` on a free port; returns once it has printed its listening line."""
    port = int(env.pop("PORT", "0")) or free_port()
    proc = run_app_command(
        [sys.executable, "-m", "sampleapp"], PORT=str(port), HOST="127.0.0.1", **env
    )
    line = read_line(proc, timeout)
    if not line.startswith("sampleapp listening on "):
        proc.kill()
        _, stderr = proc.communicate(timeout=5)
        raise RuntimeError(f"sampleapp did not start: {line!r} {stderr}")
    return RunningApp(proc, port, line.rstrip("\n"))


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of the process's stdout, or "" if none came in time or it exited."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                return proc.stdout.readline()
    return ""


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
