"""Regenerate the Python code for ``protos/`` (the project's own gRPC API) with grpcio-tools.

Run it as ``make protos`` (or ``python -m extproc.dev.protos``). A test regenerates into a
temporary directory and fails when the committed code is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["generate", "main", "proto_files"]

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    # Only the packages the protos define, never a walk of the whole output tree.
    written: list[Path] = []
    for proto in files:
        pkg_dir = out_dir / Path(proto).parent
        stem = Path(proto).stem
        written += [pkg_dir / f"{stem}_pb2.py", pkg_dir / f"{stem}_pb2.pyi", pkg_dir / f"{stem}_pb2_grpc.py"]
        d = pkg_dir
        while d != out_dir:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")
            written.append(init)
            d = d.parent
    return sorted(set(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repo)")
    args = parser.parse_args(argv)
    for p in generate(args.out):
        print(p.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
