"""Slow and stuck clients cannot hold the data plane: connections that send nothing are closed,
requests whose head or body trickle in get 408 and are closed, and valid traffic meanwhile keeps
its latency."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import serve_gateway
from tests.traffic import objects

KEEP_ALIVE_S = 1.0
REQUEST_TIMEOUT_S = 2.0
HELD = {"idle": 60, "slow head": 60, "slow body": 60}
BODY = json.dumps({"application": objects(1, 0.0, 5)[0][0]}).encode()


@dataclass
class Held:
    """One connection a stuck client holds: what it trickles, and how the server ended it."""

    kind: str
    sock: socket.socket
    pending: bytes
    opened: float = field(default_factory=time.monotonic)
    closed_after: float | None = None
    answer: bytes = b""


def hold(address: tuple[str, int], kind: str) -> Held:
    sock = socket.create_connection(address, timeout=5)
    sock.setblocking(False)
    head = "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    if kind == "idle":
        pending = b""
    elif kind == "slow head":
        pending = (head + f"content-length: {len(BODY)}\r\n\r\n").encode() + BODY
    else:  # the head at once, then the body a byte at a time
        sock.sendall((head + f"content-length: {len(BODY)}\r\n\r\n").encode())
        pending = BODY
    return Held(kind, sock, pending)


def trickle(held: list[Held], stop: threading.Event) -> None:
    """Send every held connection one more byte every 0.2 s; note when the server closes it."""
    while not stop.is_set():
        for conn in held:
            if conn.closed_after is not None:
                continue
            try:
                chunk = conn.sock.recv(4096)
                if chunk:
                    conn.answer += chunk
                    continue
                conn.closed_after = time.monotonic() - conn.opened
            except BlockingIOError:
                pass
            except OSError:
                conn.closed_after = time.monotonic() - conn.opened
                continue
            if conn.pending:
                try:
                    conn.sock.send(conn.pending[:1])
                    conn.pending = conn.pending[1:]
                except OSError:
                    conn.closed_after = time.monotonic() - conn.opened
        stop.wait(0.2)


def latencies(url: str, seconds: float) -> list[float]:
    """Valid requests from 4 clients for ``seconds``: each one's latency (all must succeed)."""

    def client() -> list[float]:
        taken = []
        with httpx.Client(timeout=10) as http:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                started = time.perf_counter()
                answer = http.post(url, content=BODY, headers={"content-type": "application/json"})
                assert answer.status_code == 200, answer.text
                taken.append(time.perf_counter() - started)
        return taken

    with ThreadPoolExecutor(4) as pool:
        return [t for part in pool.map(lambda _: client(), range(4)) for t in part]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


@pytest.fixture(scope="module")
def plane(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("slow-clients")
    settings = {
        "keep_alive_s": str(KEEP_ALIVE_S),
        "request_timeout_s": str(REQUEST_TIMEOUT_S),
        "log_predictions": "false",
    }
    with serve_gateway(trained, logs, workers=1, settings=settings) as (_, data):
        yield data
    log = (Path(logs) / "bentoml.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "[ERROR]" not in log, log[-3000:]


def test_stuck_clients_are_closed_and_valid_traffic_keeps_its_latency(plane: str) -> None:
    url = f"{plane}/predict"
    parts = urlsplit(plane)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    before = latencies(url, 5)

    held = [hold(address, kind) for kind, n in HELD.items() for _ in range(n)]
    stop = threading.Event()
    trickler = threading.Thread(target=trickle, args=(held, stop), daemon=True)
    trickler.start()
    try:
        during = latencies(url, 5)
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 10
        while time.monotonic() < deadline and any(c.closed_after is None for c in held):
            time.sleep(0.2)
    finally:
        stop.set()
        trickler.join()
        for conn in held:
            conn.sock.close()

    print(
        f"\n{len(held)} stuck connections; valid p99 {p99(before) * 1000:.1f} ms before, "
        f"{p99(during) * 1000:.1f} ms while they were held ({len(during)} requests)"
    )
    for kind in HELD:
        ended = [c.closed_after for c in held if c.kind == kind]
        closed = [t for t in ended if t is not None]
        print(
            f"  {kind}: {len(closed)}/{len(ended)} closed by the server, the last after "
            f"{max(closed, default=float('nan')):.1f} s"
        )
        assert len(closed) == len(ended), f"{kind}: some connections were never closed"
    idle = [c.closed_after for c in held if c.kind == "idle"]
    assert max(t for t in idle if t is not None) < KEEP_ALIVE_S + 5
    for conn in held:
        if conn.kind != "idle":
            assert conn.answer.startswith(b"HTTP/1.1 408"), (conn.kind, conn.answer[:200])
            assert conn.closed_after is not None
            assert conn.closed_after < REQUEST_TIMEOUT_S + 5
    assert p99(during) <= max(3 * p99(before), p99(before) + 0.1)
