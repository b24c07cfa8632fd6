"""``grpc.health.v1.Health`` on both gRPC servers a worker can run (grpc.aio, and the native
front ``gateway-grpc``), asked by grpcio-health-checking's own client, as Kubernetes' gRPC probes
and ``grpc_health_probe`` ask: the server and the inference service are SERVING exactly while the
worker's core is ready, any other service is NOT_FOUND.

Each server runs in a process of its own around a stand-in core whose readiness the test sets
(the gateway's stubs and tritonclient's cannot share the test process); against a real
``bentoml serve`` it is asked in ``tests/integration/test_oip.py``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from tests.helpers import VENV_BIN, free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
INFERENCE = "inference.GRPCInferenceService"

SERVE = """
import asyncio, sys, types
from gateway.oip import grpc_front
from gateway.oip.service import Oip
from gateway.settings import GatewaySettings

core = types.SimpleNamespace(ready=False)  # what the servers read of the core


async def main() -> None:
    settings = GatewaySettings(data_port=0, grpc_port=int(sys.argv[1]), grpc_server=sys.argv[2])
    server = await grpc_front.start_grpc(Oip(lambda: core), settings)
    print(type(server).__name__, flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):  # "ready" / "not ready"
        core.ready = line.strip() == "ready"
        print("ok", flush=True)
    await server.stop()


asyncio.run(main())
"""


@dataclass
class Server:
    """A gRPC server of one kind, in its own process, and a health client to it."""

    commands: IO[str]
    replies: IO[str]
    health: health_pb2_grpc.HealthStub

    def set_ready(self, ready: bool) -> None:
        self.commands.write("ready\n" if ready else "not ready\n")
        self.commands.flush()
        assert self.replies.readline() == "ok\n"

    def check(self, service: str) -> int:
        request = health_pb2.HealthCheckRequest(service=service)
        return int(self.health.Check(request, timeout=10).status)


def serve(kind: str, expected: str) -> Iterator[Server]:
    args = [sys.executable, "-c", SERVE, str(port := free_port()), kind]
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    commands, replies = cast(IO[str], process.stdin), cast(IO[str], process.stdout)
    try:
        assert replies.readline().strip() == expected
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Server(commands, replies, health_pb2_grpc.HealthStub(channel))
    finally:
        commands.close()  # the server stops at the end of its input
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def python() -> Iterator[Server]:
    yield from serve("python", "GrpcServer")


@pytest.fixture(scope="module")
def native() -> Iterator[Server]:
    front = VENV_BIN / "gateway-grpc"
    assert front.exists(), f"{front} is not built: make grpc-front (make test builds it)"
    yield from serve("native", "GrpcFront")


@pytest.mark.parametrize("kind", ["python", "native"])
def test_the_server_and_the_inference_service_serve_exactly_while_the_core_is_ready(
    request: pytest.FixtureRequest, kind: str
) -> None:
    server: Server = request.getfixturevalue(kind)
    server.set_ready(False)
    assert server.check("") == NOT_SERVING
    assert server.check(INFERENCE) == NOT_SERVING
    server.set_ready(True)
    assert server.check("") == SERVING
    assert server.check(INFERENCE) == SERVING


@pytest.mark.parametrize("kind", ["python", "native"])
def test_a_service_not_served_here_is_not_found(request: pytest.FixtureRequest, kind: str) -> None:
    server: Server = request.getfixturevalue(kind)
    server.set_ready(True)
    with pytest.raises(grpc.RpcError) as caught:
        server.check("inference.Other")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'inference.Other'" in caught.value.details()
    assert INFERENCE in caught.value.details()


def test_watch_on_grpc_aio_streams_the_status_and_then_its_changes(python: Server) -> None:
    python.set_ready(False)
    stream = python.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(stream).status == NOT_SERVING
    python.set_ready(True)
    assert next(stream).status == SERVING
    stream.cancel()

    unknown = python.health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=30)
    assert next(unknown).status == SERVICE_UNKNOWN  # the stream stays open, as the spec asks
    unknown.cancel()


def test_watch_on_the_native_front_is_unimplemented(native: Server) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        next(native.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
