"""The loop controller: one per deployment, its own process (``gateway-controller``), beside any
number of serving replicas. It runs the drift windows over every replica's traffic (read from the
shared store), takes Alertmanager's webhook and ground truth (``/feedback``), computes live
quality, and starts retrains as processes of their own.

Exactly one controller is active, whatever number run: the active one holds a lease in the
shared store (a row with an expiry on the database's clock), renewing it every third of
``GATEWAY_LEASE_TTL_S``; the others stand by and try to take it at the same pace. A controller
that dies (or loses the store) stops renewing, so another takes over within ``lease_ttl_s`` plus
a third of it, and adopts the retrains left running. A standby still answers reads and records
feedback; it refuses alerts with 503 and Retry-After, so Alertmanager sends them again, to
whichever controller is active by then.

Everything the controller runs is created and stopped in :class:`Controller`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.access import hide_secrets
from gateway.core import keep_polling, record_feedback
from gateway.errors import (
    GatewayError,
    InvalidInput,
    ModelUnavailable,
    NotFound,
    StoreUnavailable,
)
from gateway.http import bearer, error_response, json_body
from gateway.loop import RetrainLoop
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.monitor import DriftMonitor
from gateway.settings import GatewaySettings, fail_fast_tracking
from gateway.store import Store
from trainers.sqlstore import StoreError, redact

log = logging.getLogger(__name__)
Loader = Callable[[GatewaySettings, str | None], LoadedModel]


def _load(settings: GatewaySettings, version: str | None) -> LoadedModel:
    from gateway.bundle import load_or_bundled  # MLflow and torch: in the process that serves
    from gateway.loader import load

    if version is not None:
        return load(settings, version)
    return load_or_bundled(settings, load)


class Controller:
    """The controller's pieces: the shared store, the champion it follows, the lease, the
    retrain path and (while active) the drift monitor."""

    def __init__(
        self, settings: GatewaySettings, metrics: GatewayMetrics, loader: Loader = _load
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
        self.store = Store(settings.shared_store, connect_timeout_s=settings.store_timeout_s)
        self.lease = f"controller/{settings.pipeline}"
        self.me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.model: LoadedModel | None = None
        self.active = False
        self.loop = RetrainLoop(settings, metrics, self.store, self.current, self.follow)
        self.monitor: DriftMonitor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._following = asyncio.Lock()

    def current(self) -> LoadedModel:
        if self.model is None:
            raise ModelUnavailable("the controller has not loaded the champion yet")
        return self.model

    async def start(self) -> None:
        self.model = await asyncio.to_thread(self.loader, self.settings, None)
        name = self.model.name
        self.metrics.safely(lambda: self.metrics.declare(name, ()))
        self.metrics.safely(lambda: self.metrics.controller_active.labels(name).set(0))
        log.info(
            "controller %s: %s v%s; store %s; lease %s (ttl %.1f s)",
            self.me,
            name,
            self.model.version,
            redact(self.settings.shared_store),
            self.lease,
            self.settings.lease_ttl_s,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._lead(), name="lease")]
        if self.settings.poll_interval_s > 0:
            self._tasks.append(loop.create_task(self._watch_alias(), name="alias"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.active:
            await self._stand_by(why="stopping")
            with suppress(Exception):
                await asyncio.to_thread(self.store.let_go, self.lease, self.me)
        await self.loop.stop()
        self.store.close()

    # -- the lease ----------------------------------------------------------------------------
    async def _lead(self) -> None:
        every = self.settings.lease_ttl_s / 3
        while True:
            try:
                held = await asyncio.to_thread(
                    self.store.hold, self.lease, self.me, self.settings.lease_ttl_s
                )
            except Exception as exc:
                log.error("controller %s: cannot reach the store for the lease: %s", self.me, exc)
                held = False
            if held and not self.active:
                await self._take_over()
            elif not held and self.active:
                await self._stand_by()
            await asyncio.sleep(every)

    async def _take_over(self) -> None:
        log.warning("controller %s: active (holds %s)", self.me, self.lease)
        self.active = True
        self._gauge(1)
        if self.settings.drift_enabled:
            self.monitor = DriftMonitor(
                self.settings, self.metrics, self.store, self.current, self.loop.alert
            )
            await self.monitor.start()
        try:
            await self.loop.adopt()
        except Exception:
            log.exception("could not adopt the retrains left running")

    async def _stand_by(self, why: str = "") -> None:
        if why:
            log.info("controller %s: %s; releasing lease %s", self.me, why, self.lease)
        else:
            log.warning("controller %s: standing by (lease %s lost)", self.me, self.lease)
        self.active = False
        self._gauge(0)
        if self.monitor is not None:
            await self.monitor.stop()
            self.monitor = None

    def _gauge(self, value: int) -> None:
        name = self.current().name
        self.metrics.safely(lambda: self.metrics.controller_active.labels(name).set(value))

    # -- the champion -------------------------------------------------------------------------
    async def follow(self) -> str:
        """Read the alias now and load the version it points at, if it moved."""
        async with self._following:
            client = self.settings.mlflow()
            name, alias = self.settings.pipeline, self.settings.alias
            mv = await asyncio.to_thread(client.get_model_version_by_alias, name, alias)
            version, current = str(mv.version), self.current()
            if version == current.version:
                return f"v{version}"
            self.model = await asyncio.to_thread(self.loader, self.settings, version)
            log.info(
                "controller %s: following %s v%s (was v%s)", self.me, name, version, current.version
            )
            return f"v{current.version} → v{version}"

    async def _watch_alias(self) -> None:
        async def use(_: str) -> None:
            return None

        what = f"{self.settings.model_uri} (controller)"
        await keep_polling(self.follow, use, self.settings.poll_interval_s, what, log)

    def status(self) -> dict[str, Any]:
        model = self.model
        return {
            "controller": self.me,
            "active": self.active,
            "lease": self.lease,
            "model_name": model.name if model else None,
            "model_version": model.version if model else None,
            "run_id": model.run_id if model else None,
        }


def create_app(controller: Controller) -> Starlette:
    """The controller's HTTP API; the controller runs while the app lives."""
    settings, metrics = controller.settings, controller.metrics

    def handled(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
        async def wrapper(request: Request) -> Response:
            try:
                return await endpoint(request)
            except GatewayError as exc:
                return error_response(exc)
            except StoreError as exc:  # the store is down: the caller may send it again
                return error_response(StoreUnavailable(f"the shared store cannot answer: {exc}"))

        return wrapper

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        ok = controller.model is not None
        return JSONResponse(controller.status(), status_code=200 if ok else 503)

    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def alerts(request: Request) -> Response:
        bearer(request, settings.alert_token, "the alert webhook (GATEWAY_ALERT_TOKEN)")
        payload = await json_body(request, settings.max_body_bytes)
        if not controller.active:
            return JSONResponse(
                {
                    "error": "this controller is standing by; send the alert again",
                    **controller.status(),
                },
                status_code=503,
                headers={"retry-after": str(max(1, round(settings.lease_ttl_s)))},
            )
        try:
            return JSONResponse(await controller.loop.alertmanager(payload))
        except ValueError as exc:
            raise InvalidInput(str(exc), [{"field": "alerts", "message": str(exc)}]) from exc

    async def feedback(request: Request) -> Response:
        bearer(request, settings.feedback_token, "feedback", open_without=True)
        payload = await json_body(request, settings.max_body_bytes)
        model, limit = controller.current(), settings.max_bulk
        answer = await asyncio.to_thread(
            record_feedback, controller.store, model, payload, limit, metrics
        )
        return JSONResponse(answer)

    def report(name: str) -> Path:
        path = settings.state_dir / "reports" / name
        if not path.is_file():
            raise NotFound("this controller has not evaluated a drift window yet")
        return path

    async def drift(request: Request) -> Response:
        return Response(report("latest.json").read_bytes(), media_type="application/json")

    async def drift_report(request: Request) -> Response:
        return Response(report("latest.html").read_bytes(), media_type="text/html")

    async def retrains(request: Request) -> Response:
        name = controller.current().name
        found = await asyncio.to_thread(controller.store.retrains, name)
        return JSONResponse({"retrains": found})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await controller.start()
        try:
            yield
        finally:
            await controller.stop()

    routes = [
        Route("/live", handled(live)),
        Route("/ready", handled(ready)),
        Route("/metrics", handled(metrics_route)),
        Route("/alerts", handled(alerts), methods=["POST"]),
        Route("/feedback", handled(feedback), methods=["POST"]),
        Route("/drift", handled(drift)),
        Route("/drift/report", handled(drift_report)),
        Route("/retrains", handled(retrains)),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    """``gateway-controller``: run the loop controller (settings from ``GATEWAY_*``)."""
    parser = argparse.ArgumentParser(prog="gateway-controller", description=main.__doc__)
    parser.add_argument("--host", help="address to bind (default: $GATEWAY_CONTROLLER_HOST)")
    parser.add_argument("--port", type=int, help="port (default: $GATEWAY_CONTROLLER_PORT)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = GatewaySettings()
    hide_secrets(settings)
    fail_fast_tracking()
    controller = Controller(settings, GatewayMetrics())
    uvicorn.run(
        create_app(controller),
        host=args.host or settings.controller_host,
        port=args.port if args.port is not None else settings.controller_port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
