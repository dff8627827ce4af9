"""Regenerate the committed gRPC stubs in snapshotter/proto_gen from the .proto files beside this script.

The stubs are committed so that installing the snapshotter needs no protoc; they are generated with the
grpcio-tools version pinned in pyproject.toml (which is why grpcio and protobuf have matching minimum
versions there). ``--check`` regenerates into a temporary directory and fails if the committed stubs
differ, which the test suite runs.

    python snapshotter/proto/generate.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
OUTPUT = PROTO_ROOT.parent / "proto_gen"
PACKAGE = "snapshotter.proto_gen"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out: Path) -> None:
    """Run protoc on every .proto file into ``out`` and make the imports package-relative."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # protoc writes "from containerd.types import ...": anchor those imports under our package.
    for path in out.rglob("*.py*"):
        text = path.read_text()
        fixed = re.sub(r"^from containerd\.", f"from {PACKAGE}.containerd.", text, flags=re.M)
        if fixed != text:
            path.write_text(fixed)
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()


def differences(expected: Path, actual: Path) -> list[str]:
    names = {p.relative_to(expected) for p in expected.rglob("*") if p.is_file()}
    names |= {p.relative_to(actual) for p in actual.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    return sorted(str(n) for n in names
                  if not (expected / n).is_file() or not (actual / n).is_file()
                  or not filecmp.cmp(expected / n, actual / n, shallow=False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare the committed stubs with fresh ones")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = differences(Path(tmp), OUTPUT)
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for old in OUTPUT.rglob("*"):
            if old.is_file():
                old.unlink()
        for new in Path(tmp).rglob("*"):
            target = OUTPUT / new.relative_to(tmp)
            if new.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(new.read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
