"""The one answer path (GatewayCore.answer / answer_together) on a started core with a rule for
a predictor: answers and lineage, one batch for requests that arrived together, refusals that
stay with their request, overload for the whole group, the validation metric's bounded labels,
hot swap with in-flight requests finishing on the old model, and the queue's fullness as the
gRPC front hears it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from gateway.codecs import BusinessJson, InferCall, Tensors, Typed
from gateway.core import refusal_label
from gateway.errors import GatewayError, InvalidInput, InvalidTensor, NotFound, Overloaded
from gateway.model import LoadedModel
from gateway.oip.tensors import Tensor
from gateway.settings import GatewaySettings
from tests.corekit import (
    RISKY,
    SAFE,
    Versions,
    decision,
    fill_queue,
    loans_model,
    make_core,
    predictor,
    risk,
    sample,
    started,
    thermostat_model,
)
from tests.traffic import APPLICATION
from trainers.pipelines.loans import LoanApplication

pytestmark = pytest.mark.anyio
ONE = BusinessJson()


def one(application: dict[str, Any]) -> dict[str, Any]:
    return {"application": application}


def answers(replies: list[dict[str, Any] | GatewayError]) -> list[dict[str, Any]]:
    """``replies``, which must all be answers."""
    refused = [r for r in replies if isinstance(r, GatewayError)]
    assert refused == []
    return [r for r in replies if not isinstance(r, GatewayError)]


def predicted(application: dict[str, Any]) -> dict[str, Any]:
    p = risk(application)
    return {"default_probability": p, "decision": decision(p)}


# -- answering ---------------------------------------------------------------------------------
async def test_an_answer_carries_the_prediction_its_request_id_and_the_lineage() -> None:
    async with started(make_core()) as core:
        reply = await core.answer(ONE, one(APPLICATION))
    assert reply["prediction"] == predicted(APPLICATION)
    assert reply["model_name"] == "loans"
    assert reply["model_version"] == "1"
    assert reply["run_id"] == "run-1"
    assert re.fullmatch("[0-9a-f]{32}", reply["request_id"])


async def test_each_answer_is_counted_by_its_predicted_class() -> None:
    async with started(make_core()) as core:
        for application in (SAFE, RISKY, RISKY):
            await core.answer(ONE, one(application))
        counted = {
            outcome: sample(
                core, "gateway_predictions_total", model="loans", version="1", outcome=outcome
            )
            for outcome in ("approve", "review", "decline")
        }
    assert counted == {"approve": 1, "review": 0, "decline": 2}


async def test_a_refusal_raises_from_answer_and_nothing_is_predicted() -> None:
    async with started(make_core()) as core:
        with pytest.raises(InvalidInput, match=r"application\.age"):
            await core.answer(ONE, one({**APPLICATION, "age": 7}))
    assert predictor(core).batches == []


async def test_requests_answered_together_go_to_the_device_as_one_batch() -> None:
    applications = [SAFE, RISKY, APPLICATION, SAFE, RISKY]
    async with started(make_core(max_batch_size=64)) as core:
        replies = answers(await core.answer_together(ONE, [one(a) for a in applications]))
        assert predictor(core).batches == [5]
        assert sample(core, "gateway_batch_size_count") == 1
        assert sample(core, "gateway_batch_size_sum") == 5
        for application in applications:  # the same requests one at a time: one batch each
            await core.answer(ONE, one(application))
        assert predictor(core).batches == [5, 1, 1, 1, 1, 1]
    assert [r["prediction"] for r in replies] == [predicted(a) for a in applications]
    assert len({r["request_id"] for r in replies}) == 5


async def test_bulk_and_single_requests_together_each_get_their_own_objects() -> None:
    bulk = BusinessJson(bulk=True)
    async with started(make_core()) as core:
        replies = answers(
            await core.answer_together(
                bulk, [{"applications": [SAFE, RISKY]}, {"applications": [APPLICATION]}]
            )
        )
        assert predictor(core).batches == [3]
    assert [[p["decision"] for p in r["predictions"]] for r in replies] == [
        ["approve", "decline"],
        ["review"],
    ]


async def test_a_refusal_is_that_requests_reply_alone() -> None:
    requests = [one(SAFE), one({**RISKY, "age": 12}), {"nothing": 1}, one(RISKY)]
    async with started(make_core()) as core:
        replies = await core.answer_together(ONE, requests)
        assert predictor(core).batches == [2]  # the two valid objects, together
    first, refused, unknown, last = replies
    assert isinstance(refused, InvalidInput)
    assert refused.details[0]["field"] == "application.age"
    assert isinstance(unknown, InvalidInput)
    good = answers([first, last])
    assert [g["prediction"] for g in good] == [predicted(SAFE), predicted(RISKY)]


async def test_requests_that_are_all_refused_reach_no_batch() -> None:
    async with started(make_core()) as core:
        replies = await core.answer_together(ONE, [{}, one({"age": 30})])
        assert all(isinstance(r, InvalidInput) for r in replies)
        assert predictor(core).batches == []
        assert sample(core, "gateway_batch_size_count") == 0


async def test_a_failed_batch_fails_every_request_of_the_group() -> None:
    async with started(make_core()) as core:
        predictor(core).failure = RuntimeError("device lost")
        with pytest.raises(RuntimeError, match="device lost"):
            await core.answer_together(ONE, [one(SAFE), one(RISKY)])
        predictor(core).failure = None
        assert (await core.answer(ONE, one(SAFE)))["prediction"] == predicted(SAFE)


async def test_typed_objects_and_tensors_take_the_same_path() -> None:
    tensors = [
        Tensor(k, "FP32" if isinstance(v, float) else "INT64", [1], [v])
        for k, v in SAFE.items()
        if not isinstance(v, str)
    ]
    tensors += [
        Tensor(k, "BYTES", [1], [v.encode()]) for k, v in SAFE.items() if isinstance(v, str)
    ]
    async with started(make_core()) as core:
        typed = await core.answer(Typed(), [LoanApplication.model_validate(SAFE)])
        inference = await core.answer(Tensors(), InferCall("loans", "1", tensors, ["decision"]))
        assert predictor(core).batches == [1, 1]
    assert typed.answers[0].model_dump() == predicted(SAFE)
    assert typed.lineage["model_version"] == "1"
    assert len(typed.request_ids) == 1
    assert inference.columns == [["approve"]]


# -- the validation metric -----------------------------------------------------------------------
async def test_refused_fields_are_counted_by_name() -> None:
    async with started(make_core()) as core:
        await core.answer_together(
            ONE,
            [
                one({**SAFE, "age": 12, "purpose": "yacht"}),
                one({**SAFE, "age": 130}),
                {"application": SAFE, "my-own-key": 1},
            ],
        )
        counted = {
            label: sample(core, "gateway_validation_errors_total", field=label)
            for label in ("application.age", "application.purpose", "unknown")
        }
    assert counted == {"application.age": 2, "application.purpose": 1, "unknown": 1}


async def test_names_a_client_chose_cannot_create_new_series() -> None:
    junk = [one({**SAFE, f"field_{i}": i}) for i in range(20)]
    junk += [{"application": SAFE, f"key_{i}": i} for i in range(20)]
    tensors = [
        InferCall("loans", "", [Tensor(f"t{i}", "FP32", [1], [1.0])], None) for i in range(20)
    ]
    async with started(make_core()) as core:
        await core.answer_together(ONE, junk)
        await core.answer_together(Tensors(), tensors)
        series = {
            s.labels["field"]
            for metric in core.metrics.validation_errors.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        }
        assert sample(core, "gateway_validation_errors_total", field="application.unknown") == 20
        assert sample(core, "gateway_validation_errors_total", field="unknown") == 40
    assert series == {"application.unknown", "unknown"}


async def test_a_refusal_that_names_no_field_is_not_counted_as_one() -> None:
    async with started(make_core()) as core:
        (reply,) = await core.answer_together(Tensors(), [InferCall("reviews", "", [], None)])
        assert isinstance(reply, NotFound)
        (counter,) = core.metrics.validation_errors.collect()
        assert counter.samples == []


MODEL = loans_model()


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("application.income", "application.income"),
        ("applications.17.age", "applications.age"),
        ("application.salary", "application.unknown"),
        ("income", "income"),  # a tensor named after a field
        ("inputs.3.name", "inputs.unknown"),  # a place inside a tensor: not a field
        ("outputs", "outputs"),
        ("body", "body"),
        ("my_tensor", "unknown"),
        ("a.b.c", "unknown.unknown.unknown"),
        ("0", "body"),
        ("", "unknown"),
    ],
)
def test_refusal_labels_use_only_names_the_model_defines(field: str, label: str) -> None:
    assert refusal_label(MODEL, field) == label


# -- overload ----------------------------------------------------------------------------------
async def test_a_full_queue_refuses_the_whole_group_with_retry_after() -> None:
    core = make_core(max_batch_size=1, max_queue=2)
    async with started(core):
        with predictor(core).held():
            calls = await fill_queue(core, lambda: core.answer(ONE, one(SAFE)))
            with pytest.raises(Overloaded) as refused:
                await core.answer_together(ONE, [one(SAFE), one({**SAFE, "age": 3})])
            with pytest.raises(Overloaded):
                core.shed_if_full()
        replies = await asyncio.gather(*calls)
    assert refused.value.status_code == 503
    assert refused.value.retry_after is not None
    assert refused.value.retry_after >= 1
    assert "limit 2" in refused.value.message
    assert all(r["prediction"] == predicted(SAFE) for r in replies)  # the queued calls finish


async def test_a_group_that_would_overflow_the_queue_is_refused_whole() -> None:
    core = make_core(max_batch_size=1, max_queue=3)
    async with started(core):
        with predictor(core).held():
            first = asyncio.create_task(core.answer(ONE, one(SAFE)))
            await predictor(core).running()
            queued = asyncio.create_task(core.answer(ONE, one(RISKY)))
            while core.served.batcher.queued < 1:
                await asyncio.sleep(0)
            core.shed_if_full()  # room for two more objects: not shed
            with pytest.raises(Overloaded):  # but not for three
                await core.answer_together(ONE, [one(SAFE), one(SAFE), one(SAFE)])
            assert core.served.batcher.queued == 1  # none of the three was queued
        await asyncio.gather(first, queued)


async def test_listeners_hear_when_the_queue_fills_and_when_it_has_room_again() -> None:
    heard: list[bool] = []
    core = make_core(max_batch_size=1, max_queue=2)
    core.fullness.append(heard.append)
    async with started(core):
        with predictor(core).held():
            calls = await fill_queue(core, lambda: core.answer(ONE, one(SAFE)))
            assert heard == [True]
            with pytest.raises(Overloaded):
                core.shed_if_full()
        await asyncio.gather(*calls)
        assert heard == [True, False]
        core.shed_if_full()  # room again: no refusal
        assert core.overload().status_code == 503  # the refusal it would give, on demand


async def test_a_failing_listener_fails_no_request() -> None:
    def broken(full: bool) -> None:
        raise RuntimeError("listener down")

    core = make_core(max_batch_size=1, max_queue=2)
    core.fullness.append(broken)
    async with started(core):
        with predictor(core).held():
            calls = await fill_queue(core, lambda: core.answer(ONE, one(SAFE)))
        replies = await asyncio.gather(*calls)
    assert len(replies) == 3
    assert all(r["prediction"] == predicted(SAFE) for r in replies)


async def test_a_failing_listener_does_not_keep_the_others_from_hearing() -> None:
    def broken(full: bool) -> None:
        raise RuntimeError("listener down")

    heard: list[bool] = []
    core = make_core(max_batch_size=1, max_queue=2)
    core.fullness += [broken, heard.append]
    async with started(core):
        with predictor(core).held():
            calls = await fill_queue(core, lambda: core.answer(ONE, one(SAFE)))
        await asyncio.gather(*calls)
    assert heard == [True, False]


# -- hot swap ----------------------------------------------------------------------------------
async def test_a_swap_answers_new_requests_on_the_new_model_and_in_flight_ones_on_the_old() -> None:
    old, loader = loans_model("1"), Versions(loans_model("2"))
    core = make_core(old, loader=loader)
    async with started(core):
        with old.predictor.held():
            in_flight = asyncio.create_task(core.answer(ONE, one(SAFE)))
            await old.predictor.running()
            swapping = asyncio.create_task(core.swap("2"))
            while core.served.model.version != "2":
                await asyncio.sleep(0.001)
            fresh = await core.answer(ONE, one(RISKY))  # answered while v1 still holds a batch
            assert not in_flight.done()
            assert not swapping.done()
        result = await swapping
        finished = await in_flight
        assert sample(core, "gateway_model_swaps_total", model="loans", result="swapped") == 1
        assert sample(core, "gateway_model_rollbacks_total", model="loans") == 0
        info = {
            v: sample(core, "gateway_model_info", model="loans", version=v, run_id=f"run-{v}")
            for v in ("1", "2")
        }
    assert finished["model_version"] == "1"
    assert finished["prediction"] == predicted(SAFE)
    assert fresh["model_version"] == "2"
    assert fresh["run_id"] == "run-2"
    assert result == {
        "swapped": True,
        "previous_version": "1",
        "model_name": "loans",
        "model_version": "2",
        "run_id": "run-2",
    }
    assert info == {"1": 0, "2": 1}
    assert loader.asked == ["2"]
    assert old.predictor.batches == [1]
    assert core.served.model.predictor.batches == [1]


async def test_a_swap_to_an_earlier_version_is_counted_as_a_rollback() -> None:
    core = make_core(loans_model("5"), loader=Versions(loans_model("4")))
    async with started(core):
        result = await core.swap("4")
        assert sample(core, "gateway_model_rollbacks_total", model="loans") == 1
    assert result["swapped"] is True
    assert result["previous_version"] == "5"


async def test_the_version_served_already_is_not_swapped() -> None:
    loader = Versions(loans_model("3"))
    core = make_core(loans_model("3"), loader=loader)
    async with started(core):
        served = core.served
        result = await core.swap()
        assert core.served is served
    assert loader.asked == [None]  # the alias's version
    assert result == {
        "swapped": False,
        "model_name": "loans",
        "model_version": "3",
        "run_id": "run-3",
    }


async def test_a_failed_load_is_counted_and_the_current_model_keeps_serving() -> None:
    def corrupt(settings: GatewaySettings, version: str | None) -> LoadedModel:
        raise ValueError("sha256 differs for model/weights.safetensors")

    core = make_core(loader=corrupt)
    async with started(core):
        result = await core.swap("2")
        reply = await core.answer(ONE, one(SAFE))
        assert sample(core, "gateway_model_swaps_total", model="loans", result="refused") == 1
    assert result["swapped"] is False
    assert "sha256 differs" in result["error"]
    assert result["model_version"] == "1"
    assert reply["model_version"] == "1"


async def test_a_swap_away_from_a_full_queue_tells_the_listeners_there_is_room() -> None:
    heard: list[bool] = []
    old = loans_model("1")
    core = make_core(old, loader=Versions(loans_model("2")), max_batch_size=1, max_queue=2)
    core.fullness.append(heard.append)
    async with started(core):
        with old.predictor.held():
            calls = await fill_queue(core, lambda: core.answer(ONE, one(SAFE)))
            swapping = asyncio.create_task(core.swap("2"))
            while core.served.model.version != "2":
                await asyncio.sleep(0.001)
            assert heard == [True, False]
            core.shed_if_full()  # the new model's queue is empty
            assert (await core.answer(ONE, one(RISKY)))["model_version"] == "2"
        replies = await asyncio.gather(*calls)
        await swapping
    assert heard == [True, False]  # the old queue emptying later says nothing more
    assert [r["model_version"] for r in replies] == ["1", "1", "1"]


async def test_after_a_swap_to_another_pipeline_requests_are_decoded_against_it() -> None:
    core = make_core(loader=Versions(thermostat_model("7")))
    async with started(core):
        await core.swap("7")
        with pytest.raises(InvalidInput) as refused:
            await core.answer(ONE, one(SAFE))
        reply = await core.answer(ONE, {"reading": {"temperature": 12.5, "room": "bedroom"}})
        with pytest.raises(InvalidInput) as retyped:
            await core.answer(Typed(), [LoanApplication.model_validate(SAFE)])
    assert "expected exactly one key 'reading'" in refused.value.message
    assert refused.value.details == [{"field": "application", "message": "unexpected key"}]
    assert reply["prediction"] == {"heat": True}
    assert reply["model_name"] == "thermostat"
    assert "reading.temperature" in [d["field"] for d in retyped.value.details]


async def test_a_tensor_refusal_is_counted_by_tensor_like_a_field() -> None:
    async with started(make_core()) as core:
        bad = InferCall("loans", "", [Tensor("age", "BYTES", [1], [b"old"])], None)
        (reply,) = await core.answer_together(Tensors(), [bad])
        assert isinstance(reply, InvalidTensor)
        assert sample(core, "gateway_validation_errors_total", field="age") == 1


def test_a_core_is_not_ready_until_started() -> None:
    assert make_core().ready is False


async def test_stopping_answers_what_was_queued_first() -> None:
    core = make_core(max_batch_size=1, max_queue=4)
    await core.start()
    with predictor(core).held():
        calls = [asyncio.create_task(core.answer(ONE, one(SAFE))) for _ in range(3)]
        await predictor(core).running()
        stopping = asyncio.create_task(core.stop())
        await asyncio.sleep(0.02)
        assert core.ready is False
        assert not stopping.done()  # it waits for the queued calls
    await stopping
    assert all(call.done() and call.result()["prediction"] == predicted(SAFE) for call in calls)
