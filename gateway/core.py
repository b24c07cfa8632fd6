"""The transport-agnostic core: a request, through its protocol's codec (:mod:`gateway.codecs`),
becomes validated business objects; the core answers them in the served model's batches, with
the model's lineage, logs them, and follows the registry alias to swap models."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from gateway.batching import Batcher, BatchStats, check_outputs
from gateway.codecs import Answered, Codec, bulk_key, expect_only
from gateway.device import Device, make_device
from gateway.errors import (
    Disabled,
    GatewayError,
    InvalidInput,
    InvalidTensor,
    ModelUnavailable,
    Overloaded,
    StoreUnavailable,
)
from gateway.metrics import GatewayMetrics, outcome_field
from gateway.model import LoadedModel
from gateway.predlog import PredictionLog, request_ids
from gateway.settings import GatewaySettings
from gateway.store import Store
from trainers.sqlstore import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")  # a protocol's request
A = TypeVar("A")  # its reply
Answer = tuple[BaseModel, str]  # an answered object and its request id
MAX_BACKOFF_S = 30.0
"""The alias watcher's longest wait between reads while the registry cannot be read."""


class Served:
    """A loaded model with its own batcher: a request that starts on it finishes on it."""

    def __init__(
        self,
        model: LoadedModel,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        device: Device,
        predictions: PredictionLog | None = None,
        *,
        on_full: Callable[[bool], None] | None = None,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.device = device
        self.predictions = predictions
        self.lineage = {
            "model_name": model.name,
            "model_version": model.version,
            "run_id": model.run_id,
        }
        self.outcome = outcome_field(model.output_model)
        self.batcher: Batcher[BaseModel, Answer] = Batcher(
            self.run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_s=settings.batch_wait_ms / 1000,
            max_queue=settings.max_queue,
            on_batch=self.record_batch,
            in_flight=device.in_flight,
            on_full=on_full,
        )

    def run_batch(self, items: list[BaseModel]) -> list[Answer]:
        """The batch thread's work: the pipeline's stages, each timed (the forward pass runs
        where the device arrangement says: this worker, or the shared device batcher); then
        request ids for the answers, and the whole batch to the prediction log in one offer
        (never blocking), which costs far less per object than one offer per request."""
        model, metrics = self.model, self.metrics
        with metrics.timed("preprocess"):
            features = model.predictor.preprocess(items)
        with metrics.timed("model"):
            raw = self.device.forward(model, features, len(items))
        with metrics.timed("postprocess"):
            outputs: list[BaseModel] = model.predictor.postprocess(raw, items)
        check_outputs(items, outputs)
        ids = request_ids(len(items))
        if self.predictions is not None:
            self.predictions.offer(model.name, model.version, ids, items, outputs)
        self.metrics.safely(lambda: self.count(outputs))
        return list(zip(outputs, ids, strict=True))

    def count(self, outputs: list[BaseModel]) -> None:
        counts: dict[str, int] = {}
        for output in outputs:
            label = str(getattr(output, self.outcome)) if self.outcome else "answered"
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            self.metrics.predictions.labels(self.model.name, self.model.version, label).inc(n)

    def record_batch(self, stats: BatchStats) -> None:
        self.metrics.batch_size.observe(stats.size)
        self.metrics.batch_wait.observe(stats.oldest_wait_s)
        self.metrics.queue_depth.set(stats.queued_after)


class GatewayCore:
    """Validates business objects against the served pipeline and answers them in batches;
    follows the registry alias and swaps models without dropping a request."""

    def __init__(
        self,
        model: LoadedModel,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        loader: Callable[[GatewaySettings, str | None], LoadedModel] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader or _from_registry
        self.device = make_device(settings, metrics, model)
        self.device.offer(model)
        self.fullness: list[Callable[[bool], None]] = []
        """Told when the serving queue fills up (True) and has room again (False)."""
        self.served = Served(model, settings, metrics, self.device, on_full=self._tell_full)
        self.ready = False
        self._swap_lock = asyncio.Lock()
        self._refused: str | None = None  # a version that failed; retried only on reload
        self._watcher: asyncio.Task[None] | None = None
        self.predictions: PredictionLog | None = None

    async def start(self) -> None:
        await self.device.start()
        self.served.batcher.start()
        self._show(self.served.model, 1)
        if self.settings.poll_interval_s > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._follow_alias())
        # What exists now (libraries, the model) lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stall requests for 100+ ms under load.
        gc.collect()
        gc.freeze()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        await self.served.batcher.drain()
        await self.served.batcher.stop()
        await self.device.stop()

    def log_to(self, predictions: PredictionLog) -> None:
        """Offer every answered batch to ``predictions`` from now on."""
        self.predictions = self.served.predictions = predictions

    # -- requests ---------------------------------------------------------------------------
    def shed_if_full(self) -> None:
        """Refuse (:class:`Overloaded`) before any work while the serving queue is full."""
        self.served.batcher.check_room()

    def _tell_full(self, full: bool) -> None:
        for listener in self.fullness:
            try:
                listener(full)
            except Exception:  # one listener's failure keeps no other from hearing
                log.exception("queue listener failed")

    def overload(self) -> Overloaded:
        """The refusal of a request that finds the serving queue full."""
        return self.served.batcher.overload()

    async def answer(self, codec: Codec[R, A], request: R) -> A:
        """Answer ``request`` the one way every protocol is answered: ``codec`` decodes it
        against the model serving now, its objects are answered in that model's batches (and
        logged), and ``codec`` encodes the reply. A refusal raises."""
        (reply,) = await self.answer_together(codec, [request])
        if isinstance(reply, GatewayError):
            raise reply
        return reply

    async def answer_together(
        self, codec: Codec[R, A], requests: Sequence[R]
    ) -> list[A | GatewayError]:
        """:meth:`answer` for requests that arrived together (the gRPC front reads many at
        once): each is decoded on its own (a refusal is that request's reply alone), and all
        their objects go to the batcher in one submission. Overload and failed batches raise,
        for every request alike."""
        served = self.served
        decoded = [self._decoded(codec, served.model, request) for request in requests]
        items = [item for objects in decoded if isinstance(objects, list) for item in objects]
        answered = iter(await served.batcher.submit(items) if items else [])
        replies: list[A | GatewayError] = []
        for request, objects in zip(requests, decoded, strict=True):
            if isinstance(objects, GatewayError):
                replies.append(objects)
                continue
            part = [next(answered) for _ in objects]
            answers, ids = [answer for answer, _ in part], [rid for _, rid in part]
            one = Answered(served.model, served.lineage, answers, ids)
            replies.append(codec.encode(one, request))
        return replies

    def feedback(self, payload: Any) -> dict[str, Any]:
        """Ground truth for past answers: ``{"request_id": ..., "label": ...}`` or a list of
        them under ``feedback``."""
        if self.predictions is None:
            raise Disabled("feedback needs the prediction log (GATEWAY_LOG_PREDICTIONS)")
        limit = self.settings.max_bulk
        return record_feedback(
            self.predictions.store, self.served.model, payload, limit, self.metrics
        )

    def _decoded(
        self, codec: Codec[R, A], model: LoadedModel, request: R
    ) -> list[BaseModel] | GatewayError:
        """``request``'s objects, or its refusal (a field's refusal counted by field)."""
        try:
            with self.metrics.timed("validate"):
                return codec.decode(model, request)
        except (InvalidInput, InvalidTensor) as exc:
            self.metrics.safely(functools.partial(self._count_refusal, exc, model))
            return exc
        except GatewayError as exc:
            return exc

    def _count_refusal(self, exc: InvalidInput | InvalidTensor, model: LoadedModel) -> None:
        for detail in exc.details:
            self.metrics.validation_errors.labels(refusal_label(model, detail["field"])).inc()

    # -- swapping ---------------------------------------------------------------------------
    async def swap(self, version: str | None = None) -> dict[str, Any]:
        """Load ``version`` (default: the alias's) beside the current model, verify and warm it
        up, then switch new requests to it; in-flight requests finish on the old one."""
        async with self._swap_lock:
            current = self.served
            try:
                model = await asyncio.to_thread(self.loader, self.settings, version)
            except Exception as exc:
                self.metrics.safely(
                    lambda: self.metrics.swaps.labels(current.model.name, "refused").inc()
                )
                log.error("refused to swap to %s: %s", version or self.settings.model_uri, exc)
                if version is not None and type(exc) is not ModelUnavailable:
                    self._refused = version  # not retried until the alias moves (a registry
                    # out of reach, plain ModelUnavailable, is retried at the next read)
                return {"swapped": False, "error": str(exc), **current.lineage}
            if model.version == current.model.version:
                return {"swapped": False, **current.lineage}
            self._refused = None
            self.device.offer(model)
            fresh = Served(
                model,
                self.settings,
                self.metrics,
                self.device,
                self.predictions,
                on_full=self._tell_full,
            )
            fresh.batcher.start()
            current.batcher.on_full = None  # the fresh queue, empty, is the one that counts now
            self.served = fresh
            if current.batcher.full:
                self._tell_full(False)
            self._show(model, 1)
            self._show(current.model, 0)
            rollback = int(model.version) < int(current.model.version)
            self.metrics.safely(lambda: self._count_swap(model.name, rollback))
            log.info(
                "%s: now serving v%s (was v%s)%s",
                model.name,
                model.version,
                current.model.version,
                " — a rollback" if rollback else "",
            )
            await current.batcher.drain()
            await current.batcher.stop()
            return {"swapped": True, "previous_version": current.model.version, **fresh.lineage}

    def _count_swap(self, name: str, rollback: bool) -> None:
        self.metrics.swaps.labels(name, "swapped").inc()
        if rollback:
            self.metrics.rollbacks.labels(name).inc()

    def _show(self, model: LoadedModel, value: int) -> None:
        self.metrics.safely(
            lambda: self.metrics.model_info.labels(model.name, model.version, model.run_id).set(
                value
            )
        )

    async def _follow_alias(self) -> None:
        """Poll the registry alias; swap when it moves. A registry that cannot be read changes
        nothing (:func:`keep_polling`)."""
        client = self.settings.mlflow()
        name, alias = self.settings.pipeline, self.settings.alias

        async def read() -> str:
            mv = await asyncio.to_thread(client.get_model_version_by_alias, name, alias)
            return str(mv.version)

        async def use(version: str) -> None:
            if version not in (self.served.model.version, self._refused):
                await self.swap(version)

        what = f"{name}@{alias}"
        await keep_polling(read, use, self.settings.poll_interval_s, what, log)


async def keep_polling(
    read: Callable[[], Awaitable[T]],
    use: Callable[[T], Awaitable[None]],
    interval: float,
    what: str,
    logger: logging.Logger,
) -> None:
    """Every ``interval`` seconds, ``use`` what ``read`` returns. While ``read`` fails, say so
    once, wait twice as long after each failure (up to :data:`MAX_BACKOFF_S`), and say once
    when it reads again: an outage is two log lines, whatever its length."""
    wait, failing = interval, False
    while True:
        await asyncio.sleep(wait)
        try:
            value = await read()
        except Exception as exc:
            if not failing:
                logger.warning("cannot read %s; retrying with back-off: %s", what, _first_line(exc))
            failing, wait = True, min(max(wait * 2, interval), MAX_BACKOFF_S)
            continue
        if failing:
            logger.info("reading %s again", what)
        failing, wait = False, interval
        await use(value)


def _first_line(exc: Exception) -> str:
    """What went wrong, in one line (MLflow's errors carry pages of retry history)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def record_feedback(
    store: Store, model: LoadedModel, payload: Any, limit: int, metrics: GatewayMetrics
) -> dict[str, Any]:
    """Validate ground truth against ``model``'s target and record it in the shared store."""
    try:
        labels = validate_feedback(model, payload, limit)
    except InvalidInput:
        metrics.safely(lambda: metrics.feedback.labels("refused").inc())
        raise
    try:
        store.record_feedback(labels)
    except StoreError as exc:
        raise StoreUnavailable(f"feedback not recorded, send it again: {exc}") from exc
    metrics.safely(lambda: metrics.feedback.labels("recorded").inc(len(labels)))
    return {"recorded": len(labels)}


def _from_registry(settings: GatewaySettings, version: str | None) -> LoadedModel:
    from gateway.loader import load  # MLflow and torch: only where a model is loaded

    return load(settings, version)


REFUSAL_PLACES = frozenset({"body", "inputs", "outputs", "parameters"})
"""Where a refusal may point besides the model's own fields and keys: the whole body, or an
Open Inference Protocol request's tensor lists."""


def refusal_label(model: LoadedModel, field: Any) -> str:
    """The ``field`` label of a refusal, from names the served model defines only: a name a
    client chose (an unknown key, a tensor that does not exist) becomes ``unknown``, so junk
    cannot create new time series. List positions are left out (``applications.income``)."""
    known = {*REFUSAL_PLACES, model.input_key, bulk_key(model), *model.input_model.model_fields}
    parts = [p for p in str(field).split(".") if not p.isdigit()]
    return ".".join(p if p in known else "unknown" for p in parts) or "body"


def validate_feedback(model: LoadedModel, payload: Any, limit: int) -> list[tuple[str, Any]]:
    """``(request_id, label)`` pairs; the label must suit the pipeline's target."""
    if isinstance(payload, Mapping) and "feedback" in payload:
        entries = expect_only(payload, "feedback", "a list of {request_id, label} objects")
        if not isinstance(entries, list) or not entries or len(entries) > limit:
            raise InvalidInput(
                f"feedback must be a list of 1 to {limit} objects",
                [{"field": "feedback", "message": f"expected a list of 1 to {limit} objects"}],
            )
        where = [f"feedback.{i}" for i in range(len(entries))]
    else:
        entries, where = [payload], ["body"]
    kind = model.pipeline.target_kind()
    pairs = []
    for entry, place in zip(entries, where, strict=True):
        if not isinstance(entry, Mapping) or set(entry) != {"request_id", "label"}:
            raise InvalidInput(
                f"{place}: expected an object with exactly request_id and label",
                [{"field": place, "message": "expected exactly the keys request_id and label"}],
            )
        request_id, label = entry["request_id"], entry["label"]
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInput(
                f"{place}.request_id must be the request_id of an answer",
                [{"field": f"{place}.request_id", "message": "expected a non-empty string"}],
            )
        if not _label_fits(label, kind):
            expected = "a finite number or a boolean" if kind == "number" else "a non-empty string"
            raise InvalidInput(
                f"{place}.label must be {expected} (the {model.pipeline.target} of the object)",
                [{"field": f"{place}.label", "message": f"expected {expected}"}],
            )
        pairs.append((request_id, label))
    return pairs


def _label_fits(label: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(label, bool | int) or (isinstance(label, float) and math.isfinite(label))
    return isinstance(label, str) and bool(label)
