"""Hostile requests, generated from a pipeline's own schema: the corpus behind
``tests/integration/test_hostile_input.py``.

Every field of the pipeline's input model (its JSON schema, and the tensor datatype
:func:`gateway.oip.tensors.specs_of` gives it) yields values that must be refused: wrong JSON
types, numbers out of the field's range, NaN and infinities, strings that are empty, too long,
not one of the choices, or carry characters no business text has (C0 controls, DEL, lone
surrogates, bytes that are not UTF-8) at the start, in the middle and at the end. Each
protocol sends them its own way: business JSON (one object, and one bad object in a list),
OIP REST with JSON ``data``, OIP REST with Triton's binary tensors, OIP gRPC with typed
``contents`` and with ``raw_input_contents``. Around the fields come the envelope (missing,
extra and odd keys, wrong containers, bulk lists out of bounds), the body (not JSON, not UTF-8,
nested 10,000 deep, over the size limit, another content type) and, for the binary and gRPC
wire formats, their own framing (lengths that lie, garbage bytes).

Every case says what the refusal must look like: the status (gRPC: the codes) and fragments the
answer must contain, i.e. the field, tensor or header it names. The few requests that look odd
and are valid (a right-to-left mark in free text, NaN for a missing optional tensor) are kept
apart, in each corpus's ``valid_http`` and ``valid_grpc``: they must be answered.

The gRPC messages are built with tritonclient's generated modules, as a client builds them.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from pydantic import BaseModel
from tritonclient.grpc import service_pb2

from gateway.oip.grpc_server import CONTENTS
from gateway.oip.tensors import NUMPY_TYPES, specs_of
from trainers import pipelines

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"
INFER = "/inference.GRPCInferenceService/ModelInfer"
DEEP = 10_000
"""Nesting depth of the deeply nested bodies (Python's JSON parser recurses once a level)."""

CONTROLS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
"""The characters no business text carries: C0 controls other than tab and the newlines, and DEL."""
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]
"""Lone UTF-16 surrogates: JSON's ``\\ud800`` escapes decode to them; UTF-8 cannot carry them."""
NOT_UTF8 = {
    "a lone continuation byte": b"\x80",
    "byte 0xFF": b"\xff",
    "byte 0xFE": b"\xfe",
    "an overlong slash": b"\xc0\xaf",
    "an overlong NUL": b"\xc0\x80",
    "an overlong 3-byte form": b"\xe0\x80\xaf",
    "a code point over U+10FFFF": b"\xf4\x90\x80\x80",
    "a truncated 3-byte sequence": b"\xe2\x82",
    "a truncated 4-byte sequence": b"\xf0\x9f\x98",
    "Latin-1 e-acute": b"\xe9",
    "a 5-byte form": b"\xf8\x88\x80\x80\x80",
}
"""Byte sequences that are not UTF-8, put inside a string value."""
CESU_SURROGATE = b"\xed\xa0\x80"
"""U+D800 encoded as if it were a character (CESU-8): not UTF-8, yet Python's JSON parser
decodes bytes with ``surrogatepass``, so in a JSON body it reads as a lone surrogate."""

CHOICE_LOOKALIKES: list[tuple[str, Callable[[str], str]]] = [
    ("upper case", str.upper),
    ("a leading space", lambda c: f" {c}"),
    ("a trailing space", lambda c: f"{c} "),
    ("a trailing newline", lambda c: f"{c}\n"),
    ("one character short", lambda c: c[:-1]),
    ("doubled", lambda c: c + c),
    ("a right-to-left mark", lambda c: f"\u200f{c}"),
    ("a right-to-left override", lambda c: f"\u202e{c}"),
    ("a zero-width space", lambda c: f"{c[:1]}\u200b{c[1:]}"),
    ("a combining accent", lambda c: f"{c}\u0301"),
    ("fullwidth letters", lambda c: "".join(chr(ord(x) + 0xFEE0) if x.isalnum() else x for x in c)),
    ("a Cyrillic lookalike", lambda c: c.replace("e", "\u0435").replace("a", "\u0430") + "\u0430"),
    ("a byte order mark", lambda c: f"\ufeff{c}"),
]
"""Ways a string misses a choice while looking like it (enum values must match exactly)."""

VALID_ODD_TEXT = {
    "a right-to-left mark": "\u200f a fine film \u200f",
    "a right-to-left override": "\u202e a fine film",
    "Arabic with a left-to-right mark": "\u0641\u064a\u0644\u0645 \u200e rather good",
    "a byte order mark inside": "a fine\ufeff film",
    "zero-width joiners (an emoji family)": "loved it \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "combining accents": "a cafe\u0301 scene, tre\u0300s bien",
    "astral plane letters": "\U0001d518\U0001d52b\U0001d522 good film",
    "a tab and newlines": "good\tfilm\r\nwell acted\n",
    "a line separator": "good film\u2028well acted",
    "CJK text": "\u3068\u3066\u3082\u826f\u3044\u6620\u753b",
}
"""Free text that looks odd and is valid: it must be answered (200)."""


class Raw(bytes):
    """A JSON fragment sent exactly as these bytes: what Python's json cannot write (NaN
    literals, numbers of 5,000 digits, nesting 10,000 deep, bad escapes)."""


class NotUtf8(bytes):
    """A string whose encoding is these bytes, which are not UTF-8: inside a JSON string, a
    binary BYTES element or a gRPC ``bytes_contents`` entry."""


def dump(value: Any) -> bytes:
    """``value`` as JSON bytes; :class:`Raw` and :class:`NotUtf8` parts go in as they are."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, NotUtf8):
        return b'"' + bytes(value) + b'"'
    if isinstance(value, dict):
        items = (
            dump(k if isinstance(k, bytes) else str(k)) + b":" + dump(v) for k, v in value.items()
        )
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=True, allow_nan=False).encode()


# -- the schema's view -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One field of the input model, as its JSON schema and its tensor mapping describe it."""

    name: str
    kind: str
    """``number``, ``integer`` or ``string`` (the JSON schema type)."""
    datatype: str
    """Its Open Inference Protocol datatype (``FP32``, ``INT64``, ``BYTES``)."""
    required: bool
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None


def rules_of(model: type[BaseModel]) -> list[Rule]:
    schema = model.model_json_schema()
    datatypes = {spec.name: spec.datatype for spec in specs_of(model)}
    required = set(schema.get("required", []))
    rules = []
    for name, prop in schema["properties"].items():
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        (branch,) = branches
        choices = tuple(branch.get("enum", [branch["const"]] if "const" in branch else []))
        rules.append(
            Rule(
                name=name,
                kind=branch["type"],
                datatype=datatypes[name],
                required=name in required,
                choices=choices,
                minimum=branch.get("minimum"),
                maximum=branch.get("maximum"),
                exclusive_minimum=branch.get("exclusiveMinimum"),
                exclusive_maximum=branch.get("exclusiveMaximum"),
                min_length=branch.get("minLength"),
                max_length=branch.get("maxLength"),
                pattern=branch.get("pattern"),
            )
        )
    return rules


@dataclass(frozen=True)
class Target:
    """What a corpus is generated for: one pipeline's schema and a valid object of it, and
    the server's limits."""

    pipeline: str
    key: str
    rules: list[Rule]
    valid: dict[str, Any]
    max_bulk: int
    max_body: int

    @property
    def bulk_key(self) -> str:
        return f"{self.key}s"

    @property
    def required(self) -> list[Rule]:
        return [r for r in self.rules if r.required]


