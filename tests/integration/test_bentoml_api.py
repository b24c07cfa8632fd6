"""The gateway as a BentoML service like any other: its typed ``@bentoml.api`` methods answer
BentoML's own clients, and another service composes it with ``bentoml.depends()``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pytest

from tests.helpers import REPO, VENV_BIN, free_port, http_ok, process, serve_gateway, wait_until
from tests.traffic import APPLICATION, YOUNG


@pytest.fixture(scope="module")
def gateway(trained: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with serve_gateway(trained, tmp_path_factory.mktemp("bento"), workers=1) as ports:
        yield ports


def test_the_bentoml_client_calls_predict_and_bulk_predict(gateway: tuple[str, str]) -> None:
    base, data = gateway
    expected = httpx.post(f"{data}/predict", json={"application": APPLICATION}).json()
    with bentoml.SyncHTTPClient(base) as client:
        answer = client.call("predict", application=APPLICATION)
        many = client.predict_bulk(applications=[APPLICATION, YOUNG])
    assert answer["prediction"] == pytest.approx(expected["prediction"])
    assert (answer["model_version"], answer["run_id"]) == (
        expected["model_version"],
        expected["run_id"],
    )
    assert answer["request_id"] != expected["request_id"]
    assert len(many["predictions"]) == len(many["request_ids"]) == 2
    assert many["predictions"][0] == pytest.approx(expected["prediction"])


def test_the_async_client_is_refused_with_the_field_named(gateway: tuple[str, str]) -> None:
    base, _ = gateway

    async def calls() -> tuple[dict[str, object], str]:
        async with bentoml.AsyncHTTPClient(base) as client:
            ok = await client.predict(application=YOUNG)
            with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
                await client.predict(application={**YOUNG, "age": 7})
            return ok, str(refused.value)

    ok, refusal = asyncio.run(calls())
    assert ok["prediction"]["decision"] in {"approve", "review", "decline"}  # type: ignore[index]
    assert '"loc":["application","age"]' in refusal.replace(" ", "")
    assert "greater than or equal to 18" in refusal


def test_the_typed_api_keeps_the_gateways_limits_and_headers(gateway: tuple[str, str]) -> None:
    base, _ = gateway
    too_many = httpx.post(f"{base}/predict/bulk", json={"applications": [APPLICATION] * 1001})
    assert too_many.status_code == 422, too_many.text
    assert "applications must be a list of 1 to 1000 objects" in too_many.text
    huge = {"application": {**APPLICATION, "purpose": "x" * 3_000_000}}
    refused = httpx.post(f"{base}/predict", json=huge, timeout=30)
    assert refused.status_code == 413, refused.text
    assert "exceeds the limit of 2097152" in refused.text
    ok = httpx.post(f"{base}/predict", json={"application": APPLICATION})
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-model-version"] == ok.json()["model_version"]
    assert ok.headers["x-run-id"] == ok.json()["run_id"]


def test_a_service_of_ones_own_composes_the_gateway_with_depends(
    trained: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "GATEWAY_TRACKING_URI": trained,
        "GATEWAY_DATA_PORT": str(free_port()),
        "GATEWAY_GRPC_PORT": str(free_port()),
        "GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    args = [str(VENV_BIN / "bentoml"), "serve", "tests.fixtures.composed:LoanDesk"]
    args += ["--port", str(port), "--host", "127.0.0.1"]
    with process(args, cwd=REPO, env=env, log=tmp_path / "desk.log") as proc:
        base = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{base}/readyz"), 120, "the loan desk and its gateway", proc)
        with bentoml.SyncHTTPClient(base) as desk:
            answer = desk.decide(application=APPLICATION)
    assert answer["decision"] in {"approve", "review", "decline"}
    assert answer["model_version"] == "1"
    assert len(answer["request_id"]) == 32
