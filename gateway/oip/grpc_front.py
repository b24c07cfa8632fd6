"""The native gRPC front: ``gateway-grpc`` (``grpcfront/main.go``) carries gRPC for a worker.

Python's gRPC server costs more CPU per call than the gateway's whole business-JSON request,
model included (see the protocol figures in docs/performance.md). So where ``make`` has built
``gateway-grpc`` into the environment, each worker starts one as its child: it terminates
HTTP/2 on the shared gRPC port (``SO_REUSEPORT``) and passes every call, still serialized, over
a Unix socket (:mod:`gateway.oip.frames`) to this module, which answers it with the same
:class:`Servicer` as the Python server: parsing, tensors, validation, batching and status codes
are the worker's. Calls that arrive together come in one read, and their answers leave in one
write; the ``ModelInfer`` calls of a read are answered together, their objects going to the
batcher in one submission (:meth:`Servicer.infer_together`). The health check
(``grpc.health.v1.Health/Check``) comes over the link too, so both servers answer it alike. The
front exits when its worker closes the link or dies; a front that exits on its own is started
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]

from gateway.errors import Overloaded
from gateway.oip import frames
from gateway.oip import grpc_predict_v2_pb2 as pb
from gateway.oip.grpc_server import (
    HEALTH_CHECK,
    INFER,
    REQUESTS,
    SERVICE,
    GrpcServer,
    Health,
    Refused,
    Servicer,
    refusal,
    serialized,
)
from gateway.oip.service import Oip
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
PROGRAM = "gateway-grpc"
RESTART_S = 1.0
STOPPED = frozenset({0, -signal.SIGTERM, -signal.SIGINT})
"""Exit codes of a front that was asked to stop (it exits 0 on SIGTERM and SIGINT)."""
Unary = tuple[Any, Callable[[Any, Any], Awaitable[Any]]]  # the request's message, the answer


def program() -> str | None:
    """``gateway-grpc`` beside this module (where ``make bento`` puts it, so that a bento brings
    its own), else beside this interpreter (the environment ``make`` built it into), else on
    ``PATH``; None when it was not built."""
    places = [str(Path(__file__).parent), str(Path(sys.executable).parent)]
    return shutil.which(PROGRAM, path=os.pathsep.join([*places, os.environ.get("PATH", "")]))


def unary_methods(servicer: Servicer, health: Health) -> dict[str, Unary]:
    """What a front passes on, by method path: each method's request message and answer."""
    methods = {SERVICE + name: (kind, getattr(servicer, name)) for name, kind in REQUESTS.items()}
    methods[HEALTH_CHECK] = (health_pb2.HealthCheckRequest, health.Check)
    return methods


class CallContext:
    """What the servicer uses of a gRPC context, for a call that came over the link."""

    def __init__(self) -> None:
        self.header: Sequence[tuple[str, str]] = ()

    async def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.header = metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Refused(code, details)