def target(pipeline: str, max_bulk: int, max_body: int) -> Target:
    """The pipeline's schema, and a valid object drawn from its own generator (one with every
    optional field filled, so that each field's tensor travels)."""
    recipe = pipelines.get(pipeline)
    frame = recipe.generate(50, 0.0, 1).drop(columns=[recipe.target])
    rules = rules_of(recipe.Input)
    for record in frame.to_dict("records"):
        row = {str(k): v.item() if isinstance(v, np.generic) else v for k, v in record.items()}
        if not any(v is None or (isinstance(v, float) and math.isnan(v)) for v in row.values()):
            recipe.Input.model_validate(row)
            valid = {r.name: row[r.name] for r in rules}
            return Target(pipeline, recipe.input_key, rules, valid, max_bulk, max_body)
    raise AssertionError(f"{pipeline}: the generator gave no object with every field")


# -- bad values per field ------------------------------------------------------------------------
FIELD = "field"
"""A value the schema refuses: the refusal names the field (tensor)."""
NOT_JSON = "not-json"
"""A value that makes the body invalid JSON (or not UTF-8): 400, naming JSON."""


@dataclass(frozen=True)
class Bad:
    """A value a field refuses, and how: by name (``FIELD``) or as a body that is not JSON."""

    label: str
    value: Any
    outcome: str = FIELD


def _carrier(rule: Rule, valid: Any) -> str:
    """A string the odd characters go into: a choice (so the result is no choice), else the
    valid text cut short enough to stay within the length limit."""
    text = str(rule.choices[0]) if rule.choices else str(valid)
    return text[: max(2, (rule.max_length or 64) - 16)]


def _placed(carrier: str, odd: Any) -> Iterator[tuple[str, Any]]:
    """``odd`` (a character, or :class:`NotUtf8` bytes) at the start, middle and end."""
    half = len(carrier) // 2
    for where, (head, tail) in {
        "at the start": ("", carrier),
        "in the middle": (carrier[:half], carrier[half:]),
        "at the end": (carrier, ""),
    }.items():
        if isinstance(odd, bytes):
            yield where, NotUtf8(head.encode() + odd + tail.encode())
        else:
            yield where, head + odd + tail


def odd_characters(rule: Rule, valid: Any) -> list[Bad]:
    """Controls, DEL, lone surrogates and non-UTF-8 bytes inside a string field, three places
    each. Surrogates go as JSON escapes (as text: invalid); the bytes make JSON bodies invalid."""
    carrier, out = _carrier(rule, valid), []
    for char in [*CONTROLS, *SURROGATES]:
        for where, value in _placed(carrier, char):
            out.append(Bad(f"U+{ord(char):04X} {where}", value))
    for what, seq in NOT_UTF8.items():
        for where, value in _placed(carrier, seq):
            out.append(Bad(f"{what} {where}", value, NOT_JSON))
    for where, value in _placed(carrier, CESU_SURROGATE):
        out.append(Bad(f"a CESU-8 surrogate {where}", value))
    return out


def text_values(rule: Rule, valid: Any) -> list[Bad]:
    """Strings the field refuses: too short, blank, too long, not a choice, odd characters."""
    out = []
    if rule.min_length:
        out.append(Bad("an empty string", ""))
    if rule.pattern == r"\S":
        for blank in (" ", "\t", "\n\n", " \r\n ", "\u00a0", "\u2003", "\u3000"):
            out.append(Bad(f"blank ({blank!r})", blank))
    if rule.max_length:
        n = rule.max_length
        out += [
            Bad(f"{n + 1} characters", "x" * (n + 1)),
            Bad(f"{n + 1} two-byte characters", "\u00e9" * (n + 1)),
            Bad(f"{n + 1} astral characters", "\U0001f600" * (n + 1)),
            Bad(f"{n * 20} characters", "y" * (n * 20)),
        ]
    if rule.choices:
        first = str(rule.choices[0])
        out += [Bad(f"a choice with {what}", change(first)) for what, change in CHOICE_LOOKALIKES]
        out += [
            Bad("no choice", "yacht"),
            Bad("an empty string", ""),
            Bad("two choices joined", f"{rule.choices[0]},{rule.choices[-1]}"),
            Bad("a choice's index", "0"),
            Bad("the word null", "null"),
            Bad("a 10,000-character string", "z" * 10_000),
        ]
    return out + odd_characters(rule, valid)


def _edges(rule: Rule) -> list[Bad]:
    """Numbers just and far outside the field's range, as its schema states it."""
    out, lo, hi = [], rule.minimum, rule.maximum
    if lo is not None:
        out += [Bad("one below the minimum", lo - 1), Bad("just below the minimum", lo - 1e-6)]
    if rule.exclusive_minimum is not None:
        out.append(Bad("the exclusive minimum itself", rule.exclusive_minimum))
        out.append(Bad("below the exclusive minimum", rule.exclusive_minimum - 0.5))
    if hi is not None:
        out += [
            Bad("one above the maximum", hi + 1),
            Bad("just above the maximum", hi + 1e-6 if rule.kind == "number" else hi + 0.5),
            Bad("ten times the maximum", hi * 10),
        ]
    if rule.exclusive_maximum is not None:
        out.append(Bad("the exclusive maximum itself", rule.exclusive_maximum))
    return out


