"""Business objects as named tensors: the Open Inference Protocol's view of a pipeline.

Every field of the pipeline's input model is one input tensor of shape ``[N]`` or ``[N, 1]``
(``N`` objects): ``BYTES`` for strings and string choices, ``FP32`` for real numbers, ``INT64``
for integers and integer choices, ``BOOL`` for booleans. Numbers may arrive in any numeric
datatype; they are validated by the pipeline's own schema, so the constraints and the error
messages are those of the business endpoint. An optional field's tensor may be left out (every
object gets ``null``); in a numeric optional field ``NaN`` marks one missing value. Outputs are
the fields of the answer model, mapped the same way, plus ``request_id`` (``BYTES``), the id
that ``POST /feedback`` takes.

The wire formats (JSON ``data``, Triton's binary extension, gRPC ``contents`` and
``raw_*_contents``) all meet here as :class:`Tensor`.
"""

from __future__ import annotations

import enum
import functools
import math
import struct
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from gateway.errors import InvalidTensor

Datatype = Literal["BOOL", "INT64", "FP32", "BYTES"]

NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
STRUCT_CODES = {  # the same little-endian layouts for ``struct``: cheaper for a few values
    "BOOL": "?",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "FP16": "e",
    "FP32": "f",
    "FP64": "d",
}
INTEGER_TYPES = frozenset(t for t in NUMPY_TYPES if "INT" in t)
NUMBER_TYPES = INTEGER_TYPES | {"FP16", "FP32", "FP64"}
ACCEPTS: dict[str, frozenset[str]] = {
    "BOOL": frozenset({"BOOL"}),
    "INT64": INTEGER_TYPES,
    "FP32": NUMBER_TYPES,
    "BYTES": frozenset({"BYTES"}),
}
EXPECTED = {"FP32": "a numeric datatype (FP32 preferred)", "INT64": "an integer datatype (INT64)"}
CONFIG_TYPES = {
    "BOOL": "TYPE_BOOL",
    "INT64": "TYPE_INT64",
    "FP32": "TYPE_FP32",
    "BYTES": "TYPE_STRING",
}
REQUEST_ID = "request_id"


@dataclass(frozen=True)
class TensorSpec:
    """How one field of a business object travels as a tensor."""

    name: str
    datatype: Datatype
    optional: bool = False

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, 1]}


@dataclass
class Tensor:
    """One decoded tensor: a flat list of ``numel`` values (numbers, booleans or bytes)."""

    name: str
    datatype: str
    shape: list[int]
    values: Sequence[Any]


