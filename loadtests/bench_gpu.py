"""`make bench-gpu`: the `reviews` transformer at its GPU size, through the gateway, against the raw
model and plain BentoML — one table.

1. Train `reviews` into a temporary store: on a CUDA machine at the GPU anchor size (6 layers,
   d_model 512, 8 heads, FF 2048, 128 tokens; one epoch: the figure is throughput, not
   accuracy); elsewhere (``--smoke``, the default without CUDA) a tiny model, in seconds.
2. The raw limit, in this process: items/s of the forward pass alone on pre-tokenised input, at
   batch 1, 128 and 512, fp32 and bf16.
3. The gateway with N workers (N: half the cores, at most 8, the rest left to the load
   generator; 1 in smoke mode), shared device on and off, loaded with single objects by wrk
   (C, one thread per core left over, many connections). wrk's own CPU time is reported: when
   its threads are not near a full core each, wrk was not the bottleneck.
4. Plain BentoML with adaptive batching (``loadtests/plain_service.py:PlainReviews``) with the
   same workers and load.
5. The table: items/s, p50, p99, errors, mean device batch size, GPU utilisation (NVML), and the
   gateway's ratio to the raw batch-512 limit and to plain BentoML.

`make test` runs the smoke mode (tests/integration/test_bench_gpu.py), so the command cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from loadtests.bench import BIN, Server, free_port, metric_total, running, wrk

ANCHOR = {"n_layers": 6, "d_model": 512, "n_heads": 8, "d_ff": 2048, "max_len": 128}
TINY = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "max_len": 32, "vocab_size": 2000}
BATCHES = (1, 128, 512)


@dataclass
class Raw:
    batch: int
    precision: str
    items_per_s: float


@dataclass
class Row:
    server: str
    items_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    device_batch: float | None  # mean rows per forward pass (plain BentoML: requests per batch)
    gpu_util: float | None  # mean %, sampled during the load
    loadgen_cpu: float  # wrk's CPU seconds per thread per second of load (1.0: a full core)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="0: from the cores")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (make bench-gpu installs it with apt-get)")
    import torch

    smoke = args.smoke or not torch.cuda.is_available()
    cores = os.cpu_count() or 2
    workers = args.workers or (1 if smoke else max(1, min(8, cores // 2)))
    threads = max(1, cores - workers) if not smoke else 1
    work = Path(tempfile.mkdtemp(prefix="lineage-bench-gpu-"))
    store = f"sqlite:///{work / 'mlflow.db'}"
    size = TINY if smoke else ANCHOR
    device = "cpu (smoke)" if smoke else torch.cuda.get_device_name(0)
    print(f"{device}: training reviews {size} into {store} …", flush=True)
    train(store, work, rows=400 if smoke else 4000, size=size)

    raw = raw_limits(store, work, min_seconds=0.3 if smoke else 3.0)
    bf16 = not smoke
    bodies = review_bodies(200)
    rows = []
    for name, server in servers(store, work, workers, bf16).items():
        print(f"{name}, {workers} worker(s), {args.connections} connections …", flush=True)
        with running(server, work / f"{name.replace(' ', '-')}.log"):
            rows.append(
                load(
                    name,
                    server,
                    bodies=bodies,
                    seconds=args.seconds,
                    connections=args.connections,
                    threads=threads,
                )
            )
    report(
        device,
        workers=workers,
        threads=threads,
        connections=args.connections,
        raw=raw,
        rows=rows,
        bf16=bf16,
    )
    if args.json is not None:
        figures = {"raw": [asdict(r) for r in raw], "served": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(figures, indent=1))


def train(store: str, cwd: Path, rows: int, size: dict[str, int]) -> None:
    trainers = [str(BIN / "trainers"), "--tracking-uri", store]
    data = cwd / "reviews.parquet"
    subprocess.run(
        [*trainers, "data", "reviews", "--out", str(data), "--rows", str(rows)],
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    params = [a for k, v in {**size, "epochs": 1}.items() for a in ("--param", f"{k}={v}")]
    subprocess.run(
        [*trainers, "train", "reviews", "--data", str(data), *params],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def review_bodies(count: int) -> list[dict[str, object]]:
    """Single-object request bodies of varied reviews from the pipeline's own generator."""
    from trainers import pipelines

    frame = pipelines.get("reviews").generate(count, 0.0, 7)
    return [
        {"review": {"text": text, **({"title": title} if isinstance(title, str) else {})}}
        for text, title in zip(frame["text"], frame["title"], strict=True)
    ]


def raw_limits(store: str, work: Path, min_seconds: float) -> list[Raw]:
    """Items/s of the forward pass alone (tokenised once, outside the timing), per batch size
    and precision, on the device serving would use; each timed over ``min_seconds`` at least
    (the device's queue is drained before the clock stops)."""
    import torch

    from gateway.device import precision
    from gateway.loader import load
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(
        tracking_uri=store, pipeline="reviews", state_dir=work / "raw", poll_interval_s=0
    )
    model = load(settings)
    predictor = model.predictor
    objects = [model.input_model.model_validate(b["review"]) for b in review_bodies(max(BATCHES))]

    def sync() -> None:
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    found = []
    for batch in BATCHES:
        features = predictor.preprocess(objects[:batch])
        for bf16 in (False, True):
            with precision(predictor, bf16):
                predictor.forward(features)  # warm-up
                sync()
                started, runs = time.perf_counter(), 0
                while runs < 3 or time.perf_counter() - started < min_seconds:
                    predictor.forward(features)
                    runs += 1
                sync()
            took = time.perf_counter() - started
            found.append(Raw(batch, "bf16" if bf16 else "fp32", batch * runs / took))
    return found


