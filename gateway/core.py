"""The transport-agnostic core: business JSON in, answer with model lineage out."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.batching import Batcher, BatchStats, check_outputs
from gateway.device import Device, make_device
from gateway.errors import (
    BadRequest,
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
Answer = tuple[BaseModel, str]  # an answered object and its request id
MAX_BACKOFF_S = 30.0
"""The alias watcher's longest wait between reads while the registry cannot be read."""


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(body: bytes, *, constants: bool = False) -> Any:
    """Strict JSON: NaN and Infinity are refused (Python's json accepts them by default) unless
    ``constants`` (OIP tensors, where NaN marks a missing optional number and a required field
    refuses it by name)."""
    try:
        if constants:
            return json.loads(body)
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc


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


@dataclass(frozen=True)
class Answered:
    """Objects answered by one model, with their request ids (the keys of ``/feedback``)."""

    model: LoadedModel
    lineage: dict[str, str]
    answers: list[BaseModel]
    request_ids: list[str]


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
            listener(full)

    def overload(self) -> Overloaded:
        """The refusal of a request that finds the serving queue full."""
        return self.served.batcher.overload()

    async def answer(self, validate: Callable[[LoadedModel], list[BaseModel]]) -> Answered:
        """Validate with ``validate`` against the model serving now, answer the objects in its
        batches and log them: the one path behind every protocol."""
        (answered,) = await self.answer_together([validate])
        if isinstance(answered, GatewayError):
            raise answered
        return answered

    async def answer_together(
        self, validates: Sequence[Callable[[LoadedModel], list[BaseModel]]]
    ) -> list[Answered | GatewayError]:
        """:meth:`answer` for calls that arrived together: each call's objects are validated on
        their own (a refusal is that call's answer alone), and all of them go to the batcher in
        one submission. Overload and failed batches raise, for every call alike."""
        served = self.served
        checked: list[list[BaseModel] | GatewayError] = []
        for validate in validates:
            try:
                with self.metrics.timed("validate"):
                    checked.append(self._checked(validate, served.model))
            except GatewayError as exc:
                checked.append(exc)
        items = [item for objects in checked if isinstance(objects, list) for item in objects]
        answered = await served.batcher.submit(items) if items else []
        results: list[Answered | GatewayError] = []
        start = 0
        for objects in checked:
            if isinstance(objects, GatewayError):
                results.append(objects)
                continue
            part = answered[start : start + len(objects)]
            start += len(objects)
            answers, ids = [answer for answer, _ in part], [rid for _, rid in part]
            results.append(Answered(served.model, served.lineage, answers, ids))
        return results

    async def predict_one(self, payload: Any) -> dict[str, Any]:
        return single(await self.answer(lambda model: [validate_one(model, payload)]))

    async def predict_many(self, payload: Any) -> dict[str, Any]:
        limit = self.settings.max_bulk
        return bulk(await self.answer(lambda model: validate_many(model, payload, limit)))

    async def answer_objects(self, objects: Sequence[BaseModel]) -> Answered:
        """:meth:`answer` for objects a caller has validated already (BentoML's typed API)."""
        limit = self.settings.max_bulk
        return await self.answer(lambda model: retyped(model, objects, limit))

    def feedback(self, payload: Any) -> dict[str, Any]:
        """Ground truth for past answers: ``{"request_id": ..., "label": ...}`` or a list of
        them under ``feedback``."""
        if self.predictions is None:
            raise Disabled("feedback needs the prediction log (GATEWAY_LOG_PREDICTIONS)")
        limit = self.settings.max_bulk
        return record_feedback(
            self.predictions.store, self.served.model, payload, limit, self.metrics
        )

    def _checked(self, validate: Callable[..., T], model: LoadedModel) -> T:
        try:
            return validate(model)
        except (InvalidInput, InvalidTensor) as exc:
            self.metrics.safely(functools.partial(self._count_refusal, exc, model))
            raise

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


def single(answered: Answered) -> dict[str, Any]:
    """The business-JSON answer to one object."""
    return {
        "prediction": answered.answers[0].model_dump(mode="json"),
        "request_id": answered.request_ids[0],
        **answered.lineage,
    }


def bulk(answered: Answered) -> dict[str, Any]:
    """The business-JSON answer to a list of objects."""
    return {
        "predictions": [a.model_dump(mode="json") for a in answered.answers],
        "request_ids": answered.request_ids,
        **answered.lineage,
    }


def bulk_key(model: LoadedModel) -> str:
    return f"{model.input_key}s"


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


def _expect_only(payload: Any, key: str, what: str) -> Any:
    if not isinstance(payload, Mapping):
        raise InvalidInput(
            f"expected a JSON object with the key {key!r}",
            [{"field": "body", "message": f"expected an object, got {type(payload).__name__}"}],
        )
    extra = sorted(set(payload) - {key})
    if key not in payload or extra:
        raise InvalidInput(
            f"expected exactly one key {key!r} holding {what}",
            [{"field": k, "message": "unexpected key"} for k in extra]
            or [{"field": key, "message": "field required"}],
        )
    return payload[key]


def _validate(model: LoadedModel, value: Any, where: str) -> BaseModel:
    try:
        return model.input_model.model_validate(value)
    except ValidationError as exc:
        details = [
            {
                "field": ".".join(str(p) for p in (where, *err["loc"])),
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors(include_url=False)
        ]
        raise InvalidInput(
            f"invalid {model.input_model.__name__}: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in details),
            details,
        ) from exc


def validate_one(model: LoadedModel, payload: Any) -> BaseModel:
    key = model.input_key
    return _validate(model, _expect_only(payload, key, f"a {model.input_model.__name__}"), key)


def _counted(model: LoadedModel, values: Any, limit: int) -> list[Any]:
    """``values`` when it is a list of 1 to ``limit`` objects; else the refusal, named by the
    bulk key."""
    if not isinstance(values, list) or not values or len(values) > limit:
        key = bulk_key(model)
        got = f"{len(values)} items" if isinstance(values, list) else type(values).__name__
        raise InvalidInput(
            f"{key} must be a list of 1 to {limit} objects, got {got}",
            [{"field": key, "message": f"expected a list of 1 to {limit} objects, got {got}"}],
        )
    return values


def validate_many(model: LoadedModel, payload: Any, limit: int) -> list[BaseModel]:
    key = bulk_key(model)
    values = _expect_only(payload, key, f"a list of {model.input_model.__name__}")
    return [
        _validate(model, value, f"{key}.{i}")
        for i, value in enumerate(_counted(model, values, limit))
    ]


def retyped(model: LoadedModel, objects: Sequence[BaseModel], limit: int) -> list[BaseModel]:
    """``objects``, validated elsewhere, as ``model``'s input class: the same objects when they
    are of it, else validated again (a swap can bring another pipeline's class)."""
    objects = _counted(model, list(objects), limit)
    cls = model.input_model
    if all(type(o) is cls for o in objects):
        return objects
    if len(objects) == 1:
        return [_validate(model, objects[0].model_dump(), model.input_key)]
    key = bulk_key(model)
    return [_validate(model, o.model_dump(), f"{key}.{i}") for i, o in enumerate(objects)]


def validate_feedback(model: LoadedModel, payload: Any, limit: int) -> list[tuple[str, Any]]:
    """``(request_id, label)`` pairs; the label must suit the pipeline's target."""
    if isinstance(payload, Mapping) and "feedback" in payload:
        entries = _expect_only(payload, "feedback", "a list of {request_id, label} objects")
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
