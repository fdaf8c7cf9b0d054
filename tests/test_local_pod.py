"""The README's `make run`: the sample app behind the sidecar as a local pod, stopped by Ctrl-C."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
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
