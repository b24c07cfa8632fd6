"""The data plane: the gateway's own HTTP server, started inside every Bento worker.

BentoML's HTTP stack (its metrics, tracing, access-log and concurrency middlewares around every
route, mounted apps included) costs more per request than the model does. Each worker therefore
also serves the same lean app on ``GATEWAY_DATA_PORT`` through its own uvicorn server on a
``SO_REUSEPORT`` socket: the kernel spreads connections across workers, and every worker feeds its
requests into its own device batcher. BentoML keeps the process model, lifecycle, model store,
``/readyz``, ``/metrics`` and the OpenAPI document on its own port, where the same routes answer
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


class _WorkerServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the Bento worker it runs in."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class DataPlane:
    """Serve ``app`` on ``host:port`` from the running event loop until :meth:`stop`."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        fast_http = importlib.util.find_spec("httptools") is not None
        config = uvicorn.Config(
            app,
            lifespan="off",  # the Bento owns start-up and shutdown
            access_log=False,
            log_level="warning",
            http="httptools" if fast_http else "h11",
            loop="none",
        )
        self.server = _WorkerServer(config)
        self.host, self.port = host, port
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = reuse_port_socket(self.host, self.port)
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[sock]))
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raise what stopped it
        log.info("data plane listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=10)
        self._task = None
