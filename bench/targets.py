"""The processes under test: the sample app, the proxies in front of it, and CPU quotas for them.

Every proxy is started the same way for the side-by-side rounds and for the start-time figure:
`launch(kind, port, setup)`. queueproxy and Knative's Go queue-proxy get the same Knative
environment; the Go binary's admin (8022) and metrics (9090, 9091) ports are fixed, so ours gets
the QUEUEPROXY_*_PORT overrides and both can run at once.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from measure import rss_mib

ROOT = Path(__file__).resolve().parent.parent
GO_FIXED_PORTS = (8022, 9090, 9091)

LABELS = {
    "direct": "direct to the app",
    "queueproxy": "queueproxy",
    "baseline": "queueproxy (baseline)",
    "haproxy": "HAProxy",
    "go": "Knative queue-proxy (Go)",
    "floor": "floor: asyncio + uvloop TCP relay",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def get_status(port: int, path: str = "/") -> int | None:
    """The status of one GET on 127.0.0.1:`port`, None if the connection fails."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def wait_ok(port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> float:
    """Poll GET / until it answers 200; return when it did (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get_status(port) == 200:
            return time.monotonic()
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before answering")
        time.sleep(0.002)
    raise TimeoutError(f"127.0.0.1:{port} did not answer 200 within {timeout:g}s")


@dataclass(frozen=True)
class Setup:
    """What every proxy is started with."""

    app_port: int
    concurrency: int  # CONTAINER_CONCURRENCY, and HAProxy's `maxconn`
    request_metrics: str  # SERVING_REQUEST_METRICS_BACKEND: "prometheus" or ""
    workdir: Path  # configuration files and process logs
    go_binary: str | None
    baseline: Path | None = None  # another checkout of queueproxy, for before/after in one run


def knative_env(setup: Setup, serving_port: int) -> dict[str, str]:
    """The environment Knative's reconciler gives the queue-proxy container (v1.18 names)."""
    app = setup.app_port
    return {
        "SERVING_NAMESPACE": "default",
        "SERVING_SERVICE": "hello",
        "SERVING_CONFIGURATION": "hello",
        "SERVING_REVISION": "hello-00001",
        "SERVING_POD": "hello-00001-deployment-abc-xyz",
        "SERVING_POD_IP": "127.0.0.1",
        "QUEUE_SERVING_PORT": str(serving_port),
        "QUEUE_SERVING_TLS_PORT": str(free_port()),
        "USER_PORT": str(app),
        "CONTAINER_CONCURRENCY": str(setup.concurrency),
        "REVISION_TIMEOUT_SECONDS": "300",
        "SERVING_LOGGING_CONFIG": "",
        "SERVING_LOGGING_LEVEL": "info",
        "SERVING_REQUEST_METRICS_BACKEND": setup.request_metrics,
        "SYSTEM_NAMESPACE": "knative-serving",
        "SERVING_READINESS_PROBE": (
            f'{{"tcpSocket":{{"port":{app},"host":"127.0.0.1"}},"successThreshold":1}}'
        ),
    }


def queueproxy_overrides() -> dict[str, str]:
    return {
        "QUEUEPROXY_BIND_ADDRESS": "127.0.0.1",
        "QUEUEPROXY_ADMIN_PORT": str(free_port()),
        "QUEUEPROXY_METRICS_PORT": str(free_port()),
        "QUEUEPROXY_USER_METRICS_PORT": str(free_port()),
        "QUEUEPROXY_DRAIN_QUIET_PERIOD_SECONDS": "0.5",
    }


HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 60s
frontend main
    bind 127.0.0.1:{port}
    default_backend app
backend app
    http-reuse always
    server app 127.0.0.1:{app_port} maxconn {cc}
