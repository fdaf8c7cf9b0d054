"""Run the sample app and the sidecar together, as the two containers of a local pod.

    make run                       # or: .venv/bin/python scripts/local_pod.py --concurrency 10

Ctrl-C stops both: the sidecar drains first (a short quiet period here; Knative's is 30 s),
then the app finishes its in-flight requests.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def wait_for(port: int, proc: subprocess.Popen, name: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} is not listening on 127.0.0.1:{port} after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8012, help="sidecar port (8012)")
    parser.add_argument("--app-port", type=int, default=8080, help="sample app port (8080)")
    parser.add_argument("--concurrency", type=int, default=10, help="containerConcurrency (10)")
    parser.add_argument("--timeout", type=int, default=300, help="revision timeout seconds")
    parser.add_argument("--target", default=os.environ.get("TARGET", "World"))
    options = parser.parse_args()

    app_env = {
        **os.environ,
        "PORT": str(options.app_port),
        "HOST": "127.0.0.1",
        "TARGET": options.target,
    }
    # Own process groups: Ctrl-C reaches only this script, which stops them in pod order.
    app = subprocess.Popen([sys.executable, "-m", "sampleapp"], env=app_env, start_new_session=True)
    wait_for(options.app_port, app, "sampleapp")
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "queueproxy",
            "--port",
            str(options.port),
            "--upstream-port",
            str(options.app_port),
            "--concurrency",
            str(options.concurrency),
            "--timeout",
            str(options.timeout),
            "--drain-quiet-period",
            "1",
            "--readiness-probe",
            f'{{"httpGet":{{"port":{options.app_port},"path":"/healthz"}}}}',
        ],
        start_new_session=True,
    )
    wait_for(options.port, sidecar, "queueproxy")
    print(
        f"""
local pod running (containerConcurrency={options.concurrency}):
  curl http://127.0.0.1:{options.port}/             # Hello {options.target}! through the sidecar
  curl 'http://127.0.0.1:{options.port}/?sleep=500' # knobs: sleep, prime, bloat, status, bytes
  curl -H 'User-Agent: kube-probe/1.30' -H 'K-Network-Probe: queue' http://127.0.0.1:{options.port}/
  curl http://127.0.0.1:9090/metrics                # the autoscaler's view (text for curl)
  curl http://127.0.0.1:9091/metrics                # user metrics (Prometheus)
Ctrl-C stops both.""",
        flush=True,
    )
    try:
        while app.poll() is None and sidecar.poll() is None:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    # Like the kubelet: the sidecar drains first, then the app gets SIGTERM.
    for proc in (sidecar, app):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    print("local pod stopped", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
