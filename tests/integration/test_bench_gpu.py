"""`make bench-gpu` in its smoke mode (a tiny model on the CPU), so the GPU benchmark cannot rot
while no GPU is at hand: it trains, measures the raw forward pass, serves the gateway (shared
device on and off) and plain BentoML, loads each and prints the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_the_gpu_bench_runs_end_to_end_in_smoke_mode(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    args = [sys.executable, "-m", "loadtests.bench_gpu", "--smoke", "--seconds", "2"]
    args += ["--connections", "16", "--json", str(figures)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "raw forward pass" in done.stdout
    assert "/ plain BentoML = " in done.stdout

    found = json.loads(figures.read_text())
    raw = {(r["batch"], r["precision"]): r["items_per_s"] for r in found["raw"]}
    assert set(raw) == {(b, p) for b in (1, 128, 512) for p in ("fp32", "bf16")}
    assert all(rate > 0 for rate in raw.values())
    served = {r["server"]: r for r in found["served"]}
    assert set(served) == {
        "gateway, shared device on",
        "gateway, shared device off",
        "plain BentoML",
    }
    for name in ("gateway, shared device on", "gateway, shared device off"):
        assert served[name]["errors"] == 0, served[name]
        assert served[name]["items_per_s"] > 0
        assert served[name]["device_batch"] >= 1  # read from the gateway's own histogram
    assert served["plain BentoML"]["items_per_s"] > 0
