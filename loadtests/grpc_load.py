"""A closed-loop gRPC load generator for ``ModelInfer``, the counterpart of wrk for HTTP.

``concurrency`` calls are in flight at all times (spread over a few HTTP/2 channels), each
sending the same pre-serialized request as raw bytes, so the client spends its time on the
transport, not on protobuf. Prints one JSON line: ok calls per second, p50 and p99 in ms, errors.

    python -m loadtests.grpc_load 127.0.0.1:3002 --seconds 20 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import grpc

from gateway.oip import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
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


async def run(target: str, seconds: float, concurrency: int, channels: int) -> dict[str, Any]:
    body = loans_request()
    opened = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [
        ch.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for ch in opened
    ]
    await calls[0](body, timeout=30)  # the answer must be good before the clock starts
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(call: Any) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < deadline:
            try:
                await call(body, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(loop(calls[i % channels]) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    for ch in opened:
        await ch.close()
    latencies.sort()

    def quantile(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0
        )

    return {
        "ok_per_s": len(latencies) / elapsed,
        "ok": len(latencies),
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "errors": errors,
        "seconds": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="host:port of the gRPC server")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=4)
    args = parser.parse_args()
    result = asyncio.run(run(args.target, args.seconds, args.concurrency, args.channels))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