def servers(store: str, work: Path, workers: int, bf16: bool) -> dict[str, Server]:
    home = work / "bentoml"
    common = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    found = {}
    for shared in ("on", "off"):
        port, data = free_port(), free_port()
        found[f"gateway, shared device {shared}"] = Server(
            f"gateway shared {shared}",
            [str(BIN / "bentoml"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            {
                **common,
                "GATEWAY_PIPELINE": "reviews",
                "GATEWAY_TRACKING_URI": store,
                "GATEWAY_DATA_PORT": str(data),
                "GATEWAY_GRPC_PORT": "0",
                "GATEWAY_SHARED_DEVICE": shared,
                "GATEWAY_BF16": str(bf16).lower(),
                "GATEWAY_MAX_BATCH_SIZE": "512",
                "GATEWAY_STATE_DIR": str(work / f"state-{shared}"),
                "BENTOML_CONFIG_OPTIONS": f"services.lineage_gateway.workers={workers}",
            },
            f"http://127.0.0.1:{data}/ready",
            f"http://127.0.0.1:{data}/predict",
            {},
            {},
            f"http://127.0.0.1:{data}/predict/bulk",
        )
    port = free_port()
    found["plain BentoML"] = Server(
        "plain BentoML",
        [
            *(str(BIN / "bentoml"), "serve", "loadtests.plain_service:PlainReviews"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        {
            **common,
            "PLAIN_MODEL_URI": "models:/reviews@champion",
            "MLFLOW_TRACKING_URI": store,
            "BENTOML_CONFIG_OPTIONS": f"services.plain_reviews.workers={workers}",
        },
        f"http://127.0.0.1:{port}/readyz",
        f"http://127.0.0.1:{port}/predict",
        {},
        {},
        f"http://127.0.0.1:{port}/predict",
    )
    return found


def load(
    name: str,
    server: Server,
    *,
    bodies: list[dict[str, object]],
    seconds: int,
    connections: int,
    threads: int,
) -> Row:
    plain = name == "plain BentoML"
    # plain BentoML's API takes a list per request (its batcher joins them): one object each
    sent: list[dict[str, object]] = (
        [{"reviews": [b["review"]]} for b in bodies] if plain else bodies
    )
    base = server.ready.rsplit("/", 1)[0]  # the port the load goes to
    batch = "bentoml_service_adaptive_batch_size" if plain else "gateway_device_batch_size"

    def histogram() -> tuple[float, float]:  # (sum, count) over all its label sets
        return metric_total(base, f"{batch}_sum"), metric_total(base, f"{batch}_count")

    wrk(server.predict, sent, 2, connections, threads=threads)  # warm-up
    before = histogram()
    with gpu_utilisation() as util:
        cpu_before = _children_cpu()
        ok, p50, p99, errors = wrk(server.predict, sent, seconds, connections, threads=threads)
        loadgen = (_children_cpu() - cpu_before) / seconds / threads
    after = histogram()
    rows, batches = after[0] - before[0], after[1] - before[1]
    return Row(name, ok, p50, p99, errors, rows / batches if batches else None, util(), loadgen)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    return usage.ru_utime + usage.ru_stime


@contextmanager
def gpu_utilisation() -> Iterator[Callable[[], float | None]]:
    """Sample GPU 0's utilisation (NVML) every 0.2 s while the block runs; yields a function
    giving the mean, None where NVML is not at hand (no GPU, or no driver library)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:
        yield lambda: None
        return
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: sum(samples) / len(samples) if samples else None
    finally:
        done.set()
        sampler.join()


def report(
    device: str,
    *,
    workers: int,
    threads: int,
    connections: int,
    raw: list[Raw],
    rows: list[Row],
    bf16: bool,
) -> None:
    print(f"\n{device}: raw forward pass, pre-tokenised input\n")
    print(f"{'batch':>6}{'fp32 items/s':>16}{'bf16 items/s':>16}")
    for batch in BATCHES:
        by = {r.precision: r.items_per_s for r in raw if r.batch == batch}
        print(f"{batch:>6}{by['fp32']:>16,.0f}{by['bf16']:>16,.0f}")
    limit = next(r.items_per_s for r in raw if r.batch == 512 and r.precision == _p(bf16))
    print(
        f"\nserved ({_p(bf16)}): {workers} worker(s), single objects, {connections} connections, "
        f"wrk with {threads} thread(s)\n"
    )
    header = (
        f"{'server':<28}{'items/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'dev batch':>11}{'GPU %':>7}{'wrk cpu':>9}{'/ raw 512':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        mean = f"{r.device_batch:.1f}" if r.device_batch is not None else "n/a"
        util = f"{r.gpu_util:.0f}" if r.gpu_util is not None else "n/a"
        print(
            f"{r.server:<28}{r.items_per_s:>10,.0f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}"
            f"{r.errors:>8}{mean:>11}{util:>7}{r.loadgen_cpu:>9.2f}"
            f"{r.items_per_s / limit:>10.0%} "
        )
    plain = next(r for r in rows if r.server == "plain BentoML")
    for r in rows:
        if r is not plain and plain.items_per_s:
            print(f"{r.server} / plain BentoML = {r.items_per_s / plain.items_per_s:.1f}x")


def _p(bf16: bool) -> str:
    return "bf16" if bf16 else "fp32"


if __name__ == "__main__":
    main()
