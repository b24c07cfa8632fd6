"""The thin adapters over the core, driven in this process: the business-JSON routes and their
middlewares (gateway/http.py) and OIP REST (gateway/oip/rest.py) through an ASGI client while
the app's lifespan runs its worker, and OIP gRPC through ``Servicer.infer_together``
(gateway/oip/grpc_server.py) without a server. Each refusal comes back as the one mapping of
its transport says: status, body or details, and ``Retry-After`` where it applies."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.codecs import BusinessJson, signature_of
from gateway.errors import (
    GatewayError,
    InvalidInput,
    NotFound,
    Overloaded,
    Unauthorized,
)
from gateway.http import error_response
from gateway.oip.tensors import from_buffer, to_buffer
from tests.corekit import (
    RISKY,
    SAFE,
    Versions,
    client,
    data_plane,
    decision,
    fill_queue,
    grpc_server,
    loans_model,
    make_core,
    predictor,
    risk,
    sample,
    started,
)
from tests.traffic import APPLICATION

pytestmark = pytest.mark.anyio
INFER_PATH = "/v2/models/{name}/infer"
MODEL = loans_model()
DATATYPES = {spec.name: spec.datatype for spec in signature_of(MODEL).inputs}


def requests_total(core: Any, endpoint: str, status: int) -> float:
    return sample(core, "gateway_requests_total", endpoint=endpoint, status=str(status))


def predicted(application: dict[str, Any]) -> dict[str, Any]:
    p = risk(application)
    return {"default_probability": p, "decision": decision(p)}


# -- POST /predict, /predict/bulk -------------------------------------------------------------
async def test_predict_answers_with_the_lineage_in_body_and_headers() -> None:
    core = make_core()
    async with client(core) as http:
        response = await http.post("/predict", json={"application": APPLICATION})
    assert response.status_code == 200
    body = response.json()
    assert body["prediction"] == predicted(APPLICATION)
    assert (body["model_name"], body["model_version"], body["run_id"]) == ("loans", "1", "run-1")
    assert response.headers["x-model-name"] == "loans"
    assert response.headers["x-model-version"] == "1"
    assert response.headers["x-run-id"] == "run-1"
    assert response.headers["x-request-id"] == body["request_id"]
    assert requests_total(core, "/predict", 200) == 1


async def test_predict_bulk_answers_each_object_in_order_in_one_batch() -> None:
    core = make_core()
    async with client(core) as http:
        response = await http.post("/predict/bulk", json={"applications": [SAFE, RISKY, SAFE]})
    body = response.json()
    assert response.status_code == 200
    assert body["predictions"] == [predicted(SAFE), predicted(RISKY), predicted(SAFE)]
    assert len(set(body["request_ids"])) == 3
    assert "x-request-id" not in response.headers
    assert predictor(core).batches == [3]


async def test_an_invalid_object_gets_422_naming_each_field_and_is_counted() -> None:
    core = make_core()
    async with client(core) as http:
        response = await http.post(
            "/predict", json={"application": {**APPLICATION, "age": 9, "purpose": "yacht"}}
        )
        bulk = await http.post("/predict/bulk", json={"applications": [SAFE, {**SAFE, "age": 9}]})
    assert response.status_code == 422
    fields = [d["field"] for d in response.json()["details"]]
    assert sorted(fields) == ["application.age", "application.purpose"]
    assert response.json()["error"].startswith("invalid LoanApplication: ")
    assert [d["field"] for d in bulk.json()["details"]] == ["applications.1.age"]
    assert requests_total(core, "/predict", 422) == 1
    assert requests_total(core, "/predict/bulk", 422) == 1
    assert sample(core, "gateway_validation_errors_total", field="application.age") == 1
    assert sample(core, "gateway_validation_errors_total", field="applications.age") == 1
    assert predictor(core).batches == []


@pytest.mark.parametrize(
    ("headers", "content", "status", "error"),
    [
        ({"content-type": "text/plain"}, b"{}", 415, "content-type must be application/json"),
        ({}, b"{}", 415, "got 'none'"),
        ({"content-type": "application/json"}, b'{"application": NaN}', 400, "NaN"),
        ({"content-type": "application/json; charset=utf-8"}, b"{", 400, "not valid JSON"),
        ({"content-type": "application/json"}, b" " * 1025 + b"{}", 413, "exceeds the limit"),
    ],
    ids=["text", "no-type", "nan", "truncated", "too-large"],
)
async def test_a_body_that_is_not_a_request_is_refused_before_validation(
    headers: dict[str, str], content: bytes, status: int, error: str
) -> None:
    core = make_core(max_body_bytes=1024)
    async with client(core) as http:
        response = await http.post("/predict", content=content, headers=headers)
    assert response.status_code == status
    assert error in response.json()["error"]
    assert requests_total(core, "/predict", status) == 1


async def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"application": '
        for _ in range(10):
            yield b" " * 200

    async with client(make_core(max_body_bytes=1024)) as http:
        response = await http.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert "exceeds the limit of 1024 bytes" in response.json()["error"]


async def test_no_answer_in_time_is_504_and_counted() -> None:
    core = make_core(request_timeout_s=0.05)
    async with client(core) as http:
        with predictor(core).held():
            response = await http.post("/predict", json={"application": SAFE})
    assert response.status_code == 504
    assert response.json() == {"error": "no answer within 0.05s"}
    assert requests_total(core, "/predict", 504) == 1


async def test_a_failed_batch_is_a_500_and_counted_as_one() -> None:
    core = make_core()
    async with client(core) as http:
        predictor(core).failure = RuntimeError("device lost")
        response = await http.post("/predict", json={"application": SAFE})
        assert response.status_code == 500
    assert requests_total(core, "/predict", 500) == 1


# -- shedding, API key, bearer tokens ----------------------------------------------------------
async def test_a_full_queue_sheds_predictions_unread_with_retry_after() -> None:
    core = make_core(max_batch_size=1, max_queue=2)
    async with client(core) as http:
        with predictor(core).held():
            calls = await fill_queue(
                core, lambda: core.answer(BusinessJson(), {"application": SAFE})
            )
            # not JSON, not even the right content type: refused before anything reads it
            shed = await http.post("/predict", content=b"junk", headers={"content-type": "x/y"})
            oip = await http.post("/v2/models/whatever/versions/9/infer", content=b"junk")
            live = await http.get("/live")
        await asyncio.gather(*calls)
        after = await http.post("/predict", json={"application": SAFE})
    assert shed.status_code == 503
    assert oip.status_code == 503
    assert int(shed.headers["retry-after"]) >= 1
    assert shed.json()["error"].startswith("overloaded: 2 items are queued (limit 2)")
    assert live.status_code == 200
    assert after.status_code == 200
    assert sample(core, "gateway_requests_shed_total", endpoint="/predict") == 1
    versioned = "/v2/models/{name}/versions/{version}/infer"
    assert sample(core, "gateway_requests_shed_total", endpoint=versioned) == 1
    assert requests_total(core, "/predict", 503) == 1


async def test_with_an_api_key_predictions_need_it_and_other_routes_do_not() -> None:
    core = make_core(api_key="sesame")
    body = {"application": SAFE}
    async with client(core) as http:
        missing = await http.post("/predict", json=body)
        wrong = await http.post("/predict", json=body, headers={"x-api-key": "open"})
        right = await http.post("/predict", json=body, headers={"x-api-key": "sesame"})
        oip = await http.post(INFER_PATH.format(name="loans"), json={"inputs": []})
        ready = await http.get("/ready")
    assert missing.status_code == 401
    assert "x-api-key" in missing.json()["error"]
    assert wrong.status_code == 403
    assert "open" not in wrong.text
    assert right.status_code == 200
    assert oip.status_code == 401
    assert ready.status_code == 200


async def test_reload_is_off_without_a_token_and_guarded_by_one() -> None:
    async with client(make_core(loader=Versions(loans_model("2")))) as http:
        off = await http.post("/admin/reload")
    loader = Versions(loans_model("2"))
    core = make_core(loader=loader, reload_token="t0ken")
    async with client(core) as http:
        missing = await http.post("/admin/reload")
        other = await http.post("/admin/reload", headers={"authorization": "Basic t0ken"})
        wrong = await http.post("/admin/reload", headers={"authorization": "Bearer nope"})
        right = await http.post("/admin/reload", headers={"authorization": "Bearer t0ken"})
        ready = await http.get("/ready")
    assert off.status_code == 404
    assert "reload" in off.json()["error"]
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert other.status_code == 401
    assert wrong.status_code == 403
    assert right.status_code == 200
    assert loader.asked == [None]  # the alias's version, as the watcher reads it
    assert right.json() == {
        "swapped": True,
        "previous_version": "1",
        "model_name": "loans",
        "model_version": "2",
        "run_id": "run-2",
    }
    assert ready.json() == {
        "ready": True,
        "model_name": "loans",
        "model_version": "2",
        "run_id": "run-2",
    }


async def test_a_reload_that_cannot_load_is_409_and_serving_goes_on() -> None:
    core = make_core(reload_token="t0ken")  # its loader finds no registry
    async with client(core) as http:
        response = await http.post("/admin/reload", headers={"authorization": "Bearer t0ken"})
        answer = await http.post("/predict", json={"application": SAFE})
    assert response.status_code == 409
    assert response.json()["swapped"] is False
    assert "no registry" in response.json()["error"]
    assert answer.status_code == 200
    assert answer.headers["x-model-version"] == "1"


async def test_feedback_is_open_without_a_token_and_off_without_the_prediction_log() -> None:
    label = {"request_id": "abc", "label": 1}
    async with client(make_core()) as http:
        off = await http.post("/feedback", json=label)
    async with client(make_core(feedback_token="fb")) as http:
        guarded = await http.post("/feedback", json=label)
    assert off.status_code == 404
    assert "GATEWAY_LOG_PREDICTIONS" in off.json()["error"]
    assert guarded.status_code == 401


async def test_ready_is_503_until_the_worker_has_started() -> None:
    core = make_core()
    _, plane = data_plane(core)  # no lifespan: nothing started
    async with httpx.AsyncClient(transport=httpx.ASGITransport(plane), base_url="http://g") as http:
        ready = await http.get("/ready")
        oip_ready = await http.get("/v2/health/ready")
        live = await http.get("/live")
    assert ready.status_code == 503
    assert ready.json() == {
        "ready": False,
        "model_name": "loans",
        "model_version": "1",
        "run_id": "run-1",
    }
    assert oip_ready.status_code == 400  # the protocol's own answer for "not ready"
    assert live.status_code == 200


async def test_the_probes_model_and_metrics_routes_describe_the_worker() -> None:
    core = make_core()
    assert core.ready is False
    async with client(core) as http:
        live, ready = await http.get("/live"), await http.get("/ready")
        model = await http.get("/model")
        await http.post("/predict", json={"application": SAFE})
        metrics = await http.get("/metrics")
    assert core.ready is False  # the lifespan stopped it
    assert live.json() == {"live": True}
    assert ready.status_code == 200
    info = model.json()
    assert info["model_version"] == "1"
    assert info["input_key"] == "application"
    assert info["device"] == {"type": "cpu", "shared": False}
    assert "income" in info["input_schema"]["properties"]
    assert model.headers["x-run-id"] == "run-1"
    assert 'gateway_requests_total{endpoint="/predict",status="200"} 1.0' in metrics.text
    assert 'gateway_model_info{model="loans",run_id="run-1",version="1"} 1.0' in metrics.text


# -- error_response: the one HTTP mapping -------------------------------------------------------
def test_error_response_sends_status_body_and_retry_after() -> None:
    response = error_response(Overloaded(9, 8, 2.6))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert json.loads(bytes(response.body)) == {
        "error": "overloaded: 9 items are queued (limit 8); retry in 2.6 s"
    }


def test_error_response_asks_for_credentials_on_401_only() -> None:
    assert error_response(Unauthorized("a key is required")).headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in error_response(NotFound("gone")).headers
    assert "retry-after" not in error_response(NotFound("gone")).headers


def test_error_response_lists_the_details_and_escapes_what_utf8_cannot_encode() -> None:
    refusal = InvalidInput("bad \ud800 key", [{"field": "\ud800", "message": "unexpected key"}])
    response = error_response(refusal)
    assert response.status_code == 422
    assert bytes(response.body).isascii()
    assert json.loads(bytes(response.body)) == refusal.to_json()


# -- OIP REST ----------------------------------------------------------------------------------
def tensors_json(*applications: dict[str, Any]) -> list[dict[str, Any]]:
    n = len(applications)
    return [
        {"name": k, "datatype": DATATYPES[k], "shape": [n, 1], "data": [a[k] for a in applications]}
        for k in applications[0]
    ]


async def test_oip_infer_answers_rows_with_output_columns_and_lineage() -> None:
    core = make_core()
    body = {"id": "call-7", "inputs": tensors_json(SAFE, RISKY)}
    async with client(core) as http:
        response = await http.post(INFER_PATH.format(name="loans"), json=body)
        versioned = await http.post("/v2/models/loans/versions/1/infer", json=body)
    assert response.status_code == 200
    assert versioned.status_code == 200
    answer = response.json()
    assert answer["model_name"] == "loans"
    assert answer["model_version"] == "1"
    assert answer["id"] == "call-7"
    assert answer["parameters"] == {"run_id": "run-1"}
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["decision"] == {
        "name": "decision",
        "datatype": "BYTES",
        "shape": [2, 1],
        "data": ["approve", "decline"],
    }
    assert outputs["default_probability"]["data"] == [risk(SAFE), risk(RISKY)]
    assert len(outputs["request_id"]["data"]) == 2
    assert response.headers["x-model-version"] == "1"
    assert predictor(core).batches == [2, 2]


async def test_oip_infer_takes_and_gives_binary_tensors() -> None:
    applications = [SAFE, RISKY, APPLICATION]
    inputs, chunks = [], []
    for name in SAFE:
        data = to_buffer(DATATYPES[name], [a[name] for a in applications])
        inputs.append(
            {
                "name": name,
                "datatype": DATATYPES[name],
                "shape": [3],
                "parameters": {"binary_data_size": len(data)},
            }
        )
        chunks.append(data)
    header = json.dumps(
        {"inputs": inputs, "outputs": [{"name": "decision", "parameters": {"binary_data": True}}]}
    ).encode()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    async with client(make_core()) as http:
        response = await http.post(
            INFER_PATH.format(name="loans"), content=header + b"".join(chunks), headers=headers
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    (output,) = answer["outputs"]
    assert output["name"] == "decision"
    assert output["shape"] == [3, 1]
    raw = response.content[length:]
    assert len(raw) == output["parameters"]["binary_data_size"]
    decisions = from_buffer("decision", "BYTES", [3, 1], raw).values
    assert decisions == [b"approve", b"decline", b"review"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/v2/models/reviews/infer", {}, {}, 404, "model 'reviews' is not served here"),
        ("/v2/models/loans/versions/2/infer", {}, {}, 404, "version '2' of 'loans'"),
        (INFER_PATH.format(name="loans"), {}, {"content-type": "text/csv"}, 415, "text/csv"),
        (INFER_PATH.format(name="loans"), [], {}, 400, "expected a JSON object with `inputs`"),
        (INFER_PATH.format(name="loans"), {"inputs": []}, {}, 400, "inputs: expected a non-empty"),
        (
            INFER_PATH.format(name="loans"),
            {"inputs": [{"name": "age", "datatype": "INT64", "shape": [1], "data": ["x"]}]},
            {},
            400,
            "age: object 0: expected a number",
        ),
        (
            INFER_PATH.format(name="loans"),
            {"inputs": tensors_json(SAFE), "outputs": [{"name": "approval"}]},
            {},
            400,
            "approval: unknown output",
        ),
        (
            INFER_PATH.format(name="loans"),
            {
                "inputs": [
                    {
                        "name": "age",
                        "datatype": "INT64",
                        "shape": [1],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            {"inference-header-content-length": "99999"},
            400,
            "header's length",
        ),
    ],
    ids=[
        "model",
        "version",
        "content-type",
        "not-object",
        "no-inputs",
        "bad-value",
        "unknown-output",
        "header-length",
    ],
)
async def test_oip_infer_refusals_name_what_is_wrong(
    path: str, body: Any, headers: dict[str, str], status: int, error: str
) -> None:
    core = make_core()
    async with client(core) as http:
        response = await http.post(path, content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == status, response.text
    assert error in response.json()["error"]
    assert predictor(core).batches == []  # refused before anything was answered


async def test_oip_binary_data_must_match_the_inputs_that_claim_it() -> None:
    age = {"name": "age", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}
    header = json.dumps({"inputs": [age]}).encode()
    path = INFER_PATH.format(name="loans")
    async with client(make_core()) as http:
        short = await http.post(
            path,
            content=header + b"\x00" * 4,
            headers={"inference-header-content-length": str(len(header))},
        )
        extra = await http.post(
            path,
            content=header + struct.pack("<q", 30) + b"!",
            headers={"inference-header-content-length": str(len(header))},
        )
    assert short.status_code == 400
    assert short.json()["details"] == [
        {"field": "age", "message": "binary_data_size runs past the end of the body"}
    ]
    assert extra.status_code == 400
    assert "1 bytes of binary data belong to no input" in extra.text


async def test_oip_metadata_describes_the_served_models_tensors() -> None:
    async with client(make_core(max_bulk=50)) as http:
        metadata = (await http.get("/v2/models/loans")).json()
        config = (await http.get("/v2/models/loans/versions/1/config")).json()
        ready = await http.get("/v2/models/loans/ready")
        other = await http.get("/v2/models/reviews/ready")
    assert metadata["versions"] == ["1"]
    assert {"name": "age", "datatype": "INT64", "shape": [-1, 1]} in metadata["inputs"]
    assert [o["name"] for o in metadata["outputs"]] == [
        "default_probability",
        "decision",
        "request_id",
    ]
    assert config["max_batch_size"] == 50
    assert ready.json() == {"name": "loans", "ready": True}
    assert other.status_code == 404


# -- OIP gRPC ----------------------------------------------------------------------------------
CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


def infer_request(pb: Any, *applications: dict[str, Any], raw: bool = False, **fields: Any) -> Any:
    """A ``ModelInferRequest`` for loans: one input per field, one row per application, as typed
    contents or (``raw``) as ``raw_input_contents``."""
    request = pb.ModelInferRequest(**({"model_name": "loans"} | fields))
    for name in applications[0]:
        datatype, values = DATATYPES[name], [a[name] for a in applications]
        given = request.inputs.add(name=name, datatype=datatype, shape=[len(values), 1])
        if raw:
            request.raw_input_contents.append(to_buffer(datatype, values))
        else:
            encoded = [v.encode() for v in values] if datatype == "BYTES" else values
            getattr(given.contents, CONTENTS[datatype]).extend(encoded)
    return request


def outputs_of(pb: Any, reply: bytes) -> dict[str, list[Any]]:
    response = pb.ModelInferResponse.FromString(reply)
    return {
        out.name: list(from_buffer(out.name, out.datatype, list(out.shape), raw).values)
        for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


async def test_grpc_calls_that_arrive_together_are_answered_in_one_batch() -> None:
    grpc_mod = grpc_server()
    pb, core = grpc_mod.pb, make_core()
    servicer = grpc_mod.Servicer(grpc_mod.Oip(lambda: core))
    requests = [
        infer_request(pb, SAFE, id="a"),
        infer_request(pb, RISKY, APPLICATION, raw=True, id="b"),
        infer_request(pb, SAFE, id="c", model_version="1"),
    ]
    requests[2].outputs.add(name="decision")
    async with started(core):
        replies = await servicer.infer_together(requests)
    assert predictor(core).batches == [4]
    parsed = [pb.ModelInferResponse.FromString(r) for r in replies]
    assert [p.id for p in parsed] == ["a", "b", "c"]
    assert {p.model_version for p in parsed} == {"1"}
    assert parsed[0].parameters["run_id"].string_param == "run-1"
    assert outputs_of(pb, replies[1])["decision"] == [b"decline", b"review"]
    assert outputs_of(pb, replies[1])["default_probability"] == pytest.approx(
        [risk(RISKY), risk(APPLICATION)]
    )
    assert list(outputs_of(pb, replies[2])) == ["decision"]
    assert sample(core, "gateway_requests_total", endpoint=grpc_mod.INFER, status="200") == 3


async def test_a_grpc_refusal_is_that_calls_status_alone() -> None:
    grpc_mod = grpc_server()
    pb, core = grpc_mod.pb, make_core()
    servicer = grpc_mod.Servicer(grpc_mod.Oip(lambda: core))
    wrong_type = infer_request(pb, SAFE)
    wrong_type.inputs[1].datatype = "FP16"  # age, in a datatype gRPC contents cannot carry
    short_raw = infer_request(pb, SAFE, raw=True)
    del short_raw.raw_input_contents[-1]
    requests = [
        infer_request(pb, SAFE),
        wrong_type,
        infer_request(pb, SAFE, model_name="reviews"),
        short_raw,
    ]
    async with started(core):
        replies = await servicer.infer_together(requests)
    ok, typed, unknown, raw = replies
    assert outputs_of(pb, ok)["decision"] == [b"approve"]
    assert isinstance(typed, grpc_mod.Refused)
    assert typed.code == grpc_mod.grpc.StatusCode.INVALID_ARGUMENT
    assert typed.details == "age: unsupported datatype 'FP16'"
    assert unknown.code == grpc_mod.grpc.StatusCode.NOT_FOUND
    assert "'reviews' is not served" in unknown.details
    assert raw.code == grpc_mod.grpc.StatusCode.INVALID_ARGUMENT
    assert raw.details.startswith("raw_input_contents: 6 entries for 7 inputs")
    assert predictor(core).batches == [1]
    statuses = {
        status: sample(core, "gateway_requests_total", endpoint=grpc_mod.INFER, status=status)
        for status in ("200", "400", "404")
    }
    assert statuses == {"200": 1, "400": 2, "404": 1}


async def test_grpc_calls_on_a_full_queue_are_refused_with_retry_after() -> None:
    grpc_mod = grpc_server()
    pb, core = grpc_mod.pb, make_core(max_batch_size=1, max_queue=2)
    servicer = grpc_mod.Servicer(grpc_mod.Oip(lambda: core))
    async with started(core):
        with predictor(core).held():
            calls = await fill_queue(
                core, lambda: core.answer(BusinessJson(), {"application": SAFE})
            )
            replies = await servicer.infer_together([infer_request(pb, SAFE)] * 3)
        await asyncio.gather(*calls)
    assert all(isinstance(r, grpc_mod.Refused) for r in replies)
    assert {r.code for r in replies} == {grpc_mod.grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(dict(r.header)["retry-after"].isdigit() for r in replies)
    assert all(r.details.startswith("overloaded: ") for r in replies)
    assert sample(core, "gateway_requests_shed_total", endpoint=grpc_mod.INFER) == 3
    assert sample(core, "gateway_requests_total", endpoint=grpc_mod.INFER, status="503") == 3


async def test_the_grpc_mapping_counts_a_shed_call_unless_told_not_to() -> None:
    grpc_mod = grpc_server()
    core = make_core()
    status, refused = grpc_mod.refusal(core, "ModelInfer", Overloaded(4, 4, 1.2))
    _, uncounted = grpc_mod.refusal(core, "ModelInfer", Overloaded(4, 4, 1.2), count=False)
    assert status == 503
    assert refused.header == (("retry-after", "1"),)
    assert uncounted.header == refused.header
    assert sample(core, "gateway_requests_shed_total", endpoint=grpc_mod.INFER) == 1
    _, plain = grpc_mod.refusal(core, "ModelInfer", GatewayError("boom"))
    assert plain.code == grpc_mod.grpc.StatusCode.INTERNAL
    assert plain.header == ()
