"""The Open Inference Protocol against a real ``bentoml serve``: tritonclient over gRPC and over
HTTP (JSON and binary tensors) gets the answers the business endpoint gives for the same
objects, for both demo pipelines; bad tensors and unknown models are refused by name.

tritonclient's generated protobuf modules and the gateway's define the same ``inference.*``
symbols, and protobuf keeps one pool per process: this test process only ever imports
tritonclient's; the gateway's live in the server.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests.conftest import FAST_LOANS, TINY_REVIEWS, train_ok
from tests.helpers import REPO, VENV_BIN, free_port, metric_samples, serve_gateway, wait_until
from tests.traffic import APPLICATION, columns
from trainers import pipelines

SERVICE = "/inference.GRPCInferenceService/"


@dataclass
class Served:
    pipeline: str
    base: str
    data: str
    grpc: str
    log: Path

    @property
    def http(self) -> str:
        return self.data.removeprefix("http://")


@pytest.fixture(scope="module")
def loans(tmp_path_factory: pytest.TempPathFactory, loans_data: Path) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("oip-loans"), "loans", loans_data, FAST_LOANS, 2)


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory, reviews_data: Path) -> Iterator[Served]:
    # grpc.aio in the worker, the server used where gateway-grpc was not built
    yield from _serve(
        tmp_path_factory.mktemp("oip-reviews"), "reviews", reviews_data, TINY_REVIEWS, 1, "python"
    )


def _serve(
    tmp: Path, pipeline: str, data: Path, params: list[str], workers: int, server: str = "auto"
) -> Iterator[Served]:
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    train_ok(store, pipeline, "--data", str(data), *params)
    grpc_port = free_port()
    settings = {
        "pipeline": pipeline,
        "grpc_port": str(grpc_port),
        "grpc_server": server,
        "poll_interval_s": "0",
    }
    with serve_gateway(store, tmp, workers=workers, settings=settings) as (base, plane):
        yield Served(pipeline, base, plane, f"127.0.0.1:{grpc_port}", tmp / "bentoml.log")


def objects(pipeline: str, count: int, seed: int) -> list[dict[str, Any]]:
    recipe = pipelines.get(pipeline)
    frame = recipe.generate(count, 0.3, seed).drop(columns=[recipe.target])
    return [
        {str(k): None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in frame.to_dict("records")
    ]


def business(served: Served, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    key = "applications" if served.pipeline == "loans" else "reviews"
    answer = httpx.post(f"{served.data}/predict/bulk", json={key: items}, timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["predictions"])


def via_grpc(served: Served, items: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    client = grpcclient.InferenceServerClient(served.grpc)
    meta = client.get_model_metadata(served.pipeline, as_json=True)
    inputs = []
    for name, datatype, array in columns(meta["inputs"], items):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer(served.pipeline, inputs, request_id="grpc-1")
    client.close()
    return result.get_response(as_json=True), result


def via_http(
    served: Served, items: list[dict[str, Any]], binary: bool
) -> tuple[dict[str, Any], Any]:
    client = httpclient.InferenceServerClient(served.http)
    meta = client.get_model_metadata(served.pipeline)
    inputs = []
    for name, datatype, array in columns(meta["inputs"], items):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    outputs = [
        httpclient.InferRequestedOutput(t["name"], binary_data=binary) for t in meta["outputs"]
    ]
    result = client.infer(served.pipeline, inputs, outputs=outputs, request_id="http-1")
    client.close()
    return result.get_response(), result


def assert_same(
    served: Served, items: list[dict[str, Any]], expected: list[dict[str, Any]], result: Any
) -> None:
    for name, _value in expected[0].items():
        column = result.as_numpy(name).reshape(-1)
        assert column.shape == (len(items),)
        for got, answer in zip(column, expected, strict=True):
            want = answer[name]
            if isinstance(want, float):
                assert float(got) == pytest.approx(want, abs=1e-5), name
            else:
                assert text(got) == want, name
    ids = result.as_numpy("request_id").reshape(-1)
    assert len({text(i) for i in ids}) == len(items)


def text(value: Any) -> Any:
    """BYTES elements: bytes from binary data and gRPC, str from JSON data."""
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("pipeline", ["loans", "reviews"])
def test_tritonclient_gets_the_business_answers(
    request: pytest.FixtureRequest, pipeline: str
) -> None:
    served: Served = request.getfixturevalue(pipeline)
    items = objects(pipeline, 24, seed=7)
    if pipeline == "reviews":  # an optional string travels for all objects or for none
        items = [{**item, "title": f"take {i}"} for i, item in enumerate(items)]
    expected = business(served, items)

    response, result = via_grpc(served, items)
    assert response["model_name"] == pipeline
    assert response["model_version"] == "1"
    assert response["id"] == "grpc-1"
    assert response["parameters"]["run_id"]["string_param"]
    assert_same(served, items, expected, result)

    for binary in (False, True):
        response, result = via_http(served, items, binary)
        assert response["model_version"] == "1"
        assert response["id"] == "http-1"
        assert_same(served, items, expected, result)

    # one object per call, as a client sending single objects does
    for item, answer in zip(items[:4], expected[:4], strict=True):
        _, result = via_grpc(served, [item])
        assert_same(served, [item], [answer], result)


def test_metadata_config_and_health(loans: Served) -> None:
    grpc = grpcclient.InferenceServerClient(loans.grpc)
    http = httpclient.InferenceServerClient(loans.http)
    assert grpc.is_server_live()
    assert grpc.is_server_ready()
    assert http.is_server_live()
    assert http.is_server_ready()
    assert grpc.is_model_ready("loans")
    assert http.is_model_ready("loans")
    assert grpc.is_model_ready("loans", "1")
    assert http.is_model_ready("loans", "1")

    server = grpc.get_server_metadata(as_json=True)
    assert server["name"] == "lineage-gateway"
    assert "binary_tensor_data" in server["extensions"]

    meta = http.get_model_metadata("loans")
    assert meta == grpc.get_model_metadata("loans", as_json=True) | {
        "inputs": meta["inputs"],
        "outputs": meta["outputs"],
    }
    types = {t["name"]: t["datatype"] for t in meta["inputs"]}
    assert types == {
        "income": "FP32",
        "age": "INT64",
        "loan_amount": "FP32",
        "term_months": "INT64",
        "employment_status": "BYTES",
        "purpose": "BYTES",
        "existing_debt": "FP32",
        "credit_history_years": "FP32",
    }
    outputs = {t["name"]: t["datatype"] for t in meta["outputs"]}
    assert outputs == {"default_probability": "FP32", "decision": "BYTES", "request_id": "BYTES"}
    assert all(t["shape"] == [-1, 1] for t in meta["inputs"] + meta["outputs"])

    config = grpc.get_model_config("loans", as_json=True)["config"]
    assert config["max_batch_size"] == 1000
    assert {i["name"]: i["data_type"] for i in config["input"]}["age"] == "TYPE_INT64"
    assert http.get_model_config("loans")["max_batch_size"] == 1000
    grpc.close()
    http.close()
    # several workers share the gRPC port: every one of them bound it
    assert loans.log.read_text().count("gRPC (Open Inference Protocol v2) listening") == 2


@pytest.mark.parametrize("pipeline", ["loans", "reviews"])
def test_grpc_health_checks_answer_as_a_kubernetes_probe_expects(
    request: pytest.FixtureRequest, pipeline: str
) -> None:
    """``grpc.health.v1.Health/Check`` on the gRPC port, through the native front (loans) and
    grpc.aio (reviews): the server (``""``, what a ``grpc:`` probe sends) and the inference
    service are SERVING on a ready worker; another service is NOT_FOUND."""
    served: Served = request.getfixturevalue(pipeline)
    with grpc.insecure_channel(served.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="loans"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def tensors(module: Any, overrides: dict[str, tuple[str, Any]]) -> list[Any]:
    given: dict[str, tuple[str, Any]] = {
        "income": ("FP32", np.array([[61000.0]], dtype=np.float32)),
        "age": ("INT64", np.array([[45]], dtype=np.int64)),
        "loan_amount": ("FP32", np.array([[15000.0]], dtype=np.float32)),
        "term_months": ("INT64", np.array([[36]], dtype=np.int64)),
        "employment_status": ("BYTES", np.array([[b"self_employed"]], dtype=np.object_)),
        "purpose": ("BYTES", np.array([[b"home_improvement"]], dtype=np.object_)),
    }
    given.update(overrides)
    out = []
    for name, (datatype, array) in given.items():
        if array is None:
            continue
        tensor = module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


@pytest.mark.parametrize(
    ("overrides", "tensor", "fragment"),
    [
        ({"age": ("INT64", None)}, "age", "required input is missing"),
        ({"age": ("FP32", np.array([[45.0]], dtype=np.float32))}, "age", "integer datatype"),
        ({"age": ("INT64", np.array([[12]], dtype=np.int64))}, "age", "greater than or equal"),
        ({"income": ("FP32", np.array([[np.nan]], dtype=np.float32))}, "income", "finite"),
        ({"term_months": ("INT64", np.array([[13]], dtype=np.int64))}, "term_months", "12"),
        ({"purpose": ("BYTES", np.array([[b"yacht"]], dtype=np.object_))}, "purpose", "car"),
        (
            {"age": ("INT64", np.array([[45, 46]], dtype=np.int64))},
            "age",
            "expected [N] or [N, 1]",
        ),
        (
            {"age": ("INT64", np.array([[45], [46]], dtype=np.int64))},
            "age",
            "holds 2 objects",
        ),
        ({"colour": ("BYTES", np.array([[b"red"]], dtype=np.object_))}, "colour", "unknown input"),
    ],
)
def test_bad_tensors_are_refused_by_name(
    loans: Served, overrides: dict[str, tuple[str, Any]], tensor: str, fragment: str
) -> None:
    grpc = grpcclient.InferenceServerClient(loans.grpc)
    with pytest.raises(InferenceServerException) as refused:
        grpc.infer("loans", tensors(grpcclient, overrides))
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert tensor in refused.value.message()
    assert fragment in refused.value.message()

    http = httpclient.InferenceServerClient(loans.http)
    with pytest.raises(InferenceServerException) as refused:
        http.infer("loans", tensors(httpclient, overrides))
    assert refused.value.status() == "400"
    assert tensor in refused.value.message()
    assert fragment in refused.value.message()
    grpc.close()
    http.close()

    # and the server keeps serving
    ok = httpx.post(f"{loans.data}/predict", json={"application": APPLICATION}, timeout=30)
    assert ok.status_code == 200


def test_grpc_is_carried_by_a_native_front_per_worker(loans: Served, reviews: Served) -> None:
    """loans (``auto``) answers gRPC through ``gateway-grpc``, one per worker; reviews
    (``python``) through grpc.aio. The worker refuses what the front passes on unparsed, and a
    front that dies is started again."""
    fronts = re.findall(r"/gateway-grpc, pid (\d+)\)", loans.log.read_text())
    assert len(fronts) == 2
    assert "(grpc.aio)" in reviews.log.read_text()
    assert "gateway-grpc" not in reviews.log.read_text()

    channel = grpc.insecure_channel(loans.grpc)
    with pytest.raises(grpc.RpcError) as garbled:
        channel.unary_unary(SERVICE + "ModelInfer")(b"\xff\xff\xff", timeout=10)
    assert garbled.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in garbled.value.details()
    with pytest.raises(grpc.RpcError) as unknown:
        channel.unary_unary(SERVICE + "RepositoryIndex")(b"", timeout=10)
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    channel.close()

    os.kill(int(fronts[0]), signal.SIGKILL)

    def started_again() -> bool:
        return len(re.findall(r"/gateway-grpc, pid (\d+)\)", loans.log.read_text())) == 3

    wait_until(started_again, 20, "the killed front started again")
    items = objects("loans", 4, seed=3)
    for _ in range(6):  # new connections, spread over both workers' fronts
        _, result = via_grpc(loans, items)
        assert_same(loans, items, business(loans, items), result)


def infer_request(
    model: str, inputs: list[tuple[str, str, np.ndarray[Any, Any]]], request_id: str
) -> bytes:
    """A serialized ``ModelInferRequest`` with its tensors as raw contents."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, array in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if datatype == "BYTES":  # each element length-prefixed, as tritonclient sends them
            request.raw_input_contents.append(serialize_byte_tensor(array).item())
        else:
            request.raw_input_contents.append(array.tobytes())
    return bytes(request.SerializeToString())


