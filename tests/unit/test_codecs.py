"""Each protocol's codec (gateway/codecs.py) on its own, against a served loans model: what it
decodes into the pipeline's objects, what it refuses (naming the field, key or tensor), and the
reply it shapes from answers. No core, no batcher: decode and encode are plain functions."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel, create_model

from gateway.codecs import (
    Answered,
    BusinessJson,
    InferCall,
    Inference,
    Tensors,
    Typed,
    parse_json,
    served_model,
    signature_of,
)
from gateway.errors import (
    BadRequest,
    InvalidInput,
    InvalidTensor,
    NotFound,
    NotImplementedHere,
)
from gateway.model import LoadedModel
from gateway.oip.tensors import Tensor
from tests.corekit import RISKY, SAFE, loans_model, thermostat_model
from tests.traffic import APPLICATION
from trainers.pipelines.loans import LoanApplication, LoanDecision

MODEL = loans_model("3")


def answered(*decisions: LoanDecision, ids: tuple[str, ...] = ()) -> Answered:
    lineage = {"model_name": "loans", "model_version": "3", "run_id": "run-3"}
    request_ids = list(ids) or [f"id-{i}" for i in range(len(decisions))]
    return Answered(MODEL, lineage, list(decisions), request_ids)


def fields_of(refusal: InvalidInput | InvalidTensor) -> list[str]:
    return [detail["field"] for detail in refusal.details]


# -- parse_json --------------------------------------------------------------------------------
def test_parse_json_reads_strict_json() -> None:
    assert parse_json(b'{"application": {"age": 45}}') == {"application": {"age": 45}}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_parse_json_refuses_the_constants_python_would_accept(constant: str) -> None:
    with pytest.raises(BadRequest, match=f"{constant} is not a valid JSON number") as refused:
        parse_json(f'{{"income": {constant}}}'.encode())
    assert refused.value.status_code == 400


def test_parse_json_with_constants_keeps_nan_for_tensors() -> None:
    parsed = parse_json(b'{"data": [NaN, 1.5]}', constants=True)
    assert math.isnan(parsed["data"][0])
    assert parsed["data"][1] == 1.5


@pytest.mark.parametrize(
    "body",
    [b"{'single': 'quotes'}", b'{"a": 1', b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000],
    ids=["not-json", "truncated", "not-text", "nested-too-deep"],
)
def test_parse_json_refuses_what_is_not_json_as_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match="request body is not valid JSON"):
        parse_json(body)


# -- BusinessJson: one object --------------------------------------------------------------------
def test_one_object_decodes_into_the_served_input_class() -> None:
    (obj,) = BusinessJson().decode(MODEL, {"application": APPLICATION})
    assert isinstance(obj, LoanApplication)
    assert obj.model_dump(exclude_none=True) == APPLICATION


def test_a_missing_key_is_named() -> None:
    with pytest.raises(InvalidInput, match="expected exactly one key 'application'") as refused:
        BusinessJson().decode(MODEL, {})
    assert refused.value.details == [{"field": "application", "message": "field required"}]
    assert refused.value.status_code == 422


def test_each_unexpected_key_is_named() -> None:
    with pytest.raises(InvalidInput) as refused:
        BusinessJson().decode(MODEL, {"application": APPLICATION, "zz": 1, "extra": 2})
    assert refused.value.details == [
        {"field": "extra", "message": "unexpected key"},
        {"field": "zz", "message": "unexpected key"},
    ]


@pytest.mark.parametrize("payload", [[APPLICATION], "application", 3, None])
def test_a_body_that_is_not_an_object_is_refused_as_the_body(payload: Any) -> None:
    with pytest.raises(InvalidInput, match="expected a JSON object") as refused:
        BusinessJson().decode(MODEL, payload)
    assert fields_of(refused.value) == ["body"]
    assert type(payload).__name__ in refused.value.details[0]["message"]


def test_every_invalid_field_is_named_under_the_input_key() -> None:
    bad = {**APPLICATION, "age": 12, "purpose": "yacht", "term_months": "36"}
    with pytest.raises(InvalidInput) as refused:
        BusinessJson().decode(MODEL, {"application": bad})
    assert sorted(fields_of(refused.value)) == [
        "application.age",
        "application.purpose",
        "application.term_months",
    ]
    assert "invalid LoanApplication: application.age:" in refused.value.message
    age = next(d for d in refused.value.details if d["field"] == "application.age")
    assert age["type"] == "greater_than_equal"
    assert "18" in age["message"]


def test_a_missing_and_an_unknown_field_are_named() -> None:
    bad = {k: v for k, v in APPLICATION.items() if k != "income"} | {"salary": 1.0}
    with pytest.raises(InvalidInput) as refused:
        BusinessJson().decode(MODEL, {"application": bad})
    assert sorted(fields_of(refused.value)) == ["application.income", "application.salary"]


def test_strict_types_refuse_a_number_sent_as_text_or_a_boolean() -> None:
    with pytest.raises(InvalidInput) as refused:
        BusinessJson().decode(MODEL, {"application": {**APPLICATION, "income": "61000"}})
    assert fields_of(refused.value) == ["application.income"]
    with pytest.raises(InvalidInput) as refused:
        BusinessJson().decode(MODEL, {"application": {**APPLICATION, "age": True}})
    assert fields_of(refused.value) == ["application.age"]


def test_one_answer_is_encoded_with_its_request_id_and_lineage() -> None:
    decision = LoanDecision(default_probability=0.2, decision="review")
    reply = BusinessJson().encode(answered(decision, ids=("abc",)), {"application": APPLICATION})
    assert reply == {
        "prediction": {"default_probability": 0.2, "decision": "review"},
        "request_id": "abc",
        "model_name": "loans",
        "model_version": "3",
        "run_id": "run-3",
    }


# -- BusinessJson: bulk ------------------------------------------------------------------------
def test_bulk_decodes_every_object_in_order() -> None:
    objects = BusinessJson(bulk=True).decode(MODEL, {"applications": [SAFE, RISKY, APPLICATION]})
    assert [o.model_dump(exclude_none=True) for o in objects] == [SAFE, RISKY, APPLICATION]


def test_bulk_names_the_object_and_field_at_fault() -> None:
    with pytest.raises(InvalidInput) as refused:
        BusinessJson(bulk=True).decode(
            MODEL, {"applications": [SAFE, {**RISKY, "age": 150}, {**SAFE, "loan_amount": 0}]}
        )
    assert fields_of(refused.value) == ["applications.1.age"]  # the first object at fault


@pytest.mark.parametrize(
    ("values", "got"),
    [([], "0 items"), ([SAFE] * 4, "4 items"), (SAFE, "dict"), ("many", "str")],
)
def test_bulk_takes_a_list_of_one_to_limit_objects(values: Any, got: str) -> None:
    with pytest.raises(InvalidInput, match=f"list of 1 to 3 objects, got {got}") as refused:
        BusinessJson(bulk=True, limit=3).decode(MODEL, {"applications": values})
    assert fields_of(refused.value) == ["applications"]


def test_bulk_refuses_the_single_key() -> None:
    with pytest.raises(InvalidInput) as refused:
        BusinessJson(bulk=True).decode(MODEL, {"application": SAFE})
    assert fields_of(refused.value) == ["application"]  # the key that should not be there


def test_bulk_answers_are_encoded_in_order_with_their_ids() -> None:
    answers = [
        LoanDecision(default_probability=0.01, decision="approve"),
        LoanDecision(default_probability=0.9, decision="decline"),
    ]
    reply = BusinessJson(bulk=True).encode(answered(*answers, ids=("a", "b")), {})
    assert reply["predictions"] == [
        {"default_probability": 0.01, "decision": "approve"},
        {"default_probability": 0.9, "decision": "decline"},
    ]
    assert reply["request_ids"] == ["a", "b"]
    assert reply["model_version"] == "3"
    assert "prediction" not in reply


# -- Typed -------------------------------------------------------------------------------------
def test_typed_keeps_objects_of_the_served_class_as_they_are() -> None:
    objects = [LoanApplication.model_validate(SAFE), LoanApplication.model_validate(RISKY)]
    decoded = Typed().decode(MODEL, objects)
    assert all(a is b for a, b in zip(decoded, objects, strict=True))


def test_typed_validates_again_objects_of_another_class_with_the_same_fields() -> None:
    """What a swap brings: the new version's input class is another class object."""
    older: type[BaseModel] = create_model("LoanApplication", __base__=LoanApplication)
    decoded = Typed().decode(MODEL, [older.model_validate(SAFE)])
    assert type(decoded[0]) is LoanApplication
    assert decoded[0].model_dump(exclude_none=True) == SAFE


