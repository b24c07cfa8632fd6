"""Codecs: how each protocol's request becomes validated business objects, and how answers go
back. The core answers every protocol on one path (:meth:`gateway.core.GatewayCore.answer`):
it gives a codec the model serving now, ``decode`` returns that model's input objects (or
raises a :class:`~gateway.errors.GatewayError` naming what is wrong), the core answers them in
its batches, and ``encode`` turns the answers into the protocol's reply.

Side by side:

* :class:`BusinessJson` — ``{"application": {...}}`` (or a list under ``"applications"``) in, a
  business JSON answer out: ``POST /predict`` and ``/predict/bulk`` on every port.
* :class:`Typed` — objects BentoML's typed API has validated already, as the served model's
  input class; the :class:`Answered` itself out.
* :class:`Tensors` — an Open Inference Protocol call (:class:`InferCall`: named tensors, one row
  per object) in, an :class:`Inference` (one column per output) out; the REST and gRPC wires
  wrap it (:mod:`gateway.oip.rest`, :mod:`gateway.oip.grpc_server`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.errors import BadRequest, InvalidInput, NotFound, NotImplementedHere
from gateway.model import LoadedModel
from gateway.oip.tensors import Signature, Tensor, TensorSpec

Request_contra = TypeVar("Request_contra", contravariant=True)
Reply_co = TypeVar("Reply_co", covariant=True)


@dataclass(frozen=True)
class Answered:
    """Objects answered by one model, with their request ids (the keys of ``/feedback``)."""

    model: LoadedModel
    lineage: dict[str, str]
    answers: list[BaseModel]
    request_ids: list[str]


class Codec(Protocol[Request_contra, Reply_co]):
    def decode(self, model: LoadedModel, request: Request_contra) -> list[BaseModel]:
        """``request``'s objects as ``model``'s input class; a refusal raises."""
        ...

    def encode(self, answered: Answered, request: Request_contra) -> Reply_co:
        """The protocol's reply to ``request``, answered as ``answered``."""
        ...


# -- business JSON ----------------------------------------------------------------------------
def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(body: bytes, *, constants: bool = False) -> Any:
    """Strict JSON: NaN and Infinity are refused (Python's json accepts them by default) unless
    ``constants`` (OIP tensors, where NaN marks a missing optional number and a required field
    refuses it by name)."""
    try:
        if constants:
            return json.loads(body)
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class BusinessJson:
    """One object under the pipeline's input key, or (``bulk``) 1 to ``limit`` of them in a
    list under its plural."""

    bulk: bool = False
    limit: int = 1000

    def decode(self, model: LoadedModel, request: Any) -> list[BaseModel]:
        if not self.bulk:
            return [validate_one(model, request)]
        return validate_many(model, request, self.limit)

    def encode(self, answered: Answered, request: Any) -> dict[str, Any]:
        if not self.bulk:
            return {
                "prediction": answered.answers[0].model_dump(mode="json"),
                "request_id": answered.request_ids[0],
                **answered.lineage,
            }
        return {
            "predictions": [a.model_dump(mode="json") for a in answered.answers],
            "request_ids": answered.request_ids,
            **answered.lineage,
        }


@dataclass(frozen=True)
class Typed:
    """Objects validated already (BentoML's typed API), 1 to ``limit`` of them: kept when they
    are of the served model's input class, else validated again (a swap can bring another
    pipeline's class)."""

    limit: int = 1000

    def decode(self, model: LoadedModel, request: Sequence[BaseModel]) -> list[BaseModel]:
        objects = _counted(model, list(request), self.limit)
        cls = model.input_model
        if all(type(o) is cls for o in objects):
            return objects
        if len(objects) == 1:
            return [_validate(model, objects[0].model_dump(), model.input_key)]
        key = bulk_key(model)
        return [_validate(model, o.model_dump(), f"{key}.{i}") for i, o in enumerate(objects)]

    def encode(self, answered: Answered, request: Sequence[BaseModel]) -> Answered:
        return answered


def bulk_key(model: LoadedModel) -> str:
    return f"{model.input_key}s"


def expect_only(payload: Any, key: str, what: str) -> Any:
    if not isinstance(payload, Mapping):
        raise InvalidInput(
            f"expected a JSON object with the key {key!r}",
            [{"field": "body", "message": f"expected an object, got {type(payload).__name__}"}],
        )
    extra = sorted(set(payload) - {key})
    if key not in payload or extra:
        raise InvalidInput(
            f"expected exactly one key {key!r} holding {what}",
            [{"field": k, "message": "unexpected key"} for k in extra]
            or [{"field": key, "message": "field required"}],
        )
    return payload[key]


def _validate(model: LoadedModel, value: Any, where: str) -> BaseModel:
    try:
        return model.input_model.model_validate(value)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(p) for p in (where, *err["loc"])),
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False)
        ]
        raise InvalidInput(
            f"invalid {model.input_model.__name__}: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details,
        ) from exc


def validate_one(model: LoadedModel, payload: Any) -> BaseModel:
    key = model.input_key
    return _validate(model, expect_only(payload, key, f"a {model.input_model.__name__}"), key)


def _counted(model: LoadedModel, values: Any, limit: int) -> list[Any]:
    """``values`` when it is a list of 1 to ``limit`` objects; else the refusal, named by the
    bulk key."""
    if not isinstance(values, list) or not values or len(values) > limit:
        key = bulk_key(model)
        got = f"{len(values)} items" if isinstance(values, list) else type(values).__name__
        raise InvalidInput(
            f"{key} must be a list of 1 to {limit} objects, got {got}",
            [{"field": key, "message": f"expected a list of 1 to {limit} objects, got {got}"}],
        )
    return values


def validate_many(model: LoadedModel, payload: Any, limit: int) -> list[BaseModel]:
    key = bulk_key(model)
    values = expect_only(payload, key, f"a list of {model.input_model.__name__}")
    return [
        _validate(model, value, f"{key}.{i}")
        for i, value in enumerate(_counted(model, values, limit))
    ]


# -- Open Inference Protocol tensors ----------------------------------------------------------
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


def served_model(model: LoadedModel, name: str, version: str = "") -> LoadedModel:
    """``model`` if it is ``name`` (and ``version``, when one is asked for), else NotFound."""
    if name != model.name:
        raise NotFound(f"model {name!r} is not served here; this server serves {model.name!r}")
    if version and version != model.version:
        raise NotFound(
            f"version {version!r} of {name!r} is not served; the served version is "
            f"{model.version!r}"
        )
    return model


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


@dataclass(frozen=True)
class Tensors:
    """An :class:`InferCall` for the served model: one object per row of its input tensors (1
    to ``limit`` rows), its outputs checked before anything is answered."""

    limit: int = 1000

    def decode(self, model: LoadedModel, request: InferCall) -> list[BaseModel]:
        served_model(model, request.name, request.version)
        sig = signature_of(model)
        sig.requested(request.outputs)  # an unknown output is refused now, not after answering
        return sig.validate(model.input_model, sig.objects(request.tensors, self.limit))

    def encode(self, answered: Answered, request: InferCall) -> Inference:
        specs = signature_of(answered.model).requested(request.outputs)
        columns = [Signature.column(s, answered.answers, answered.request_ids) for s in specs]
        return Inference(answered, specs, columns)
