"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from grpc_tools import protoc

DOCS_DIR = Path(__file__).parent.parent / "docs"


def compile_stat_proto(out_dir: Path) -> ModuleType:
    """Compile docs/stat.proto with grpc_tools' protoc and import the generated module."""
    status = protoc.main(
        ["protoc", f"-I{DOCS_DIR}", f"--python_out={out_dir}", str(DOCS_DIR / "stat.proto")]
    )
    assert status == 0, "protoc failed on docs/stat.proto"
    spec = importlib.util.spec_from_file_location("stat_pb2", out_dir / "stat_pb2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def stat_pb2(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The generated module of docs/stat.proto, the autoscaler's `Stat` message."""
    return compile_stat_proto(tmp_path_factory.mktemp("stat_proto"))
