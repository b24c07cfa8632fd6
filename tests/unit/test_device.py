"""The shared device's link: the features and results the pipelines send cross it unchanged, a
worker's batch is answered by the owner's device batcher, and every way the owner can fail to
answer sends the batch back to the worker's own copy under its fallback label. Two
:class:`SharedDevice` in one process stand for two workers; a stand-in predictor stands for the
model, which is not under test."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from gateway import framing
from gateway.device import SharedDevice, decode, encode
from gateway.locks import release, try_lock
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings

FEATURES = torch.arange(6, dtype=torch.float32).reshape(3, 2)


# -- the wire ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,  # loans' features
        torch.int64,  # reviews' token ids
        torch.float64,
        torch.float16,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    ],
)
@pytest.mark.parametrize("shape", [(3, 2), (4,), (0, 5), (2, 3, 4)])
def test_tensors_cross_the_wire_unchanged(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = (torch.arange(int(np.prod(shape))).reshape(shape) % 7).to(dtype)
    back = _across(tensor)
    assert isinstance(back, torch.Tensor)
    assert back.dtype == dtype
    assert torch.equal(back, tensor)


def test_a_tensor_that_is_a_view_crosses_as_its_values() -> None:
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()[1:]  # not contiguous
    assert torch.equal(_across(tensor), tensor)


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0, 1, 5),  # loans' results: float64 probabilities
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.arange(4, dtype=">f8"),  # not this machine's byte order
        np.zeros((0, 3), dtype=np.float32),
        np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
    ],
)
def test_arrays_cross_the_wire_unchanged(array: np.ndarray) -> None:
    back = _across(array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("value", [[0.25, 0.5, 1.0], [], [[1, 2], [3, 4]], ["a", None, True]])
def test_lists_cross_the_wire_as_json(value: list[Any]) -> None:
    assert _across(value) == value  # reviews' results: a list of probabilities


@pytest.mark.parametrize(
    "value",
    [
        {"ids": torch.zeros(2)},
        (torch.zeros(2), torch.ones(2)),
        torch.zeros(2, dtype=torch.bfloat16),  # numpy has no bfloat16
        "text",
    ],
    ids=["dict", "tuple", "bfloat16", "str"],
)
def test_what_the_wire_cannot_carry_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        encode(value)


def test_a_decoded_value_owns_its_memory() -> None:
    meta, data = encode(FEATURES)
    body = bytearray(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of tensors over read-only buffers
        tensor = decode(meta, memoryview(body))
    body[:] = bytes(len(body))  # the frame's buffer is reused
    assert torch.equal(tensor, FEATURES)
    tensor += 1
    assert torch.equal(tensor, FEATURES + 1)


def _across(value: Any) -> Any:
    """``value`` through a whole frame: encoded, framed, read back, parsed, decoded."""
    meta, data = encode(value)
    written = framing.frame(*framing.message({"raw": meta}, data))
    body = framing.read(io.BytesIO(written))
    assert body is not None
    header, payload = framing.parse_message(body)
    return decode(header["raw"], payload)


# -- the link ---------------------------------------------------------------------------------
class Doubler:
    """A stand-in model: doubles its features, keeps the rows of each forward pass, and can be
    told to fail or to hold its first forward pass until ``gate`` opens."""

    def __init__(self, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.device = torch.device("cpu")
        self.fail = fail
        self.gate = gate
        self.passes: list[int] = []
        self.entered = threading.Event()

    def forward(self, features: Any) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(2)
        if self.fail:
            raise RuntimeError("the device fell over")
        x = features["x"] if isinstance(features, dict) else features
        self.passes.append(len(x))
        result: np.ndarray = (x * 2).numpy().astype(np.float64)
        return result

    def merge(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts))

    def split(self, raw: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
        bounds = list(itertools.accumulate(sizes, initial=0))
        return [raw[start:end] for start, end in itertools.pairwise(bounds)]


@pytest.fixture
def path() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="gw-dev-", dir="/tmp")  # short: Unix socket paths
    yield str(Path(folder) / "device.sock")
    shutil.rmtree(folder, ignore_errors=True)


def worker(path: str, predictor: Doubler, version: str = "1") -> tuple[SharedDevice, LoadedModel]:
    """A worker's device serving ``version`` on ``predictor``, its own copy."""
    settings = GatewaySettings(
        shared_device="on", device_socket=path, device_timeout_s=2.0, poll_interval_s=0
    )
    device = SharedDevice(settings, GatewayMetrics(), path)
    model = LoadedModel(
        name="toy",
        version=version,
        run_id="run",
        input_key="x",
        input_model=BaseModel,
        output_model=BaseModel,
        predictor=predictor,
        pipeline=None,
    )
    device.offer(model)
    return device, model


@contextlib.asynccontextmanager
async def started(*devices: SharedDevice) -> AsyncIterator[None]:
    """Start ``devices`` in order (the first to start owns the device); stop them in reverse."""
    try:
        for device in devices:
            await device.start()
        yield
    finally:
        for device in reversed(devices):
            await device.stop()


async def forward(device: SharedDevice, model: LoadedModel, features: Any) -> Any:
    """From a batch thread, as a worker calls it."""
    return await asyncio.to_thread(device.forward, model, features, len(features))


def fallbacks(device: SharedDevice) -> dict[str, float]:
    registry = device.metrics.registry
    found = {}
    for reason in ("unreachable", "version", "error", "unsupported"):
        value = registry.get_sample_value("gateway_device_fallbacks_total", {"reason": reason})
        if value:
            found[reason] = value
    return found


