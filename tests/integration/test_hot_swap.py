"""Hot swap under load against a real two-worker ``bentoml serve``: promote, roll back, and refuse
a version whose artifacts were tampered with — with zero failed requests throughout."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from mlflow import MlflowClient

from tests.conftest import FAST_LOANS, Tracking, train_ok
from tests.helpers import cli, metric_samples, serve_gateway, wait_until
from tests.traffic import APPLICATION


class Load:
    """Threads posting one object per request until stopped; records status and version."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.results: list[tuple[int, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url, json={"application": APPLICATION})
                    detail = r.headers.get("x-model-version", "") if r.is_success else r.text
                    result = (r.status_code, detail)
                except httpx.HTTPError as exc:
                    result = (0, f"{type(exc).__name__}: {exc}")
                with self.lock:
                    self.results.append(result)

    def latest(self, n: int) -> set[str]:
        with self.lock:
            return {version for _, version in self.results[-n:]}

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def tamper(tracking: Tracking, version: str) -> None:
    client = MlflowClient(tracking.uri, tracking.uri)
    uri = client.get_model_version_download_uri("loans", version)
    weights = tracking.local_path(uri) / "artifacts" / "predictor" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def test_promote_rollback_and_refuse_a_tampered_version_under_load(
    tracking: Tracking, tmp_path: Path, loans_data: Path
) -> None:
    store = tracking.uri
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    for seed in ("1", "2"):  # v2, v3: registered, kept out of champion by the gate
        train_ok(
            store,
            "loans",
            "--data",
            str(loans_data),
            *FAST_LOANS,
            "--param",
            f"seed={seed}",
            "--min-improvement",
            "1",
        )

    with serve_gateway(store, tmp_path, settings={"poll_interval_s": "0.3"}) as (base, data):

        def swaps(result: str, at_least: int) -> Callable[[], bool]:
            """Counted over both workers: the client's connections may all land on one worker,
            so its answers alone do not show that the other one has swapped too."""

            def enough() -> bool:
                text = httpx.get(f"{base}/metrics").text
                counted = metric_samples(text, "gateway_model_swaps_total")
                return counted.get(f'{{model="loans",result="{result}"}}', 0) >= at_least

            return enough

        with Load(f"{data}/predict") as load:
            wait_until(lambda: load.latest(20) == {"1"}, 30, "v1 answering")
            assert cli(store, "promote", "loans", "2").exit_code == 0
            wait_until(swaps("swapped", 2), 60, "both workers on v2")
            wait_until(lambda: load.latest(40) == {"2"}, 60, "answers from v2")
            assert cli(store, "rollback", "loans").exit_code == 0
            wait_until(swaps("swapped", 4), 60, "both workers back on v1")
            wait_until(lambda: load.latest(40) == {"1"}, 60, "answers from v1")

            tamper(tracking, "3")
            assert cli(store, "promote", "loans", "3").exit_code == 0
            wait_until(swaps("refused", 2), 60, "tampered v3 refused by both workers")
            time.sleep(1)
            assert load.latest(40) == {"1"}

        metrics = httpx.get(f"{base}/metrics").text

    failures = [(status, detail) for status, detail in load.results if status != 200]
    assert not failures, f"{len(failures)} of {len(load.results)} failed: {failures[:5]}"
    versions = Counter(v for _, v in load.results)
    assert versions["2"] >= 40
    assert set(versions) == {"1", "2"}
    counted = metric_samples(metrics, "gateway_model_swaps_total")
    assert counted['{model="loans",result="swapped"}'] >= 4  # v1→v2 and back, in each worker
    assert metric_samples(metrics, "gateway_model_rollbacks_total")['{model="loans"}'] >= 2
    info = metric_samples(metrics, "gateway_model_info")
    assert {k for k, v in info.items() if v == 1} == {k for k in info if 'version="1"' in k}
    log = (tmp_path / "bentoml.log").read_text()
    assert log.count("refused to swap to 3: loans v3: artifacts do not match the sha256") >= 2
