"""The frames between a worker and its ``gateway-grpc`` front, on a Unix socket (big-endian;
``length`` counts the bytes after it):

* a call, to the worker: ``u32 length | u64 id | u8 method length | method | request``, the
  method by its path (``/inference.GRPCInferenceService/ModelInfer``)
* its answer, from the worker: ``u32 length | u64 id | u8 status code | u32 details length |
  u32 metadata length | details | metadata | response``, metadata being ``key\\0value\\0``
  pairs: the headers sent before a refusal, such as ``retry-after``.

Requests and responses are the protocol's serialized protobuf messages; the front never parses
them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

CALL = struct.Struct(">IQB")
ANSWER = struct.Struct(">IQBII")


def answer_frame(
    call: int,
    code: int,
    details: str = "",
    header: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    text = details.encode()
    meta = b"".join(f"{key}\0{value}\0".encode() for key, value in header)
    length = ANSWER.size - 4 + len(text) + len(meta) + len(body)
    return b"".join((ANSWER.pack(length, call, code, len(text), len(meta)), text, meta, body))


def calls(buffer: bytearray) -> list[tuple[int, str, bytes]]:
    """The complete calls at the start of ``buffer`` as ``(id, method, request)``, removed from
    it; a partial call stays for the next read."""
    found = []
    start, end = 0, len(buffer)
    while end - start >= CALL.size:
        length, call, size = CALL.unpack_from(buffer, start)
        stop = start + 4 + length
        if stop > end:
            break
        head = start + CALL.size
        found.append((call, buffer[head : head + size].decode(), bytes(buffer[head + size : stop])))
        start = stop
    del buffer[:start]
    return found
