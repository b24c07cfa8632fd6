"""Test traffic: business objects from the pipelines' own generators, and a client that keeps
calling a server while a test changes things under it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pandas as pd

from trainers import pipelines

NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}


def objects(rows: int, shift: float, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
    frame = pipelines.get("loans").generate(rows, shift, seed)
    labels = frame.pop("defaulted").astype(int).tolist()
    records = [{str(k): v for k, v in r.items() if pd.notna(v)} for r in frame.to_dict("records")]
    return records, labels


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
