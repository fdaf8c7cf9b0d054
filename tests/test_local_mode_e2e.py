"""Stopping a sidecar and refusing a looping port, end to end with real processes.

Local mode (`queueproxy` with arguments): Ctrl-C drains until a second passes without a request,
a second Ctrl-C exits at once with 130. Pod mode keeps Knative's 30 s quiet period and exits 1 on
a second signal. An upstream port that is one of the sidecar's own ports exits 1 at start.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.harness import (
    ROOT,
    Process,
    free_port,
    knative_env,
    run_to_exit,
    running,
    start_sampleapp,
    start_sidecar,
)


def start_local(upstream_port: int, *extra: str) -> Process:
    """`queueproxy --upstream-port N` in local mode, every port of its own free."""
    port = free_port()
    args = (
        f"--upstream-port={upstream_port}",
        f"--port={port}",
        f"--admin-port={free_port()}",
        f"--metrics-port={free_port()}",
        f"--user-metrics-port={free_port()}",
        *extra,
    )
    # The harness waits on QUEUE_SERVING_PORT; local mode itself reads no Knative variable.
    return start_sidecar({"QUEUE_SERVING_PORT": str(port)}, args)


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def test_ctrl_c_on_an_idle_local_sidecar_stops_within_about_a_second() -> None:
    with running(start_sampleapp()) as app, running(start_local(app.port)) as sidecar:
        assert get(sidecar.url + "/") == (200, b"Hello World!\n")
        started = time.monotonic()
        sidecar.proc.send_signal(signal.SIGINT)
        assert sidecar.proc.wait(10) == 0
        took = time.monotonic() - started
    # The local quiet period is 1 s (Knative's 30 s would fail this by far).
    assert 0.9 <= took < 3.0, took


def test_requests_during_a_local_drain_are_served_and_extend_it() -> None:
    with running(start_sampleapp()) as app, running(start_local(app.port)) as sidecar:
        sidecar.proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        for _ in range(3):  # one request every 0.5 s keeps the 1 s quiet period from ending
            time.sleep(0.5)
            assert get(sidecar.url + "/") == (200, b"Hello World!\n")
        assert sidecar.proc.poll() is None
        assert sidecar.proc.wait(10) == 0
        assert time.monotonic() - started >= 2.4


def test_second_ctrl_c_exits_at_once_cutting_requests_in_flight() -> None:
    with running(start_sampleapp()) as app, running(start_local(app.port)) as sidecar:
        outcome: list[object] = []

        def slow_request() -> None:
            try:
                # Longer than the test needs, short enough that the app is done when stopped.
                outcome.append(get(sidecar.url + "/?sleep=3000", timeout=30))
            except (urllib.error.URLError, ConnectionError, OSError) as error:
                outcome.append(error)

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.3)  # the request is at the app
        sidecar.proc.send_signal(signal.SIGINT)
        time.sleep(1.5)  # past the quiet period: the sidecar now waits for the slow request
        assert sidecar.proc.poll() is None
        started = time.monotonic()
        sidecar.proc.send_signal(signal.SIGINT)
        assert sidecar.proc.wait(5) == 130
        assert time.monotonic() - started < 1.0
        client.join(5)
        assert not client.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Exception), outcome
        assert "second SIGINT: exiting now (status 130)" in sidecar.proc.stderr.read()


def test_pod_mode_keeps_the_quiet_period_and_exits_1_on_a_second_signal() -> None:
    with running(start_sampleapp()) as app:
        env = knative_env(app.port, free_port())
        del env["QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS"]  # Knative's 30 s
        with running(start_sidecar(env)) as sidecar:
            sidecar.proc.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                sidecar.proc.wait(2)  # a local sidecar would be gone by now
            sidecar.proc.send_signal(signal.SIGTERM)
            assert sidecar.proc.wait(5) == 1


@pytest.mark.parametrize(
    "flag", ["--port", "--admin-port", "--metrics-port", "--user-metrics-port"]
)
def test_local_upstream_port_on_a_sidecar_port_exits_1_naming_both(flag: str) -> None:
    port = free_port()
    args = [f"--upstream-port={port}", f"{flag}={port}"]
    others = {"--port", "--admin-port", "--metrics-port", "--user-metrics-port"} - {flag}
    args += [f"{other}={free_port()}" for other in sorted(others)]
    done = subprocess.run(
        [sys.executable, "-m", "queueproxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"queueproxy: configuration error: --upstream-port: {port} ")
    assert f"({flag})" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_pod_user_port_equal_to_the_serving_port_exits_1_before_listening() -> None:
    port = free_port()
    done = run_to_exit(knative_env(port, port))
    assert done.returncode == 1
    assert done.stderr == (
        f"queueproxy: configuration error: USER_PORT: {port} is also the sidecar's serving port "
        "(QUEUE_SERVING_PORT); requests to the app would loop back into the sidecar\n"
    )
    with socket.socket() as probe:  # nothing was left listening
        assert probe.connect_ex(("127.0.0.1", port)) != 0
