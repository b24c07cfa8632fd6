"""Stand-ins for fast tests of the one answer path (codecs, core, adapters): a served model built
by hand around a rule instead of a trained network, settings that bind nothing and poll nothing,
a started core, and an in-process client over the gateway's HTTP app.

The business classes are real pipelines' (loans; the thermostat fixture for a swap to another
pipeline): validation, refusals and tensor signatures are the gateway's own. Only the predictor
is a stand-in, because it is not what these tests are about.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import torch
from starlette.applications import Starlette
from starlette.types import ASGIApp

from gateway.core import GatewayCore
from gateway.http import PredictionKey, ShedWhenFull, create_app
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.settings import GatewaySettings
from tests.fixtures.extra_pipelines.thermostat import PIPELINE as THERMOSTAT
from tests.fixtures.extra_pipelines.thermostat import Advice, Reading
from tests.traffic import APPLICATION
from trainers.pipelines.loans import PIPELINE as LOANS
from trainers.pipelines.loans import Decision, LoanApplication, LoanDecision

APPROVE_BELOW, DECLINE_ABOVE = 0.10, 0.30  # the loans pipeline's default thresholds
HELD_FOR_S = 5.0
"""The longest a held forward pass waits for :meth:`Held.release` before it fails."""

SAFE = {**APPLICATION, "income": 200000.0, "loan_amount": 5000.0}  # risk 0.024: approve
RISKY = {**APPLICATION, "income": 12000.0, "loan_amount": 25000.0}  # risk 0.68: decline


def risk(application: dict[str, Any]) -> float:
    """What :class:`RiskRule` answers for ``application``: the loan's share of income + loan."""
    loan, income = application["loan_amount"], application["income"]
    return float(loan / (loan + income))


def decision(probability: float) -> Decision:
    if probability < APPROVE_BELOW:
        return "approve"
    return "decline" if probability >= DECLINE_ABOVE else "review"


class Held:
    """A predictor's forward pass that can be held (the batch thread waits inside it, so a
    queue fills behind it) and records the size of every batch it runs."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.failure: Exception | None = None
        self._go = threading.Event()
        self._go.set()

    def hold(self) -> None:
        self.entered.clear()
        self._go.clear()

    def release(self) -> None:
        self._go.set()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the forward pass for the block; released however the block ends."""
        self.hold()
        try:
            yield
        finally:
            self.release()

    async def running(self) -> None:
        """Wait until a batch is inside the (held) forward pass."""
        if not await asyncio.to_thread(self.entered.wait, HELD_FOR_S):
            raise AssertionError(f"no batch reached the forward pass in {HELD_FOR_S} s")

    def _pass(self, rows: int) -> None:
        self.batches.append(rows)
        self.entered.set()
        if not self._go.wait(HELD_FOR_S):
            raise TimeoutError("the test held the forward pass and never released it")
        if self.failure is not None:
            raise self.failure


class RiskRule(Held):
    """A loans predictor without a network: the default probability is the loan's share of
    income + loan (:func:`risk`), decided with the pipeline's default thresholds."""

    def preprocess(self, inputs: Sequence[LoanApplication]) -> list[tuple[float, float]]:
        return [(a.loan_amount, a.income) for a in inputs]

    def forward(self, features: list[tuple[float, float]]) -> list[float]:
        self._pass(len(features))
        return [loan / (loan + income) for loan, income in features]

    def postprocess(
        self, raw: list[float], inputs: Sequence[LoanApplication]
    ) -> list[LoanDecision]:
        return [LoanDecision(default_probability=p, decision=decision(p)) for p in raw]


class ColdRule(Held):
    """A thermostat predictor: heat below 18 degrees."""

    def preprocess(self, inputs: Sequence[Reading]) -> list[float]:
        return [r.temperature for r in inputs]

    def forward(self, features: list[float]) -> list[bool]:
        self._pass(len(features))
        return [t < 18 for t in features]

    def postprocess(self, raw: list[bool], inputs: Sequence[Reading]) -> list[Advice]:
        return [Advice(heat=h) for h in raw]


