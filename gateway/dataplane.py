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
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp

log = logging.getLogger(__name__)


REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


Refuse = Callable[[bytes, bytes], bytes | None]
"""Given a request's method and target, the whole answer to send at once instead of running the
app (a refusal), or None to run it."""


class _Refused:
    """The request cycle uvicorn's protocol keeps for a request refused before the app: already
    complete, so the rest of its body is read and dropped."""

    response_started = response_complete = True
    keep_alive = True
    disconnected = False

    def __init__(self) -> None:
        self.message_event = asyncio.Event()


def deadline_protocol(
    base: type[asyncio.Protocol], idle_s: float, request_s: float, refuse: Refuse | None = None
) -> type:
    """``base`` (uvicorn's HTTP protocol) with two deadlines uvicorn lacks, so that slow or stuck
    clients cannot hold connections: a connection that starts no request within ``idle_s`` is
    closed, and a request whose head and body have not arrived ``request_s`` after it began gets
    408 and its connection is closed. (uvicorn closes idle keep-alive connections itself.)

    With ``refuse`` (and httptools), a request it refuses is answered as soon as its head is
    parsed, without a request cycle, a task or the ASGI app: under a flood, shedding costs a
    fraction of an answer, so the worker can refuse several times its capacity."""
    before_app = refuse if refuse is not None and hasattr(base, "on_url") else None

    class Deadlines(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
            self._disarm()
            self._deadline = asyncio.get_running_loop().call_later(seconds, expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _close(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def _too_slow(self) -> None:
            cycle = getattr(self, "cycle", None)
            if not self.transport.is_closing() and (cycle is None or not cycle.response_started):
                body = b'{"error": "the request was not received within %gs"}' % request_s
                self.transport.write(REQUEST_TIMEOUT % (len(body), body))
            self._close()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm(idle_s, self._close)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(request_s, self._too_slow)

        def on_message_complete(self) -> None:
            self._disarm()
            if isinstance(getattr(self, "cycle", None), _Refused):  # answered, body read through:
                self.on_response_complete()  # keep-alive, as after any answer
                return
            super().on_message_complete()

        def on_headers_complete(self) -> None:
            answer = None
            cycle: Any = getattr(self, "cycle", None)  # the request before (pipelined: running)
            if before_app is not None and (cycle is None or cycle.response_complete):
                answer = before_app(self.parser.get_method(), self.url)
            if answer is None:
                super().on_headers_complete()
                return
            self.cycle = _Refused()
            self.transport.write(answer)
            if self.parser.get_http_version() != "1.1" or not self.parser.should_keep_alive():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Deadlines


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

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        keep_alive_s: float = 5.0,
        request_timeout_s: float = 30.0,
        refuse: Refuse | None = None,
    ) -> None:
        base: type[asyncio.Protocol]
        if importlib.util.find_spec("httptools") is not None:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            base = HttpToolsProtocol
        else:
            from uvicorn.protocols.http.h11_impl import H11Protocol

            base = H11Protocol
        config = uvicorn.Config(
            app,
            lifespan="off",  # the Bento owns start-up and shutdown
            access_log=False,
            log_level="warning",
            http=deadline_protocol(base, keep_alive_s, request_timeout_s, refuse),
            loop="none",
            timeout_keep_alive=max(1, round(keep_alive_s)),
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