"""


def _spawn(
    kind: str, args: list[str], env: dict[str, str], workdir: Path, cwd: Path = ROOT
) -> subprocess.Popen:
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    with open(workdir / f"{kind}.log", "ab") as log:
        return subprocess.Popen(
            args, env={**base, **env}, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


def launch_app(port: int, workdir: Path) -> subprocess.Popen:
    env = {"PORT": str(port), "HOST": "127.0.0.1"}
    return _spawn("sampleapp", [sys.executable, "-m", "sampleapp"], env, workdir)


def launch(kind: str, port: int, setup: Setup) -> subprocess.Popen:
    """Start proxy `kind` ("queueproxy", "baseline", "haproxy", "go" or "floor") serving on
    127.0.0.1:`port`. "baseline" is queueproxy run from `setup.baseline` (its directory comes
    first on sys.path, before this checkout's installed package; the dependencies are this
    environment's). "floor" is bench/floor.py, a bare asyncio + uvloop TCP relay to the app run
    by the same interpreter: the start-time reference."""
    if kind in ("queueproxy", "baseline"):
        env = knative_env(setup, port) | queueproxy_overrides()
        cwd = ROOT if kind == "queueproxy" else setup.baseline
        assert cwd is not None
        return _spawn(kind, [sys.executable, "-m", "queueproxy"], env, setup.workdir, cwd)
    if kind == "floor":
        script = str(ROOT / "bench" / "floor.py")
        args = [sys.executable, script, str(port), str(setup.app_port)]
        return _spawn(kind, args, {}, setup.workdir)
    if kind == "go":
        assert setup.go_binary
        return _spawn(kind, [setup.go_binary], knative_env(setup, port), setup.workdir)
    if kind == "haproxy":
        config = setup.workdir / f"haproxy-{port}.cfg"
        config.write_text(
            HAPROXY_CONFIG.format(port=port, app_port=setup.app_port, cc=setup.concurrency)
        )
        return _spawn(kind, ["haproxy", "-db", "-f", str(config)], {}, setup.workdir)
    raise ValueError(kind)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM and a short wait, then SIGKILL. (The Go binary drains for 30 s on SIGTERM, and
    nothing here needs a graceful exit.)"""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def time_starts(kind: str, setup: Setup, starts: int) -> tuple[list[float], list[float]]:
    """Milliseconds from spawning a fresh `kind` to its first 200 through it; idle RSS (MiB)."""
    times, idle = [], []
    for _ in range(starts):
        port = free_port()
        started = time.monotonic()
        proc = launch(kind, port, setup)
        try:
            times.append((wait_ok(port, proc) - started) * 1000)
            time.sleep(0.5)
            idle.append(rss_mib(proc.pid))
        finally:
            proc.kill()  # the next start may need the same fixed ports (Go)
            proc.wait()
    return times, idle


# --- CPU quotas -------------------------------------------------------------------------------


class QuotaUnavailable(Exception):
    """No cgroup CPU controller this process can write to; the message says why."""


@dataclass(frozen=True)
class _Hierarchy:
    version: int  # 1 or 2
    mountpoint: Path
    root: str  # the path inside the hierarchy that is mounted there


def _cpu_hierarchy() -> _Hierarchy:
    """The cgroup hierarchy with the `cpu` controller: v2 if it has it, else v1."""
    v1 = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _source, options = (tail.split() + ["", ""])[:3]
        root, mountpoint = fields.split()[3:5]
        if fstype == "cgroup2":
            controllers = Path(mountpoint, "cgroup.controllers")
            if controllers.exists() and "cpu" in controllers.read_text().split():
                return _Hierarchy(2, Path(mountpoint), root)
        elif fstype == "cgroup" and "cpu" in options.split(",") and v1 is None:
            v1 = _Hierarchy(1, Path(mountpoint), root)
    if v1 is None:
        raise QuotaUnavailable("no cgroup hierarchy with the cpu controller is mounted")
    return v1


class CpuQuota:
    """A cgroup limited to `millicores` of CPU; processes are moved in for a run and back out."""

    PERIOD_US = 100_000

    def __init__(self, name: str, millicores: int) -> None:
        self.millicores = millicores
        self._hierarchy = hierarchy = _cpu_hierarchy()
        self.path = hierarchy.mountpoint / f"queueproxy-bench-{os.getpid()}-{name}"
        quota_us = self.PERIOD_US * millicores // 1000
        try:
            if hierarchy.version == 2:
                subtree = hierarchy.mountpoint / "cgroup.subtree_control"
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu")
            self.path.mkdir()
            if hierarchy.version == 2:
                (self.path / "cpu.max").write_text(f"{quota_us} {self.PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
        except OSError as error:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            raise QuotaUnavailable(f"cannot set up {self.path}: {error}") from None
        self._home: dict[int, Path] = {}

    @property
    def description(self) -> str:
        if self._hierarchy.version == 2:
            return f"cgroup v2 cpu.max={self.PERIOD_US * self.millicores // 1000} {self.PERIOD_US}"
        quota = self.PERIOD_US * self.millicores // 1000
        return f"cgroup v1 cpu.cfs_quota_us={quota}, cpu.cfs_period_us={self.PERIOD_US}"

    def _current(self, pid: int) -> Path:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if (self._hierarchy.version == 2 and controllers == "") or (
                self._hierarchy.version == 1 and "cpu" in controllers.split(",")
            ):
                inside = os.path.relpath(path, self._hierarchy.root)
                return (self._hierarchy.mountpoint / inside).resolve()
        return self._hierarchy.mountpoint

    def enter(self, pid: int) -> None:
        """Move the whole process (every thread) into the quota."""
        self._home[pid] = self._current(pid)
        (self.path / "cgroup.procs").write_text(str(pid))

    def leave(self, pid: int) -> None:
        (self._home.pop(pid, self._hierarchy.mountpoint) / "cgroup.procs").write_text(str(pid))

    def throttling(self) -> dict[str, int]:
        """cpu.stat: periods, throttled periods and time."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        return {key: int(value) for key, value in stat.items()}

    def remove(self) -> None:
        for pid in list(self._home):
            with contextlib.suppress(OSError):
                self.leave(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()
