"""The Open Inference Protocol's operations over the gateway core, independent of the wire.

REST (:mod:`gateway.oip.rest`) and gRPC (:mod:`gateway.oip.grpc_server`) decode their requests
into :class:`~gateway.oip.tensors.Tensor` lists, call :meth:`Oip.infer`, and encode the
:class:`Inference` it returns. Validation, batching, the prediction log and the metrics are the
core's: an object answered over either protocol is answered exactly as ``POST /predict`` would.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel

from gateway.core import Answered, GatewayCore
from gateway.errors import GatewayError, NotFound, NotImplementedHere
from gateway.model import LoadedModel
from gateway.oip.tensors import CONFIG_TYPES, Signature, Tensor, TensorSpec

SERVER_NAME = "lineage-gateway"
PLATFORM = "lineage-gateway"
EXTENSIONS = ("binary_tensor_data", "model_configuration")


def server_version() -> str:
    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=16)
def signature(input_model: type[BaseModel], output_model: type[BaseModel]) -> Signature:
    return Signature.of(input_model, output_model)


def signature_of(model: LoadedModel) -> Signature:
    try:
        return signature(model.input_model, model.output_model)
    except TypeError as exc:  # a field no tensor datatype expresses (a nested object, a list)
        raise NotImplementedHere(
            f"{model.name} has no Open Inference Protocol mapping: {exc}"
        ) from exc


@dataclass(frozen=True)
class InferCall:
    """One inference call in tensor form: ``outputs`` names the outputs wanted (None: all)."""

    name: str
    version: str
    tensors: Sequence[Tensor]
    outputs: Sequence[str] | None


@dataclass(frozen=True)
class Inference:
    """Answers in tensor form: ``columns[i]`` holds the values of ``outputs[i]``."""

    answered: Answered
    outputs: list[TensorSpec]
    columns: list[list[Any]]

    @property
    def count(self) -> int:
        return len(self.answered.answers)

    def parameters(self) -> dict[str, str]:
        return {"run_id": self.answered.model.run_id}


class Oip:
    """Health, metadata, configuration and inference of the served pipeline."""

    def __init__(self, get_core: Callable[[], GatewayCore]) -> None:
        self.get_core = get_core

    def ready(self) -> bool:
        return self.get_core().ready

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The served model if it is ``name`` (and ``version``, when one is asked for)."""
        served = self.get_core().served.model
        if name != served.name:
            raise NotFound(f"model {name!r} is not served here; this server serves {served.name!r}")
        if version and version != served.version:
            raise NotFound(
                f"version {version!r} of {name!r} is not served; the served version is "
                f"{served.version!r}"
            )
        return served

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version(), "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.model(name, version)
        sig = signature_of(model)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in sig.inputs],
            "outputs": [spec.metadata() for spec in sig.outputs],
        }

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        """The subset of Triton's model configuration a client (perf_analyzer) reads."""
        model = self.model(name, version)
        sig = signature_of(model)
        return {
            "name": model.name,
            "platform": PLATFORM,
            "backend": PLATFORM,
            "max_batch_size": self.get_core().settings.max_bulk,
            "input": [
                {
                    "name": spec.name,
                    "data_type": CONFIG_TYPES[spec.datatype],
                    "dims": [1],
                    "optional": spec.optional,
                }
                for spec in sig.inputs
            ],
            "output": [
                {"name": spec.name, "data_type": CONFIG_TYPES[spec.datatype], "dims": [1]}
                for spec in sig.outputs
            ],
        }

    async def infer(
        self,
        name: str,
        version: str,
        tensors: Sequence[Tensor],
        outputs: Sequence[str] | None,
    ) -> Inference:
        (inference,) = await self.infer_together([InferCall(name, version, tensors, outputs)])
        if isinstance(inference, GatewayError):
            raise inference
        return inference

    async def infer_together(self, calls: Sequence[InferCall]) -> list[Inference | GatewayError]:
        """:meth:`infer` for calls that arrived together, answered in one core submission; a
        refusal (unknown model, bad tensors) is that call's answer alone."""
        core = self.get_core()
        limit = core.settings.max_bulk
        refused: dict[int, GatewayError] = {}
        chosen: list[list[TensorSpec]] = []
        validates: list[Callable[[LoadedModel], list[BaseModel]]] = []
        for i, call in enumerate(calls):
            try:
                self.model(call.name, call.version)
            except NotFound as exc:
                refused[i] = exc
                continue
            specs: list[TensorSpec] = []

            def validate(
                model: LoadedModel, call: InferCall = call, specs: list[TensorSpec] = specs
            ) -> list[BaseModel]:
                sig = signature_of(model)
                specs.extend(sig.requested(call.outputs))
                return sig.validate(model.input_model, sig.objects(call.tensors, limit))

            chosen.append(specs)
            validates.append(validate)
        answered = iter(zip(await core.answer_together(validates), chosen, strict=True))
        results: list[Inference | GatewayError] = []
        for i in range(len(calls)):
            if i in refused:
                results.append(refused[i])
                continue
            one, specs = next(answered)
            if isinstance(one, GatewayError):
                results.append(one)
                continue
            columns = [Signature.column(spec, one.answers, one.request_ids) for spec in specs]
            results.append(Inference(one, specs, columns))
        return results
