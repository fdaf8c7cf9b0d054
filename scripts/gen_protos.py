#!/usr/bin/env python3
"""Regenerate the sample app's committed gRPC stubs from sampleapp/protos/hello.proto.

    .venv/bin/python scripts/gen_protos.py          # grpcio-tools comes with the test extra

The stubs are committed so that installing the app needs no code generator; tests/test_grpc_app.py
checks that running this again gives the same files. `--out DIR` writes them under DIR instead
(the test's way to compare without touching the tree).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "sampleapp/protos/hello.proto"


def generate(out: Path) -> None:
    from grpc_tools import protoc  # the test extra's grpcio-tools; not a runtime dependency

    out.mkdir(parents=True, exist_ok=True)
    # The include root is the repository, so the generated modules import each other as
    # `sampleapp.protos.hello_pb2`, not as a top-level `hello_pb2`.
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with status {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write under (the repo)")
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