def test_typed_refuses_another_pipelines_objects_by_field() -> None:
    reading = thermostat_model().input_model.model_validate({"temperature": 20, "room": "kitchen"})
    with pytest.raises(InvalidInput) as refused:
        Typed().decode(MODEL, [reading])
    assert "application.income" in fields_of(refused.value)
    assert "application.temperature" in fields_of(refused.value)
    with pytest.raises(InvalidInput) as refused:
        Typed().decode(MODEL, [LoanApplication.model_validate(SAFE), reading])
    assert "applications.1.income" in fields_of(refused.value)


@pytest.mark.parametrize("count", [0, 3])
def test_typed_takes_one_to_limit_objects(count: int) -> None:
    with pytest.raises(InvalidInput, match=f"got {count} items"):
        Typed(limit=2).decode(MODEL, [LoanApplication.model_validate(SAFE)] * count)


def test_typed_hands_back_the_answers_themselves() -> None:
    one = answered(LoanDecision(default_probability=0.5, decision="decline"))
    assert Typed().encode(one, []) is one


# -- the model a call asks for -----------------------------------------------------------------
def test_served_model_is_the_model_asked_for_by_name_and_version() -> None:
    assert served_model(MODEL, "loans") is MODEL
    assert served_model(MODEL, "loans", "3") is MODEL


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("reviews", "", "model 'reviews' is not served here; this server serves 'loans'"),
        ("loans", "2", "version '2' of 'loans' is not served; the served version is '3'"),
    ],
)
def test_another_model_or_version_is_not_found(name: str, version: str, message: str) -> None:
    with pytest.raises(NotFound) as refused:
        served_model(MODEL, name, version)
    assert refused.value.message == message
    assert refused.value.status_code == 404


