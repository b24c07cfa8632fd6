"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, served by every
Bento worker.

:class:`Servicer` answers the protocol's methods; ``ModelInfer`` goes to the core with the
:class:`Protobuf` codec, and :func:`refusal` is the one mapping of a refusal to a gRPC status.
Two servers carry it: by default each worker's native front, ``gateway-grpc``
(:mod:`gateway.oip.grpc_front`), which passes the calls' bytes over a Unix socket; else
(:class:`GrpcServer`) a ``grpc.aio`` server on the worker's event loop. Either binds the gRPC
port with ``SO_REUSEPORT`` like the HTTP data plane, so the workers share one port (the kernel
spreads connections across them) and each feeds its own batcher. A gRPC client keeps one
connection, so one client talks to one worker; open a channel per worker's worth of load to
spread it.

Beside it, ``grpc.health.v1.Health`` (:class:`Health`): what Kubernetes' gRPC probes and
``grpc_health_probe`` call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]
from pydantic import BaseModel

from gateway.access import API_KEY_HEADER, check_secret
from gateway.codecs import Answered, InferCall, Inference, Tensors
from gateway.core import GatewayCore
from gateway.errors import GatewayError, InvalidTensor, Overloaded
from gateway.model import LoadedModel
from gateway.oip import grpc_predict_v2_pb2 as pb
from gateway.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from gateway.oip.service import Oip
from gateway.oip.tensors import Tensor, TensorSpec, from_buffer, to_buffer

log = logging.getLogger(__name__)
SERVICE_NAME = "inference.GRPCInferenceService"
SERVICE = f"/{SERVICE_NAME}/"
REQUESTS = {  # each method's request message
    method.name: getattr(pb, method.input_type.name)
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods
}
INFER = SERVICE + "ModelInfer"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
WATCH_POLL_S = 1.0
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
Reply = TypeVar("Reply")


class Refused(Exception):
    """A call refused with a gRPC status code, its details, and the headers sent before it
    (``retry-after`` when overloaded)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, header: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(details)
        self.code, self.details, self.header = code, details, header


def refusal(
    core: GatewayCore, method: str, exc: GatewayError, count: bool = True
) -> tuple[int, Refused]:
    """The one mapping of a refusal to gRPC (the hierarchy is drawn in :mod:`gateway.errors`):
    the equivalent HTTP status (the metrics' label) and the status code, details and
    ``retry-after`` metadata. A shed call is counted unless ``count`` is false (the native
    front's refusals are counted as it reports them)."""
    if isinstance(exc, Overloaded) and count:
        core.metrics.safely(lambda: core.metrics.shed.labels(SERVICE + method).inc())
    header = () if exc.retry_after is None else (("retry-after", str(int(exc.retry_after))),)
    return exc.status_code, Refused(grpc.StatusCode[exc.grpc_code], exc.message, header)


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, oip: Oip) -> None:
        self.oip = oip

    async def _call(
        self, method: str, context: Any, answer: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """Run ``answer``; map refusals to gRPC status codes and count the call as the HTTP
        routes are counted (the status label is the equivalent HTTP status)."""
        core = self.oip.get_core()
        started = time.perf_counter()
        status = 200
        try:
            return await answer()
        except GatewayError as exc:
            status, refused = refusal(core, method, exc)
            if refused.header:
                await context.send_initial_metadata(refused.header)
            await context.abort(refused.code, refused.details)
        except Exception:
            status = 500
            raise
        finally:
            elapsed = time.perf_counter() - started
            core.metrics.safely(lambda: core.metrics.served(SERVICE + method, status, elapsed))
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def infer_together(self, requests: Sequence[Any]) -> list[bytes | Refused]:
        """ModelInfer for calls that arrived together (the native front reads them in one go):
        one core submission for all their objects (:class:`Protobuf`). Each call gets its
        serialized response or its :class:`Refused`, and is counted on its own."""
        core = self.oip.get_core()
        started = time.perf_counter()
        try:
            replies = await core.answer_together(Protobuf(core.settings.max_bulk), requests)
        except GatewayError as exc:
            replies = [exc] * len(requests)
        except Exception:
            elapsed = time.perf_counter() - started
            count = len(requests)
            core.metrics.safely(functools.partial(core.metrics.served, INFER, 500, elapsed, count))
            raise
        elapsed = time.perf_counter() - started
        outcomes: list[bytes | Refused] = []
        statuses: dict[int, int] = {}  # calls per status, each counted once per group
        for reply in replies:
            status = 200
            if isinstance(reply, GatewayError):
                status, refused = refusal(core, "ModelInfer", reply)
                outcomes.append(refused)
            else:
                outcomes.append(reply)
            statuses[status] = statuses.get(status, 0) + 1
        for status, count in statuses.items():
            served = functools.partial(core.metrics.served, INFER, status, elapsed, count)
            core.metrics.safely(served)
        return outcomes

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.oip.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            self.oip.model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.oip.ready())

        return await self._call("ModelReady", context, answer)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.oip.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            meta = self.oip.model_metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
                outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
            )

        return await self._call("ModelMetadata", context, answer)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def answer() -> Any:
            config = self.oip.model_config(request.name, request.version)
            return pb.ModelConfigResponse(
                config=pb.ModelConfig(
                    name=config["name"],
                    platform=config["platform"],
                    backend=config["backend"],
                    max_batch_size=config["max_batch_size"],
                    input=[pb.ModelInput(**i) for i in config["input"]],
                    output=[pb.ModelOutput(**o) for o in config["output"]],
                )
            )

        return await self._call("ModelConfig", context, answer)

    async def ModelInfer(self, request: Any, context: Any) -> bytes:
        """The serialized response (see :func:`serialized`): :meth:`infer_together` for one
        call. With ``GATEWAY_API_KEY`` set, the call's ``x-api-key`` metadata must carry it
        (the native front checks it there)."""
        key = self.oip.get_core().settings.api_key
        if key:
            sent = dict(context.invocation_metadata() or ()).get(API_KEY_HEADER)
            try:
                check_secret(sent, key, f"an API key (the {API_KEY_HEADER} metadata)")
            except GatewayError as exc:
                _, refused = refusal(self.oip.get_core(), "ModelInfer", exc)
                await context.abort(refused.code, refused.details)
        (outcome,) = await self.infer_together([request])
        if not isinstance(outcome, Refused):
            return outcome
        if outcome.header:
            await context.send_initial_metadata(outcome.header)
        await context.abort(outcome.code, outcome.details)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


