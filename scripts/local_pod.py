#!/usr/bin/env python3
"""Run the sample app and the sidecar together, as the two containers of a local pod.

    make run                       # or, in the venv: scripts/local_pod.py --concurrency 2
    make run ARGS=--grpc           # the app in gRPC mode, the sidecar on 8013 as for h2c revisions

Ctrl-C stops both: the sidecar drains first (local mode: until 1 s passes without a request;
Knative's pod mode waits 30 s), then the app finishes its in-flight requests. A second Ctrl-C
stops both at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    parser.add_argument(
        "--port", type=int, default=None, help="sidecar port (8012, or 8013 with --grpc)"
    )
    parser.add_argument("--app-port", type=int, default=8080, help="sample app port (8080)")
    parser.add_argument("--concurrency", type=int, default=10, help="containerConcurrency (10)")
    parser.add_argument("--timeout", type=int, default=300, help="revision timeout seconds")
    parser.add_argument("--admin-port", type=int, default=8022)
    parser.add_argument("--metrics-port", type=int, default=9090, help="autoscaler statistics")
    parser.add_argument("--user-metrics-port", type=int, default=9091, help="request metrics")
    parser.add_argument("--target", default=os.environ.get("TARGET", "World"))
    parser.add_argument(
        "--grpc",
        action="store_true",
        help="the app in gRPC mode, probed with grpc.health.v1 as Knative probes a port named h2c",
    )
    options = parser.parse_args()
    if options.port is None:
        # Knative serves a revision whose port is named h2c on 8013 (QUEUE_SERVING_PORT).
        options.port = 8013 if options.grpc else 8012
    _use_the_venv()

    app_env = {
        **os.environ,
        "PORT": str(options.app_port),
        "HOST": "127.0.0.1",
        "TARGET": options.target,
        "SAMPLEAPP_PROTOCOL": "grpc" if options.grpc else "http",
    }
    if options.grpc:
        probe = {"grpc": {"port": options.app_port, "service": ""}}
    else:
        probe = {"httpGet": {"port": options.app_port, "path": "/healthz"}}
    # Own process groups: Ctrl-C reaches only this script, which stops them in pod order.
    children: list[subprocess.Popen] = []
    try:
        app = subprocess.Popen(
            [sys.executable, "-m", "sampleapp"], env=app_env, start_new_session=True
        )
        children.append(app)
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
                "--admin-port",
                str(options.admin_port),
                "--metrics-port",
                str(options.metrics_port),
                "--user-metrics-port",
                str(options.user_metrics_port),
                "--readiness-probe",
                json.dumps(probe),
            ],
            start_new_session=True,
        )
        children.insert(0, sidecar)
        wait_for(options.port, sidecar, "queueproxy")
        port, metrics, user = options.port, options.metrics_port, options.user_metrics_port
        lines = [f"local pod running (containerConcurrency={options.concurrency}):"]
        if options.grpc:
            client = f"{_python()} -m sampleapp.client --address 127.0.0.1:{port}"
            lines += [
                f"  {client} hello    # Hello {options.target}! through the sidecar (h2c)",
                f"  {client} stream --count 3 --interval 500   # also: sleep MS, fail CODE MSG",
                f"  {client} ready 0   # Health answers NOT_SERVING: the sidecar turns unready",
            ]
        else:
            lines += [
                f"  curl http://127.0.0.1:{port}/    # Hello {options.target}! through the sidecar",
                f"  curl 'http://127.0.0.1:{port}/?sleep=500'"
                "   # knobs: sleep, prime, bloat, bytes",
            ]
        lines += [
            "  curl -H 'User-Agent: kube-probe/1.30' -H 'K-Network-Probe: queue' "
            f"http://127.0.0.1:{port}/",
            f"  curl http://127.0.0.1:{metrics}/metrics   # the autoscaler's view",
            f"  curl http://127.0.0.1:{user}/metrics   # request metrics (Prometheus)",
            f"  http://127.0.0.1:{options.admin_port}/live   # the live page, in a browser",
            "Ctrl-C stops both.",
        ]
        print("\n" + "\n".join(lines), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        stop(children)
    print("local pod stopped", flush=True)


def stop(children: list[subprocess.Popen]) -> None:
    """Like the kubelet: the sidecar drains first, then the app gets SIGTERM.

    A second Ctrl-C while they stop kills both at once and exits 130, as a shell would.
    """
    try:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    except KeyboardInterrupt:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
        print("local pod killed", flush=True)
        raise SystemExit(130) from None


def _python() -> str:
    """This interpreter (the one with our packages), as short as the shell can take it."""
    inside = Path(sys.executable).is_relative_to(Path.cwd())
    return os.path.relpath(sys.executable) if inside else sys.executable


def _use_the_venv() -> None:
    """Started by a Python without our packages (no venv active): re-run in make's .venv."""
    if find_spec("queueproxy") and find_spec("uvloop") and find_spec("aiohttp"):
        return
    python = ROOT / ".venv" / "bin" / "python"
    if python.exists() and Path(sys.executable).resolve() != python.resolve():
        os.execv(python, [str(python), *sys.argv])
    raise SystemExit(
        f"queueproxy and sampleapp are not installed for {sys.executable}: run `make run` once "
        "(it sets up .venv), or `pip install .`"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Explicitly: a shell starting us in the background would otherwise leave SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    main()
