"""The business-JSON HTTP adapter: one lean Starlette app, mounted in the Bento and served by
every worker's data plane."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access import API_KEY_HEADER, bearer_token, check_secret, is_prediction
from gateway.codecs import BusinessJson, parse_json
from gateway.core import GatewayCore
from gateway.dataplane import Refuse
from gateway.errors import (
    AnswerTimeout,
    Disabled,
    GatewayError,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.oip.rest import SUMMARIES as OIP_SUMMARIES
from gateway.oip.rest import routes as oip_routes
from gateway.oip.service import Oip
from gateway.settings import GatewaySettings
from gateway.worker import Worker

LINEAGE_HEADERS = {
    "model_name": "x-model-name",
    "model_version": "x-model-version",
    "run_id": "x-run-id",
}
Endpoint = Callable[[Request], Awaitable[Response]]


def refuse_declared(declared: str | None, limit: int) -> None:
    """Refuse with 413 a request whose ``Content-Length`` (``declared``) exceeds ``limit``."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    refuse_declared(request.headers.get("content-length"), limit)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    except ClientDisconnect as exc:  # the client left, or the data plane's deadline closed it
        raise RequestTimeout("the connection closed before the request body arrived") from exc
    return bytes(body)


async def json_body(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"content-type must be application/json, got {content_type or 'none'!r}"
        )
    return parse_json(await read_body(request, limit))


class DeclaredBodyLimit:
    """ASGI middleware for BentoML's port, which has no body limit of its own: a request that
    declares a body over ``limit`` bytes (default ``GATEWAY_MAX_BODY_BYTES``) gets 413 before
    anything reads it. The data plane's routes also count what they read (:func:`read_body`)."""

    def __init__(self, app: ASGIApp, limit: int | None = None) -> None:
        self.app = app
        self.limit = limit or GatewaySettings().max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length")
            try:
                refuse_declared(declared.decode("latin-1") if declared else None, self.limit)
            except PayloadTooLarge as refusal:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ShedWhenFull:
    """ASGI middleware for the data plane: while the serving queue is full, a prediction gets
    503 + Retry-After before anything routes, reads or parses it. Under a flood, refusals are
    most of the work, and the cheaper they are the more of the event loop is left to the
    requests that were let in."""

    def __init__(self, app: ASGIApp, get_core: Callable[[], GatewayCore]) -> None:
        self.app = app
        self.get_core = get_core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_prediction(scope["method"], scope["path"]):
            core = self.get_core()
            try:
                core.shed_if_full()
            except Overloaded as exc:
                await error_response(exc)(scope, receive, send)
                _count_shed(core, _route_of(scope["path"]))
                return
        await self.app(scope, receive, send)


def shed_before_app(get_core: Callable[[], GatewayCore]) -> Refuse:
    """:class:`ShedWhenFull` for the data plane's HTTP protocol, before any request cycle: a
    prediction that arrives while the serving queue is full gets :func:`error_response`'s 503,
    as bytes written straight to the connection, and is counted as ShedWhenFull counts it."""

    def refuse(method: bytes, target: bytes) -> bytes | None:
        core = get_core()
        if not core.served.batcher.full or method != b"POST":
            return None
        path = target.split(b"?", 1)[0].decode("latin-1")
        if not is_prediction("POST", path):
            return None
        response = error_response(core.overload())
        _count_shed(core, _route_of(path))
        head = [b"HTTP/1.1 503 Service Unavailable"]
        head += [name + b": " + value for name, value in response.raw_headers]
        return b"\r\n".join(head) + b"\r\n\r\n" + bytes(response.body)

    return refuse


def _count_shed(core: GatewayCore, route: str) -> None:
    """A prediction shed before the app, counted as shed and as a 503 of its route."""
    core.metrics.safely(lambda: core.metrics.shed.labels(route).inc())
    core.metrics.safely(lambda: core.metrics.served(route, 503, 0.0))


def _route_of(path: str) -> str:
    """The route template of a prediction path (a model's name in a path is the client's)."""
    if path.startswith("/v2/models/"):
        versioned = "/versions/" in path
        return f"/v2/models/{{name}}{'/versions/{version}' if versioned else ''}/infer"
    return path


def lineage_headers(answer: Mapping[str, Any]) -> dict[str, str]:
    return {header: str(answer[key]) for key, header in LINEAGE_HEADERS.items()}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a refusal may quote what the client sent,
    lone surrogates included, which UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_response(exc: GatewayError) -> JSONResponse:
    """The one mapping of a refusal to HTTP (the hierarchy is drawn in :mod:`gateway.errors`):
    its status, its JSON body, and ``Retry-After`` or ``WWW-Authenticate`` where they apply."""
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(int(exc.retry_after))
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    return AsciiJSONResponse(exc.to_json(), status_code=exc.status_code, headers=headers)


