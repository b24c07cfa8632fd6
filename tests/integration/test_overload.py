"""Beyond capacity the gateway refuses quickly (503 + Retry-After, counted) instead of piling up
timeouts, and keeps answering once the load passes."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import free_port, in_process_settings, metric_samples, wait_until
from tests.traffic import APPLICATION


class SlowDevice:
    """The real predictor, with a device that takes ``seconds`` (0.3) per batch."""

    def __init__(self, predictor: Any, seconds: float = 0.3) -> None:
        self.inner = predictor
        self.device = predictor.device
        self.seconds = seconds

    def preprocess(self, inputs: Any) -> Any:
        return self.inner.preprocess(inputs)

    def forward(self, features: Any) -> Any:
        time.sleep(self.seconds)
        return self.inner.forward(features)

    def postprocess(self, raw: Any, inputs: Any) -> Any:
        return self.inner.postprocess(raw, inputs)


def test_excess_load_gets_503_with_retry_after(store: str, loans_data: Path) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(
        store,
        max_batch_size=1,
        max_queue=2,
    )
    model = load(settings)
    slow = dataclasses.replace(model, predictor=SlowDevice(model.predictor))
    core = GatewayCore(slow, settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:

        def call(_: int) -> Any:
            return client.post("/predict", json={"application": APPLICATION})

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(call, range(8)))
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}
        refused = [r for r in responses if r.status_code == 503]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("overloaded" in r.json()["error"] for r in refused)
        assert client.post("/predict", json={"application": APPLICATION}).status_code == 200
        shed = metric_samples(client.get("/metrics").text, "gateway_requests_shed_total")
        assert shed['{endpoint="/predict"}'] == len(refused)


def _exchange(
    sock: socket.socket, body: bytes, *, split: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One request on a kept-alive connection, and its answer (status, headers, body); with
    ``split``, the body follows the head in a write of its own."""
    head = (
        b"POST /predict HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    if split:
        sock.sendall(head)
        time.sleep(0.1)
        sock.sendall(body)
    else:
        sock.sendall(head + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += _received(sock)
    raw_head, rest = data.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(rest) < int(headers["content-length"]):
        rest += _received(sock)
    return int(lines[0].split()[1]), headers, rest


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def test_the_data_plane_sheds_before_the_app_and_keeps_the_connection(
    store: str, loans_data: Path
) -> None:
    """While the queue is full, the data plane's HTTP protocol answers a prediction as soon as
    its head is parsed (gateway.http.shed_before_app): the same 503 as everywhere, counted, the
    body read and dropped (also when it comes after the answer), the connection kept for the
    next request, and closed once idle for GATEWAY_KEEP_ALIVE_S (5 s)."""
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    port = free_port()
    settings = in_process_settings(store, max_batch_size=1, max_queue=1).model_copy(
        update={"data_port": port, "data_host": "127.0.0.1"}
    )
    model = load(settings)
    slow = dataclasses.replace(model, predictor=SlowDevice(model.predictor, seconds=2))
    core = GatewayCore(slow, settings, GatewayMetrics())
    body = json.dumps({"application": APPLICATION}).encode()
    with TestClient(create_app(lambda: core)) as client, ThreadPoolExecutor(2) as pool:
        running = pool.submit(client.post, "/predict", json={"application": APPLICATION})
        time.sleep(0.5)  # the first request's batch runs (2 s); the next one fills the queue
        assert not running.done()
        queued = pool.submit(client.post, "/predict", json={"application": APPLICATION})
        wait_until(lambda: core.served.batcher.full, 10, "the queue to fill")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
            socket.create_connection(("127.0.0.1", port), timeout=10) as idle,
        ):
            refused = [_exchange(sock, body, split=i == 2) for i in range(5)]  # one connection
            assert [status for status, _, _ in refused] == [503] * 5
            assert all(int(headers["retry-after"]) >= 1 for _, headers, _ in refused)
            assert all(b"overloaded" in json.loads(text)["error"].encode() for *_, text in refused)
            assert _exchange(idle, body, split=True)[0] == 503
            refused_at = time.monotonic()
            assert running.result().status_code == 200
            assert queued.result().status_code == 200
            status, headers, answer = _exchange(sock, body)  # the same connection, answered
            assert status == 200, answer
            assert json.loads(answer)["model_version"] == headers["x-model-version"]
            assert idle.recv(1) == b""  # closed by the server once idle (its body came late)
            assert time.monotonic() - refused_at < 9
        shed = metric_samples(client.get("/metrics").text, "gateway_requests_shed_total")
        assert shed['{endpoint="/predict"}'] == 6
