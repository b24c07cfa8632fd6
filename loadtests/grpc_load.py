"""gRPC load for ``ModelInfer``: the loan application request, and a run of
``gateway-grpc-load`` (``loadtests/grpcload``, Go, built by ``make bench``) sending it.

``concurrency`` calls are in flight at all times (spread over a few HTTP/2 connections), each
sending the same serialized request, so the client spends its time on the transport. Prints one
JSON line: ok calls per second, p50 and p99 in ms, failed calls by status code.

    python -m loadtests.grpc_load 127.0.0.1:3002 --seconds 20 --concurrency 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.oip import grpc_predict_v2_pb2 as pb

LOANS: dict[str, tuple[str, Any]] = {
    "income": ("FP32", 52000.0),
    "age": ("INT64", 34),
    "loan_amount": ("FP32", 12000.0),
    "term_months": ("INT64", 36),
    "employment_status": ("BYTES", "employed"),
    "purpose": ("BYTES", "car"),
    "credit_history_years": ("FP32", 6.5),
}


def loans_request(fields: dict[str, Any] | None = None) -> bytes:
    """One loan application as a serialized ``ModelInferRequest`` (typed ``contents``)."""
    request = pb.ModelInferRequest(model_name="loans")
    for name, (datatype, value) in (fields or LOANS).items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=[1, 1])
        if datatype == "FP32":
            tensor.contents.fp32_contents.append(value)
        elif datatype == "INT64":
            tensor.contents.int64_contents.append(value)
        else:
            tensor.contents.bytes_contents.append(str(value).encode())
    return request.SerializeToString()


PROGRAM = "gateway-grpc-load"


def program() -> str:
    """``gateway-grpc-load`` beside this interpreter (where ``make bench`` builds it), else on
    ``PATH``."""
    beside = str(Path(sys.executable).parent)
    found = shutil.which(PROGRAM, path=os.pathsep.join([beside, os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError(f"{PROGRAM} is not built: make bench builds it")
    return found


def run(
    target: str,
    seconds: float,
    concurrency: int,
    prefix: list[str] | None = None,
    *,
    rate: float = 0,
    http: str | None = None,
    bodies: bytes | None = None,
    record: Path | None = None,
    connections: int = 4,
) -> dict[str, Any]:
    """One load run of ``loans_request()``, its command line after ``prefix`` where given (the
    bench's ``taskset``, which keeps it on its own core). With ``rate``, an open loop of that
    many calls per second (``concurrency`` unused); with ``http``, posting ``bodies`` (JSON
    documents, one per line) to that URL over at most ``connections`` connections, each answer
    recorded in ``record`` where given."""
    args = [
        program(),
        "-target",
        target,
        "-seconds",
        str(seconds),
        "-connections",
        str(connections),
    ]
    args += ["-concurrency", str(concurrency)] if not rate else ["-rate", str(rate)]
    if http is not None:
        args += ["-http", http]
    if record is not None:
        args += ["-record", str(record)]
    out = subprocess.run(
        [*(prefix or []), *args],
        input=loans_request() if bodies is None else bodies,
        capture_output=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{PROGRAM} failed: {out.stderr.decode(errors='replace').strip()}")
    found: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print(json.dumps(run(args.target, args.seconds, args.concurrency)))


if __name__ == "__main__":
    main()
