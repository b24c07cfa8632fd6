"""One serving worker, composed: everything a Bento worker starts is created and stopped here, in
order. A worker answers and appends to the prediction log, nothing else; drift, alerts, quality
and retrains belong to the loop controller (:mod:`gateway.controller`).

Started, in this order (stopped in reverse):

1. the prediction log's writer thread, appending to the shared store (:mod:`gateway.predlog`);
2. the core (:class:`gateway.core.GatewayCore`): the device arrangement (this worker's, or a
   link to the shared device batcher), the batcher thread, and the alias watcher that hot-swaps;
3. the data plane: the lean HTTP app on ``GATEWAY_DATA_PORT`` (:mod:`gateway.dataplane`);
4. the Open Inference Protocol gRPC front on ``GATEWAY_GRPC_PORT``
   (:mod:`gateway.oip.grpc_front`: the native front or grpc.aio).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp

from gateway.core import GatewayCore
from gateway.dataplane import DataPlane, Refuse
from gateway.predlog import PredictionLog
from gateway.store import Store
from trainers.sqlstore import StoreError, redact

log = logging.getLogger(__name__)


class Worker:
    """The machinery of one serving worker around ``core``; ``lean`` is the app the data plane
    serves, ``refuse`` what it refuses before the app (:data:`gateway.dataplane.Refuse`)."""

    def __init__(self, core: GatewayCore, lean: ASGIApp, refuse: Refuse | None = None) -> None:
        self.core = core
        self.lean = lean
        self.refuse = refuse
        self.store: Store | None = None
        self.predictions: PredictionLog | None = None
        self.plane: DataPlane | None = None
        self.rpc: Any = None

    async def start(self) -> None:
        settings, metrics = self.core.settings, self.core.metrics
        if settings.log_predictions:
            self.store = Store(settings.shared_store, connect_timeout_s=settings.store_timeout_s)
            try:  # the schema, now rather than at the first write; a store that is down later
                await asyncio.to_thread(self.store.open)
            except StoreError as exc:  # ... or now is retried by the writer: it fails nothing
                log.warning("prediction log: %s; answers are kept until it answers", exc)
            self.predictions = PredictionLog(self.store, settings.log_buffer, metrics)
            self.core.log_to(self.predictions)
            log.info("prediction log: %s", redact(settings.shared_store))
        await self.core.start()
        if settings.data_port:
            self.plane = DataPlane(
                self.lean,
                settings.data_host,
                settings.data_port,
                keep_alive_s=settings.keep_alive_s,
                request_timeout_s=settings.request_timeout_s,
                refuse=self.refuse,
            )
            await self.plane.start()
        if settings.grpc_port:
            from gateway.oip.grpc_front import start_grpc  # grpc: only where it serves
            from gateway.oip.service import Oip

            self.rpc = await start_grpc(Oip(lambda: self.core), settings)

    async def stop(self) -> None:
        if self.rpc is not None:
            await self.rpc.stop()
        if self.plane is not None:
            await self.plane.stop()
        await self.core.stop()
        if self.predictions is not None:
            await asyncio.to_thread(self.predictions.close)
        if self.store is not None:
            self.store.close()
