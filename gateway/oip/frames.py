"""The frames between a worker and its ``gateway-grpc`` front, on a Unix socket. The framing is
:mod:`gateway.framing`'s (``u32 length | body``, big-endian); the bodies, also big-endian, are:

* a call, to the worker: ``u64 id | u8 method length | method | request``, the method by its
  path (``/inference.GRPCInferenceService/ModelInfer``)
* its answer, from the worker: ``u64 id | u8 status code | u32 details length | u32 metadata
  length | details | metadata | response``, metadata being ``key\\0value\\0`` pairs: the headers
  sent before a refusal, such as ``retry-after``.

Requests and responses are the protocol's serialized protobuf messages; the front never parses
them. Call id 0 is no call: it carries the serving queue's state, so that the front sheds
``ModelInfer`` calls itself while the queue is full, before they are read or cross the link.

* from the worker, an answer frame with id 0 is the queue's state: ``RESOURCE_EXHAUSTED`` with
  the refusal's details and ``retry-after`` while it is full, ``OK`` once it has room again
* to the worker, a call frame with id 0 and method ``shed`` counts the calls the front refused
  so (``u64`` in the request bytes), for the worker's metrics

``grpcfront/main.go`` reads and writes the same layout: change both or neither.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from gateway import framing

CALL = struct.Struct(">IQB")
"""A call frame's fixed start as the front writes it: length prefix, id, method length."""
ANSWER = struct.Struct(">IQBII")
"""An answer frame's fixed start: length prefix, id, code, details and metadata lengths."""
STATE = 0
"""The call id of the queue-state frames (calls are numbered from 1)."""
SHED = "shed"
SHED_COUNT = struct.Struct(">Q")

_CALL_HEAD = struct.Struct(">QB")  # a call's body: CALL without the framing's length prefix
_ANSWER_HEAD = struct.Struct(">QBII")  # an answer's body: ANSWER without it


def answer_frame(
    call: int,
    code: int,
    details: str = "",
    header: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    text = details.encode()
    meta = b"".join(f"{key}\0{value}\0".encode() for key, value in header)
    return framing.frame(_ANSWER_HEAD.pack(call, code, len(text), len(meta)), text, meta, body)


def calls(buffer: bytearray) -> list[tuple[int, str, bytes]]:
    """The complete calls at the start of ``buffer`` as ``(id, method, request)``, removed from
    it; a partial call stays for the next read."""
    found = []
    for frame in framing.split(buffer):
        call, size = _CALL_HEAD.unpack_from(frame)
        method = frame[_CALL_HEAD.size : _CALL_HEAD.size + size]
        found.append((call, method.decode(), frame[_CALL_HEAD.size + size :]))
    return found