def number_values(rule: Rule) -> list[Bad]:
    """Numbers the field refuses: out of range, huge, negative, not whole, not a choice."""
    out = _edges(rule)
    out += [
        Bad("1e308", 1e308),
        Bad("-1e308", -1e308),
        Bad("2**64", 2**64),
        Bad("10**30", 10**30),
        Bad("-(2**63) - 1", -(2**63) - 1),
        Bad("1e400 (infinite as a float)", Raw(b"1e400")),
        Bad("-1e400", Raw(b"-1e400")),
        Bad("a 300-digit integer", Raw(b"9" * 300)),
    ]
    floor = rule.minimum if rule.minimum is not None else rule.exclusive_minimum
    if floor is not None and floor >= 0:
        out += [Bad("-1", -1), Bad("-0.001", -0.001)]
    if rule.kind == "integer":
        middle = rule.choices[len(rule.choices) // 2] if rule.choices else (rule.minimum or 0) + 1
        out += [Bad("a fraction", middle + 0.5), Bad("a tiny fraction", middle + 1e-9)]
    if rule.choices:
        first, last = int(rule.choices[0]), int(rule.choices[-1])
        misses = {first - 1, first + 1, last + 1, 0, -first, first * 10} - set(rule.choices)
        out += [Bad(f"{m}, no choice", m) for m in sorted(misses)]
    return out


def not_numbers(rule: Rule, oip: bool) -> list[Bad]:
    """JSON values of another type where a number belongs. In OIP ``data`` a nested list is
    flattened (``[[34]]`` is fine there), so lists holding one number are business-only."""
    out = [
        Bad("true", True),
        Bad("false", False),
        Bad("a numeric string", str(rule.minimum if rule.minimum is not None else 36)),
        Bad("a float string", "5.5e3"),
        Bad("a hex string", "0x10"),
        Bad("a padded numeric string", " 7 "),
        Bad("an empty string", ""),
        Bad("the string NaN", "NaN"),
        Bad("Arabic-Indic digits", "\u0661\u0662"),
        Bad("an object", {}),
        Bad("an object holding the number", {"value": 1}),
    ]
    if not oip:
        out += [
            Bad("an empty list", []),
            Bad("a list holding the number", [1]),
            Bad("[[1]]", [[1]]),
        ]
    return out


def not_strings(rule: Rule, oip: bool) -> list[Bad]:
    out = [
        Bad("true", True),
        Bad("false", False),
        Bad("0", 0),
        Bad("42", 42),
        Bad("-1.5", -1.5),
        Bad("1e308", 1e308),
        Bad("2**64", 2**64),
        Bad("an object", {}),
        Bad("an object holding a string", {"text": "x"}),
    ]
    if not oip:
        out += [Bad("an empty list", []), Bad("a list holding a string", ["x"]), Bad("[[]]", [[]])]
    return out


def json_constants(rule: Rule, oip: bool) -> list[Bad]:
    """NaN and the infinities as JSON literals: business JSON refuses the body; OIP JSON reads
    them (NaN marks a missing optional number, so it is no refusal there)."""
    out = []
    for literal in ("NaN", "Infinity", "-Infinity"):
        if not oip:
            out.append(Bad(f"the literal {literal}", Raw(literal.encode()), NOT_JSON))
        elif literal != "NaN" or rule.required:
            out.append(Bad(f"the literal {literal}", Raw(literal.encode())))
    return out


def bad_json_numbers() -> list[Bad]:
    """Number-like fragments that are not JSON."""
    fragments = [b"+1", b"01", b"1.", b".5", b"1e", b"0x1F", b"1_000", b"--1", b"9" * 5000]
    return [Bad(f"the fragment {f[:12].decode()}", Raw(f), NOT_JSON) for f in fragments]


def field_values(rule: Rule, valid: Any, oip: bool) -> list[Bad]:
    """Every value ``rule`` refuses, as JSON; ``oip``: in an OIP tensor's ``data`` (where
    ``null`` is refused for optional fields too, and NaN is not a JSON error)."""
    out = []
    if rule.required or oip:
        out.append(Bad("null", None))
    if rule.kind == "string":
        return out + not_strings(rule, oip) + text_values(rule, valid)
    return (
        out
        + not_numbers(rule, oip)
        + number_values(rule)
        + json_constants(rule, oip)
        + bad_json_numbers()
    )


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HttpCase:
    """One request and the refusal it must get: a status in ``statuses`` whose JSON body
    contains every fragment of ``mentions``."""

    label: str
    path: str
    body: bytes
    headers: dict[str, str]
    statuses: frozenset[int]
    mentions: tuple[str, ...]
    chunked: bool = False
    """Send the body in chunks, without a Content-Length."""


@dataclass(frozen=True)
class RawCase:
    """Bytes sent on a socket as they are (framing the HTTP client would not write): the
    server must refuse them with a 4xx or close the connection; ``stalls`` marks a request that
    announces more than it sends, which the server can only end by a timeout."""

    label: str
    data: bytes
    stalls: bool = False


@dataclass(frozen=True)
class GrpcCase:
    """One serialized request to ``method`` and the refusal it must get: a code in ``codes``
    whose details contain every fragment of ``mentions``."""

    label: str
    request: bytes
    codes: frozenset[str]
    mentions: tuple[str, ...]
    method: str = INFER


@dataclass
class Corpus:
    """The refusals and the odd-but-valid requests of one protocol for one pipeline."""

    http: list[HttpCase] = field(default_factory=list)
    raw: list[RawCase] = field(default_factory=list)
    grpc: list[GrpcCase] = field(default_factory=list)
    valid_http: list[HttpCase] = field(default_factory=list)
    valid_grpc: list[GrpcCase] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.http) + len(self.raw) + len(self.grpc)


def _json_case(label: str, path: str, body: bytes, status: int, *mentions: str) -> HttpCase:
    return HttpCase(label, path, body, {"content-type": JSON_TYPE}, frozenset({status}), mentions)


def _nested(depth: int) -> Raw:
    return Raw(b"[" * depth + b"1" + b"]" * depth)


def _nested_objects(depth: int) -> Raw:
    return Raw(b'{"a":' * depth + b"1" + b"}" * depth)


NOT_JSON_BODIES: dict[str, bytes] = {
    "an empty body": b"",
    "whitespace only": b"  \n ",
    "an opening brace": b"{",
    "a closing brace": b"}",
    "single quotes": b"{'a': 1}",
    "a trailing comma": b'{"a": 1,}',
    "an unquoted key": b"{a: 1}",
    "a comment": b'{"a": 1 /* no */}',
    "two documents": b"{} {}",
    "a raw newline in a string": b'{"a": "x\ny"}',
    "a raw NUL in a string": b'{"a": "x\x00y"}',
    "a bad escape": b'{"a": "\\x41"}',
    "a short unicode escape": b'{"a": "\\u12"}',
    "a non-hex unicode escape": b'{"a": "\\uZZZZ"}',
    "a bare word": b"nul",
    "the literal NaN": b"NaN",
    "the literal Infinity": b"Infinity",
    "a 5,000-digit number": b"9" * 5000,
}


def body_cases(path: str, max_body: int) -> list[HttpCase]:
    """What is wrong with the body itself, for any JSON endpoint at ``path``."""
    out = [_json_case(label, path, body, 400, "JSON") for label, body in NOT_JSON_BODIES.items()]
    for what, seq in NOT_UTF8.items():
        out.append(_json_case(f"a body with {what}", path, b'{"' + seq + b'": 1}', 400, "JSON"))
    for label, deep in {
        f"arrays nested {DEEP} deep": _nested(DEEP),
        f"objects nested {DEEP} deep": _nested_objects(DEEP),
        f"arrays nested {DEEP * 10} deep": _nested(DEEP * 10),
    }.items():
        out.append(_json_case(label, path, bytes(deep), 400, "JSON"))
    # a body over the limit: declared (refused before it is read), and sent in chunks
    big = b'{"pad": "' + b"x" * (max_body + 10) + b'"}'
    out.append(_json_case("a body over the limit", path, big, 413, "limit"))
    out.append(
        HttpCase(
            "a chunked body over the limit",
            path,
            big,
            {"content-type": JSON_TYPE},
            frozenset({413}),
            ("limit",),
            chunked=True,
        )
    )
    return out


def content_type_cases(
    path: str, body: bytes, refused: Iterable[str | None], status: int = 415
) -> list[HttpCase]:
    out = []
    for content_type in refused:
        headers = {} if content_type is None else {"content-type": content_type}
        label = f"content type {content_type!r}"
        out.append(HttpCase(label, path, body, headers, frozenset({status}), ("content-type",)))
    return out


REFUSED_TYPES = [
    None,
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/json",
    "application/jsonx",
    "application/json-patch+json",
    "*/*",
]


