"""Where the forward pass runs: on each worker's own model copy, or on one device batcher that
every worker feeds.

Every worker parses, validates and preprocesses its own requests (CPU work that scales with
workers) and forms its own batches. What happens next depends on the arrangement:

- :class:`LocalDevice` — the worker runs the forward pass itself. Right on the CPU, where each
  worker's forward pass uses its own core.
- :class:`SharedDevice` — one worker (whichever takes the lock file first) owns the device: it
  serves a Unix socket, and a device batcher merges the preprocessed batches of all workers into
  one forward pass. The others send their features there and get the model's results back, so an
  accelerator sees a few large batches instead of many small ones. A worker answers a batch on
  its own copy when the owner is unreachable, lacks the version, or fails; it then tries to take
  the lock, so when the owner dies another worker becomes the owner.

Features and results cross the socket as :func:`gateway.framing.message` bodies, raw tensor bytes
after a JSON header: nothing pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import framing
from gateway.batching import Batcher
from gateway.errors import Overloaded
from gateway.locks import release, try_lock
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
KEEP_VERSIONS = 2  # the owner answers for the current version and the one before it


class Device(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def offer(self, model: LoadedModel) -> None:
        """``model`` is now served by this worker."""

    def forward(self, model: LoadedModel, features: Any, rows: int) -> Any:
        """``model``'s forward pass over ``features`` (``rows`` rows); called in the worker's
        batch thread."""

    def describe(self) -> dict[str, Any]: ...

    @property
    def in_flight(self) -> int:
        """Batches a worker keeps in flight: more than one when the forward pass runs elsewhere,
        so that the worker preprocesses the next batch meanwhile."""


def make_device(settings: GatewaySettings, metrics: GatewayMetrics, model: LoadedModel) -> Device:
    shared = settings.shared_device == "on" or (
        settings.shared_device == "auto" and model.predictor.device.type != "cpu"
    )
    if not shared:
        return LocalDevice(settings, metrics)
    return SharedDevice(settings, metrics, settings.device_socket or default_socket())


def default_socket() -> str:
    """One socket per ``bentoml serve``: its workers share the parent process."""
    return os.path.join(tempfile.gettempdir(), f"lineage-gateway-{os.getppid()}.sock")


def run_forward(predictor: Any, features: Any, bf16: bool) -> Any:
    with precision(predictor, bf16):
        return predictor.forward(features)


def precision(predictor: Any, bf16: bool) -> AbstractContextManager[Any]:
    """bfloat16 autocast on the model's device when asked (entered in the thread that runs the
    forward pass, where autocast state lives), else nothing."""
    if not bf16:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=predictor.device.type, dtype=torch.bfloat16)


class LocalDevice:
    """Each worker runs the forward pass on its own copy of the model."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.bf16 = settings.bf16
        self.metrics = metrics
        self.in_flight = 1

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def offer(self, model: LoadedModel) -> None:
        pass

    def forward(self, model: LoadedModel, features: Any, rows: int) -> Any:
        raw = run_forward(model.predictor, features, self.bf16)
        self.metrics.safely(lambda: self.metrics.device_batch_size.observe(rows))
        return raw

    def describe(self) -> dict[str, Any]:
        return {"shared": False}


@dataclass
class Chunk:
    """One worker's preprocessed batch, waiting for the device."""

    predictor: Any
    features: Any
    rows: int


