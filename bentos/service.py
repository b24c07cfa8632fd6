"""The Bento service: thin wiring of gateway pieces.

Each worker loads the champion of the configured pipeline from the registry — or, when the
tracking store is out of reach, the version bundled into this bento (``make bento``) — and runs
the gateway app, mounted here and served by the worker's own data plane.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import bentoml
from bentoml.models import BentoModel

from gateway.core import GatewayCore
from gateway.errors import ModelUnavailable
from gateway.http import create_app
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
# Swaps, refusals, drift windows and retrains are the service log's news: show them at INFO.
logging.getLogger("gateway").setLevel(logging.INFO)
BUNDLE = Path(__file__).with_name("bundle.json")  # written by `make bento`, read by the build


def _current_core() -> GatewayCore:
    service: Gateway = bentoml.get_current_service()
    return service.core


def _bundled_tag() -> str | None:
    return str(json.loads(BUNDLE.read_text())["model"]) if BUNDLE.exists() else None


app = create_app(_current_core)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="lineage_gateway", workers=1)
class Gateway:
    # A pinned BentoModel is what `bentoml build` copies into the bento.
    if (_tag := _bundled_tag()) is not None:
        bundled = BentoModel(_tag)

    def __init__(self) -> None:
        settings = GatewaySettings()
        self.core = GatewayCore(self._load(settings), settings, GatewayMetrics())

    def _load(self, settings: GatewaySettings) -> LoadedModel:
        # MLflow and torch load here, in the worker, not when BentoML imports this module.
        from gateway.bundle import load_bundled
        from gateway.loader import load

        try:
            return load(settings)
        except ModelUnavailable as exc:
            tag = _bundled_tag()
            if tag is None:
                raise
            log.warning("registry unavailable (%s); serving the bundled %s", exc, tag)
            return load_bundled(tag)