def loans_model(version: str = "1", predictor: RiskRule | None = None) -> LoadedModel:
    """Version ``version`` of the loans pipeline, answered by ``predictor`` (a new rule)."""
    return LoadedModel(
        name=LOANS.name,
        version=version,
        run_id=f"run-{version}",
        input_key=LOANS.input_key,
        input_model=LOANS.Input,
        output_model=LOANS.Output,
        predictor=predictor or RiskRule(),
        pipeline=LOANS,
    )


def thermostat_model(version: str = "7") -> LoadedModel:
    return LoadedModel(
        name=THERMOSTAT.name,
        version=version,
        run_id=f"run-{version}",
        input_key=THERMOSTAT.input_key,
        input_model=THERMOSTAT.Input,
        output_model=THERMOSTAT.Output,
        predictor=ColdRule(),
        pipeline=THERMOSTAT,
    )


def quiet_settings(**overrides: Any) -> GatewaySettings:
    """A worker's settings that bind no port, poll no registry, log no prediction and run the
    forward pass here; a batch waits 1 ms for company."""
    options: dict[str, Any] = {
        "poll_interval_s": 0,
        "log_predictions": False,
        "data_port": 0,
        "grpc_port": 0,
        "shared_device": "off",
        "batch_wait_ms": 1,
    }
    return GatewaySettings(**(options | overrides))


Loader = Callable[[GatewaySettings, str | None], LoadedModel]


def make_core(
    model: LoadedModel | None = None, *, loader: Loader | None = None, **settings: Any
) -> GatewayCore:
    """A core over ``model`` (default: loans v1) with fresh metrics; ``loader`` is what a swap
    loads (default: refuse, as a registry out of reach would)."""
    served = model or loans_model()
    return GatewayCore(served, quiet_settings(**settings), GatewayMetrics(), loader or unreachable)


class Versions:
    """A loader for swaps: hands out ``models`` in turn and records the versions asked for
    (``None``: the alias's)."""

    def __init__(self, *models: LoadedModel) -> None:
        self.models = list(models)
        self.asked: list[str | None] = []

    def __call__(self, settings: GatewaySettings, version: str | None) -> LoadedModel:
        self.asked.append(version)
        return self.models.pop(0)


def unreachable(settings: GatewaySettings, version: str | None) -> LoadedModel:
    raise ConnectionError("no registry here")


def predictor(core: GatewayCore) -> Any:
    """The stand-in predictor of the model ``core`` serves now."""
    return core.served.model.predictor


@contextlib.asynccontextmanager
async def started(core: GatewayCore) -> AsyncIterator[GatewayCore]:
    await core.start()
    try:
        yield core
    finally:
        await core.stop()


async def fill_queue(core: GatewayCore, request: Callable[[], Any]) -> list[asyncio.Task[Any]]:
    """With the served predictor held: one call inside the forward pass, then calls until the
    queue is full (``GATEWAY_MAX_QUEUE`` objects waiting). Returns the calls' tasks."""
    first = asyncio.create_task(request())
    await predictor(core).running()
    waiting = [asyncio.create_task(request()) for _ in range(core.settings.max_queue)]
    while core.served.batcher.queued < core.settings.max_queue:
        await asyncio.sleep(0)
    return [first, *waiting]


def sample(core: GatewayCore, name: str, **labels: str) -> float:
    """A sample of ``core``'s metrics, read from its registry (0 when the series is absent)."""
    value = core.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def data_plane(core: GatewayCore) -> tuple[Starlette, ASGIApp]:
    """The gateway's app (:func:`gateway.http.create_app`: its routes and lifespan) and the
    same routes as the worker's data plane serves them, behind the shedding and API-key
    middlewares."""
    app = create_app(lambda: core)
    return app, ShedWhenFull(PredictionKey(app, core.settings.api_key or ""), lambda: core)


@contextlib.asynccontextmanager
async def client(core: GatewayCore) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client to :func:`data_plane` in this process, while the app's lifespan (its
    worker: the core, and with :func:`quiet_settings` nothing else) runs. An error the app
    raises comes back as the 500 a server would send."""
    app, plane = data_plane(core)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=plane, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


def grpc_server() -> Any:
    """:mod:`gateway.oip.grpc_server` (its messages live in a descriptor pool of their own, so
    it imports beside tritonclient's stubs)."""
    return importlib.import_module("gateway.oip.grpc_server")