def test_a_pipeline_without_a_tensor_mapping_is_not_implemented() -> None:
    nested = create_model("Nested", tags=(list[str], ...))
    model = LoadedModel(
        "nested", "1", "run-1", "thing", nested, LoanDecision, predictor=None, pipeline=None
    )
    with pytest.raises(NotImplementedHere, match="nested has no Open Inference Protocol") as no:
        signature_of(model)
    assert no.value.status_code == 501
    with pytest.raises(NotImplementedHere):
        Tensors().decode(model, InferCall("nested", "", [], None))


def test_the_signature_lists_each_input_field_and_each_output_with_the_request_id() -> None:
    sig = signature_of(MODEL)
    assert [s.name for s in sig.inputs] == list(LoanApplication.model_fields)
    assert [(s.name, s.datatype) for s in sig.outputs] == [
        ("default_probability", "FP32"),
        ("decision", "BYTES"),
        ("request_id", "BYTES"),
    ]


# -- Tensors -----------------------------------------------------------------------------------
def columns(*applications: dict[str, Any]) -> list[Tensor]:
    """One tensor per field of ``applications`` (each object a row), in their datatypes."""
    datatypes = {s.name: s.datatype for s in signature_of(MODEL).inputs}
    n = len(applications)
    return [
        Tensor(name, datatypes[name], [n, 1], [a[name] for a in applications])
        for name in applications[0]
    ]


def call(tensors: list[Tensor], outputs: list[str] | None = None, **at: str) -> InferCall:
    return InferCall(at.get("name", "loans"), at.get("version", ""), tensors, outputs)


def test_tensors_decode_one_object_per_row() -> None:
    objects = Tensors().decode(MODEL, call(columns(SAFE, RISKY)))
    assert [o.model_dump(exclude_none=True) for o in objects] == [SAFE, RISKY]
    (one,) = Tensors().decode(MODEL, call(columns(APPLICATION), version="3"))
    assert isinstance(one, LoanApplication)
    assert one.age == 45


def test_tensors_are_for_the_served_model_only() -> None:
    with pytest.raises(NotFound, match="'thermostat' is not served"):
        Tensors().decode(MODEL, call(columns(SAFE), name="thermostat"))
    with pytest.raises(NotFound, match="version '1'"):
        Tensors().decode(MODEL, call(columns(SAFE), version="1"))


def test_an_unknown_output_is_refused_before_anything_is_answered() -> None:
    with pytest.raises(InvalidTensor, match="unknown output; expected one of") as refused:
        Tensors().decode(MODEL, call(columns(SAFE), ["decision", "approval"]))
    assert fields_of(refused.value) == ["approval"]


def test_a_value_the_schema_refuses_names_the_tensor_and_object() -> None:
    with pytest.raises(InvalidTensor, match="object 1:") as refused:
        Tensors().decode(MODEL, call(columns(SAFE, {**RISKY, "age": 17})))
    assert fields_of(refused.value) == ["age"]
    assert refused.value.status_code == 400


def test_tensors_beyond_the_limit_are_refused_by_name() -> None:
    with pytest.raises(InvalidTensor, match=r"expected 1 to 2 objects") as refused:
        Tensors(limit=2).decode(MODEL, call(columns(SAFE, SAFE, SAFE)))
    assert fields_of(refused.value) == ["income"]


def test_tensors_encode_the_outputs_asked_for_as_columns() -> None:
    answers = [
        LoanDecision(default_probability=0.01, decision="approve"),
        LoanDecision(default_probability=0.9, decision="decline"),
    ]
    one = answered(*answers, ids=("a", "b"))
    inference = Tensors().encode(one, call([], ["request_id", "decision"]))
    assert isinstance(inference, Inference)
    assert [s.name for s in inference.outputs] == ["request_id", "decision"]
    assert inference.columns == [["a", "b"], ["approve", "decline"]]
    assert inference.count == 2
    assert inference.parameters() == {"run_id": "run-3"}
    everything = Tensors().encode(one, call([]))
    assert everything.columns == [[0.01, 0.9], ["approve", "decline"], ["a", "b"]]
