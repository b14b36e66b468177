"""Regenerate the committed KServe v2 gRPC Python modules from service/grpc_v2/*.proto.

The generated modules are committed (so serving needs grpcio + protobuf, not grpcio-tools) and
excluded from ruff and mypy; run this after editing the .proto (needs ``pip install grpcio-tools``).
``--check`` exits 1 when the committed descriptor differs from what the .proto compiles to
(the descriptor, not the whole text: other grpcio-tools versions write other boilerplate).

Generate with grpcio-tools 1.75.x: its code runs on protobuf 6.31+ and 7.x and grpcio 1.75.1+,
which ``tritonclient[grpc]`` (protobuf < 7) can share a process environment with.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("service/grpc_v2/grpc_predict_v2.proto")
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def generate(out: Path) -> None:
    from grpc_tools import protoc

    code = protoc.main(
        [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(ROOT / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")


def _descriptor(text: str) -> str:
    """The serialized FileDescriptorProto line of a generated ``_pb2.py``."""
    return next(line for line in text.splitlines() if "AddSerializedFile" in line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            fresh = (Path(tmp) / PROTO.parent / name).read_text()
            committed = ROOT / PROTO.parent / name
            if args.check:
                if name.endswith("_pb2.py") and (
                    not committed.is_file()
                    or _descriptor(committed.read_text()) != _descriptor(fresh)
                ):
                    stale.append(name)
            else:
                committed.write_text(fresh)
    if stale:
        print(f"stale generated modules: {stale}; run scripts/gen_grpc_stubs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
