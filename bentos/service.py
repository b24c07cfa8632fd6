"""The Bento service: loads the champion of the configured pipeline and mounts the HTTP app."""

from __future__ import annotations

import bentoml

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings


def _current_core() -> GatewayCore:
    service: Gateway = bentoml.get_current_service()
    return service.core


app = create_app(_current_core)


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="lineage_gateway", workers=1)
class Gateway:
    def __init__(self) -> None:
        settings = GatewaySettings()
        self.core = GatewayCore(load(settings), settings, GatewayMetrics())
