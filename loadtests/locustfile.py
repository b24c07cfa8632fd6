"""Locust load tests of a served pipeline: one user class per protocol.

- ``BusinessJsonUser``: ``POST /predict`` with one business object (and now and then a bulk call;
  ``--bulk-share`` and ``--bulk-size`` change the mix, ``--pace`` gives each user a constant
  request rate: the soak, ``loadtests/soak.py``, drives it at a chosen arrival rate that way)
- ``OipHttpUser``: ``POST /v2/models/<pipeline>/infer`` with one object as JSON tensors
- ``OipGrpcUser``: ``ModelInfer`` over gRPC with tritonclient, one object per call

Objects come from the pipeline's own generator (``--shift`` moves the population, as drifted
traffic would), so loans carry missing optional fields and reviews vary in length::

    locust -f loadtests/locustfile.py --headless -u 30 -r 10 -t 1m \\
        --host http://127.0.0.1:3001 --grpc-host 127.0.0.1:3002 --pipeline loans

Pick classes by naming them at the end of the command line (``OipGrpcUser``, say).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar

import gevent  # type: ignore[import-untyped]
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC calls must yield to other users

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import FastHttpUser, User, constant_throughput, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import LocalRunner, WorkerRunner  # noqa: E402

POOL_SIZE = 2000
BULK_SIZE = 50
BULK_SHARE = 1 / 21  # of BusinessJsonUser's calls: one bulk call in 21
NUMPY = {"FP32": np.float32, "INT64": np.int64, "BOOL": np.bool_}


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    parser.add_argument("--pipeline", default="loans", help="the served pipeline")
    parser.add_argument("--grpc-host", default="127.0.0.1:3002", help="the gRPC host:port")
    parser.add_argument("--shift", type=float, default=0.0, help="population shift, 0 to 1")
    parser.add_argument("--seed", type=int, default=0, help="seed of the object pool")
    parser.add_argument(
        "--bulk-share", type=float, default=BULK_SHARE, help="BusinessJsonUser: bulk calls' share"
    )
    parser.add_argument(
        "--bulk-size", type=int, default=BULK_SIZE, help="BusinessJsonUser: objects per bulk call"
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.0,
        help="BusinessJsonUser: calls per second of each user (0: each call right after the last)",
    )
    parser.add_argument(
        "--final-stats",
        default="",
        help="write the run's statistics here as JSON once every user has stopped",
    )


class Traffic:
    """A pool of generated business objects, shared by every user of the process."""

    objects: ClassVar[list[dict[str, Any]]] = []
    key: ClassVar[str] = ""

    @classmethod
    def prepare(cls, environment: Environment) -> None:
        if cls.objects:
            return
        from trainers import pipelines  # imports torch: once per locust process

        options = environment.parsed_options
        assert options is not None
        recipe = pipelines.get(options.pipeline)
        frame = recipe.generate(POOL_SIZE, options.shift, options.seed)
        cls.objects = [
            {str(k): None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in frame.drop(columns=[recipe.target]).to_dict("records")
        ]
        cls.key = recipe.input_key

    @classmethod
    def pick(cls) -> dict[str, Any]:
        return random.choice(cls.objects)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _prepare_before_the_clock(environment: Environment, runner: Any, **_: Any) -> None:
    """A single-process run draws its pool before the run starts: ``test_start`` fires after
    ``--run-time`` has begun counting, and the pool takes seconds (torch's import)."""
    if isinstance(runner, LocalRunner):
        Traffic.prepare(environment)
        # gevent's timers count from the loop's cached clock, which the seconds above did not
        # move: without this, --run-time would end the run that much early.
        gevent.get_hub().loop.update_now()


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _prepare(environment: Environment, **_: Any) -> None:
    Traffic.prepare(environment)  # a distributed worker, whose options arrive with the run


@events.init.add_listener  # type: ignore[untyped-decorator]
def _final_stats(environment: Environment, runner: Any, **_: Any) -> None:
    """``--final-stats``: every request of the run, per name and in all, written once every
    user has stopped. Locust's ``--csv`` files keep its last periodic write, up to a second
    before the run ends, and miss what came after."""
    options = environment.parsed_options
    if options is None or not options.final_stats or isinstance(runner, WorkerRunner):
        return

    def write(**_: Any) -> None:
        stats = environment.stats
        entries = [entry.serialize() for entry in stats.entries.values()]
        found = {"entries": entries, "total": stats.total.serialize()}
        Path(options.final_stats).write_text(json.dumps(found))

    # fired after the users have stopped
    environment.events.quit.add_listener(write)  # type: ignore[no-untyped-call]


def present(metadata: list[dict[str, Any]], item: dict[str, Any]) -> list[dict[str, Any]]:
    """The object's fields as the OIP input tensors of one object: the metadata of each, with
    its ``value``; an optional field the object lacks is left out."""
    tensors = []
    for tensor in metadata:
        value = item.get(tensor["name"])
        if value is None:
            continue
        tensors.append({**tensor, "value": value})
    return tensors


class BusinessJsonUser(FastHttpUser):
    """The business-JSON API: what a product team's service calls. Each call is a bulk call of
    ``--bulk-size`` objects with probability ``--bulk-share``, else one object; with ``--pace``,
    each user makes that many calls per second (locust's ``constant_throughput``: a call that
    takes longer than its share of the second is followed by the next at once)."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.bulk_share: float = options.bulk_share
        self.bulk_size: int = options.bulk_size
        self.bulk_name = f"/predict/bulk ({self.bulk_size})"
        self.paced = constant_throughput(options.pace) if options.pace > 0 else None

    def wait_time(self) -> float:
        return 0.0 if self.paced is None else float(self.paced(self))

    @task
    def predict(self) -> None:
        if random.random() >= self.bulk_share:
            self.client.post("/predict", json={Traffic.key: Traffic.pick()}, name="/predict")
            return
        items = [Traffic.pick() for _ in range(self.bulk_size)]
        self.client.post("/predict/bulk", json={f"{Traffic.key}s": items}, name=self.bulk_name)


class OipHttpUser(FastHttpUser):
    """The Open Inference Protocol over HTTP, JSON tensors, one object per call."""

    def on_start(self) -> None:
        pipeline = self.environment.parsed_options.pipeline
        self.path = f"/v2/models/{pipeline}/infer"
        with self.client.get(f"/v2/models/{pipeline}", name="/v2/models/[name]") as answer:
            self.inputs = answer.json()["inputs"]

    @task
    def infer(self) -> None:
        tensors = [
            {"name": t["name"], "datatype": t["datatype"], "shape": [1, 1], "data": [t["value"]]}
            for t in present(self.inputs, Traffic.pick())
        ]
        self.client.post(self.path, json={"inputs": tensors}, name="/v2/models/[name]/infer")


class OipGrpcUser(User):
    """The Open Inference Protocol over gRPC with tritonclient, one object per call."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.pipeline = options.pipeline
        self.client = grpcclient.InferenceServerClient(options.grpc_host)
        self.inputs = self.client.get_model_metadata(self.pipeline, as_json=True)["inputs"]

    def on_stop(self) -> None:
        self.client.close()

    @task
    def infer(self) -> None:
        inputs = []
        for t in present(self.inputs, Traffic.pick()):
            if t["datatype"] == "BYTES":
                array = np.array([[str(t["value"]).encode()]], dtype=np.object_)
            else:
                array = np.array([[t["value"]]], dtype=NUMPY[t["datatype"]])
            tensor = grpcclient.InferInput(t["name"], [1, 1], t["datatype"])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        started = time.perf_counter()
        error: Exception | None = None
        size = 0
        try:
            result = self.client.infer(self.pipeline, inputs)
            size = result.get_response().ByteSize()
        except Exception as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name="ModelInfer",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=size,
            exception=error,
            context={},
        )
