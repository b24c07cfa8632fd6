"""The Open Inference Protocol's operations besides inference, independent of the wire: health,
server and model metadata, Triton's model configuration.

Inference is the core's, through the :class:`~gateway.codecs.Tensors` codec: REST
(:mod:`gateway.oip.rest`) and gRPC (:mod:`gateway.oip.grpc_server`) turn their requests into an
:class:`~gateway.codecs.InferCall` and answer it with ``GatewayCore.answer``, so an object
answered over either protocol is answered exactly as ``POST /predict`` would.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.codecs import served_model, signature_of
from gateway.core import GatewayCore
from gateway.model import LoadedModel
from gateway.oip.tensors import CONFIG_TYPES

SERVER_NAME = "lineage-gateway"
PLATFORM = "lineage-gateway"
EXTENSIONS = ("binary_tensor_data", "model_configuration")


def server_version() -> str:
    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


class Oip:
    """Health, metadata and configuration of the served pipeline."""

    def __init__(self, get_core: Callable[[], GatewayCore]) -> None:
        self.get_core = get_core

    def ready(self) -> bool:
        return self.get_core().ready

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The served model if it is ``name`` (and ``version``, when one is asked for)."""
        return served_model(self.get_core().served.model, name, version)

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
