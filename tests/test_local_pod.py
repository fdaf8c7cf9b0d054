"""The README's `make run`: the sample app behind the sidecar as a local pod, stopped by Ctrl-C."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from tests.harness import ROOT, free_port


def test_local_pod_serves_through_the_sidecar_and_stops_on_ctrl_c():
    ports = {name: free_port() for name in ("port", "app", "admin", "metrics", "user")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "scripts/local_pod.py",
            f"--port={ports['port']}",
            f"--app-port={ports['app']}",
            f"--admin-port={ports['admin']}",
            f"--metrics-port={ports['metrics']}",
            f"--user-metrics-port={ports['user']}",
            "--concurrency=2",
            "--target=Pod",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    printed: list[str] = []
    try:
        while not printed or printed[-1].strip() != "Ctrl-C stops both.":
            printed.append(lines.get(timeout=30))
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['port']}/", timeout=5) as response:
            assert response.read() == b"Hello Pod!\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics") as response:
            assert b"queue_requests_per_second" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['user']}/metrics") as response:
            assert b"kn_serving" in response.read()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(timeout=5)
        output = "".join(printed) + "".join(lines.queue)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the script stops its two children before it exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert f"curl http://127.0.0.1:{ports['port']}/" in output
    assert f"curl http://127.0.0.1:{ports['metrics']}/metrics" in output
    assert "local pod stopped" in output


def _start(*args: str) -> tuple[subprocess.Popen, queue.Queue[str], list[str]]:
    """scripts/local_pod.py with `args`; returns once it printed its last instruction line."""
    proc = subprocess.Popen(
        [sys.executable, "scripts/local_pod.py", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    printed: list[str] = []
    while not printed or printed[-1].strip() != "Ctrl-C stops both.":
        printed.append(lines.get(timeout=30))
    return proc, lines, printed


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_local_pod_in_grpc_mode_probes_the_app_over_grpc_health() -> None:
    import grpc

    from sampleapp.protos import hello_pb2, hello_pb2_grpc

    ports = {name: free_port() for name in ("port", "app", "admin", "metrics", "user")}
    proc, _, printed = _start(
        "--grpc",
        f"--port={ports['port']}",
        f"--app-port={ports['app']}",
        f"--admin-port={ports['admin']}",
        f"--metrics-port={ports['metrics']}",
        f"--user-metrics-port={ports['user']}",
        "--target=Pod",
    )
    try:
        output = "".join(printed)
        assert f"-m sampleapp.client --address 127.0.0.1:{ports['port']} hello" in output
        with grpc.insecure_channel(f"127.0.0.1:{ports['app']}") as channel:
            greeter = hello_pb2_grpc.GreeterStub(channel)
            assert greeter.SayHello(hello_pb2.HelloRequest(), timeout=5).message == "Hello Pod!"
            switch = hello_pb2_grpc.ReadinessStub(channel)
            probe = urllib.request.Request(
                f"http://127.0.0.1:{ports['port']}/",
                headers={"User-Agent": "kube-probe/1.30", "K-Network-Probe": "queue"},
            )
            with urllib.request.urlopen(probe, timeout=5) as response:
                assert response.read() == b"queue"
            # NOT_SERVING: the check waits (the probe polls, periodSeconds being 0) until the
            # app serves again. A TCP probe would have answered at once.
            switch.Set(hello_pb2.SetReadinessRequest(serving=False), timeout=5)
            answers: queue.Queue[tuple[bytes, float]] = queue.Queue()
            started = time.monotonic()

            def check() -> None:
                with urllib.request.urlopen(probe, timeout=15) as response:
                    answers.put((response.read(), time.monotonic() - started))

            checker = threading.Thread(target=check, daemon=True)
            checker.start()
            time.sleep(0.8)
            assert answers.empty()
            switch.Set(hello_pb2.SetReadinessRequest(serving=True), timeout=5)
            body, waited = answers.get(timeout=10)
            assert body == b"queue"
            assert waited >= 0.8
    finally:
        assert _stop(proc) == 0


def test_local_pod_in_grpc_mode_answers_the_printed_client_command_through_the_sidecar() -> None:
    ports = {name: free_port() for name in ("port", "app", "admin", "metrics", "user")}
    proc, _, printed = _start(
        "--grpc",
        f"--port={ports['port']}",
        f"--app-port={ports['app']}",
        f"--admin-port={ports['admin']}",
        f"--metrics-port={ports['metrics']}",
        f"--user-metrics-port={ports['user']}",
        "--target=Pod",
    )
    try:
        [command] = [
            line.split("#")[0].split()
            for line in printed
            if line.strip().endswith("through the sidecar (h2c)")
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout) == (0, "Hello Pod!\n"), done.stderr
    finally:
        assert _stop(proc) == 0