class DeviceMiss(Exception):
    """The shared device did not answer this batch (the worker answers it on its own copy);
    ``reason`` is the fallback's metric label. Never a refusal: no client sees it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SharedDevice:
    """One device batcher for all workers, owned by the worker that holds the lock file."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics, path: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.path = path
        self.local = LocalDevice(settings, metrics)
        self.in_flight = 2
        self._models: dict[str, Any] = {}  # version → predictor, newest last
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock_fd: int | None = None
        self._batcher: Batcher[Chunk, Any] | None = None  # only in the owner
        self._server: asyncio.AbstractServer | None = None
        self._client = threading.local()  # a connection per batch thread
        self._sockets: list[socket.socket] = []

    @property
    def owner(self) -> bool:
        return self._batcher is not None

    def describe(self) -> dict[str, Any]:
        return {"shared": True, "owner": self.owner, "worker_pid": os.getpid(), "socket": self.path}

    def offer(self, model: LoadedModel) -> None:
        self._models[model.version] = model.predictor
        while len(self._models) > KEEP_VERSIONS:
            del self._models[next(iter(self._models))]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._claim()

    async def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._batcher is not None:
            await self._batcher.drain()
            await self._batcher.stop()
            self._batcher = None
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            release(self._lock_fd)
            self._lock_fd = None

    # -- the owner --------------------------------------------------------------------------
    async def _claim(self) -> bool:
        """Become the owner if no live worker is; the kernel drops the lock when its holder dies."""
        if self._lock_fd is not None:
            return True
        fd = try_lock(f"{self.path}.lock")
        if fd is None:
            return False
        self._lock_fd = fd
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by an owner that died
        batcher: Batcher[Chunk, Any] = Batcher(
            self._run,
            max_batch_size=self.settings.max_batch_size,
            # No window here: the workers already waited for theirs, and with two batches in
            # flight each, whatever queues while the device is busy goes next, merged.
            max_wait_s=0.0,
            max_queue=self.settings.max_queue,
            weight=lambda chunk: chunk.rows,
            thread_name="shared-device",
        )
        batcher.start()
        self._batcher = batcher
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        log.info("this worker (pid %d) owns the shared device at %s", os.getpid(), self.path)
        return True

    def _run(self, chunks: list[Chunk]) -> list[Any]:
        """Merge the chunks of each model version, one forward pass each, split the results."""
        results: list[Any] = [None] * len(chunks)
        groups: dict[int, list[int]] = {}
        for i, chunk in enumerate(chunks):
            groups.setdefault(id(chunk.predictor), []).append(i)
        for members in groups.values():
            predictor = chunks[members[0]].predictor
            parts = [chunks[i].features for i in members]
            sizes = [chunks[i].rows for i in members]
            merged = parts[0] if len(parts) == 1 else predictor.merge(parts)
            raw = run_forward(predictor, merged, self.settings.bf16)
            self._observe(sum(sizes))
            pieces = [raw] if len(parts) == 1 else predictor.split(raw, sizes)
            for i, piece in zip(members, pieces, strict=True):
                results[i] = piece
        return results

    def _observe(self, rows: int) -> None:
        self.metrics.safely(lambda: self.metrics.device_batch_size.observe(rows))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection per worker; each sends one batch at a time."""
        try:
            while (body := await framing.read_stream(reader)) is not None:
                reply, data = await self._answer(*framing.parse_message(body))
                await framing.write_stream(writer, *framing.message(reply, data))
        except (EOFError, ConnectionError):
            pass  # the worker went away, mid-frame
        finally:
            writer.close()

    async def _answer(
        self, header: dict[str, Any], payload: memoryview
    ) -> tuple[dict[str, Any], bytes]:
        predictor = self._models.get(str(header.get("version")))
        if predictor is None or self._batcher is None:
            return {"miss": "version"}, b""
        try:
            features = decode(header["features"], payload)
            (raw,) = await self._batcher.submit([Chunk(predictor, features, int(header["rows"]))])
            meta, data = encode(raw)
        except Overloaded as exc:
            return {"miss": "error", "detail": str(exc)}, b""
        except Exception as exc:
            log.exception("shared device failed a batch of v%s", header.get("version"))
            return {"miss": "error", "detail": f"{type(exc).__name__}: {exc}"}, b""
        return {"raw": meta}, data

    # -- every worker -----------------------------------------------------------------------
    def forward(self, model: LoadedModel, features: Any, rows: int) -> Any:
        try:
            return self._on_device(model, features, rows)
        except DeviceMiss as exc:
            reason = exc.reason
            log.warning("answering a batch of %d on this worker's copy (%s)", rows, exc)
        except (OSError, EOFError) as exc:  # EOFError: the owner died mid-frame
            reason = "unreachable"
            log.warning("shared device at %s unreachable (%s); answering locally", self.path, exc)
            self._close_client()
            self._try_to_claim()
        self.metrics.safely(lambda: self.metrics.device_fallbacks.labels(reason).inc())
        return self.local.forward(model, features, rows)

    def _on_device(self, model: LoadedModel, features: Any, rows: int) -> Any:
        loop = self._loop
        batcher = self._batcher
        if batcher is not None and loop is not None:  # this worker is the owner
            chunk = Chunk(model.predictor, features, rows)
            future = asyncio.run_coroutine_threadsafe(batcher.submit([chunk]), loop)
            try:
                return future.result(timeout=self.settings.device_timeout_s)[0]
            except Overloaded as exc:
                raise DeviceMiss("error", str(exc)) from exc
        try:
            meta, data = encode(features)
        except TypeError as exc:
            raise DeviceMiss("unsupported", str(exc)) from exc
        sock = self._connect()
        header = {"version": model.version, "rows": rows, "features": meta}
        framing.write(sock, *framing.message(header, data))
        body = framing.read(sock)
        if body is None:
            raise ConnectionResetError("the shared device closed the connection")
        reply, payload = framing.parse_message(body)
        if "miss" in reply:
            raise DeviceMiss(str(reply["miss"]), str(reply.get("detail", "")))
        return decode(reply["raw"], payload)

    def _connect(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._client, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.settings.device_timeout_s)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._client.sock = sock
            self._sockets.append(sock)
        return sock

    def _close_client(self) -> None:
        """Drop this batch thread's connection."""
        sock = getattr(self._client, "sock", None)
        if sock is not None:
            sock.close()
            self._sockets.remove(sock)
            self._client.sock = None

    def _try_to_claim(self) -> None:
        """From the batch thread: take over the device if its owner is gone."""
        if self._loop is None or self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._claim(), self._loop)
        with contextlib.suppress(Exception):
            future.result(timeout=self.settings.device_timeout_s)


# -- the wire: a JSON header and raw bytes ----------------------------------------------------
def encode(value: Any) -> tuple[dict[str, Any], bytes]:
    """A tensor, an array or a JSON list → (description, bytes)."""
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous().numpy()
        return {"kind": "tensor", "dtype": array.dtype.str, "shape": list(array.shape)}, (
            array.tobytes()
        )
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {"kind": "array", "dtype": array.dtype.str, "shape": list(array.shape)}, (
            array.tobytes()
        )
    if isinstance(value, list):
        return {"kind": "json"}, json.dumps(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to the shared device")


def decode(meta: dict[str, Any], data: framing.Bytes) -> Any:
    """What :func:`encode` described, in memory of its own (``data`` may be a view of a frame)."""
    import numpy as np
    import torch

    if meta["kind"] == "json":
        return json.loads(bytes(data))
    array = np.frombuffer(bytearray(data), dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
    return torch.from_numpy(array) if meta["kind"] == "tensor" else array
