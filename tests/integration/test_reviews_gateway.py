"""The gateway serves a text pipeline too: empty, blank and over-long reviews get a 422 naming
the field; good ones are answered in batches."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.conftest import TINY_REVIEWS, train_ok
from tests.helpers import cli


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, reviews_data: Path) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('reviews-store') / 'mlflow.db'}"
    train_ok(uri, "reviews", "--data", str(reviews_data), *TINY_REVIEWS)
    return uri


@contextmanager
def serving(store: str, **settings: Any) -> Iterator[TestClient]:
    config = GatewaySettings(
        pipeline="reviews",
        tracking_uri=store,
        data_port=0,
        grpc_port=0,
        poll_interval_s=0,
        **settings,
    )
    core = GatewayCore(load(config), config, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def client(store: str) -> Iterator[TestClient]:
    with serving(store) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("review", "fragments"),
    [
        ({"text": ""}, ["review.text", "at least 1 character"]),
        ({"text": "   "}, ["review.text", "should match pattern"]),
        ({"text": "x" * 5001}, ["review.text", "at most 5000 characters"]),
        ({"text": "fine", "title": "t" * 201}, ["review.title", "at most 200 characters"]),
        ({"text": 42}, ["review.text", "valid string"]),
        ({"title": "no body"}, ["review.text", "Field required"]),
    ],
)
def test_text_refusals_name_the_field(
    client: TestClient, review: dict[str, object], fragments: list[str]
) -> None:
    refused = client.post("/predict", json={"review": review})
    assert refused.status_code == 422
    for fragment in fragments:
        assert fragment in refused.text


def test_reviews_are_answered(client: TestClient) -> None:
    good = client.post(
        "/predict/bulk",
        json={"reviews": [{"text": "a gripping plot"}, {"text": "dull", "title": "meh"}]},
    )
    assert good.status_code == 200
    answers = good.json()["predictions"]
    assert [set(a) for a in answers] == [{"sentiment", "positive_probability"}] * 2
    assert good.headers["x-model-name"] == "reviews"


def test_bf16_autocast_gives_close_answers(client: TestClient, store: str) -> None:
    reviews = [{"text": t} for t in ("a gripping plot", "dull and far too long", "not bad at all")]
    full = client.post("/predict/bulk", json={"reviews": reviews}).json()["predictions"]
    with serving(store, bf16=True) as half:
        response = half.post("/predict/bulk", json={"reviews": reviews})
    assert response.status_code == 200
    halves = response.json()["predictions"]
    for a, b in zip(full, halves, strict=True):
        assert b["positive_probability"] == pytest.approx(a["positive_probability"], abs=0.05)
    # bfloat16 keeps 8 bits of mantissa: the autocast really ran if the numbers moved
    assert [a["positive_probability"] for a in full] != [b["positive_probability"] for b in halves]


def test_reload_needs_the_token_and_swaps_to_the_moved_alias(
    client: TestClient, store: str, reviews_data: Path
) -> None:
    assert client.post("/admin/reload").status_code == 404  # no token configured: disabled
    with serving(store, reload_token="s3cret") as guarded:
        assert guarded.post("/admin/reload").status_code == 401
        wrong = guarded.post("/admin/reload", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403
        auth = {"authorization": "Bearer s3cret"}
        unchanged = guarded.post("/admin/reload", headers=auth).json()
        assert unchanged["swapped"] is False
        train_ok(
            store,
            "reviews",
            "--data",
            str(reviews_data),
            *TINY_REVIEWS,
            "--param",
            "seed=5",
            "--min-improvement",
            "1",
        )
        assert cli(store, "promote", "reviews", "2").exit_code == 0
        moved = guarded.post("/admin/reload", headers=auth).json()
        assert (moved["swapped"], moved["model_version"], moved["previous_version"]) == (
            True,
            "2",
            "1",
        )
        after = guarded.post("/predict", json={"review": {"text": "fine"}})
        assert after.headers["x-model-version"] == "2"
        metrics = guarded.get("/metrics").text
        assert 'gateway_model_swaps_total{model="reviews",result="swapped"} 1.0' in metrics
