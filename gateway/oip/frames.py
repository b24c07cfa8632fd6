"""The frames between a worker and its ``gateway-grpc`` front, on a Unix socket (big-endian;
``length`` counts the bytes after it):

* a call, to the worker: ``u32 length | u64 id | u8 method length | method | request``, the
  method by its path (``/inference.GRPCInferenceService/ModelInfer``)
* its answer, from the worker: ``u32 length | u64 id | u8 status code | u32 details length |
  u32 metadata length | details | metadata | response``, metadata being ``key\\0value\\0``
  pairs: the headers sent before a refusal, such as ``retry-after``.

Requests and responses are the protocol's serialized protobuf messages; the front never parses
them. Call id 0 is no call: it carries the serving queue's state, so that the front sheds
``ModelInfer`` calls itself while the queue is full, before they are read or cross the link.

* from the worker, an answer frame with id 0 is the queue's state: ``RESOURCE_EXHAUSTED`` with
  the refusal's details and ``retry-after`` while it is full, ``OK`` once it has room again
* to the worker, a call frame with id 0 and method ``shed`` counts the calls the front refused
  so (``u64`` in the request bytes), for the worker's metrics
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

CALL = struct.Struct(">IQB")
ANSWER = struct.Struct(">IQBII")
STATE = 0
"""The call id of the queue-state frames (calls are numbered from 1)."""
SHED = "shed"
SHED_COUNT = struct.Struct(">Q")


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