class Health:
    """``grpc.health.v1.Health`` for the worker. The server (service ``""``, what a Kubernetes
    probe asks about) and ``inference.GRPCInferenceService`` are SERVING once the worker's core
    is ready, as ``ServerReady`` says, and NOT_SERVING before; any other service is NOT_FOUND,
    as the health protocol asks. Both gRPC servers answer ``Check`` with this class; ``Watch``
    is grpc.aio's only (the native front carries unary calls)."""

    SERVICES = ("", SERVICE_NAME)

    def __init__(self, oip: Oip) -> None:
        self.oip = oip

    def status(self, service: str) -> Any:
        if service not in self.SERVICES:
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if self.oip.ready():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request: Any, context: Any) -> Any:
        status = self.status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            known = " and ".join(repr(s) for s in self.SERVICES)
            details = f"service {request.service!r} is not served here; the services are {known}"
            await context.abort(grpc.StatusCode.NOT_FOUND, details)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        """The status now, then each change, polled (readiness is a flag, not an event); an
        unknown service is SERVICE_UNKNOWN on an open stream, as the protocol asks."""
        sent = None
        while True:
            status = self.status(request.service)
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            await asyncio.sleep(WATCH_POLL_S)


class Protobuf:
    """The :class:`~gateway.codecs.Tensors` codec for ``ModelInferRequest`` messages: their
    tensors in, the serialized ``ModelInferResponse`` out."""

    def __init__(self, limit: int) -> None:
        self.tensors = Tensors(limit)

    def decode(self, model: LoadedModel, request: Any) -> list[BaseModel]:
        return self.tensors.decode(model, _call(request, _inputs(request)))

    def encode(self, answered: Answered, request: Any) -> bytes:
        return _response(self.tensors.encode(answered, _call(request, ())), request.id)


def _call(request: Any, tensors: Sequence[Tensor]) -> InferCall:
    asked = request.outputs
    wanted = [o.name for o in asked] if asked else None
    return InferCall(request.model_name, request.model_version, tensors, wanted)


