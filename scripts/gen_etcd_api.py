"""Generate the Python modules of etcd's v3 API from ``shared/etcd_api/*.proto`` (grpcio-tools).

    .venv/bin/python scripts/gen_etcd_api.py    # when the .proto files changed since the last run

Run by ``scripts/bootstrap.sh`` and by the package build (``setup.py``), never committed: the
generated code must match the protobuf runtime it is imported with, and protoc's output changes
with each grpcio-tools release. The modules (``*_pb2.py`` with their ``.pyi`` for mypy) are
written beside the .proto files, with a stamp of the sources they were made from. Without
grpcio-tools, or when protoc fails, one line says why and the exit status is 1.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "shared" / "etcd_api"
STAMP = API / ".generated"


def sources() -> list[Path]:
    return sorted(API.glob("*.proto"))


def outputs() -> list[Path]:
    return [p.with_name(p.stem + suffix) for p in sources() for suffix in ("_pb2.py", "_pb2.pyi")]


def digest() -> str:
    h = hashlib.sha256()
    for path in sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:32]


def up_to_date() -> bool:
    try:
        stamped = STAMP.read_text().strip()
    except OSError:
        return False
    return stamped == digest() and all(p.is_file() for p in outputs())


def generate() -> None:
    try:
        from grpc_tools import protoc  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError("grpcio-tools is not installed (pip install 'metadns[build]')") from None
    import importlib.resources

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        *(str(p.relative_to(ROOT)) for p in sources()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(p.name for p in sources()))
    missing = [p.name for p in outputs() if not p.is_file()]
    if missing:
        raise RuntimeError("protoc did not write " + ", ".join(missing))
    STAMP.write_text(digest() + "\n")


def main() -> int:
    if up_to_date():
        return 0
    try:
        generate()
    except (RuntimeError, OSError) as exc:
        print(f"gen_etcd_api: etcd's API modules not generated: {exc}", file=sys.stderr)
        return 1
    print(f"gen_etcd_api: generated {len(outputs())} files in {API.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
