"""Generate the gRPC stubs of ``grpc_predict_v2.proto`` (``make proto``).

The stubs are checked in, so serving needs no code generator; a test regenerates them into a
temporary directory and compares, so they cannot go stale.

The messages are registered in a descriptor pool of their own, not protobuf's default one:
other Open Inference Protocol stubs (tritonclient's, KServe's) declare the same ``inference.*``
names, and the default pool refuses a second definition of a name, so with it the gateway and
such a client could not be imported into one process.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("gateway/oip/grpc_predict_v2.proto")
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")
DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> list[Path]:
    """Write the stubs under ``out`` (mirroring the package path); return their paths."""
    from grpc_tools import protoc  # a build tool: only here

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    messages = out / PROTO.parent / GENERATED[0]
    code = messages.read_text()
    if DEFAULT_POOL not in code:
        raise RuntimeError(f"protoc's {GENERATED[0]} no longer registers its file as expected")
    messages.write_text(code.replace(DEFAULT_POOL, OWN_POOL))
    return [out / PROTO.parent / name for name in GENERATED]


def stale() -> list[str]:
    """The checked-in stubs that differ from freshly generated ones."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        return [
            str(PROTO.parent / path.name)
            for path in fresh
            if not (ROOT / PROTO.parent / path.name).is_file()
            or (ROOT / PROTO.parent / path.name).read_bytes() != path.read_bytes()
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    if parser.parse_args().check:
        if changed := stale():
            raise SystemExit(f"stale gRPC stubs (run `make proto`): {', '.join(changed)}")
        print("gRPC stubs are current")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, ROOT / PROTO.parent / path.name)
            print(f"wrote {PROTO.parent / path.name}")


if __name__ == "__main__":
    main()