def _inputs(request: Any) -> list[Tensor]:
    # Slicing a protobuf repeated field copies it into a list in one call (faster than list()).
    raw, inputs = request.raw_input_contents[:], request.inputs[:]
    if raw and len(raw) != len(inputs):
        raise InvalidTensor(
            "raw_input_contents",
            f"{len(raw)} entries for {len(inputs)} inputs; expected one per input",
        )
    tensors = []
    for i, given in enumerate(inputs):
        name, datatype, shape = given.name, given.datatype, given.shape[:]
        if raw:
            tensors.append(from_buffer(name, datatype, shape, raw[i]))
            continue
        field = CONTENTS.get(datatype)
        if field is None:
            raise InvalidTensor(name, f"unsupported datatype {datatype!r}")
        tensors.append(Tensor(name, datatype, shape, getattr(given.contents, field)[:]))
    return tensors


def _response(inference: Inference, request_id: str) -> bytes:
    """The serialized ``ModelInferResponse``. Only its id and the outputs' bytes change from
    answer to answer of one model (with the same outputs and object count): the rest is
    serialized once, by :func:`_response_head`. Protobuf reads two serialized parts of a
    message, concatenated, as the one message."""
    model = inference.answered.model
    head = _response_head(
        model.name,
        model.version,
        tuple(inference.parameters().items()),
        tuple(inference.outputs),
        inference.count,
    )
    rest = pb.ModelInferResponse(
        id=request_id,
        raw_output_contents=[
            to_buffer(spec.datatype, column)
            for spec, column in zip(inference.outputs, inference.columns, strict=True)
        ],
    )
    return head + rest.SerializeToString()


@functools.lru_cache(maxsize=256)
def _response_head(
    name: str,
    version: str,
    parameters: tuple[tuple[str, str], ...],
    outputs: tuple[TensorSpec, ...],
    count: int,
) -> bytes:
    head = pb.ModelInferResponse(model_name=name, model_version=version)
    for key, value in parameters:
        head.parameters[key].string_param = value
    for spec in outputs:
        head.outputs.add(name=spec.name, datatype=spec.datatype, shape=[count, 1])
    return bytes(head.SerializeToString())


def serialized(reply: Any) -> bytes:
    """A servicer's reply as bytes: a message, or the bytes :meth:`Servicer.ModelInfer` gives."""
    return reply if isinstance(reply, bytes) else bytes(reply.SerializeToString())


HEALTH_SERVICE = "grpc.health.v1.Health"


async def _parse(kind: Any, request: bytes, context: Any) -> Any:
    """``request`` as a ``kind`` message; garbled bytes are the client's error (grpc.aio's own
    deserializer would answer UNKNOWN)."""
    try:
        return kind.FromString(request)
    except DecodeError as exc:
        details = f"the request is not a valid {kind.__name__}: {exc}"
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)


def parsed(
    method: Callable[[Any, Any], Awaitable[Any]], kind: Any
) -> Callable[[bytes, Any], Awaitable[Any]]:
    """``method`` taking the raw request, parsed as a ``kind`` message first."""

    async def handler(request: bytes, context: Any) -> Any:
        return await method(await _parse(kind, request, context), context)

    return handler


def parsed_stream(
    method: Callable[[Any, Any], AsyncIterator[Any]], kind: Any
) -> Callable[[bytes, Any], AsyncIterator[Any]]:
    """:func:`parsed` for a method that answers with a stream."""

    async def handler(request: bytes, context: Any) -> AsyncIterator[Any]:
        async for reply in method(await _parse(kind, request, context), context):
            yield reply

    return handler


class GrpcServer:
    """``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on ``host:port`` from
    the running event loop."""

    def __init__(self, oip: Oip, host: str, port: int, max_message_bytes: int) -> None:
        options = [
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.server = grpc.aio.server(options=options)
        servicer, health = Servicer(oip), Health(oip)
        handlers = {
            method: grpc.unary_unary_rpc_method_handler(
                parsed(getattr(servicer, method), kind), response_serializer=serialized
            )
            for method, kind in REQUESTS.items()
        }
        request = health_pb2.HealthCheckRequest
        checks = {
            "Check": grpc.unary_unary_rpc_method_handler(
                parsed(health.Check, request), response_serializer=serialized
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                parsed_stream(health.Watch, request), response_serializer=serialized
            ),
        }
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),
                grpc.method_handlers_generic_handler(HEALTH_SERVICE, checks),
            )
        )
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        if self.server.add_insecure_port(self.address) == 0:
            raise OSError(f"cannot bind the gRPC port {self.address}")
        await self.server.start()
        log.info("gRPC (Open Inference Protocol v2) listening on %s (grpc.aio)", self.address)

    async def stop(self) -> None:
        await self.server.stop(grace=5)
