"""The project's functions one request crosses, counted: one ``POST /predict`` on the data plane
and one gRPC ``ModelInfer`` through the native front (``gateway-grpc``).

How it counts: ``loans`` is trained (1 epoch) into a temporary store and served by one worker
built in this process the way a Bento worker builds it (the app's lifespan: the data plane on a
real socket, ``gateway-grpc`` as a child process when ``make`` built it). After warm-up calls,
a profile hook (``sys.setprofile`` / ``threading.setprofile``, on every thread the worker
runs) records each Python function of ``gateway/``, ``bentos/`` and ``trainers/`` that is
called between sending one request and receiving its answer. A function counts once, however
often it runs; comprehensions are not functions here, and the prediction log's writer, which
runs apart from any request, is left out. The gateway's functions (``gateway/``, ``bentos/``)
are counted apart from the pipeline's own (``trainers/``: validation hooks, preprocess,
forward, postprocess). The Go front's functions are not Python and are not counted.

    python -m loadtests.callpath          # the table
    python -m loadtests.callpath --list   # and each function
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
import httpx

from loadtests.bench import OBJECT, free_port, train
from loadtests.grpc_load import loans_request

REPO = Path(__file__).resolve().parents[1]
COUNTED = tuple(str(REPO / part) + os.sep for part in ("gateway", "bentos", "trainers"))
COMPREHENSIONS = ("<listcomp>", "<genexpr>", "<dictcomp>", "<setcomp>")
Seen = set[tuple[str, str]]  # (module path, qualified name)


class Recorder:
    """Python functions of the project called while :attr:`on`, by any thread but the log's
    writer."""

    def __init__(self) -> None:
        self.on = False
        self.seen: Seen = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not self.on:
            return
        path = frame.f_code.co_filename
        name = frame.f_code.co_qualname
        if (
            path.startswith(COUNTED)
            and not name.endswith(COMPREHENSIONS)
            and threading.current_thread().name != "prediction-log"
        ):
            self.seen.add((os.path.relpath(path, REPO), name))

    def during(self, send: Callable[[], object]) -> Seen:
        self.seen = set()
        self.on = True
        try:
            send()
        finally:
            self.on = False
        return set(self.seen)


def post(port: int) -> None:
    body = {"application": OBJECT}
    reply = httpx.post(f"http://127.0.0.1:{port}/predict", json=body, timeout=30)
    reply.raise_for_status()


def infer(channel: grpc.Channel, request: bytes) -> None:
    channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(request, timeout=30)


async def serve_and_count(store: str, state: Path, recorder: Recorder) -> dict[str, Seen]:
    from gateway.core import GatewayCore
    from gateway.http import create_app
    from gateway.loader import load
    from gateway.metrics import GatewayMetrics
    from gateway.settings import GatewaySettings

    data, rpc = free_port(), free_port()
    settings = GatewaySettings(
        tracking_uri=store,
        data_host="127.0.0.1",
        data_port=data,
        grpc_port=rpc,
        state_dir=state,
        poll_interval_s=0,
    )
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    app = create_app(lambda: core)
    async with app.router.lifespan_context(app):
        channel = grpc.insecure_channel(f"127.0.0.1:{rpc}")
        request = loans_request()

        def count() -> dict[str, Seen]:
            for _ in range(50):  # warm-up: caches, first-call paths
                post(data)
                infer(channel, request)
            time.sleep(0.5)
            return {
                "POST /predict (data plane)": recorder.during(lambda: post(data)),
                "gRPC ModelInfer (gateway-grpc)": recorder.during(lambda: infer(channel, request)),
            }

        try:
            return await asyncio.to_thread(count)
        finally:
            channel.close()


def report(found: dict[str, Seen], listing: bool) -> None:
    print(f"{'request':<34}{'gateway functions':>18}{'modules':>9}{'pipeline functions':>20}")
    for name, seen in found.items():
        ours = {(path, f) for path, f in seen if not path.startswith("trainers")}
        modules = {path for path, _ in ours}
        print(f"{name:<34}{len(ours):>18}{len(modules):>9}{len(seen) - len(ours):>20}")
    for name, seen in found.items():
        by_module: dict[str, list[str]] = {}
        for path, function in sorted(seen):
            by_module.setdefault(path, []).append(function)
        print(f"\n{name}: " + ", ".join(f"{p} {len(f)}" for p, f in by_module.items()))
        if listing:
            for path, functions in by_module.items():
                print(f"  {path}: {', '.join(functions)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="name every function")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lineage-callpath-") as tmp:
        work = Path(tmp)
        store = f"sqlite:///{work / 'mlflow.db'}"
        print("training loans (1 epoch) …", file=sys.stderr, flush=True)
        train(store, work, "epochs=1")
        recorder = Recorder()
        threading.setprofile(recorder)
        sys.setprofile(recorder)
        try:
            found = asyncio.run(serve_and_count(store, work / "state", recorder))
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    report(found, args.list)


if __name__ == "__main__":
    main()
