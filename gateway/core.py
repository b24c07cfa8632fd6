"""The transport-agnostic core: business JSON in, answer with model lineage out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway.errors import BadRequest, InvalidInput
from gateway.loader import LoadedModel


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN and Infinity are refused (Python's json accepts them by default)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


class GatewayCore:
    """Validates business objects against the served pipeline and answers them."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model

    def lineage(self) -> dict[str, str]:
        return {
            "model_name": self.model.name,
            "model_version": self.model.version,
            "run_id": self.model.run_id,
        }

    def validate_one(self, payload: Any) -> Any:
        key = self.model.input_key
        if not isinstance(payload, Mapping):
            raise InvalidInput(
                f"expected a JSON object with the key {key!r}",
                [{"field": "body", "message": f"expected an object, got {type(payload).__name__}"}],
            )
        extra = sorted(set(payload) - {key})
        if key not in payload or extra:
            raise InvalidInput(
                f"expected exactly one key {key!r} holding a {self.model.input_model.__name__}",
                [{"field": k, "message": "unexpected key"} for k in extra]
                or [{"field": key, "message": "field required"}],
            )
        try:
            return self.model.input_model.model_validate(payload[key])
        except ValidationError as exc:
            details = [
                {
                    "field": ".".join(str(p) for p in (key, *err["loc"])),
                    "message": err["msg"],
                    "type": err["type"],
                }
                for err in exc.errors(include_url=False)
            ]
            raise InvalidInput(
                f"invalid {self.model.input_model.__name__}: "
                + "; ".join(f"{d['field']}: {d['message']}" for d in details),
                details,
            ) from exc

    def predict_one(self, payload: Any) -> dict[str, Any]:
        item = self.validate_one(payload)
        (answer,) = self.model.predict_batch([item])
        return {"prediction": answer.model_dump(mode="json"), **self.lineage()}