def _datatype(annotation: Any, where: str) -> tuple[Datatype, bool]:
    """The tensor datatype of a field's annotation, and whether the field may be ``None``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _datatype(args[0], where)[0], True
    elif origin is Literal:
        kinds = {type(v) for v in typing.get_args(annotation)}
        if kinds <= {str}:
            return "BYTES", False
        if kinds <= {int}:
            return "INT64", False
    elif isinstance(annotation, type):
        if issubclass(annotation, bool):
            return "BOOL", False
        if issubclass(annotation, enum.Enum):
            kinds = {type(m.value) for m in annotation}
            return ("INT64" if kinds <= {int} else "BYTES"), False
        if issubclass(annotation, str):
            return "BYTES", False
        if issubclass(annotation, int):
            return "INT64", False
        if issubclass(annotation, float):
            return "FP32", False
    raise TypeError(f"{where}: {annotation!r} has no tensor mapping")


def specs_of(model: type[BaseModel]) -> list[TensorSpec]:
    specs = []
    for name, info in model.model_fields.items():
        datatype, optional = _datatype(info.annotation, f"{model.__name__}.{name}")
        specs.append(TensorSpec(name, datatype, optional or not info.is_required()))
    return specs


@dataclass(frozen=True)
class Signature:
    """The tensors of a served pipeline, in and out."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @classmethod
    def of(cls, input_model: type[BaseModel], output_model: type[BaseModel]) -> Signature:
        outputs = [*specs_of(output_model), TensorSpec(REQUEST_ID, "BYTES")]
        return cls(specs_of(input_model), outputs)

    # -- requests -----------------------------------------------------------------------------
    @functools.cached_property
    def known_inputs(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.inputs}

    @functools.cached_property
    def required_inputs(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs if not spec.optional)

    def objects(self, tensors: Sequence[Tensor], max_objects: int) -> list[dict[str, Any]]:
        """The business objects (as plain dicts, not yet validated) the tensors describe."""
        one = self._one_object(tensors)
        if one is not None:
            return [one]
        known = self.known_inputs
        columns: dict[str, list[Any]] = {}
        count, counted_by = None, ""
        for tensor in tensors:
            spec = known.get(tensor.name)
            if spec is None:
                raise InvalidTensor(
                    tensor.name, f"unknown input; expected one of {', '.join(known)}"
                )
            if tensor.name in columns:
                raise InvalidTensor(tensor.name, "given twice")
            n = _batch(tensor, max_objects)
            if count is not None and n != count:
                raise InvalidTensor(
                    tensor.name, f"holds {n} objects but input {counted_by!r} holds {count}"
                )
            count, counted_by = n, tensor.name
            if tensor.datatype not in ACCEPTS[spec.datatype]:
                expected = EXPECTED.get(spec.datatype, spec.datatype)
                raise InvalidTensor(
                    tensor.name, f"datatype {tensor.datatype} where {expected} is expected"
                )
            columns[tensor.name] = _plain(spec, tensor)
        missing = [s.name for s in self.inputs if s.name not in columns and not s.optional]
        if missing:
            raise InvalidTensor(missing[0], "required input is missing")
        if count is None:
            raise InvalidTensor("inputs", "expected at least one input tensor")
        if count == 1:
            return [{name: v[0] for name, v in columns.items() if v[0] is not _ABSENT}]
        rows: list[dict[str, Any]] = [{} for _ in range(count)]
        for name, values in columns.items():
            for row, value in zip(rows, values, strict=True):
                if value is not _ABSENT:
                    row[name] = value
        return rows

    def _one_object(self, tensors: Sequence[Tensor]) -> dict[str, Any] | None:
        """The common call, read in one pass: one object, each tensor a known input holding one
        value of the input's own datatype, each required input given, no value missing. Any
        other call is None here, and is read by the general path, which also names what is
        wrong with it."""
        known, row = self.known_inputs, {}
        for tensor in tensors:
            name, values = tensor.name, tensor.values
            spec = known.get(name)
            if (
                spec is None
                or name in row
                or len(values) != 1
                or tensor.datatype != spec.datatype
                or tensor.shape not in ([1, 1], [1])
            ):
                return None
            value, datatype = values[0], spec.datatype
            kind = type(value)
            if datatype == "BYTES":
                if kind is bytes:
                    try:
                        value = value.decode()
                    except UnicodeDecodeError:
                        return None
                elif kind is not str:
                    return None
            elif datatype == "BOOL":
                if kind is not bool:
                    return None
            elif kind is float:
                if not math.isfinite(value):
                    return None
            elif kind is not int:
                return None
            row[name] = value
        if not self.required_inputs <= row.keys() or not row:
            return None
        return row

    def validate(self, model: type[BaseModel], rows: list[dict[str, Any]]) -> list[BaseModel]:
        """Each row through the pipeline's schema; an error names the input tensor and object."""
        items = []
        for i, row in enumerate(rows):
            try:
                items.append(model.model_validate(row))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                name = str(err["loc"][0]) if err["loc"] else "inputs"
                raise InvalidTensor(name, f"object {i}: {err['msg']}") from exc
        return items

    # -- answers ------------------------------------------------------------------------------
    def requested(self, names: Iterable[str] | None) -> list[TensorSpec]:
        if names is None:
            return self.outputs
        known = {spec.name: spec for spec in self.outputs}
        chosen = []
        for name in names:
            if name not in known:
                raise InvalidTensor(name, f"unknown output; expected one of {', '.join(known)}")
            chosen.append(known[name])
        return chosen

    @staticmethod
    def column(
        spec: TensorSpec, answers: Sequence[BaseModel], request_ids: Sequence[str]
    ) -> list[Any]:
        if spec.name == REQUEST_ID:
            return list(request_ids)
        values = [getattr(answer, spec.name) for answer in answers]
        return [v.value if isinstance(v, enum.Enum) else v for v in values]


