"""The Bento service: thin wiring of gateway pieces.

Each worker loads the champion of the configured pipeline from the registry — or, when the
tracking store is out of reach, the version bundled into this bento (``make bento``) — and runs
the gateway app, mounted here and served by the worker's own data plane.

Predict and bulk predict are also the service's own ``@bentoml.api`` methods, typed with the
pipeline's business object, so that BentoML's clients, ``bentoml.depends()`` and its playground
see them. Their types must exist when BentoML reads this class, so the pipeline's contract is
imported here (and torch with it); the model itself still loads in the worker.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import bentoml
from bentoml.models import BentoModel
from pydantic import BaseModel, create_model
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access import hide_secrets
from gateway.bundle import bundled, load_or_bundled
from gateway.codecs import Answered, Typed
from gateway.core import GatewayCore
from gateway.errors import GatewayError
from gateway.http import (
    DeclaredBodyLimit,
    PredictionKey,
    complete_document,
    create_app,
    error_response,
    lineage_headers,
)
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings, fail_fast_tracking
from trainers import pipelines

log = logging.getLogger(__name__)
# Swaps, refusals, drift windows and retrains are the service log's news: show them at INFO.
logging.getLogger("gateway").setLevel(logging.INFO)
F = TypeVar("F", bound=Callable[..., Any])


def _served_pipeline() -> str:
    """``GATEWAY_PIPELINE`` when set, else the pipeline bundled into this bento, else the
    settings' default."""
    settings = GatewaySettings()
    if "pipeline" in settings.model_fields_set:
        return settings.pipeline
    return bundled().get("pipeline") or settings.pipeline


CONTRACT = pipelines.get(_served_pipeline())
KEY = CONTRACT.input_key
BULK_KEY = f"{KEY}s"
Lineage: dict[str, Any] = dict.fromkeys(("model_name", "model_version", "run_id"), (str, ...))
Answer = create_model(
    "Answer",
    __module__=__name__,
    prediction=(CONTRACT.Output, ...),
    request_id=(str, ...),
    **Lineage,
)
BulkAnswer = create_model(
    "BulkAnswer",
    __module__=__name__,
    predictions=(list[CONTRACT.Output], ...),  # type: ignore[name-defined]
    request_ids=(list[str], ...),
    **Lineage,
)


def _api(route: str, name: str, takes: Any, returns: Any) -> Callable[[F], F]:
    """``@bentoml.api`` at ``route`` for a method taking ``**objects``, declared to take the one
    parameter ``name`` (the pipeline's JSON key, e.g. ``application``) of type ``takes`` and to
    return ``returns``: the signature BentoML reads to build its schemas and clients."""

    def declare(method: F) -> F:
        signature = inspect.signature(method)
        typed = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=takes)
        parameters = [signature.parameters["self"], signature.parameters["ctx"], typed]
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=parameters, return_annotation=returns
        )
        api: Callable[[F], F] = bentoml.api(route=route)
        return api(method)

    return declare


def _current_core() -> GatewayCore:
    service: Gateway = bentoml.get_current_service()
    return service.core


app = create_app(_current_core)


@bentoml.asgi_app(app, path="/")
# BentoML's own port gets the data plane's answer deadline too (its ``traffic.timeout``).
@bentoml.service(
    name="lineage_gateway",
    workers=1,
    traffic={"timeout": GatewaySettings().request_timeout_s},
)
class Gateway:
    # A pinned BentoModel is what `bentoml build` copies into the bento.
    if (_tag := bundled().get("model")) is not None:
        bundled = BentoModel(_tag)

    def __init__(self) -> None:
        settings = GatewaySettings(pipeline=CONTRACT.name)
        hide_secrets(settings)
        fail_fast_tracking()
        self.core = GatewayCore(self._load(settings), settings, GatewayMetrics())
        self.typed = Typed(settings.max_bulk)

    @_api("/predict", KEY, CONTRACT.Input, Answer)
    async def predict(self, ctx: bentoml.Context, **objects: BaseModel) -> BaseModel | Response:
        """Answer one business object, with the model version and run that answered it."""
        return await self._reply(
            ctx,
            self.core.answer(self.typed, list(objects.values())),
            lambda a: Answer.model_construct(
                None, prediction=a.answers[0], request_id=a.request_ids[0], **a.lineage
            ),
        )

    @_api("/predict/bulk", BULK_KEY, list[CONTRACT.Input], BulkAnswer)  # type: ignore[name-defined]
    async def predict_bulk(
        self, ctx: bentoml.Context, **objects: list[BaseModel]
    ) -> BaseModel | Response:
        """Answer a list of business objects in one call."""
        (given,) = objects.values()
        return await self._reply(
            ctx,
            self.core.answer(self.typed, given),
            lambda a: BulkAnswer.model_construct(
                None, predictions=a.answers, request_ids=a.request_ids, **a.lineage
            ),
        )

    async def _reply(
        self,
        ctx: bentoml.Context,
        answering: Awaitable[Answered],
        shape: Callable[[Answered], BaseModel],
    ) -> BaseModel | Response:
        """The answer with its lineage headers, or the gateway's refusal (status, body and
        headers as on the data plane)."""
        try:
            answered = await answering
        except GatewayError as exc:
            refusal: Response = error_response(exc)
            ctx.response.status_code = refusal.status_code
            ctx.response.headers.update(
                {k: v for k, v in refusal.headers.items() if k == "retry-after"}
            )
            return refusal
        ctx.response.headers.update(lineage_headers(answered.lineage))
        return shape(answered)

    def _load(self, settings: GatewaySettings) -> LoadedModel:
        # MLflow loads here, in the worker, not when BentoML imports this module.
        from gateway.loader import load

        return load_or_bundled(settings, load)


class CompletedDocs:
    """``GET /docs.json``: BentoML's OpenAPI document, completed with the refusals the gateway's
    routes may answer (:func:`gateway.http.complete_document`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/docs.json" and scope["method"] == "GET":
            document = Gateway.openapi_spec.asdict()  # type: ignore[attr-defined]
            await JSONResponse(complete_document(document))(scope, receive, send)
            return
        await self.app(scope, receive, send)


Gateway.add_asgi_middleware(CompletedDocs)  # type: ignore[attr-defined]
Gateway.add_asgi_middleware(DeclaredBodyLimit)  # type: ignore[attr-defined]
Gateway.add_asgi_middleware(PredictionKey)  # type: ignore[attr-defined]