def bearer(request: Request, token: str | None, what: str, *, open_without: bool = False) -> None:
    """Refuse ``request`` unless it carries ``token`` as its bearer token: 401 without one, 403
    with another. Without a configured token the route is off (404), or open when
    ``open_without``."""
    if not token:
        if open_without:
            return
        raise Disabled(f"{what} is disabled (no token set)")
    given = bearer_token(request.headers.get("authorization"))
    check_secret(given, token, f"a bearer token for {what}")


class PredictionKey:
    """ASGI middleware: with ``GATEWAY_API_KEY`` set, a prediction request (:func:`is_prediction`)
    must carry it in the ``x-api-key`` header (401 without, 403 with another key)."""

    def __init__(self, app: ASGIApp, key: str | None = None) -> None:
        self.app = app
        self.key = key if key is not None else GatewaySettings().api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key and scope["type"] == "http" and is_prediction(scope["method"], scope["path"]):
            sent = dict(scope["headers"]).get(API_KEY_HEADER.encode())
            try:
                check_secret(
                    sent.decode("latin-1") if sent else None,
                    self.key,
                    f"an API key (the {API_KEY_HEADER} header)",
                )
            except GatewayError as refusal:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(get_core: Callable[[], GatewayCore]) -> Starlette:
    """Routes over the core returned by ``get_core``; the worker around it
    (:class:`gateway.worker.Worker`) runs while the app lives."""

    def counted(name: str, endpoint: Endpoint) -> Endpoint:
        async def wrapper(request: Request) -> Response:
            core = get_core()
            started = time.perf_counter()
            try:
                async with asyncio.timeout(core.settings.request_timeout_s):
                    response = await endpoint(request)
            except TimeoutError:
                response = error_response(
                    AnswerTimeout(f"no answer within {core.settings.request_timeout_s:g}s")
                )
            except GatewayError as exc:
                response = error_response(exc)
                if isinstance(exc, Overloaded):
                    core.metrics.safely(lambda: core.metrics.shed.labels(name).inc())
            except Exception:  # answered 500 by the app; counted here like every other answer
                elapsed = time.perf_counter() - started
                core.metrics.safely(lambda: core.metrics.served(name, 500, elapsed))
                raise
            elapsed = time.perf_counter() - started
            core.metrics.safely(lambda: core.metrics.served(name, response.status_code, elapsed))
            return response

        return wrapper

    def predicting(bulk: bool) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            core = get_core()
            core.shed_if_full()
            payload = await json_body(request, core.settings.max_body_bytes)
            codec = BusinessJson(bulk, core.settings.max_bulk)
            answer = await core.answer(codec, payload)
            headers = lineage_headers(answer)
            if "request_id" in answer:
                headers["x-request-id"] = answer["request_id"]
            return JSONResponse(answer, headers=headers)

        return endpoint

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        core = get_core()
        ok = core.ready
        return JSONResponse({"ready": ok, **core.served.lineage}, status_code=200 if ok else 503)

    async def model(request: Request) -> Response:
        core = get_core()
        device = {"type": str(core.served.model.predictor.device), **core.device.describe()}
        info = {**core.served.model.info(), "device": device}
        return JSONResponse(info, headers=lineage_headers(core.served.lineage))

    async def metrics(request: Request) -> Response:
        body, content_type = get_core().metrics.exposition()
        return Response(body, media_type=content_type)

    async def reload(request: Request) -> Response:
        core = get_core()
        bearer(request, core.settings.reload_token, "reload (GATEWAY_RELOAD_TOKEN)")
        result = await core.swap()
        return JSONResponse(result, status_code=200 if "error" not in result else 409)

    async def feedback(request: Request) -> Response:
        core = get_core()
        bearer(request, core.settings.feedback_token, "feedback", open_without=True)
        payload = await json_body(request, core.settings.max_body_bytes)
        return JSONResponse(await asyncio.to_thread(core.feedback, payload))

    predict_routes = {
        ("/predict", "POST"): predicting(bulk=False),
        ("/predict/bulk", "POST"): predicting(bulk=True),
    }
    routes = {
        **predict_routes,
        ("/live", "GET"): live,
        ("/ready", "GET"): ready,
        ("/model", "GET"): model,
        ("/metrics", "GET"): metrics,
        ("/admin/reload", "POST"): reload,
        ("/feedback", "POST"): feedback,
        **oip_routes(Oip(get_core), read_body, lineage_headers),
    }
    handlers = {key: counted(key[0], endpoint) for key, endpoint in routes.items()}
    docs: dict[str, dict[str, Any]] = {path: _path_parameters(path) for path, _ in routes}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        core = get_core()
        lean = Starlette(routes=[Route(p, h, methods=[m]) for (p, m), h in handlers.items()])
        guarded = ShedWhenFull(PredictionKey(lean, core.settings.api_key), get_core)
        worker = Worker(core, guarded, shed_before_app(get_core))
        try:
            await worker.start()
            shed_by = tuple(path for path, _ in predict_routes)  # the routes that can shed
            core.metrics.safely(lambda: core.metrics.declare(core.served.model.name, shed_by))
            yield
        finally:
            await worker.stop()

    # Mounted in the Bento: a FastAPI app, because BentoML's OpenAPI document includes the
    # routes of mounted FastAPI apps. On BentoML's port the predict routes are answered by the
    # service's typed ``@bentoml.api`` methods (bentos/service.py), which BentoML documents.
    documented = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    for (path, method), handler in handlers.items():
        documented.add_api_route(
            path,
            handler,
            methods=[method],
            openapi_extra=docs[path],
            tags=["gateway"],
            summary=SUMMARIES[path],
            include_in_schema=(path, method) not in predict_routes,
        )
    return documented