def test_calls_arriving_together_are_each_answered_on_their_own(loans: Served) -> None:
    """Many calls in flight on one connection reach one worker's front together, which answers
    their objects with one submission to the batcher: each call still gets its own answer, a
    refused call (bad tensor, unknown model, garbled bytes) is refused alone, and the worker
    counts each call it parsed under its own status."""
    items = objects("loans", 40, seed=11)
    expected = business(loans, items)
    client = grpcclient.InferenceServerClient(loans.grpc)
    meta = client.get_model_metadata("loans", as_json=True)
    client.close()
    good = [
        infer_request("loans", columns(meta["inputs"], [i]), f"ok-{n}") for n, i in enumerate(items)
    ]
    bad_age = [("age", "FP32", np.array([[45.0]], dtype=np.float32))]
    others = [c for c in columns(meta["inputs"], items[:1]) if c[0] != "age"]
    bad = infer_request("loans", others + bad_age, "bad")
    unknown = infer_request("cars", columns(meta["inputs"], items[:1]), "cars")
    calls = [(n, body) for n, body in enumerate(good)] + [
        (-1, bad),
        (-2, unknown),
        (-3, b"\xff\xff"),
    ]
    calls = calls * 3  # every kind several times, interleaved below
    calls = calls[::2] + calls[1::2]

    def counted() -> dict[str, float]:
        return metric_samples(httpx.get(f"{loans.base}/metrics").text, "gateway_requests_total")

    refusals = {
        -1: (grpc.StatusCode.INVALID_ARGUMENT, "age"),
        -2: (grpc.StatusCode.NOT_FOUND, "cars"),
        -3: (grpc.StatusCode.INVALID_ARGUMENT, "ModelInferRequest"),
    }
    before = counted()
    channel = grpc.insecure_channel(loans.grpc)
    infer = channel.unary_unary(SERVICE + "ModelInfer")
    pending = [(n, infer.future(body, timeout=30)) for n, body in calls]
    for n, future in pending:
        if n >= 0:
            response = service_pb2.ModelInferResponse.FromString(future.result())
            assert response.id == f"ok-{n}"
            assert_same(loans, [items[n]], [expected[n]], grpcclient.InferResult(response))
            continue
        with pytest.raises(grpc.RpcError) as refused:
            future.result()
        want, fragment = refusals[n]
        assert refused.value.code() == want, refused.value.details()
        assert fragment in refused.value.details()
    channel.close()

    after = counted()
    label = '{endpoint="/inference.GRPCInferenceService/ModelInfer",status="%s"}'
    for status, count in (("200", 3 * len(good)), ("400", 3), ("404", 3)):
        assert after.get(label % status, 0) - before.get(label % status, 0) == count, status


