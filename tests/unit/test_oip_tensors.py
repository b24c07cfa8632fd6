"""Business objects as named tensors, and the checked-in gRPC stubs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from pydantic import BaseModel

from gateway.errors import InvalidTensor
from gateway.oip.proto import stale
from gateway.oip.tensors import (
    NUMPY_TYPES,
    Signature,
    Tensor,
    flatten,
    from_buffer,
    to_buffer,
)
from trainers.pipelines.loans import LoanApplication, LoanDecision
from trainers.pipelines.reviews import MovieReview, SentimentAnswer

LOANS = Signature.of(LoanApplication, LoanDecision)


def test_the_grpc_stubs_are_current() -> None:
    assert stale() == [], "run `make proto`"


def test_fields_map_to_tensor_types() -> None:
    assert {s.name: (s.datatype, s.optional) for s in LOANS.inputs} == {
        "income": ("FP32", False),
        "age": ("INT64", False),
        "loan_amount": ("FP32", False),
        "term_months": ("INT64", False),  # a choice of integers
        "employment_status": ("BYTES", False),  # a choice of strings
        "purpose": ("BYTES", False),
        "existing_debt": ("FP32", True),
        "credit_history_years": ("FP32", True),
    }
    reviews = Signature.of(MovieReview, SentimentAnswer)
    assert [(s.name, s.datatype, s.optional) for s in reviews.inputs] == [
        ("text", "BYTES", False),
        ("title", "BYTES", True),
    ]
    assert [s.name for s in reviews.outputs] == ["sentiment", "positive_probability", "request_id"]


def loan_tensors(**override: Tensor) -> list[Tensor]:
    tensors = {
        "income": Tensor("income", "FP64", [2, 1], [52000.0, 61000.0]),
        "age": Tensor("age", "INT32", [2], [30, 45]),
        "loan_amount": Tensor("loan_amount", "FP32", [2, 1], [9000.0, 15000.0]),
        "term_months": Tensor("term_months", "INT64", [2, 1], [36, 12]),
        "employment_status": Tensor("employment_status", "BYTES", [2, 1], [b"employed", "retired"]),
        "purpose": Tensor("purpose", "BYTES", [2, 1], ["car", "other"]),
        "existing_debt": Tensor("existing_debt", "FP32", [2, 1], [math.nan, 4000.0]),
    }
    tensors.update(override)
    return list(tensors.values())


def test_tensors_become_validated_objects() -> None:
    rows = LOANS.objects(loan_tensors(), max_objects=10)
    items = LOANS.validate(LoanApplication, rows)
    assert [item.model_dump() for item in items] == [
        {
            "income": 52000.0,
            "age": 30,
            "loan_amount": 9000.0,
            "term_months": 36,
            "employment_status": "employed",
            "purpose": "car",
            "existing_debt": None,  # NaN: missing in this object
            "credit_history_years": None,  # the tensor is left out
        },
        {
            "income": 61000.0,
            "age": 45,
            "loan_amount": 15000.0,
            "term_months": 12,
            "employment_status": "retired",
            "purpose": "other",
            "existing_debt": 4000.0,
            "credit_history_years": None,
        },
    ]


@pytest.mark.parametrize(
    ("override", "tensor", "fragment"),
    [
        (Tensor("income", "FP32", [2], [math.nan, 1.0]), "income", "finite"),
        (Tensor("income", "BYTES", [2], ["a", "b"]), "income", "numeric datatype"),
        (Tensor("age", "INT64", [3], [1, 2, 3]), "age", "holds 3 objects"),
        (Tensor("age", "INT64", [2, 2], [1, 2, 3, 4]), "age", "[N] or [N, 1]"),
        (Tensor("age", "INT64", [2], [1]), "age", "the data holds 1"),
        (Tensor("age", "INT64", [2], [30, 17]), "age", "object 1: Input should be greater"),
        (Tensor("purpose", "BYTES", [2], [b"\xff", b"car"]), "purpose", "UTF-8"),
        (Tensor("nickname", "BYTES", [2], ["a", "b"]), "nickname", "unknown input"),
    ],
)
def test_bad_tensors_are_named(override: Tensor, tensor: str, fragment: str) -> None:
    with pytest.raises(InvalidTensor) as refused:
        LOANS.validate(LoanApplication, LOANS.objects(loan_tensors(**{tensor: override}), 10))
    assert refused.value.tensor == tensor
    assert fragment in refused.value.message


def test_missing_required_input_and_too_many_objects() -> None:
    tensors = [t for t in loan_tensors() if t.name != "age"]
    with pytest.raises(InvalidTensor, match="age: required input is missing"):
        LOANS.objects(tensors, 10)
    with pytest.raises(InvalidTensor, match="expected 1 to 1 objects"):
        LOANS.objects(loan_tensors(), 1)


def test_wire_formats_round_trip() -> None:
    words = ["ok", "", "héllo"]
    assert from_buffer("w", "BYTES", [3], to_buffer("BYTES", words)).values == [
        w.encode() for w in words
    ]
    assert from_buffer("x", "FP32", [2, 1], to_buffer("FP32", [0.5, 2.0])).values == [0.5, 2.0]
    assert from_buffer("b", "BOOL", [2], to_buffer("BOOL", [True, False])).values == [True, False]
    with pytest.raises(InvalidTensor, match="8 bytes of data for 1 FP32"):
        from_buffer("x", "FP32", [1], to_buffer("FP64", [1.0]))
    with pytest.raises(InvalidTensor, match="ends inside an element"):
        from_buffer("w", "BYTES", [1], to_buffer("BYTES", ["abc"])[:-1])
    assert flatten("x", [[1, 2], [3, [4]]]) == [1, 2, 3, 4]
    assert flatten("x", [1, 2]) == [1, 2]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", [0.1, -2.5, 3e38]),
        ("FP32", [None, 1e39]),  # what struct refuses numpy writes: NaN, inf
        ("FP64", [0.1, 1e300]),
        ("INT64", [-(2**63), 0, 2**63 - 1]),
        ("INT32", [7, -7]),
        ("BOOL", [True, False, True]),
        ("UINT8", [0, 255]),
    ],
)
def test_numbers_pack_as_numpy_lays_them_out(datatype: str, values: list[object]) -> None:
    packed = to_buffer(datatype, values)
    with np.errstate(over="ignore"):
        assert packed == np.asarray(values, dtype=NUMPY_TYPES[datatype]).tobytes()
    unpacked = from_buffer("x", datatype, [len(values)], packed).values
    expected = np.frombuffer(packed, dtype=NUMPY_TYPES[datatype]).tolist()
    assert nan_named(unpacked) == nan_named(expected)


def nan_named(values: Sequence[object]) -> list[object]:
    return ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in values]


def test_one_object_with_a_missing_optional_number() -> None:
    single = {t.name: Tensor(t.name, t.datatype, [1], t.values[:1]) for t in loan_tensors()}
    (row,) = LOANS.objects(list(single.values()), max_objects=1)
    assert "existing_debt" not in row  # NaN: left to the schema's default
    assert row["employment_status"] == "employed"
    (item,) = LOANS.validate(LoanApplication, [row])
    assert isinstance(item, LoanApplication)
    assert item.existing_debt is None


def test_a_field_without_a_tensor_datatype_is_named() -> None:
    class Basket(BaseModel):
        items: list[str]

    with pytest.raises(TypeError, match=r"Basket\.items"):
        Signature.of(Basket, LoanDecision)


SINGLE = {  # one loan application, each field in its own datatype
    "income": Tensor("income", "FP32", [1, 1], [52000.0]),
    "age": Tensor("age", "INT64", [1], [30]),
    "loan_amount": Tensor("loan_amount", "FP32", [1, 1], [9000]),  # an integer, from JSON
    "term_months": Tensor("term_months", "INT64", [1, 1], [36]),
    "employment_status": Tensor("employment_status", "BYTES", [1, 1], [b"employed"]),
    "purpose": Tensor("purpose", "BYTES", [1], ["car"]),  # text, from JSON
    "existing_debt": Tensor("existing_debt", "FP32", [1, 1], [4000.0]),
}


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"existing_debt": None},  # an optional input left out
        {"existing_debt": Tensor("existing_debt", "FP32", [1, 1], [math.nan])},  # missing
        {"income": Tensor("income", "FP64", [1], [52000.5])},  # another numeric datatype
        {"income": Tensor("income", "FP32", [1], [math.inf])},
        {"income": Tensor("income", "FP32", [1], [True])},
        {"income": Tensor("income", "BYTES", [1], [b"52000"])},
        {"age": Tensor("age", "INT64", [1], [30.0])},
        {"age": Tensor("age", "INT32", [1, 1], [np.int32(30)])},
        {"age": None},  # a required input left out
        {"age": Tensor("age", "INT64", [1, 2], [30, 31])},
        {"age": Tensor("age", "INT64", [], [30])},
        {"purpose": Tensor("purpose", "BYTES", [1], [b"\xff"])},
        {"purpose": Tensor("purpose", "BYTES", [1], [7])},
        {"purpose": Tensor("purpose", "INT64", [1], [7])},
        {"nickname": Tensor("nickname", "BYTES", [1], [b"Al"])},
    ],
)
def test_one_object_reads_as_the_general_path_reads_it(change: dict[str, Tensor | None]) -> None:
    """A call with one object is read in one pass where it can be; the result, or the input
    named as wrong, is the one the general reading gives for the same object twice over."""
    tensors = {**SINGLE, **change}
    one = [t for t in tensors.values() if t is not None]
    twice = [
        Tensor(
            t.name, t.datatype, [2 * t.shape[0], *t.shape[1:]] if t.shape else [], [*t.values] * 2
        )
        for t in one
    ]
    wrong = None
    try:
        expected = LOANS.objects(twice, 10)[:1]
    except InvalidTensor as exc:
        wrong = exc.tensor
    if wrong is not None:
        with pytest.raises(InvalidTensor) as refused:
            LOANS.objects(one, 10)
        assert refused.value.tensor == wrong
        return
    got = LOANS.objects(one, 10)
    assert got == expected
    assert [type(v) for v in got[0].values()] == [type(v) for v in expected[0].values()]
    duplicated = [*one, one[0]]
    with pytest.raises(InvalidTensor, match="given twice"):
        LOANS.objects(duplicated, 10)