SUMMARIES = {
    "/predict": "Answer one business object",
    "/predict/bulk": "Answer a list of business objects",
    "/live": "Liveness",
    "/ready": "Readiness: model loaded, verified and warmed up",
    "/model": "The served model: name, version, run id, schemas",
    "/metrics": "Prometheus metrics of all workers",
    "/admin/reload": "Read the registry alias now and swap if it moved (bearer token)",
    "/feedback": "Ground truth for past answers, by request_id",
    **OIP_SUMMARIES,
}


def _path_parameters(path: str) -> dict[str, Any]:
    names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
    if not names:
        return {}
    return {
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in names
        ]
    }


ERROR_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what was refused, and why"},
        "details": {
            "type": "array",
            "items": {"type": "object"},
            "description": "one entry per field or tensor at fault (the gateway's refusals)",
        },
        "detail": {
            "type": "array",
            "items": {"type": "object"},
            "description": "one entry per field at fault (BentoML's validation on its port)",
        },
    },
}
"""The body of every refusal: the gateway's (``error``, ``details``) and, for an object that
BentoML's typed API refused before the gateway saw it, BentoML's (``error``, ``detail``)."""

_PREDICTING = (400, 401, 403, 408, 413, 415, 422, 503)
_OIP_INFER = (400, 401, 403, 404, 408, 413, 415, 501, 503)
_OIP_MODEL = (400, 404, 501)


def refusal_codes(path: str, method: str) -> tuple[int, ...]:
    """The statuses besides 200 the gateway may answer on ``path`` (every route: 504, when no
    answer is ready within ``GATEWAY_REQUEST_TIMEOUT_S``)."""
    if path in ("/predict", "/predict/bulk"):
        codes: tuple[int, ...] = _PREDICTING
    elif path == "/feedback":
        codes = (*_PREDICTING, 404)
    elif path == "/admin/reload":
        codes = (401, 403, 404, 409)
    elif path in ("/ready", "/v2/health/ready"):
        codes = (400, 503)
    elif path.startswith("/v2/models/"):
        codes = _OIP_INFER if path.endswith("/infer") else _OIP_MODEL
    else:
        codes = ()
    return (*codes, 504) if method.lower() == "post" or codes else (504,)


def complete_document(document: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document with the refusals of the gateway's routes, which BentoML
    does not know: each status the route may answer (:func:`refusal_codes`), with its body
    (:data:`ERROR_BODY`), in place of BentoML's generic 400/404/500 on the typed API."""
    gateway_paths = {*SUMMARIES, "/predict", "/predict/bulk"}
    for path, item in document.get("paths", {}).items():
        if path not in gateway_paths:
            continue
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = {k: v for k, v in operation["responses"].items() if str(k) == "200"}
            for code in refusal_codes(path, method):
                responses[str(code)] = {
                    "description": HTTPStatus(code).phrase,
                    "content": {"application/json": {"schema": ERROR_BODY}},
                }
            operation["responses"] = responses
    return document
