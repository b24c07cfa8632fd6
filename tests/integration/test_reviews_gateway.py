"""The gateway serves a text pipeline too: empty, blank and over-long reviews get a 422 naming
the field; good ones are answered in batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from tests.conftest import TINY_REVIEWS, train_ok


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, reviews_data: Path) -> Iterator[TestClient]:
    store = f"sqlite:///{tmp_path_factory.mktemp('reviews-store') / 'mlflow.db'}"
    train_ok(store, "reviews", "--data", str(reviews_data), *TINY_REVIEWS)
    settings = GatewaySettings(
        pipeline="reviews", tracking_uri=store, data_port=0, poll_interval_s=0
    )
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as test_client:
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