def framing_cases(path: str, body: bytes, content_type: str = JSON_TYPE) -> list[RawCase]:
    """HTTP framing that lies: lengths shorter, longer, malformed or doubled, chunks that
    never end, headers that never end."""

    def request(*headers: str, payload: bytes = body) -> bytes:
        head = [f"POST {path} HTTP/1.1", "host: gateway", f"content-type: {content_type}"]
        return ("\r\n".join([*head, *headers]) + "\r\n\r\n").encode() + payload

    n = len(body)
    chunk = f"{n:x}\r\n".encode() + body + b"\r\n"
    return [
        RawCase("Content-Length shorter than the body", request(f"content-length: {n - 5}")),
        RawCase("Content-Length not a number", request("content-length: abc")),
        RawCase("Content-Length negative", request("content-length: -5")),
        RawCase("Content-Length of 30 digits", request(f"content-length: {'9' * 30}")),
        RawCase(
            "two different Content-Lengths", request(f"content-length: {n}", "content-length: 3")
        ),
        RawCase(
            "Content-Length and chunked together",
            request(f"content-length: {n}", "transfer-encoding: chunked"),
        ),
        RawCase("a body with no length", request()),
        RawCase(
            "a chunk size that is not hex",
            request("transfer-encoding: chunked", payload=b"zz\r\n" + body + b"\r\n0\r\n\r\n"),
        ),
        RawCase(
            "a chunk larger than its size",
            request("transfer-encoding: chunked", payload=b"2\r\n" + body + b"\r\n0\r\n\r\n"),
        ),
        RawCase("an unknown transfer coding", request("transfer-encoding: gzip, identity")),
        RawCase("a header name with a space", request(f"content-length: {n}", "bad name: x")),
        RawCase("a NUL in a header value", request(f"content-length: {n}", "x-note: a\x00b")),
        RawCase("a request line with no version", f"POST {path}\r\n\r\n".encode() + body),
        # the client announces more than it sends: only a timeout ends these
        RawCase("Content-Length longer than the body", request(f"content-length: {n + 100}"), True),
        RawCase(
            "a truncated body (half sent)",
            request(f"content-length: {n}", payload=body[: n // 2]),
            True,
        ),
        RawCase(
            "chunks with no last chunk", request("transfer-encoding: chunked", payload=chunk), True
        ),
        RawCase("headers that never end", request(payload=b"")[:-2], True),
    ]


# -- business JSON -------------------------------------------------------------------------------
Refusal = tuple[str, bytes, int, tuple[str, ...]]
"""A business-JSON refusal to expect: label, body, status and what it names."""


def _object_cases(t: Target, wrap: Callable[[Any], Any], at: str) -> list[Refusal]:
    """``(label, body, status, mentions)`` for every bad field value, missing field, extra
    key and wrong object, the object placed in a body by ``wrap``; ``at`` is the object's path
    in a refusal (``application``, ``applications.1``)."""
    out: list[Refusal] = []
    for rule in t.rules:
        for bad in field_values(rule, t.valid[rule.name], oip=False):
            body = dump(wrap({**t.valid, rule.name: bad.value}))
            if bad.outcome == NOT_JSON:
                out.append((f"{rule.name}: {bad.label}", body, 400, ("JSON",)))
            else:
                out.append((f"{rule.name}: {bad.label}", body, 422, (f"{at}.{rule.name}",)))
    for rule in t.required:
        rest = {k: v for k, v in t.valid.items() if k != rule.name}
        out.append((f"{rule.name} missing", dump(wrap(rest)), 422, (f"{at}.{rule.name}",)))
    some = t.rules[0].name
    extras: dict[str, Any] = {
        "colour": "red",
        some.upper(): t.valid[some],
        f"{some} ": t.valid[some],
        "": 1,
        "__proto__": {},
        "constructor": None,
        "k" * 1000: 1,
    }
    for key, value in extras.items():
        body = dump(wrap({**t.valid, key: value}))
        out.append((f"an extra key {key[:20]!r}", body, 422, (f"{at}.{key}",)))
    # odd keys: the refusal must still be written (it may name the object rather than the key)
    for key in ["\u0000", "\x1b[31m", "\u202e" + some, some + "\u200f", "\ud800", "\udc00" + some]:
        out.append((f"an odd extra key {key!r}", dump(wrap({**t.valid, key: 1})), 422, (at,)))
    for what, seq in list(NOT_UTF8.items())[:4]:
        body = dump(wrap({**t.valid, NotUtf8(seq): 1}))
        out.append((f"a key with {what}", body, 400, ("JSON",)))
    for label, value in {
        "null": None,
        "a list": [],
        "a list holding the object": [t.valid],
        "a string": "x",
        "a number": 42,
        "true": True,
        "an empty object": {},
    }.items():
        out.append((f"the object as {label}", dump(wrap(value)), 422, (at,)))
    out.append((f"the object nested {DEEP} deep", dump(wrap(_nested(DEEP))), 400, ("JSON",)))
    # a key twice: JSON parsers keep the last one, which is the bad one here
    first = t.rules[0].name
    needle = dump(first) + b":" + dump(t.valid[first])
    head, _, tail = dump(wrap(t.valid)).rpartition(needle)  # the object ``wrap`` put last
    twice = head + needle + b"," + dump(first) + b":{}" + tail
    out.append((f"{first} twice, the last bad", twice, 422, (f"{at}.{first}",)))
    return out


def business_single(t: Target) -> Corpus:
    path, key = "/predict", t.key
    corpus = Corpus()
    for label, body, status, mentions in _object_cases(t, lambda obj: {key: obj}, key):
        corpus.http.append(_json_case(label, path, body, status, *mentions))
    envelopes: dict[str, tuple[Any, str]] = {
        "no key": ({}, key),
        "the bulk key": ({t.bulk_key: t.valid}, key),
        "the key in upper case": ({key.upper(): t.valid}, key),
        "an extra top-level key": ({key: t.valid, "extra": 1}, "extra"),
        "an extra top-level key with NUL": ({key: t.valid, "\u0000": 1}, key),
        "an extra top-level lone surrogate key": ({key: t.valid, "\ud800": 1}, key),
        "a list": ([{key: t.valid}], "body"),
        "a string": ("x", "body"),
        "a number": (42, "body"),
        "null": (None, "body"),
        "true": (True, "body"),
    }
    for label, (payload, mention) in envelopes.items():
        corpus.http.append(_json_case(f"body: {label}", path, dump(payload), 422, mention))
    valid = dump({key: t.valid})
    corpus.http += body_cases(path, t.max_body)
    corpus.http += content_type_cases(path, valid, REFUSED_TYPES)
    corpus.raw += framing_cases(path, valid)
    corpus.valid_http += [
        _json_case(label, path, dump({key: obj}), 200) for label, obj in odd_valid_objects(t)
    ]
    corpus.valid_http += [
        HttpCase(f"content type {ct!r}", path, valid, {"content-type": ct}, frozenset({200}), ())
        for ct in ("application/json; charset=utf-8", "Application/JSON")
    ]
    return corpus


def odd_valid_objects(t: Target) -> list[tuple[str, dict[str, Any]]]:
    """Objects that look odd and are valid: odd free text, boundary numbers, whole floats for
    integers, optional fields null or left out."""
    out = []
    for rule in t.rules:
        if rule.kind == "string" and not rule.choices:
            for label, text in VALID_ODD_TEXT.items():
                if rule.max_length is None or len(text) <= rule.max_length:
                    out.append((f"{rule.name}: {label}", {**t.valid, rule.name: text}))
            if rule.max_length:
                out.append(
                    (
                        f"{rule.name}: exactly the longest",
                        {**t.valid, rule.name: "w" * rule.max_length},
                    )
                )
        if rule.kind in ("number", "integer") and not rule.choices:
            if rule.minimum is not None:
                out.append((f"{rule.name}: the minimum", {**t.valid, rule.name: rule.minimum}))
            if rule.maximum is not None:
                out.append((f"{rule.name}: the maximum", {**t.valid, rule.name: rule.maximum}))
        if rule.kind == "integer":
            whole = rule.choices[0] if rule.choices else int(rule.minimum or 0) + 1
            out.append(
                (f"{rule.name}: a whole number as a float", {**t.valid, rule.name: float(whole)})
            )
        if not rule.required:
            out.append((f"{rule.name}: null", {**t.valid, rule.name: None}))
            rest = {k: v for k, v in t.valid.items() if k != rule.name}
            out.append((f"{rule.name}: left out", rest))
    return out


def business_bulk(t: Target) -> Corpus:
    path, key = "/predict/bulk", t.bulk_key
    corpus = Corpus()
    valid = t.valid
    for label, body, status, mentions in _object_cases(
        t, lambda obj: {key: [valid, obj]}, f"{key}.1"
    ):
        corpus.http.append(_json_case(label, path, body, status, *mentions))
    lists: dict[str, tuple[Any, str]] = {
        "no key": ({}, key),
        "the single key": ({t.key: [valid]}, t.key),
        "an extra top-level key": ({key: [valid], "extra": 1}, "extra"),
        "the list as an object": ({key: valid}, key),
        "the list as a string": ({key: "x"}, key),
        "the list as null": ({key: None}, key),
        "the list as a number": ({key: 3}, key),
        "an empty list": ({key: []}, key),
        f"{t.max_bulk + 1} objects": ({key: [valid] * (t.max_bulk + 1)}, key),
        f"{t.max_bulk * 5} objects": ({key: [valid] * (t.max_bulk * 5)}, key),
        "a list in the list": ({key: [[valid]]}, f"{key}.0"),
        "null in the list": ({key: [valid, None]}, f"{key}.1"),
        "the bad object last of the most": (
            {key: [valid] * (t.max_bulk - 1) + [{**valid, t.rules[0].name: None}]},
            f"{key}.{t.max_bulk - 1}.{t.rules[0].name}",
        ),
        "a body that is a list": ([valid], "body"),
    }
    for label, (payload, mention) in lists.items():
        body = dump(payload)
        if len(body) > t.max_body:
            corpus.http.append(_json_case(f"bulk: {label}", path, body, 413, "limit"))
        else:
            corpus.http.append(_json_case(f"bulk: {label}", path, body, 422, mention))
    good = dump({key: [valid]})
    corpus.http += body_cases(path, t.max_body)
    corpus.http += content_type_cases(path, good, REFUSED_TYPES)
    corpus.raw += framing_cases(path, good)
    odd = [obj for _, obj in odd_valid_objects(t)]
    corpus.valid_http.append(_json_case("every odd-but-valid object", path, dump({key: odd}), 200))
    corpus.valid_http.append(
        _json_case(f"{t.max_bulk} objects", path, dump({key: [valid] * t.max_bulk}), 200)
    )
    return corpus


# -- OIP tensors ---------------------------------------------------------------------------------
ALL_DATATYPES = [*NUMPY_TYPES, "BYTES"]
NO_DATATYPES = ["FP128", "BF16", "STRING", "fp32", "int64", "bytes", "", "INT64 ", "FP32\u0000"]
ACCEPTED = {  # what the gateway takes for each tensor datatype (docs/serving.md)
    "FP32": {t for t in NUMPY_TYPES if t != "BOOL"},
    "INT64": {t for t in NUMPY_TYPES if "INT" in t},
    "BYTES": {"BYTES"},
    "BOOL": {"BOOL"},
}


def _sample_data(datatype: str) -> Any:
    """One value of ``datatype`` as JSON data."""
    if datatype == "BYTES":
        return "x"
    if datatype == "BOOL":
        return True
    return 1


TensorChange = Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]
"""A change to a request's tensors (name → description)."""


@dataclass(frozen=True)
class TensorBad:
    """A change to a request's tensors that must be refused, and what the refusal must name."""

    label: str
    change: TensorChange
    mentions: tuple[str, ...]


_DROP = object()
"""A key to leave out of a tensor's description."""


def _json_tensors(t: Target) -> dict[str, dict[str, Any]]:
    return {
        r.name: {"name": r.name, "datatype": r.datatype, "shape": [1, 1], "data": [t.valid[r.name]]}
        for r in t.rules
    }


def _with(name: str, **changes: Any) -> TensorChange:
    """Change keys of tensor ``name``'s description (``_DROP`` leaves one out)."""

    def change(tensors: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        tensor = {k: v for k, v in {**tensors[name], **changes}.items() if v is not _DROP}
        return {**tensors, name: tensor}

    return change


def _without(name: str) -> TensorChange:
    return lambda tensors: {k: v for k, v in tensors.items() if k != name}


def _plus(description: dict[str, Any]) -> TensorChange:
    return lambda tensors: {**tensors, "~": description}


def tensor_structure(t: Target) -> list[TensorBad]:
    """What is wrong with a tensor's description rather than its values: datatypes, shapes,
    counts, data containers, sizes, names; for OIP JSON ``data``."""
    out: list[TensorBad] = []
    for rule in t.rules:
        n, value, named = rule.name, t.valid[rule.name], (f"{rule.name}: ",)
        for datatype in ALL_DATATYPES:
            if datatype not in ACCEPTED[rule.datatype]:
                change = _with(n, datatype=datatype, data=[_sample_data(datatype)])
                out.append(TensorBad(f"{n}: datatype {datatype}", change, named))
        wrong: list[Any] = [*NO_DATATYPES, 5, None, ["FP32"], {"type": "FP32"}, _DROP]
        for kind in wrong:
            label = "no datatype" if kind is _DROP else f"datatype {kind!r}"
            out.append(TensorBad(f"{n}: {label}", _with(n, datatype=kind), named))
        surrogate = _with(n, datatype="FP32\udc00")
        out.append(
            TensorBad(f"{n}: a datatype with a lone surrogate", surrogate, (f"{n}.datatype",))
        )
        shapes: dict[str, tuple[Any, list[Any]]] = {
            "[]": ([], [value]),
            "[1, 1, 1]": ([1, 1, 1], [value]),
            "[1, 2]": ([1, 2], [value] * 2),
            "[1, 0]": ([1, 0], []),
            "[0]": ([0], []),
            "[-1]": ([-1], [value]),
            "[1.5]": ([1.5], [value]),
            "['1']": (["1"], [value]),
            "[true]": ([True], [value]),
            "[2] with one value": ([2], [value]),
            "[1] with two values": ([1], [value] * 2),
            "[2, 1] with no values": ([2, 1], []),
            f"[{t.max_bulk + 1}]": ([t.max_bulk + 1], [value] * (t.max_bulk + 1)),
            "[2**64]": ([2**64], [value]),
            "null": (None, [value]),
            "'1'": ("1", [value]),
            "an object": ({"n": 1}, [value]),
            "left out": (_DROP, [value]),
        }
        for label, (shape, values) in shapes.items():
            change = _with(n, shape=shape, data=values)
            out.append(TensorBad(f"{n}: shape {label}", change, named))
        containers: dict[str, Any] = {"a number": 5, "a string": "x", "null": None, "an object": {}}
        for label, container in containers.items():
            out.append(TensorBad(f"{n}: data as {label}", _with(n, data=container), named))
        out.append(TensorBad(f"{n}: no data", _with(n, data=_DROP), named))
        two = _with(n, shape=[2, 1], data=[value] * 2)
        out.append(TensorBad(f"{n}: two objects, the others one", two, (n, "objects but input")))
        for size in (-1, "4", True, 1.5, 8):
            change = _with(n, parameters={"binary_data_size": size}, data=_DROP)
            out.append(
                TensorBad(f"{n}: binary_data_size {size!r} and no binary data", change, named)
            )
    for rule in t.required:
        out.append(TensorBad(f"{rule.name} missing", _without(rule.name), (f"{rule.name}: ",)))
    first = _json_tensors(t)[t.rules[0].name]
    for name in [
        "colour",
        first["name"].upper(),
        f" {first['name']}",
        f"{first['name']}\u0000",
        "",
    ]:
        out.append(
            TensorBad(
                f"an unknown tensor {name!r}", _plus({**first, "name": name}), ("unknown input",)
            )
        )
    out.append(
        TensorBad(
            "an unknown tensor of 1,000 characters",
            _plus({**first, "name": "n" * 1000}),
            ("unknown input",),
        )
    )
    out.append(TensorBad("a tensor given twice", _plus(first), (f"{first['name']}: given twice",)))
    surrogate = _plus({**first, "name": "\ud800"})
    out.append(
        TensorBad("a tensor named with a lone surrogate", surrogate, ("inputs.", "surrogate"))
    )
    return out


def _oip_body(tensors: dict[str, dict[str, Any]]) -> bytes:
    return dump({"inputs": list(tensors.values())})


def oip_json(t: Target) -> Corpus:
    path = f"/v2/models/{t.pipeline}/infer"
    corpus = Corpus()
    base = _json_tensors(t)
    for rule in t.rules:
        for bad in field_values(rule, t.valid[rule.name], oip=True):
            body = _oip_body(_with(rule.name, data=[bad.value])(base))
            label = f"{rule.name}: {bad.label}"
            if bad.outcome == NOT_JSON:
                corpus.http.append(_json_case(label, path, body, 400, "JSON"))
            else:
                corpus.http.append(_json_case(label, path, body, 400, f"{rule.name}: "))
    for structure in tensor_structure(t):
        body = _oip_body(structure.change(base))
        corpus.http.append(_json_case(structure.label, path, body, 400, *structure.mentions))
    tensors = list(base.values())
    envelopes: dict[str, tuple[Any, str]] = {
        "no inputs": ({}, "inputs"),
        "inputs as an object": ({"inputs": base}, "inputs"),
        "inputs empty": ({"inputs": []}, "inputs"),
        "inputs as null": ({"inputs": None}, "inputs"),
        "inputs as a string": ({"inputs": "x"}, "inputs"),
        "an input that is a number": ({"inputs": [5]}, "inputs.0"),
        "an input that is a list": ({"inputs": [[]]}, "inputs.0"),
        "an input with no name": (
            {"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]},
            "inputs.0",
        ),
        "an input named by a number": ({"inputs": [{**tensors[0], "name": 5}]}, "inputs.0"),
        "outputs as a string": ({"inputs": tensors, "outputs": "x"}, "outputs"),
        "outputs as an object": ({"inputs": tensors, "outputs": {}}, "outputs"),
        "an output that is a number": ({"inputs": tensors, "outputs": [5]}, "outputs.0"),
        "an output with no name": ({"inputs": tensors, "outputs": [{}]}, "outputs.0"),
        "an unknown output": ({"inputs": tensors, "outputs": [{"name": "colour"}]}, "colour: "),
        "an output named with a lone surrogate": (
            {"inputs": tensors, "outputs": [{"name": "\udc00"}]},
            "outputs.0",
        ),
        "an id with a lone surrogate": ({"inputs": tensors, "id": "ok\ud800"}, "id: "),
        "a body that is a list": (tensors, "inputs"),
        "a body that is a string": ("x", "inputs"),
        "a body that is null": (None, "inputs"),
    }
    for label, (payload, mention) in envelopes.items():
        corpus.http.append(_json_case(f"body: {label}", path, dump(payload), 400, mention))
    valid = _oip_body(base)
    for label, (other, mention) in {
        "an unknown model": ("/v2/models/cars/infer", "'cars'"),
        "an unknown version": (f"/v2/models/{t.pipeline}/versions/99/infer", "'99'"),
        "a model named with NUL": ("/v2/models/%00/infer", "not served"),
        "a model named with bytes that are not UTF-8": ("/v2/models/%FF%FE/infer", "not served"),
        "a model named with an encoded surrogate": ("/v2/models/%ED%A0%80/infer", "not served"),
        "a model with a 2,000-character name": (f"/v2/models/{'m' * 2000}/infer", "not served"),
    }.items():
        corpus.http.append(_json_case(label, other, valid, 404, mention))
    corpus.http += body_cases(path, t.max_body)
    corpus.http += content_type_cases(
        path, valid, [c for c in REFUSED_TYPES if c is not None and c != "*/*"]
    )
    corpus.raw += framing_cases(path, valid)
    corpus.valid_http += [
        _json_case(label, path, body, 200) for label, body in oip_json_valid(t, base).items()
    ]
    corpus.valid_http.append(HttpCase("no content type", path, valid, {}, frozenset({200}), ()))
    return corpus


def oip_json_valid(t: Target, base: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """OIP JSON requests that look odd and are valid."""
    out = {
        "flat shapes": _oip_body({k: {**v, "shape": [1]} for k, v in base.items()}),
        "nested data": _oip_body({k: {**v, "data": [[v["data"][0]]]} for k, v in base.items()}),
    }
    for rule in t.rules:
        if not rule.required:
            rest = {k: v for k, v in base.items() if k != rule.name}
            out[f"{rule.name} left out"] = _oip_body(rest)
            if rule.kind != "string":
                nan = _with(rule.name, data=[Raw(b"NaN")])(base)
                out[f"{rule.name}: NaN (missing)"] = _oip_body(nan)
        if rule.datatype == "FP32":
            out[f"{rule.name} as FP64"] = _oip_body(_with(rule.name, datatype="FP64")(base))
        if rule.datatype == "INT64":
            out[f"{rule.name} as INT32"] = _oip_body(_with(rule.name, datatype="INT32")(base))
        if rule.kind == "string" and not rule.choices:
            for label, text in VALID_ODD_TEXT.items():
                out[f"{rule.name}: {label}"] = _oip_body(_with(rule.name, data=[text])(base))
    return out


# -- raw tensors: the binary extension and gRPC ----------------------------------------------------
def pack(datatype: str, values: list[Any]) -> bytes:
    """Little-endian raw tensor bytes, as Triton's binary extension and gRPC carry them; a
    BYTES element is its length (u32) and its bytes (a str with a surrogate: not UTF-8)."""
    if datatype == "BYTES":
        parts = []
        for value in values:
            data = (
                value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
            )
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.asarray(values, dtype=NUMPY_TYPES.get(datatype, np.dtype("<f4"))).tobytes()


@dataclass(frozen=True)
class Wire:
    """One input tensor in raw form: ``values`` packed, or ``raw`` bytes that lie about them."""

    name: str
    datatype: str
    shape: list[int]
    values: list[Any]
    raw: bytes | None = None

    @property
    def data(self) -> bytes:
        return self.raw if self.raw is not None else pack(self.datatype, self.values)

    def but(self, **changes: Any) -> Wire:
        return replace(self, **changes)


@dataclass(frozen=True)
class WireBad:
    """Raw tensors that must be refused, and what the refusal must name."""

    label: str
    tensors: list[Wire]
    mentions: tuple[str, ...]


def wire_values(rule: Rule, valid: Any) -> list[tuple[str, str, list[Any]]]:
    """``(label, datatype, values)``: one hostile value of the field in raw form. Numbers go
    as FP64 (so the schema's limits are exact) or INT64; what an integer datatype cannot hold
    goes as FP64, which an integer field refuses by its datatype. Strings go UTF-8 encoded:
    a lone surrogate becomes bytes that are not UTF-8."""
    if rule.kind == "string":
        return [(bad.label, "BYTES", [bad.value]) for bad in text_values(rule, valid)]
    out = []
    for bad in number_values(rule):
        value = bad.value
        if isinstance(value, Raw):
            if len(value) > 20:
                continue  # a 300-digit integer: no tensor datatype holds it
            value = float(value)
        fits = isinstance(value, int) and -(2**63) <= value < 2**63
        if rule.kind == "integer" and fits:
            out.append((bad.label, "INT64", [value]))
        else:
            out.append((bad.label, "FP64", [float(value)]))
    if rule.required:  # NaN marks a missing value of an optional field
        out += [("NaN (FP64)", "FP64", [float("nan")]), ("NaN (FP32)", "FP32", [float("nan")])]
    out += [
        ("+inf", "FP64", [float("inf")]),
        ("-inf", "FP32", [float("-inf")]),
        ("the UINT64 maximum", "UINT64", [2**64 - 1]),
        ("the INT64 minimum", "INT64", [-(2**63)]),
        ("the INT8 minimum", "INT8", [-128]),
    ]
    if rule.kind == "number":
        out.append(("FP32's largest", "FP32", [3.4e38]))
    return out


def _wire_base(t: Target) -> list[Wire]:
    return [Wire(r.name, r.datatype, [1, 1], [t.valid[r.name]]) for r in t.rules]


def _swapped(base: list[Wire], tensor: Wire) -> list[Wire]:
    return [tensor if w.name == tensor.name else w for w in base]


def wire_refusals(t: Target) -> list[WireBad]:
    """Hostile raw tensors, the same for the binary extension and for gRPC: values, byte
    lengths, datatypes, shapes, counts, names."""
    base, out = _wire_base(t), []
    for rule, good in zip(t.rules, base, strict=True):
        n, named = rule.name, (f"{rule.name}: ",)

        def bad(label: str, tensor: Wire, mentions: tuple[str, ...] = named) -> None:
            out.append(WireBad(f"{n}: {label}", _swapped(base, tensor), mentions))  # noqa: B023

        for label, datatype, values in wire_values(rule, t.valid[n]):
            bad(label, good.but(datatype=datatype, values=values))
        raw = good.data
        lengths = {
            "one byte short": raw[:-1],
            "one byte over": raw + b"\x01",
            "no bytes": b"",
            "twice the bytes": raw * 2,
            "7 garbage bytes": bytes(range(7)),
        }
        if rule.datatype == "BYTES":
            lengths |= {
                "an element length past the end": struct.pack("<I", 1000) + b"abc",
                "an element length of 2**32 - 1": struct.pack("<I", 2**32 - 1),
                "a two-byte element length": b"\x03\x00",
            }
        for label, data in lengths.items():
            bad(f"raw data {label}", good.but(raw=data))
        for datatype in ALL_DATATYPES:
            if datatype not in ACCEPTED[rule.datatype]:
                bad(
                    f"datatype {datatype}",
                    good.but(datatype=datatype, values=[_sample_data(datatype)]),
                )
        for datatype in ("FP128", "BF16", "STRING", "fp32", ""):
            bad(f"datatype {datatype!r}", good.but(datatype=datatype, raw=raw))
        for shape, count in (
            ([], 1),
            ([1, 2], 2),
            ([1, 1, 1], 1),
            ([0], 0),
            ([-1], 1),
            ([-1, -1], 1),
            ([2, 1], 1),
            ([1], 2),
            ([t.max_bulk + 1], t.max_bulk + 1),
            ([2**40, 2**40], 1),
        ):
            bad(f"shape {shape} holding {count}", good.but(shape=shape, values=good.values * count))
        bad(
            "two objects, the others one",
            good.but(shape=[2, 1], values=good.values * 2),
            (n, "objects but input"),
        )
    for rule in t.required:
        rest = [w for w in base if w.name != rule.name]
        out.append(WireBad(f"{rule.name} missing", rest, (f"{rule.name}: ",)))
    first = base[0]
    for name in (
        "colour",
        first.name.upper(),
        f" {first.name}",
        f"{first.name}\u0000",
        "",
        "n" * 1000,
    ):
        extra = [*base, first.but(name=name)]
        out.append(WireBad(f"an unknown tensor {name[:20]!r}", extra, ("unknown input",)))
    out.append(WireBad("a tensor given twice", [*base, first], (f"{first.name}: given twice",)))
    return out


# -- the binary tensor extension -------------------------------------------------------------------
def binary_request(
    tensors: list[Wire], header_extra: dict[str, Any] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body (the JSON header, then each tensor's bytes, sized by its
    ``binary_data_size``) and its headers."""
    inputs = [
        {
            "name": w.name,
            "datatype": w.datatype,
            "shape": w.shape,
            "parameters": {"binary_data_size": len(w.data)},
        }
        for w in tensors
    ]
    header = dump({"inputs": inputs, **(header_extra or {})})
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
    return header + b"".join(w.data for w in tensors), headers


def oip_binary(t: Target) -> Corpus:
    path = f"/v2/models/{t.pipeline}/infer"
    corpus = Corpus()
    for bad in wire_refusals(t):
        body, headers = binary_request(bad.tensors)
        corpus.http.append(HttpCase(bad.label, path, body, headers, frozenset({400}), bad.mentions))
    base = _wire_base(t)
    body, headers = binary_request(base)
    header_length = int(headers[HEADER_LENGTH])
    for label, value, mention in [
        ("not a number", "abc", HEADER_LENGTH),
        ("negative", "-1", HEADER_LENGTH),
        ("a fraction", "1.5", HEADER_LENGTH),
        ("empty", "", HEADER_LENGTH),
        ("hexadecimal", "0x10", HEADER_LENGTH),
        ("past the body", str(len(body) + 1), HEADER_LENGTH),
        ("of 30 digits", "9" * 30, HEADER_LENGTH),
        ("zero", "0", "JSON"),
        ("cutting the header short", str(header_length - 1), "JSON"),
        ("reaching into the binary data", str(header_length + 3), "JSON"),
    ]:
        wrong = {**headers, HEADER_LENGTH: value}
        corpus.http.append(
            HttpCase(f"header length {label}", path, body, wrong, frozenset({400}), (mention,))
        )
    rng = random.Random(7)
    for i in range(8):
        junk = bytes(rng.randrange(256) for _ in range(64 + 37 * i))
        junk_headers = {**headers, HEADER_LENGTH: str(len(junk) // 2)}
        corpus.http.append(
            HttpCase(f"garbage bytes #{i}", path, junk, junk_headers, frozenset({400}), ("JSON",))
        )
    corpus.http.append(
        HttpCase(
            "binary data of no input",
            path,
            body + bytes(8),
            headers,
            frozenset({400}),
            ("binary data",),
        )
    )
    json_only = _oip_body(
        _with(t.rules[0].name, parameters={"binary_data_size": 4}, data=_DROP)(_json_tensors(t))
    )
    corpus.http.append(
        HttpCase(
            "binary_data_size with no binary data",
            path,
            json_only,
            {"content-type": BINARY_TYPE},
            frozenset({400}),
            (f"{t.rules[0].name}: ",),
        )
    )
    for content_type in ("text/plain", "multipart/form-data; boundary=x", "application/x-binary"):
        wrong = {**headers, "content-type": content_type}
        label = f"content type {content_type!r}"
        corpus.http.append(HttpCase(label, path, body, wrong, frozenset({415}), ("content-type",)))
    big = body + bytes(t.max_body)
    corpus.http.append(
        HttpCase("a body over the limit", path, big, headers, frozenset({413}), ("limit",))
    )
    corpus.raw += framing_cases(path, body, BINARY_TYPE)
    corpus.valid_http.append(HttpCase("binary tensors", path, body, headers, frozenset({200}), ()))
    for label, tensors in wire_valid(t).items():
        ok_body, ok_headers = binary_request(tensors)
        corpus.valid_http.append(HttpCase(label, path, ok_body, ok_headers, frozenset({200}), ()))
    return corpus


def wire_valid(t: Target) -> dict[str, list[Wire]]:
    """Raw tensors that look odd and are valid: odd free text, NaN for a missing optional
    number, other numeric datatypes, flat shapes."""
    base, out = _wire_base(t), {}
    out["flat shapes"] = [w.but(shape=[1]) for w in base]
    for rule, good in zip(t.rules, base, strict=True):
        if rule.kind == "string" and not rule.choices:
            for label, text in VALID_ODD_TEXT.items():
                out[f"{rule.name}: {label}"] = _swapped(base, good.but(values=[text]))
        if not rule.required and rule.kind != "string":
            out[f"{rule.name}: NaN (missing)"] = _swapped(
                base, good.but(datatype="FP32", values=[float("nan")])
            )
        if rule.kind == "number":
            out[f"{rule.name} as UINT32"] = _swapped(
                base, good.but(datatype="UINT32", values=[int(good.values[0])])
            )
        if rule.kind == "integer":
            out[f"{rule.name} as INT8"] = _swapped(base, good.but(datatype="INT8"))
    return out


# -- gRPC ----------------------------------------------------------------------------------------

INVALID = frozenset({"INVALID_ARGUMENT"})
NOT_FOUND = frozenset({"NOT_FOUND"})


def _typed_values(w: Wire) -> list[Any] | None:
    """``w``'s values as its datatype's typed field holds them; None where they cannot go
    there (lying bytes, integers out of the field's range)."""
    if w.raw is not None:
        return None
    if w.datatype == "BYTES":
        return [
            v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogatepass") for v in w.values
        ]
    if "INT" in w.datatype and w.datatype in NUMPY_TYPES:
        info = np.iinfo(NUMPY_TYPES[w.datatype])
        if not all(isinstance(v, int) and info.min <= v <= info.max for v in w.values):
            return None
    return w.values


def grpc_request(
    model: str,
    tensors: list[Wire],
    *,
    typed: bool,
    version: str = "",
    outputs: Iterable[str] = (),
) -> bytes | None:
    """A serialized ``ModelInferRequest`` with each tensor in typed ``contents`` (None where
    a tensor cannot go there) or in ``raw_input_contents``."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="hostile")
    for w in tensors:
        tensor = request.inputs.add(name=w.name, datatype=w.datatype, shape=w.shape)
        if not typed:
            request.raw_input_contents.append(w.data)
            continue
        values = _typed_values(w)
        if values is None:
            return None
        if w.datatype in CONTENTS:
            try:
                getattr(tensor.contents, CONTENTS[w.datatype]).extend(values)
            except (TypeError, ValueError):
                return None
    for name in outputs:
        request.outputs.add(name=name)
    return bytes(request.SerializeToString())


def _both_wires(
    label: str,
    model: str,
    tensors: list[Wire],
    codes: frozenset[str],
    mentions: tuple[str, ...],
    **kw: Any,
) -> list[GrpcCase]:
    out = []
    for typed in (True, False):
        request = grpc_request(model, tensors, typed=typed, **kw)
        if request is not None:
            wire = "contents" if typed else "raw"
            out.append(GrpcCase(f"{label} ({wire})", request, codes, mentions))
    return out


def grpc_cases(t: Target) -> Corpus:
    corpus = Corpus()
    model, base = t.pipeline, _wire_base(t)
    for bad in wire_refusals(t):
        corpus.grpc += _both_wires(bad.label, model, bad.tensors, INVALID, bad.mentions)
    # typed contents in the field of another datatype: the declared one holds nothing
    for w in base:
        request = service_pb2.ModelInferRequest(model_name=model)
        for other in base:
            tensor = request.inputs.add(name=other.name, datatype=other.datatype, shape=other.shape)
            if other is not w:
                getattr(tensor.contents, CONTENTS[other.datatype]).extend(
                    _typed_values(other) or []
                )
            elif w.datatype == "BYTES":
                tensor.contents.fp64_contents.append(1.0)
            else:
                tensor.contents.bytes_contents.append(b"1")
        label = f"{w.name}: contents in another datatype's field"
        corpus.grpc.append(GrpcCase(label, request.SerializeToString(), INVALID, (f"{w.name}: ",)))
    # raw_input_contents that do not match the inputs
    valid = grpc_request(model, base, typed=False)
    assert valid is not None
    for label, keep in {"one raw entry short": -1, "one raw entry too many": None}.items():
        message = service_pb2.ModelInferRequest.FromString(valid)
        entries = list(message.raw_input_contents)[:keep] + ([] if keep else [bytes(8)])
        del message.raw_input_contents[:]
        message.raw_input_contents.extend(entries)
        corpus.grpc.append(
            GrpcCase(label, message.SerializeToString(), INVALID, ("raw_input_contents",))
        )
    # the envelope
    required = t.required[0].name
    corpus.grpc += _both_wires("an unknown model", "cars", base, NOT_FOUND, ("'cars'",))
    corpus.grpc += _both_wires("no model name", "", base, NOT_FOUND, ("not served",))
    corpus.grpc += _both_wires(
        "an unknown version", model, base, NOT_FOUND, ("'99'",), version="99"
    )
    corpus.grpc += _both_wires(
        "an unknown output", model, base, INVALID, ("colour: ",), outputs=["colour"]
    )
    corpus.grpc += _both_wires("no inputs", model, [], INVALID, (f"{required}: ",))
    corpus.grpc += garbage(valid, model)
    big = service_pb2.ModelInferRequest(model_name=model)
    big.inputs.add(name=base[0].name, datatype="FP32", shape=[1])
    big.raw_input_contents.append(bytes(t.max_body + 1024))
    corpus.grpc.append(
        GrpcCase(
            "a message over the size limit",
            big.SerializeToString(),
            frozenset({"RESOURCE_EXHAUSTED"}),
            ("larger than max",),
        )
    )
    for method in ("ModelMetadata", "ModelReady", "ModelConfig"):
        path = f"/inference.GRPCInferenceService/{method}"
        corpus.grpc += [
            GrpcCase(f"{method}: garbage", b"\xff\xff\xff", INVALID, (f"{method}Request",), path),
            GrpcCase(f"{method}: an unknown model", b"\x0a\x04cars", NOT_FOUND, ("'cars'",), path),
        ]
    health = "/grpc.health.v1.Health/Check"
    corpus.grpc.append(
        GrpcCase("Health/Check: garbage", b"\xff\xff", INVALID, ("HealthCheck",), health)
    )
    # grpc.aio answers an unknown method "Method not found!", without its name
    unknown = "/inference.GRPCInferenceService/RepositoryIndex"
    corpus.grpc.append(
        GrpcCase("an unknown method", b"", frozenset({"UNIMPLEMENTED"}), (), unknown)
    )
    corpus.valid_grpc += _both_wires("valid tensors", model, base, frozenset({"OK"}), ())
    for label, tensors in wire_valid(t).items():
        corpus.valid_grpc += _both_wires(label, model, tensors, frozenset({"OK"}), ())
    return corpus


def garbage(valid: bytes, model: str) -> list[GrpcCase]:
    """Bytes that are no ``ModelInferRequest``, or that parse into one that is still wrong:
    what each must get is read from parsing it here."""
    rng = random.Random(11)
    blobs = {
        "0xFF x3": b"\xff\xff\xff",
        "ten NULs": bytes(10),
        "a wrong wire type for model_name": b"\x08\x01",
        "a model_name that is not UTF-8": b"\x0a\x02\xff\xfe",
        "a tensor name that is not UTF-8": b"\x0a\x05loans\x22\x04\x0a\x02\xff\xfe",
        "a length past the end": b"\x0a\x7floans",
        "a varint that never ends": b"\x08" + b"\xff" * 12,
        "the valid message with junk after it": valid + b"\xff\xff",
        "a field number 0": b"\x00\x01",
        "an end-group tag": b"\x0c",
    }
    for i in (1, 2, 5, 10, 20, 40):
        cut = len(valid) * i // 41
        blobs[f"the valid message cut at {cut} bytes"] = valid[:cut]
    for i in range(24):
        blobs[f"random bytes #{i}"] = bytes(rng.randrange(256) for _ in range(1 + 13 * i))
    out = []
    for label, blob in blobs.items():
        try:
            message = service_pb2.ModelInferRequest.FromString(blob)
        except Exception:
            out.append(GrpcCase(label, blob, INVALID, ("ModelInferRequest",)))
            continue
        if message.model_name != model:
            out.append(GrpcCase(label, blob, NOT_FOUND, ("not served",)))
        else:
            out.append(GrpcCase(label, blob, INVALID, ()))
    return out


# -- all of it -----------------------------------------------------------------------------------
PROTOCOLS: dict[str, Callable[[Target], Corpus]] = {
    "business single": business_single,
    "business bulk": business_bulk,
    "OIP REST JSON": oip_json,
    "OIP REST binary": oip_binary,
    "OIP gRPC": grpc_cases,
}


def corpora(pipeline: str, max_bulk: int, max_body: int) -> dict[str, Corpus]:
    """Every protocol's corpus for ``pipeline``."""
    t = target(pipeline, max_bulk, max_body)
    return {protocol: make(t) for protocol, make in PROTOCOLS.items()}
