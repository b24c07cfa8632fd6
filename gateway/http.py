"""The business-JSON HTTP adapter: a lean Starlette app the Bento service mounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.batching import Overloaded
from gateway.core import GatewayCore, parse_json
from gateway.dataplane import DataPlane
from gateway.errors import GatewayError, PayloadTooLarge, UnsupportedMediaType

LINEAGE_HEADERS = {
    "model_name": "x-model-name",
    "model_version": "x-model-version",
    "run_id": "x-run-id",
}


async def _json_body(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"content-type must be application/json, got {content_type or 'none'!r}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return parse_json(bytes(body))


def _lineage_headers(answer: dict[str, Any]) -> dict[str, str]:
    return {header: str(answer[key]) for key, header in LINEAGE_HEADERS.items()}


def _answer(answer: dict[str, Any]) -> JSONResponse:
    return JSONResponse(answer, headers=_lineage_headers(answer))


def create_app(get_core: Callable[[], GatewayCore]) -> Starlette:
    """Routes over the core returned by ``get_core``; its batcher runs while the app lives."""

    def handler(
        call: Callable[[GatewayCore, Any], Awaitable[dict[str, Any]]],
    ) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            core = get_core()
            payload = await _json_body(request, core.settings.max_body_bytes)
            return _answer(await call(core, payload))

        return endpoint

    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return JSONResponse(exc.to_json(), status_code=exc.status_code)

    async def overloaded(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Overloaded)
        return JSONResponse(
            {"error": f"overloaded: {exc}"},
            status_code=503,
            headers={"retry-after": str(max(1, round(exc.retry_after)))},
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        core = get_core()
        await core.start()
        settings = core.settings
        plane = (
            DataPlane(app, settings.data_host, settings.data_port) if settings.data_port else None
        )
        if plane is not None:
            await plane.start()
        try:
            yield
        finally:
            if plane is not None:
                await plane.stop()
            await core.stop()

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> JSONResponse:
        core = get_core()
        ok = core.ready
        return JSONResponse({"ready": ok, **core.served.lineage}, status_code=200 if ok else 503)

    async def model(request: Request) -> JSONResponse:
        core = get_core()
        return JSONResponse(core.served.model.info(), headers=_lineage_headers(core.served.lineage))

    return Starlette(
        routes=[
            Route("/live", live, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/model", model, methods=["GET"]),
            Route("/predict", handler(GatewayCore.predict_one), methods=["POST"]),
            Route("/predict/bulk", handler(GatewayCore.predict_many), methods=["POST"]),
        ],
        exception_handlers={GatewayError: gateway_error, Overloaded: overloaded},
        lifespan=lifespan,
    )
