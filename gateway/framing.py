"""The framing of every local link: the worker ↔ ``gateway-grpc`` socket
(:mod:`gateway.oip.frames`), the shared device's socket (:mod:`gateway.device`) and the
low-priority process's pipes (:mod:`gateway.lowprio`). Each link says what a frame's body holds;
this module only finds where each body starts and ends, so that exact reads, partial reads, end
of stream and oversize bodies are handled (and tested) once.

A frame is ``u32 length | body``, big-endian, ``length`` counting the body's bytes: the layout
the Go front reads, so a body holds at most 4 GiB - 1 bytes, and a larger one is refused before
anything is written.

Where a body is a description plus raw bytes, :func:`message` and :func:`parse_message` lay it
out as ``u32 header length | JSON header | payload``: the payload (tensor bytes) is never copied
into JSON.

Frames are read four ways, each returning bodies: :func:`split` takes the complete frames out of
a bytearray that a protocol fills (a partial frame stays for the next read), :func:`read` blocks
on a socket or a binary file, and :func:`read_stream` awaits an asyncio stream. A stream that
ends between frames gives ``None``; one that ends inside a frame raises :class:`TruncatedFrame`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import IO, Any

Bytes = bytes | bytearray | memoryview
PREFIX = struct.Struct(">I")
MAX_BODY = 2**32 - 1
"""The largest body a ``u32`` length can announce."""


class FrameTooLarge(ValueError):
    """A body longer than the length prefix can announce; nothing of it was written."""

    def __init__(self, size: int) -> None:
        super().__init__(f"a frame body of {size} bytes: a frame holds at most {MAX_BODY} bytes")
        self.size = size


class TruncatedFrame(EOFError):
    """The stream ended inside a frame: ``got`` of the ``expected`` bytes of its length prefix
    or of its body had come."""

    def __init__(self, got: int, expected: int, part: str) -> None:
        super().__init__(f"the stream ended {got} bytes into a frame's {part} of {expected} bytes")
        self.got = got
        self.expected = expected


# -- writing ----------------------------------------------------------------------------------
def prefix(size: int) -> bytes:
    """The length prefix of a body of ``size`` bytes."""
    if size > MAX_BODY:
        raise FrameTooLarge(size)
    return PREFIX.pack(size)


def frame(*parts: Bytes) -> bytes:
    """One frame whose body is ``parts`` joined."""
    return b"".join((_prefix_of(parts), *parts))


def frames(bodies: Iterable[Bytes]) -> bytes:
    """One frame per body, back to back: what one write sends at once."""
    return b"".join(frame(body) for body in bodies)


def write(sink: socket.socket | IO[bytes], *parts: Bytes) -> None:
    """Send one frame whose body is ``parts`` joined, without joining them (tensor bytes are not
    copied): all of it on a blocking socket, or written and flushed to a binary file."""
    head = _prefix_of(parts)
    if isinstance(sink, socket.socket):
        _send_all(sink, [head, *parts])
        return
    for part in (head, *parts):
        sink.write(part)
    sink.flush()


async def write_stream(writer: asyncio.StreamWriter, *parts: Bytes) -> None:
    """Like :func:`write`, on an asyncio stream; returns once the stream has room again."""
    writer.writelines([_prefix_of(parts), *parts])
    await writer.drain()


def _prefix_of(parts: Iterable[Bytes]) -> bytes:
    size = 0
    for part in parts:  # a loop, not sum(generator): frames of a few bytes are the common case
        size += part.nbytes if isinstance(part, memoryview) else len(part)
    return prefix(size)


def _send_all(sock: socket.socket, parts: list[Bytes]) -> None:
    """``sendall`` for several buffers: one ``sendmsg`` per kernel write, whatever their number."""
    views = [memoryview(part).cast("B") for part in parts if memoryview(part).nbytes]
    while views:
        sent = sock.sendmsg(views)
        while sent and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if sent:
            views[0] = views[0][sent:]


# -- reading ----------------------------------------------------------------------------------
def split(buffer: bytearray) -> list[bytes]:
    """The bodies of the complete frames at the start of ``buffer``, removed from it; a partial
    frame stays for the next read."""
    bodies = []
    start, end = 0, len(buffer)
    with memoryview(buffer) as view:  # released before the buffer shrinks
        while end - start >= PREFIX.size:
            (size,) = PREFIX.unpack_from(view, start)
            stop = start + PREFIX.size + size
            if stop > end:
                break
            bodies.append(bytes(view[start + PREFIX.size : stop]))
            start = stop
    del buffer[:start]
    return bodies


def read(source: socket.socket | IO[bytes]) -> bytearray | None:
    """The next frame's body from a blocking socket or binary file; ``None`` where the stream
    ended before it. A socket's timeout applies to each read, as ``socket.timeout``."""
    head = bytearray(PREFIX.size)
    got = _read_into(source, memoryview(head))
    if got == 0:
        return None
    if got < PREFIX.size:
        raise TruncatedFrame(got, PREFIX.size, "length prefix")
    (size,) = PREFIX.unpack(head)
    body = bytearray(size)
    got = _read_into(source, memoryview(body))
    if got < size:
        raise TruncatedFrame(got, size, "body")
    return body


async def read_stream(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's body from an asyncio stream; ``None`` where the stream ended before it."""
    try:
        head = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise TruncatedFrame(len(exc.partial), PREFIX.size, "length prefix") from exc
    (size,) = PREFIX.unpack(head)
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        raise TruncatedFrame(len(exc.partial), size, "body") from exc


def _read_into(source: socket.socket | IO[bytes], view: memoryview) -> int:
    """Fill ``view``; fewer bytes than it holds only where the stream ended."""
    got = 0
    while got < len(view):
        if isinstance(source, socket.socket):
            n = source.recv_into(view[got:])
        else:
            chunk = source.read(len(view) - got)
            n = len(chunk)
            view[got : got + n] = chunk
        if n == 0:
            break
        got += n
    return got


# -- bodies of a JSON header and raw bytes ----------------------------------------------------
def message(header: Mapping[str, Any], payload: Bytes = b"") -> tuple[bytes, Bytes]:
    """The parts of a body holding ``header`` (as JSON) and ``payload``, for :func:`write`,
    :func:`write_stream` or :func:`frame`."""
    head = json.dumps(header).encode()
    return prefix(len(head)) + head, payload


def parse_message(body: Bytes) -> tuple[dict[str, Any], memoryview]:
    """``(header, payload)`` of a body laid out by :func:`message`; the payload is a view into
    ``body``, not a copy."""
    view = memoryview(body).cast("B")
    if len(view) < PREFIX.size:
        raise ValueError(f"a message body of {len(view)} bytes has no header length")
    (size,) = PREFIX.unpack_from(view)
    end = PREFIX.size + size
    if end > len(view):
        raise ValueError(f"a message body of {len(view)} bytes announces a {size}-byte header")
    header = json.loads(bytes(view[PREFIX.size : end]))
    if not isinstance(header, dict):
        raise ValueError(f"a message header must be a JSON object, not {type(header).__name__}")
    return header, view[end:]
