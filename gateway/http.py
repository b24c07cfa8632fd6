"""The business-JSON HTTP adapter: a lean Starlette app the Bento service mounts."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.core import GatewayCore, parse_json
from gateway.errors import GatewayError, UnsupportedMediaType

LINEAGE_HEADERS = {
    "model_name": "x-model-name",
    "model_version": "x-model-version",
    "run_id": "x-run-id",
}


def create_app(get_core: Callable[[], GatewayCore]) -> Starlette:
    """Routes over the core returned by ``get_core`` (resolved per request, so it can change)."""

    async def predict(request: Request) -> JSONResponse:
        core = get_core()
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType(
                f"content-type must be application/json, got {content_type or 'none'!r}"
            )
        payload = parse_json(await request.body())
        answer = await run_in_threadpool(core.predict_one, payload)
        headers = {header: str(answer[key]) for key, header in LINEAGE_HEADERS.items()}
        return JSONResponse(answer, headers=headers)

    async def gateway_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return JSONResponse(exc.to_json(), status_code=exc.status_code)

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"])],
        exception_handlers={GatewayError: gateway_error},
    )
