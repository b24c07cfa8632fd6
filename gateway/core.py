"""The transport-agnostic core: business JSON in, answer with model lineage out."""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from gateway.batching import Batcher
from gateway.errors import BadRequest, InvalidInput
from gateway.loader import LoadedModel
from gateway.settings import GatewaySettings


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused (Python's json accepts them by default)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


class Served:
    """A loaded model with its own batcher: a request that starts on it finishes on it."""

    def __init__(self, model: LoadedModel, settings: GatewaySettings) -> None:
        self.model = model
        self.lineage = {
            "model_name": model.name,
            "model_version": model.version,
            "run_id": model.run_id,
        }
        self.batcher: Batcher[BaseModel, BaseModel] = Batcher(
            model.predict_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue,
        )


class GatewayCore:
    """Validates business objects against the served pipeline and answers them in batches."""

    def __init__(self, served: Served, settings: GatewaySettings) -> None:
        self.served = served
        self.settings = settings
        self.ready = False

    async def start(self) -> None:
        self.served.batcher.start()
        # What exists now (libraries, the model) lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stall requests for 100+ ms under load.
        gc.collect()
        gc.freeze()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.served.batcher.stop()

    async def predict_one(self, payload: Any) -> dict[str, Any]:
        served = self.served
        item = validate_one(served.model, payload)
        (answer,) = await served.batcher.submit([item])
        return {"prediction": answer.model_dump(mode="json"), **served.lineage}

    async def predict_many(self, payload: Any) -> dict[str, Any]:
        served = self.served
        items = validate_many(served.model, payload, self.settings.max_bulk)
        answers = await served.batcher.submit(items)
        return {"predictions": [a.model_dump(mode="json") for a in answers], **served.lineage}


def bulk_key(model: LoadedModel) -> str:
    return f"{model.input_key}s"


def _expect_only(payload: Any, key: str, what: str) -> Any:
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
    return _validate(model, _expect_only(payload, key, f"a {model.input_model.__name__}"), key)


def validate_many(model: LoadedModel, payload: Any, limit: int) -> list[BaseModel]:
    key = bulk_key(model)
    values = _expect_only(payload, key, f"a list of {model.input_model.__name__}")
    if not isinstance(values, list) or not values or len(values) > limit:
        got = f"{len(values)} items" if isinstance(values, list) else type(values).__name__
        raise InvalidInput(
            f"{key} must be a list of 1 to {limit} objects, got {got}",
            [{"field": key, "message": f"expected a list of 1 to {limit} objects, got {got}"}],
        )
    return [_validate(model, value, f"{key}.{i}") for i, value in enumerate(values)]