_ABSENT = object()


def _batch(tensor: Tensor, max_objects: int) -> int:
    shape = tensor.shape
    if not shape or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InvalidTensor(tensor.name, f"shape {shape}: expected [N] or [N, 1]")
    n = shape[0]
    if not 1 <= n <= max_objects:
        raise InvalidTensor(tensor.name, f"shape {shape}: expected 1 to {max_objects} objects")
    if len(tensor.values) != n:
        raise InvalidTensor(
            tensor.name, f"shape {shape} needs {n} elements, the data holds {len(tensor.values)}"
        )
    return n


def _plain(spec: TensorSpec, tensor: Tensor) -> list[Any]:
    """The tensor's values as the JSON-like values the schema validates."""
    if spec.datatype == "BYTES":
        out: list[Any] = []
        for i, value in enumerate(tensor.values):
            text = value
            if isinstance(value, bytes | bytearray):
                try:
                    text = bytes(value).decode()
                except UnicodeDecodeError as exc:
                    raise InvalidTensor(tensor.name, f"object {i}: not UTF-8 text") from exc
            if not isinstance(text, str):
                raise InvalidTensor(tensor.name, f"object {i}: expected a string")
            out.append(text)
        return out
    if spec.datatype == "BOOL":
        if not all(isinstance(v, bool | np.bool_) for v in tensor.values):
            raise InvalidTensor(tensor.name, "expected true or false")
        return [bool(v) for v in tensor.values]
    out = []
    for i, value in enumerate(tensor.values):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise InvalidTensor(tensor.name, f"object {i}: expected a number, got {value!r}")
        number = value.item() if isinstance(value, np.generic) else value
        if isinstance(number, float) and not math.isfinite(number):
            if spec.optional and math.isnan(number):
                out.append(_ABSENT)
                continue
            raise InvalidTensor(tensor.name, f"object {i}: expected a finite number")
        out.append(number)
    return out


# -- bytes on the wire ---------------------------------------------------------------------------
def from_buffer(name: str, datatype: str, shape: list[int], raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes (Triton's binary extension, gRPC raw contents)."""
    numel = math.prod(shape) if shape else 0
    if datatype == "BYTES":
        values = _unpack_bytes(name, raw)
    elif datatype in NUMPY_TYPES:
        dtype = NUMPY_TYPES[datatype]
        if len(raw) != numel * dtype.itemsize:
            raise InvalidTensor(name, f"{len(raw)} bytes of data for {numel} {datatype} elements")
        values = list(struct.unpack(f"<{numel}{STRUCT_CODES[datatype]}", raw))
    else:
        raise InvalidTensor(name, f"unsupported datatype {datatype}")
    return Tensor(name, datatype, shape, values)


def _unpack_bytes(name: str, raw: bytes) -> list[bytes]:
    values, offset, size = [], 0, len(raw)
    while offset < size:
        if offset + 4 > size:
            raise InvalidTensor(name, "BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > size:
            raise InvalidTensor(name, "BYTES data ends inside an element")
        values.append(raw[offset : offset + length])
        offset += length
    return values


def to_buffer(datatype: str, values: Sequence[Any]) -> bytes:
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    try:
        return struct.pack(f"<{len(values)}{STRUCT_CODES[datatype]}", *values)
    except (struct.error, OverflowError, TypeError):  # None as NaN, floats beyond FP32: numpy's way
        with np.errstate(over="ignore"):  # beyond FP32 is infinite, as intended
            return np.asarray(values, dtype=NUMPY_TYPES[datatype]).tobytes()


def flatten(name: str, data: Any) -> list[Any]:
    """JSON ``data``, flat or nested row-major, as a flat list."""
    if not isinstance(data, list):
        raise InvalidTensor(name, "data must be a list")
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat
