"""``gateway-grpc``, the native gRPC front, against a worker that speaks its frames: calls reach
the worker unparsed, answers and refusals (code, details, headers) reach the client, and the
front ends with its worker. Answering with the real servicer is covered in
``tests/integration/test_oip.py``, against ``bentoml serve``."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gateway.oip import frames
from tests.helpers import VENV_BIN, free_port, wait_until

FRONT = VENV_BIN / "gateway-grpc"
INFER = "/inference.GRPCInferenceService/ModelInfer"
LIVE = "/inference.GRPCInferenceService/ServerLive"
HEALTH = "/grpc.health.v1.Health/"
Answer = tuple[int, str, list[tuple[str, str]], bytes]  # code, details, header, body


@dataclass
class Worker:
    """The worker's end of the link: answers each call with ``reply(method, request)``."""

    reply: Callable[[str, bytes], Answer]
    seen: list[tuple[str, bytes]] = field(default_factory=list)
    shed: list[int] = field(default_factory=list)  # the front's counts of calls it shed
    conn: socket.socket | None = None
    sending: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, listener: socket.socket) -> None:
        self.conn, _ = listener.accept()
        buffer = bytearray()
        while data := self.conn.recv(1 << 16):
            buffer += data
            for call, method, request in frames.calls(buffer):
                if call == frames.STATE:
                    assert method == frames.SHED
                    self.shed.append(frames.SHED_COUNT.unpack(request)[0])
                    continue
                self.seen.append((method, request))
                self.send(frames.answer_frame(call, *self.reply(method, request)))

    def send(self, frame: bytes) -> None:
        assert self.conn is not None
        with self.sending:
            self.conn.sendall(frame)


@pytest.fixture
def worker_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    assert FRONT.exists(), f"{FRONT} is not built: make grpc-front (make test builds it)"
    path = Path(f"/tmp/gw-test-{tmp_path.name[-12:]}.sock")  # short: Unix socket paths
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    yield listener, path
    listener.close()
    path.unlink(missing_ok=True)


def start_front(path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    args = [str(FRONT), "-listen", f"127.0.0.1:{port}", "-worker", str(path), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def running(
    listener: socket.socket, path: Path, reply: Callable[[str, bytes], Answer]
) -> Iterator[tuple[Worker, subprocess.Popen[bytes], grpc.Channel]]:
    """The front on a free port with ``reply`` as its worker; yields a channel to it."""
    worker = Worker(reply)
    thread = threading.Thread(target=worker.serve, args=(listener,), daemon=True)
    thread.start()
    port = free_port()
    front = start_front(path, port)
    assert front.stdout is not None
    assert front.stdout.readline().startswith(b"listening on 127.0.0.1:")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield worker, front, channel
    finally:
        channel.close()
        front.terminate()
        front.wait(timeout=10)
        thread.join(timeout=5)


def echo(method: str, request: bytes) -> Answer:
    return 0, "", [], method.encode() + b":" + request[::-1]


def test_calls_reach_the_worker_as_sent_and_answers_come_back(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    with running(*worker_socket, echo) as (worker, _, channel):
        infer = channel.unary_unary(INFER)
        assert infer(b"abc", timeout=10) == INFER.encode() + b":cba"
        live = channel.unary_unary(LIVE)
        assert live(b"", timeout=10) == LIVE.encode() + b":"
        bodies = [f"call {i}".encode() * (i + 1) for i in range(200)]
        with ThreadPoolExecutor(32) as pool:  # concurrent calls, each gets its own answer
            answers = list(pool.map(lambda body: infer(body, timeout=10), bodies))
        assert answers == [INFER.encode() + b":" + body[::-1] for body in bodies]
        assert (INFER, b"abc") in worker.seen


def test_refusals_keep_their_code_details_and_headers(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    def refuse(method: str, request: bytes) -> Answer:
        return (
            grpc.StatusCode.UNAVAILABLE.value[0],
            "overloaded: 64 waiting",
            [("retry-after", "2")],
            b"",
        )

    with running(*worker_socket, refuse) as (_, _, channel):
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(INFER)(b"x", timeout=10)
        error = caught.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "overloaded: 64 waiting"
        assert ("retry-after", "2") in error.initial_metadata()


def test_while_the_queue_is_full_the_front_sheds_inference_unread_and_counts_it_back(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    calls: list[grpc.RpcError | None] = []

    def refused() -> grpc.RpcError | None:
        try:
            infer(b"x", timeout=10)
            calls.append(None)
        except grpc.RpcError as error:
            calls.append(error)
        return calls[-1]

    with running(*worker_socket, echo) as (worker, _, channel):
        infer, live = channel.unary_unary(INFER), channel.unary_unary(LIVE)
        full = frames.answer_frame(frames.STATE, exhausted, "overloaded", [("retry-after", "3")])
        worker.send(full)
        wait_until(lambda: refused() is not None, 10, "the front to shed")
        for _ in range(20):
            error = refused()
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == "overloaded"
            assert ("retry-after", "3") in error.initial_metadata()
        assert live(b"", timeout=10) == LIVE.encode() + b":"  # only inference is shed
        worker.send(frames.answer_frame(frames.STATE, 0))
        wait_until(lambda: refused() is None, 10, "the front to pass calls on")
        shed = sum(error is not None for error in calls)
        wait_until(lambda: sum(worker.shed) == shed, 10, "the shed count")
    answered = [method for method, _ in worker.seen if method == INFER]
    assert len(answered) == len(calls) - shed  # a shed call never reached the worker


def test_methods_of_other_services_are_unimplemented(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    with running(*worker_socket, echo) as (worker, _, channel):
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/other.Service/Method")(b"x", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert worker.seen == []


def test_the_health_check_reaches_the_worker_and_watch_is_unimplemented(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    """The worker decides health: Check is carried like an inference call; Watch, a stream, is
    refused by the front itself."""
    with running(*worker_socket, echo) as (worker, _, channel):
        check = channel.unary_unary(HEALTH + "Check")
        assert check(b"probe", timeout=10) == (HEALTH + "Check:eborp").encode()
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(channel.unary_stream(HEALTH + "Watch")(b"", timeout=10)))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "call Check" in caught.value.details()
        assert worker.seen == [(HEALTH + "Check", b"probe")]


def test_the_front_ends_when_its_worker_closes_the_link(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    with running(*worker_socket, echo) as (worker, front, channel):
        assert channel.unary_unary(INFER)(b"x", timeout=10)
        assert worker.conn is not None
        worker.conn.shutdown(socket.SHUT_RDWR)
        assert front.wait(timeout=10) == 0


def test_the_front_ends_when_its_worker_process_is_gone(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    listener, path = worker_socket
    threading.Thread(target=listener.accept, daemon=True).start()
    # A parent that starts the front and exits at once, as a killed worker would.
    script = (
        "import subprocess, sys, os;"
        f"p = subprocess.Popen([{str(FRONT)!r}, '-listen', '127.0.0.1:{free_port()}',"
        f" '-worker', {str(path)!r}, '-parent', str(os.getpid())], stdout=subprocess.DEVNULL);"
        "print(p.pid, flush=True)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    pid = int(out.stdout)
    wait_until(lambda: not alive(pid), 10, "the front exiting after its worker")


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its new parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_port_held_by_another_program_is_refused(
    worker_socket: tuple[socket.socket, Path],
) -> None:
    listener, path = worker_socket
    threading.Thread(target=listener.accept, daemon=True).start()
    with socket.socket() as taken:  # no SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        front = start_front(path, taken.getsockname()[1])
        output, _ = front.communicate(timeout=10)
    assert front.returncode != 0
    assert b"cannot bind the gRPC port" in output


START = """
import asyncio, logging, sys
import grpc
from gateway.oip import grpc_front
from gateway.oip.service import Oip
from gateway.settings import GatewaySettings

logging.basicConfig(level=logging.WARNING, format="%(message)s")
grpc_front.program = lambda: sys.argv[1]  # the front found where a bento put it


async def main() -> None:
    settings = GatewaySettings(data_port=0, grpc_port=int(sys.argv[2]), grpc_server=sys.argv[3])
    try:
        server = await grpc_front.start_grpc(Oip(lambda: None), settings)
    except OSError as exc:
        print("refused:", exc)
        return
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sys.argv[2]}") as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        print(type(server).__name__, "live:", (await live(b"", timeout=10)) == b"\\x08\\x01")
    await server.stop()


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("setting", "expected"), [("auto", "GrpcServer live: True"), ("native", "refused:")]
)
def test_a_front_that_cannot_start_here_gives_way_to_grpc_aio(
    tmp_path: Path, setting: str, expected: str
) -> None:
    """A built front that does not run on this system (one built elsewhere, brought by a bento):
    with ``auto`` the worker serves gRPC from grpc.aio and says why; with ``native`` it refuses
    to start. (In a process of its own: gateway's stubs and tritonclient's cannot share one.)"""
    broken = tmp_path / "gateway-grpc"
    broken.write_text("#!/bin/sh\necho 'cannot execute: required file not found'\nexit 126\n")
    broken.chmod(0o755)
    ran = subprocess.run(
        [sys.executable, "-c", START, str(broken), str(free_port()), setting],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ran.stdout.startswith(expected), ran.stdout + ran.stderr
    assert "cannot execute: required file not found" in ran.stdout + ran.stderr
    if setting == "auto":
        assert "serving gRPC from grpc.aio instead" in ran.stderr
