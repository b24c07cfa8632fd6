"""The Open Inference Protocol over HTTP: ``/v2/...`` routes beside the business-JSON API.

Requests are JSON (tensor ``data`` flat or nested) or use Triton's binary tensor extension: the
JSON header's length in ``Inference-Header-Content-Length``, each input's raw bytes after it,
sized by its ``binary_data_size`` parameter. Outputs come back as JSON unless the request asks
for binary data (``binary_data_output``, or ``binary_data`` on a requested output), as
tritonclient does by default.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.codecs import InferCall, Inference, Tensors, parse_json
from gateway.errors import BadRequest, InvalidTensor, UnsupportedMediaType
from gateway.oip.service import Oip
from gateway.oip.tensors import Tensor, flatten, from_buffer, to_buffer

Endpoint = Callable[[Request], Awaitable[Response]]
BodyReader = Callable[[Request, int], Awaitable[bytes]]
HEADER_LENGTH = "inference-header-content-length"
CONTENT_TYPES = ("", "application/json", "application/octet-stream")

SUMMARIES = {
    "/v2": "OIP v2: server metadata",
    "/v2/health/live": "OIP v2: server liveness",
    "/v2/health/ready": "OIP v2: server readiness",
    "/v2/models/{name}": "OIP v2: model metadata (the tensors of the business objects)",
    "/v2/models/{name}/ready": "OIP v2: model readiness",
    "/v2/models/{name}/config": "OIP v2: model configuration (Triton's subset)",
    "/v2/models/{name}/infer": "OIP v2: inference on named tensors",
}
for _path, _summary in list(SUMMARIES.items()):
    if _path.startswith("/v2/models/{name}"):
        versioned = _path.replace("{name}", "{name}/versions/{version}")
        SUMMARIES[versioned] = _summary + ", of one version"


def routes(
    oip: Oip, read_body: BodyReader, lineage_headers: Callable[[Mapping[str, Any]], dict[str, str]]
) -> dict[tuple[str, str], Endpoint]:
    """The OIP REST routes, keyed like the gateway's own: ``(path, method)``."""

    def names(request: Request) -> tuple[str, str]:
        return request.path_params["name"], request.path_params.get("version", "")

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(oip.server_metadata())

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = oip.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 400)

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(oip.model_metadata(*names(request)))

    async def model_ready(request: Request) -> Response:
        model = oip.model(*names(request))
        ok = oip.ready()
        return JSONResponse({"name": model.name, "ready": ok}, status_code=200 if ok else 400)

    async def model_config(request: Request) -> Response:
        return JSONResponse(oip.model_config(*names(request)))

    async def infer(request: Request) -> Response:
        name, version = names(request)
        oip.model(name, version)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            raise UnsupportedMediaType(
                f"content-type must be application/json (or application/octet-stream with "
                f"{HEADER_LENGTH}), got {content_type!r}"
            )
        core = oip.get_core()
        core.shed_if_full()
        body = await read_body(request, core.settings.max_body_bytes)
        header, binary = _split(body, request.headers.get(HEADER_LENGTH))
        payload = parse_json(header, constants=True)
        if not isinstance(payload, dict):
            raise BadRequest("expected a JSON object with `inputs`")
        tensors = _inputs(payload.get("inputs"), binary)
        wanted, binary_outputs = _outputs(payload)
        request_id = payload.get("id")
        if isinstance(request_id, str):
            _text(request_id, "id")  # echoed in the answer
        codec = Tensors(core.settings.max_bulk)
        inference = await core.answer(codec, InferCall(name, version, tensors, wanted))
        return _response(inference, request_id, binary_outputs, lineage_headers)

    model_routes: dict[str, Endpoint] = {
        "": model_metadata,
        "/ready": model_ready,
        "/config": model_config,
    }
    found: dict[tuple[str, str], Endpoint] = {
        ("/v2", "GET"): server_metadata,
        ("/v2/health/live", "GET"): live,
        ("/v2/health/ready", "GET"): ready,
    }
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        for suffix, endpoint in model_routes.items():
            found[(prefix + suffix, "GET")] = endpoint
        found[(prefix + "/infer", "POST")] = infer
    return found


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise BadRequest(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes (at most the body's "
            f"{len(body)}), got {header_length!r}"
        )
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _text(value: str, where: str) -> str:
    """``value``, refused (naming ``where``) when it cannot be written back as UTF-8: JSON's
    ``\\ud800`` escapes decode to lone surrogates, and an answer or a refusal that repeats
    them could not be encoded."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidTensor(
            where, f"not valid Unicode text: a lone surrogate at position {exc.start}"
        ) from exc
    return value


def _inputs(given: Any, binary: memoryview) -> list[Tensor]:
    if not isinstance(given, list) or not given:
        raise InvalidTensor("inputs", "expected a non-empty list of input tensors")
    tensors, offset = [], 0
    for i, spec in enumerate(given):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidTensor(f"inputs.{i}", "expected an object with name, datatype, shape")
        name = _text(spec["name"], f"inputs.{i}.name")
        datatype, shape = spec.get("datatype"), spec.get("shape")
        if not isinstance(datatype, str):
            raise InvalidTensor(name, "datatype must be a string such as FP32, INT64 or BYTES")
        _text(datatype, f"{name}.datatype")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidTensor(name, "shape must be a list of non-negative integers")
        parameters = spec.get("parameters") or {}
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidTensor(name, "binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidTensor(name, "binary_data_size runs past the end of the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            tensors.append(from_buffer(name, datatype, shape, raw))
        elif "data" in spec:
            tensors.append(Tensor(name, datatype, shape, flatten(name, spec["data"])))
        else:
            raise InvalidTensor(name, "expected data (or binary_data_size with binary data)")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tensors


def _outputs(payload: dict[str, Any]) -> tuple[list[str] | None, set[str] | bool]:
    """The requested outputs (``None``: all) and which of them go back as binary data."""
    parameters = payload.get("parameters") or {}
    binary_all = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return None, binary_all
    if not isinstance(requested, list):
        raise InvalidTensor("outputs", "expected a list of {name} objects")
    wanted, binary = [], set()
    for i, entry in enumerate(requested):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidTensor(f"outputs.{i}", "expected an object with a name")
        wanted.append(_text(entry["name"], f"outputs.{i}.name"))
        params = entry.get("parameters") or {}
        if binary_all or (isinstance(params, dict) and params.get("binary_data") is True):
            binary.add(entry["name"])
    return wanted, binary


def _response(
    inference: Inference,
    request_id: Any,
    binary: set[str] | bool,
    lineage_headers: Callable[[Mapping[str, Any]], dict[str, str]],
) -> Response:
    model = inference.answered.model
    outputs, chunks = [], []
    for spec, column in zip(inference.outputs, inference.columns, strict=True):
        entry: dict[str, Any] = {
            "name": spec.name,
            "datatype": spec.datatype,
            "shape": [inference.count, 1],
        }
        if binary is True or (isinstance(binary, set) and spec.name in binary):
            data = to_buffer(spec.datatype, column)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = column
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    body["parameters"] = inference.parameters()
    body["outputs"] = outputs
    headers = lineage_headers(inference.answered.lineage)
    if not chunks:
        return JSONResponse(body, headers=headers)
    header = json.dumps(body, separators=(",", ":")).encode()
    headers[HEADER_LENGTH] = str(len(header))
    return Response(
        b"".join([header, *chunks]), media_type="application/octet-stream", headers=headers
    )