def device_rows(device: SharedDevice) -> float:
    return device.metrics.registry.get_sample_value("gateway_device_batch_size_sum") or 0.0


@pytest.mark.anyio
async def test_a_workers_batch_is_answered_through_the_owner(path: str) -> None:
    owner, owned = worker(path, Doubler())
    other, mine = worker(path, Doubler())
    async with started(owner, other):
        assert (owner.owner, other.owner) == (True, False)
        np.testing.assert_array_equal(await forward(other, mine, FEATURES), FEATURES * 2)
        np.testing.assert_array_equal(await forward(owner, owned, FEATURES[:1]), [[0, 2]])
    assert owned.predictor.passes == [3, 1]
    assert mine.predictor.passes == []
    assert (device_rows(owner), device_rows(other)) == (4, 0)
    assert fallbacks(other) == {}


@pytest.mark.anyio
async def test_batches_queued_behind_a_busy_device_share_one_forward_pass(path: str) -> None:
    gate = threading.Event()
    owner, owned = worker(path, Doubler(gate=gate))
    other, mine = worker(path, Doubler())
    async with started(owner, other):
        try:
            first = asyncio.ensure_future(forward(other, mine, FEATURES))
            assert await asyncio.to_thread(owned.predictor.entered.wait, 2)  # the device is busy
            rest = [asyncio.ensure_future(forward(other, mine, FEATURES[:n])) for n in (1, 2)]
            batcher = owner._batcher  # the owner's device batcher, where the two queue
            await _until(lambda: batcher is not None and batcher.queued == 2)
        finally:
            gate.set()
        answers = await asyncio.gather(first, *rest)
    for got, n in zip(answers, (3, 1, 2), strict=True):
        np.testing.assert_array_equal(got, FEATURES[:n] * 2)
    assert owned.predictor.passes == [3, 3]  # the two that queued, merged
    assert fallbacks(other) == {}


@pytest.mark.anyio
async def test_a_version_the_owner_lacks_is_answered_on_the_workers_copy(path: str) -> None:
    owner, owned = worker(path, Doubler())
    other, mine = worker(path, Doubler(), version="2")
    async with started(owner, other):
        np.testing.assert_array_equal(await forward(other, mine, FEATURES), FEATURES * 2)
    assert (owned.predictor.passes, mine.predictor.passes) == ([], [3])
    assert fallbacks(other) == {"version": 1}
    assert device_rows(other) == 3  # the worker's own forward pass


@pytest.mark.anyio
async def test_a_batch_the_owner_fails_is_answered_on_the_workers_copy(path: str) -> None:
    owner, _ = worker(path, Doubler(fail=True))
    other, mine = worker(path, Doubler())
    async with started(owner, other):
        np.testing.assert_array_equal(await forward(other, mine, FEATURES), FEATURES * 2)
        np.testing.assert_array_equal(await forward(other, mine, FEATURES), FEATURES * 2)
    assert mine.predictor.passes == [3, 3]  # the connection survives a failed batch
    assert fallbacks(other) == {"error": 2}


@pytest.mark.anyio
async def test_features_the_wire_cannot_carry_stay_on_the_worker(path: str) -> None:
    owner, owned = worker(path, Doubler())
    other, mine = worker(path, Doubler())
    async with started(owner, other):
        got = await forward(other, mine, {"x": FEATURES})
    np.testing.assert_array_equal(got, FEATURES * 2)
    assert (owned.predictor.passes, mine.predictor.passes) == ([], [3])
    assert fallbacks(other) == {"unsupported": 1}


@pytest.mark.anyio
async def test_an_unreachable_device_falls_back_and_is_taken_over_once_free(path: str) -> None:
    held = try_lock(f"{path}.lock")  # an owner that holds the lock but serves no socket
    assert held is not None
    alone, model = worker(path, Doubler())
    async with started(alone):
        assert not alone.owner
        np.testing.assert_array_equal(await forward(alone, model, FEATURES), FEATURES * 2)
        assert not alone.owner  # the lock is still held
        release(held)  # the owner dies
        np.testing.assert_array_equal(await forward(alone, model, FEATURES), FEATURES * 2)
        assert alone.owner
        np.testing.assert_array_equal(await forward(alone, model, FEATURES), FEATURES * 2)
    assert fallbacks(alone) == {"unreachable": 2}
    assert model.predictor.passes == [3, 3, 3]  # the last one through its own device batcher


@pytest.mark.anyio
async def test_an_owner_that_dies_mid_answer_is_unreachable(path: str) -> None:
    held = try_lock(f"{path}.lock")
    assert held is not None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def die_mid_answer() -> None:
        conn, _ = listener.accept()
        with conn:
            assert framing.read(conn) is not None  # the batch arrives whole
            conn.sendall(framing.frame(*framing.message({"raw": {}}, b"12345678"))[:10])

    owner = threading.Thread(target=die_mid_answer)
    owner.start()
    alone, model = worker(path, Doubler())
    try:
        async with started(alone):
            np.testing.assert_array_equal(await forward(alone, model, FEATURES), FEATURES * 2)
    finally:
        owner.join(2)
        listener.close()
        release(held)
    assert fallbacks(alone) == {"unreachable": 1}
    assert model.predictor.passes == [3]


async def _until(check: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.002)