def test_unknown_models_and_malformed_bodies(loans: Served) -> None:
    grpc = grpcclient.InferenceServerClient(loans.grpc)
    calls: list[Callable[[], Any]] = [
        lambda: grpc.infer("cars", tensors(grpcclient, {})),
        lambda: grpc.infer("loans", tensors(grpcclient, {}), model_version="9"),
        lambda: grpc.get_model_metadata("cars"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.NOT_FOUND"
    grpc.close()

    infer = f"{loans.data}/v2/models/loans/infer"
    assert httpx.get(f"{loans.data}/v2/models/cars").status_code == 404
    assert httpx.post(f"{loans.data}/v2/models/cars/infer", json={"inputs": []}).status_code == 404
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{not json"}, 400, "JSON"),
        ({"json": {"inputs": []}}, 400, "inputs"),
        ({"json": {"inputs": [{"name": "age", "datatype": "INT64"}]}}, 400, "shape"),
        (
            {"json": {"inputs": [{"name": "age", "datatype": "INT64", "shape": [1]}]}},
            400,
            "data",
        ),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
        (
            {"content": b"{}", "headers": {"inference-header-content-length": "99"}},
            400,
            "inference-header-content-length",
        ),
    ]
    for request, status, fragment in cases:
        answer = httpx.post(infer, **request)
        assert answer.status_code == status, answer.text
        assert fragment in answer.json()["error"]

    objects_json = {
        "inputs": [
            {
                "name": k,
                "datatype": "BYTES" if isinstance(v, str) else "FP32",
                "shape": [1, 1],
                "data": [[v]],
            }
            for k, v in APPLICATION.items()
            if k not in {"age", "term_months"}
        ]
        + [
            {"name": "age", "datatype": "INT64", "shape": [1], "data": [45]},
            {"name": "term_months", "datatype": "INT64", "shape": [1], "data": [36]},
        ],
        "outputs": [{"name": "decision"}],
    }
    answer = httpx.post(infer, json=objects_json)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-version"] == "1"
    assert [o["name"] for o in answer.json()["outputs"]] == ["decision"]

    metrics = httpx.get(f"{loans.base}/metrics").text
    counted = metric_samples(metrics, "gateway_requests_total")
    grpc_infer = '{endpoint="/inference.GRPCInferenceService/ModelInfer",status="400"}'
    assert counted.get(grpc_infer, 0) >= 1
    assert counted.get('{endpoint="/v2/models/{name}/infer",status="200"}', 0) >= 1


@pytest.mark.parametrize("pipeline", ["loans", "reviews"])
def test_a_short_headless_locust_run_of_each_user_class(
    request: pytest.FixtureRequest, pipeline: str, tmp_path: Path
) -> None:
    """``loadtests/locustfile.py`` as documented, as its own process: every user class sends
    requests and none fails."""
    served: Served = request.getfixturevalue(pipeline)
    args = [
        str(VENV_BIN / "locust"),
        "-f",
        "loadtests/locustfile.py",
        "--headless",
        "--users",
        "6",
        "--spawn-rate",
        "6",
        "--run-time",
        "6s",
        "--host",
        served.data,
        "--grpc-host",
        served.grpc,
        "--pipeline",
        pipeline,
        "--shift",
        "0.5",
        "--csv",
        str(tmp_path / "locust"),
        "--only-summary",
    ]
    ran = subprocess.run(args, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with (tmp_path / "locust_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    for name in ("/predict", "/v2/models/[name]/infer", "ModelInfer"):
        assert int(rows.get(name, {}).get("Request Count", 0)) > 0, (name, ran.stderr)
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows


def test_the_bench_grpc_load_generator_gets_answers(loans: Served) -> None:
    """``gateway-grpc-load``, the bench's gRPC client, sends a loan application that the
    gateway answers, and counts the answers it gets."""
    before = metric_samples(httpx.get(f"{loans.base}/metrics").text, "gateway_requests_total")
    command = [str(VENV_BIN / "python"), "-m", "loadtests.grpc_load", loans.grpc]
    ran = subprocess.run(
        [*command, "--seconds", "1.5", "--concurrency", "8"],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = json.loads(ran.stdout)
    assert found["errors"] == 0, found
    assert found["ok"] > 0
    assert found["ok_per_s"] == pytest.approx(found["ok"] / found["seconds"])
    assert 0 < found["p50_ms"] <= found["p99_ms"]
    after = metric_samples(httpx.get(f"{loans.base}/metrics").text, "gateway_requests_total")
    label = '{endpoint="/inference.GRPCInferenceService/ModelInfer",status="200"}'
    assert after[label] - before.get(label, 0) >= found["ok"]