class Link(asyncio.Protocol):
    """A front's connection: calls in, answers out (written once per event-loop turn)."""

    def __init__(self, servicer: Servicer, methods: dict[str, Unary]) -> None:
        self.servicer = servicer
        self.methods = methods
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        core = self.servicer.oip.get_core()
        core.fullness.append(self.tell_full)
        if core.served.batcher.full:
            self.tell_full(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        with contextlib.suppress(ValueError):
            self.servicer.oip.get_core().fullness.remove(self.tell_full)

    def tell_full(self, full: bool) -> None:
        """Pass the queue's state to the front, which sheds ``ModelInfer`` calls itself while
        it is full: a refused call then costs the worker nothing."""
        if not full:
            self.send(frames.STATE, grpc.StatusCode.OK, "")
            return
        core = self.servicer.oip.get_core()
        _, refused = refusal(core, "ModelInfer", core.overload(), count=False)
        self.send(frames.STATE, refused.code, refused.details, refused.header)

    def count_shed(self, request: bytes) -> None:
        (n,) = frames.SHED_COUNT.unpack(request)
        core = self.servicer.oip.get_core()
        core.metrics.safely(lambda: core.metrics.shed.labels(INFER).inc(n))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        calls = frames.calls(self.buffer)
        if any(call == frames.STATE for call, _, _ in calls):  # the front's count of shed calls
            for _, _, request in (c for c in calls if c[:2] == (frames.STATE, frames.SHED)):
                self.count_shed(request)
            calls = [c for c in calls if c[0] != frames.STATE]
        infers = [(call, request) for call, method, request in calls if method == INFER]
        if infers:  # answered together: one task, one submission to the batcher
            self.start(self.answer_together(infers))
            calls = [c for c in calls if c[1] != INFER]
        for call, method, request in calls:
            self.start(self.answer(call, method, request))

    def start(self, answering: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(answering)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def answer_together(self, calls: list[tuple[int, bytes]]) -> None:
        """The ``ModelInfer`` calls of one read, through :meth:`Servicer.infer_together`;
        all refused before they are parsed while the queue is full."""
        core = self.servicer.oip.get_core()
        try:
            core.shed_if_full()
        except Overloaded as exc:
            _, refused = refusal(core, "ModelInfer", exc)
            for call, _ in calls:
                self.send(call, refused.code, refused.details, refused.header)
            return
        parsed, requests = [], []
        for call, request in calls:
            message = self.parse(call, pb.ModelInferRequest, request)
            if message is not None:
                parsed.append(call)
                requests.append(message)
        try:
            outcomes = await self.servicer.infer_together(requests)
        except Exception:
            log.exception("gRPC ModelInfer failed")
            for call in parsed:
                self.send(call, grpc.StatusCode.INTERNAL, "internal error")
            return
        for call, outcome in zip(parsed, outcomes, strict=True):
            if isinstance(outcome, Refused):
                self.send(call, outcome.code, outcome.details, outcome.header)
            else:
                self.send(call, grpc.StatusCode.OK, "", (), outcome)

    async def answer(self, call: int, method: str, request: bytes) -> None:
        found = self.methods.get(method)
        if found is None:
            self.send(call, grpc.StatusCode.UNIMPLEMENTED, f"unknown method {method}")
            return
        kind, respond = found
        message = self.parse(call, kind, request)
        if message is None:
            return
        context = CallContext()
        try:
            response = await respond(message, context)
        except Refused as refused:
            self.send(call, refused.code, refused.details, context.header)
        except Exception:
            log.exception("gRPC %s failed", method)
            self.send(call, grpc.StatusCode.INTERNAL, "internal error")
        else:
            self.send(call, grpc.StatusCode.OK, "", context.header, serialized(response))

    def parse(self, call: int, kind: Any, request: bytes) -> Any:
        """``request`` as a ``kind`` message, or None once the call is refused as garbled."""
        try:
            return kind.FromString(request)
        except DecodeError as exc:
            details = f"the request is not a valid {kind.__name__}: {exc}"
            self.send(call, grpc.StatusCode.INVALID_ARGUMENT, details)
            return None

    def send(
        self,
        call: int,
        code: grpc.StatusCode,
        details: str,
        header: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outgoing.append(frames.answer_frame(call, code.value[0], details, header, body))

    def flush(self) -> None:
        written, self.outgoing = self.outgoing, []
        if self.transport is not None:  # else the front is gone, and the calls with it
            self.transport.writelines(written)


class GrpcFront:
    """``gateway-grpc`` serving ``host:port`` for this worker, answering through a Link."""

    def __init__(self, oip: Oip, host: str, port: int, max_message_bytes: int, exe: str) -> None:
        self.servicer = Servicer(oip)
        self.methods = unary_methods(self.servicer, Health(oip))
        self.exe = exe
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.folder = Path(tempfile.mkdtemp(prefix="gateway-grpc-"))  # short: socket paths
        self.socket = str(self.folder / "worker.sock")
        self.server: asyncio.AbstractServer | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(
            lambda: Link(self.servicer, self.methods), self.socket
        )
        try:
            process = await self._launch()
        except BaseException:
            await self.stop()
            raise
        self.watch = loop.create_task(self._keep_running(process))

    async def _launch(self) -> asyncio.subprocess.Process:
        """Start the front; it answers once it holds the port and the link."""
        process = await asyncio.create_subprocess_exec(
            self.exe,
            "-listen",
            self.address,
            "-worker",
            self.socket,
            "-parent",
            str(os.getpid()),
            "-max-message",
            str(self.max_message_bytes),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Out of the worker's process group: a signal to the group (Ctrl-C, a supervisor
            # stopping the service) stops the worker, which stops its front on purpose; one
            # that outlives a killed worker exits by itself (``-parent``).
            start_new_session=True,
        )
        self.process = process
        output = process.stdout
        assert output is not None
        first = b""
        with contextlib.suppress(TimeoutError):
            first = await asyncio.wait_for(output.readline(), timeout=30)
        if not first.startswith(b"listening on "):
            rest = b""
            with contextlib.suppress(TimeoutError):
                rest = await asyncio.wait_for(output.read(), timeout=5)
            await _end(process)
            said = (first + rest).decode(errors="replace").strip()
            raise OSError(f"{self.exe} did not start: {said or 'no output'}")
        log.info(
            "gRPC (Open Inference Protocol v2) listening on %s (%s, pid %d)",
            self.address,
            self.exe,
            process.pid,
        )
        return process

    async def _keep_running(self, process: asyncio.subprocess.Process) -> None:
        """Pass the front's messages to the worker's log; start it again if it exits."""
        while True:
            assert process.stdout is not None
            async for line in process.stdout:
                log.warning("%s", line.decode(errors="replace").rstrip())
            code = await process.wait()
            if code in STOPPED:  # asked to stop: by the service stopping (then the worker stops
                # this watch before it restarts anything), or by hand
                log.info("%s stopped (code %s); starting it again", PROGRAM, code)
            else:
                log.error("%s exited with code %s; starting it again", PROGRAM, code)
            while True:
                await asyncio.sleep(RESTART_S)
                try:
                    process = await self._launch()
                    break
                except OSError:
                    log.exception("%s could not be started again", PROGRAM)

    async def stop(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
            self.watch = None
        if self.process is not None:
            await _end(self.process)
            self.process = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        shutil.rmtree(self.folder, ignore_errors=True)


async def _end(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def start_grpc(oip: Oip, settings: GatewaySettings) -> GrpcFront | GrpcServer:
    """The worker's gRPC server, started, as ``GATEWAY_GRPC_SERVER`` says. With ``auto``, a
    front that was built but does not start here (a binary built for another system) gives
    way to grpc.aio; with ``native`` it is an error."""
    host, port, limit = settings.data_host, settings.grpc_port, settings.max_body_bytes
    exe = program() if settings.grpc_server != "python" else None
    if exe is not None:
        front = GrpcFront(oip, host, port, limit, exe)
        try:
            await front.start()
            return front
        except OSError as exc:
            if settings.grpc_server == "native":
                raise
            log.warning("%s; serving gRPC from grpc.aio instead", exc)
    elif settings.grpc_server == "native":
        raise OSError(f"GATEWAY_GRPC_SERVER=native, but {PROGRAM} was not built (make grpc-front)")
    server = GrpcServer(oip, host, port, limit)
    await server.start()
    return server
