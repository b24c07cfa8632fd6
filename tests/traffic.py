"""Test traffic: business objects (two fixed loan applications, and the pipelines' own
generators), the answers the champion gives them in-process, concurrent calls, and a client that
keeps calling a server while a test changes things under it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd

from trainers import pipelines
from trainers.packaging import unwrap

NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}
APPLICATION = {
    "income": 61000.0,
    "age": 45,
    "loan_amount": 15000.0,
    "term_months": 36,
    "employment_status": "self_employed",
    "purpose": "home_improvement",
    "existing_debt": 4000.0,
}
YOUNG = {
    "income": 12000.0,
    "age": 21,
    "loan_amount": 25000.0,
    "term_months": 60,
    "employment_status": "student",
    "purpose": "education",
}


def objects(rows: int, shift: float, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    frame = pipelines.get("loans").generate(rows, shift, seed)
    labels = frame.pop("defaulted").astype(int).tolist()
    records = [{str(k): v for k, v in r.items() if pd.notna(v)} for r in frame.to_dict("records")]
    return records, labels


def loan_variants(n: int) -> list[dict[str, Any]]:
    frame = pipelines.get("loans").generate(n, 0.3, 11)
    records = frame.drop(columns="defaulted").to_dict("records")
    return [{str(k): v for k, v in r.items() if pd.notna(v)} for r in records]  # NaN → missing


def direct_answers(uri: str, applications: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the loans champion at ``uri`` answers, computed in this process: the reference a
    server's answers are held to."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    predictor = unwrap(mlflow.pyfunc.load_model("models:/loans@champion")).predictor
    loans = pipelines.get("loans")
    inputs = [loans.Input(**o) for o in applications]
    return [a.model_dump() for a in predictor.predict_batch(inputs)]


async def post_all(base: str, applications: list[dict[str, Any]]) -> list[httpx.Response]:
    """One concurrent ``/predict`` call per application (what the batcher groups)."""
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(client.post("/predict", json={"application": o}) for o in applications)
            )
        )


def columns(
    metadata: list[dict[str, Any]], items: list[dict[str, Any]]
) -> list[tuple[str, str, np.ndarray[Any, Any]]]:
    """One ``(name, datatype, array)`` per input tensor; an optional field that is empty in
    every object is left out, a missing number is NaN."""
    out = []
    for tensor in metadata:
        name, datatype = tensor["name"], tensor["datatype"]
        values = [item.get(name) for item in items]
        if all(v is None for v in values):
            continue
        if datatype == "BYTES":
            array = np.array([str(v).encode() for v in values], dtype=np.object_)
        else:
            array = np.array([np.nan if v is None else v for v in values], dtype=NUMPY[datatype])
        out.append((name, datatype, array.reshape(-1, 1)))
    return out


class SteadyClient(threading.Thread):
    """Single-object calls, one after another, for as long as the test runs."""

    def __init__(
        self, base: str, population: list[dict[str, Any]] | None = None, pause_s: float = 0.02
    ) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.population = population or objects(500, 0.0, 99)[0]
        self.pause_s = pause_s

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            i = 0
            while not self.stopping.is_set():
                pool = self.population
                try:
                    r = client.post("/predict", json={"application": pool[i % len(pool)]})
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        self.versions[r.json()["model_version"]] += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                i += 1
                time.sleep(self.pause_s)

    def __enter__(self) -> SteadyClient:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.join(30)
