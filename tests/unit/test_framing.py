"""The framing every local link shares: ``u32 length | body``, read from a buffer, a blocking
socket or file, or an asyncio stream; partial frames wait, an end mid-frame is an error, and
oversize bodies are refused before anything is written."""

from __future__ import annotations

import array
import asyncio
import io
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from gateway import framing
from gateway.oip import frames

BODIES = [b"", b"x", b"hello, frames", bytes(range(256)) * 40]


class Trickle(io.BytesIO):
    """A file that hands out one byte per read, as a pipe may."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(min(size, 1) if size is not None and size >= 0 else 1)


def read(source: socket.socket | io.BytesIO) -> bytes | None:
    """:func:`framing.read`, its bytearray as bytes to compare."""
    body = framing.read(source)
    return None if body is None else bytes(body)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    left.settimeout(2)
    right.settimeout(2)
    yield left, right
    left.close()
    right.close()


def test_a_frame_is_a_big_endian_length_then_the_body() -> None:
    assert framing.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert framing.frame(b"ab", b"", b"c") == framing.frame(b"abc")
    assert framing.frame() == b"\x00\x00\x00\x00"
    assert framing.frames([b"a", b"bc"]) == b"\x00\x00\x00\x01a\x00\x00\x00\x02bc"


def test_lengths_count_bytes_whatever_the_buffers_item_size() -> None:
    doubles = memoryview(array.array("d", [1.0, 2.0]))  # 2 items, 16 bytes
    assert framing.frame(doubles)[:4] == struct.pack(">I", 16)
    out = io.BytesIO()
    framing.write(out, doubles)
    assert read(io.BytesIO(out.getvalue())) == doubles.tobytes()


# -- from a buffer ----------------------------------------------------------------------------
def test_split_takes_every_complete_frame_of_one_read() -> None:
    buffer = bytearray(framing.frames(BODIES))
    assert framing.split(buffer) == BODIES
    assert buffer == b""


def test_split_leaves_a_partial_frame_for_the_next_read() -> None:
    stream = framing.frames(BODIES)
    buffer = bytearray()
    got: list[bytes] = []
    for i in range(len(stream)):  # one byte per read: every cut, in the prefix and in the body
        buffer.append(stream[i])
        got += framing.split(buffer)
        assert len(buffer) < len(stream)  # what is left is never more than one partial frame
    assert got == BODIES
    assert buffer == b""


def test_split_keeps_the_bytes_after_the_last_complete_frame() -> None:
    buffer = bytearray(framing.frame(b"one") + framing.frame(b"two")[:5])
    assert framing.split(buffer) == [b"one"]
    assert buffer == framing.frame(b"two")[:5]
    buffer += framing.frame(b"two")[5:]
    assert framing.split(buffer) == [b"two"]


# -- from a blocking file or socket -----------------------------------------------------------
def test_a_file_gives_its_frames_then_none_at_its_end() -> None:
    out = io.BytesIO()
    for body in BODIES:
        framing.write(out, body[:3], body[3:])  # parts of one body, written without joining
    source = Trickle(out.getvalue())
    assert [read(source) for _ in BODIES] == BODIES
    assert framing.read(source) is None
    assert framing.read(source) is None


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 12])
def test_a_file_that_ends_inside_a_frame_raises(cut: int) -> None:
    source = io.BytesIO(framing.frame(b"12345678901")[:cut])  # a 15-byte frame
    with pytest.raises(framing.TruncatedFrame) as raised:
        framing.read(source)
    assert isinstance(raised.value, EOFError)
    part, expected = ("length prefix", 4) if cut < 4 else ("body", 11)
    assert (raised.value.got, raised.value.expected) == (cut if cut < 4 else cut - 4, expected)
    assert part in str(raised.value)


def test_a_socket_gives_frames_sent_in_pieces(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    stream = framing.frames(BODIES)

    def trickle() -> None:
        for start in range(0, len(stream), 1000):
            left.sendall(stream[start : start + 1000])
            time.sleep(0.001)

    sender = threading.Thread(target=trickle)
    sender.start()
    assert [read(right) for _ in BODIES] == BODIES
    sender.join()


def test_a_large_frame_crosses_a_socket_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    payload = bytes(range(256)) * 16384  # 4 MiB: many kernel writes and reads
    sender = threading.Thread(target=framing.write, args=(left, b"head", payload, b"tail"))
    sender.start()
    assert read(right) == b"head" + payload + b"tail"
    sender.join()


def test_a_socket_closed_between_frames_gives_none(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    framing.write(left, b"last")
    left.close()
    assert read(right) == b"last"
    assert framing.read(right) is None


def test_a_socket_closed_inside_a_frame_raises(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(framing.frame(b"cut short")[:7])
    left.close()
    with pytest.raises(framing.TruncatedFrame, match="3 bytes into a frame's body of 9"):
        framing.read(right)


def test_a_silent_socket_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    _, right = pair
    right.settimeout(0.05)
    with pytest.raises(TimeoutError):
        framing.read(right)


# -- from an asyncio stream -------------------------------------------------------------------
def _stream(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


@pytest.mark.anyio
async def test_a_stream_gives_its_frames_then_none_at_its_end() -> None:
    reader = _stream(framing.frames(BODIES))
    assert [await framing.read_stream(reader) for _ in BODIES] == BODIES
    assert await framing.read_stream(reader) is None


@pytest.mark.anyio
async def test_a_stream_waits_for_the_rest_of_a_frame() -> None:
    frame = framing.frame(b"in two reads")
    for cut in (2, 6):  # inside the prefix, inside the body
        reader = _stream(frame[:cut], eof=False)
        reading = asyncio.ensure_future(framing.read_stream(reader))
        await asyncio.sleep(0.01)
        assert not reading.done()
        reader.feed_data(frame[cut:])
        assert await reading == b"in two reads"


@pytest.mark.anyio
@pytest.mark.parametrize(("cut", "got"), [(2, 2), (9, 5)])
async def test_a_stream_that_ends_inside_a_frame_raises(cut: int, got: int) -> None:
    reader = _stream(framing.frame(b"cut short")[:cut])
    with pytest.raises(framing.TruncatedFrame) as raised:
        await framing.read_stream(reader)
    assert raised.value.got == got


@pytest.mark.anyio
async def test_frames_cross_an_asyncio_connection_both_ways() -> None:
    left, right = socket.socketpair()
    left_reader, left_writer = await asyncio.open_unix_connection(sock=left)
    right_reader, right_writer = await asyncio.open_unix_connection(sock=right)
    for body in BODIES:
        await framing.write_stream(left_writer, body[:7], body[7:])
    assert [await framing.read_stream(right_reader) for _ in BODIES] == BODIES
    await framing.write_stream(right_writer, b"back")
    assert await framing.read_stream(left_reader) == b"back"
    left_writer.close()
    assert await framing.read_stream(right_reader) is None
    right_writer.close()


# -- oversize ---------------------------------------------------------------------------------
def test_the_largest_body_a_u32_announces_is_the_limit() -> None:
    assert framing.prefix(framing.MAX_BODY) == b"\xff\xff\xff\xff"
    with pytest.raises(framing.FrameTooLarge, match=f"{2**32} bytes.*at most {2**32 - 1}"):
        framing.prefix(2**32)


def test_an_oversize_body_is_refused_before_anything_is_written(
    monkeypatch: pytest.MonkeyPatch, pair: tuple[socket.socket, socket.socket]
) -> None:
    monkeypatch.setattr(framing, "MAX_BODY", 8)  # no 4 GiB buffers in a unit test
    out = io.BytesIO()
    with pytest.raises(framing.FrameTooLarge):
        framing.write(out, b"12345", b"6789")
    assert out.getvalue() == b""
    left, right = pair
    with pytest.raises(framing.FrameTooLarge):
        framing.write(left, b"123456789")
    framing.write(left, b"12345678")  # the limit itself passes, and nothing came before it
    assert read(right) == b"12345678"
    with pytest.raises(framing.FrameTooLarge):
        framing.frame(b"123456789")
    with pytest.raises(framing.FrameTooLarge):
        framing.message({"too": "long a header"})


# -- bodies of a JSON header and raw bytes ----------------------------------------------------
def test_a_message_is_its_header_then_its_payload() -> None:
    head, payload = framing.message({"kind": "tensor", "shape": [2, 3]}, b"\x01\x02")
    body = bytearray(framing.frame(head, payload)[4:])
    header, view = framing.parse_message(body)
    assert header == {"kind": "tensor", "shape": [2, 3]}
    assert view.tobytes() == b"\x01\x02"
    assert view.obj is body  # a view of the frame, not a copy
    header, view = framing.parse_message(framing.frame(*framing.message({}))[4:])
    assert (header, view.tobytes()) == ({}, b"")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\x00\x00", "no header length"),
        (b"\x00\x00\x00\x09{}", "announces a 9-byte header"),
        (b"\x00\x00\x00\x02[]", "JSON object, not list"),
    ],
)
def test_a_malformed_message_is_refused(body: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        framing.parse_message(body)


# -- the gRPC front's frames keep the layout grpcfront/main.go reads and writes ---------------
def test_the_grpc_fronts_frames_keep_their_layout() -> None:
    answer = frames.answer_frame(7, 8, "full", [("retry-after", "3")], b"body")
    meta = b"retry-after\x003\x00"
    fixed = frames.ANSWER.pack(frames.ANSWER.size - 4 + 4 + len(meta) + 4, 7, 8, 4, len(meta))
    assert answer == fixed + b"full" + meta + b"body"

    method = b"/inference.GRPCInferenceService/ModelInfer"
    call = frames.CALL.pack(frames.CALL.size - 4 + len(method) + 3, 9, len(method))
    shed = frames.SHED_COUNT.pack(5)
    state = frames.CALL.pack(frames.CALL.size - 4 + 4 + len(shed), frames.STATE, 4)
    buffer = bytearray(call + method + b"req" + state + b"shed" + shed + call[:6])
    assert frames.calls(buffer) == [
        (9, method.decode(), b"req"),
        (frames.STATE, frames.SHED, shed),
    ]
    assert buffer == call[:6]
