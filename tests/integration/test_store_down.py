"""A replica whose shared store goes down keeps answering: the prediction log keeps what it could
not write (within its bound, the rest dropped and counted) and writes it once the store is back;
feedback is refused with 503 meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from starlette.testclient import TestClient

from gateway.core import GatewayCore
from gateway.http import create_app
from gateway.loader import load
from gateway.metrics import GatewayMetrics
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import in_process_settings, metric_samples, wait_until
from tests.services import Postgres, postgres
from tests.traffic import APPLICATION, loan_variants


@pytest.fixture
def cluster() -> Iterator[Postgres]:
    """A cluster of this test's own: it is stopped and started again."""
    with postgres() as own:
        yield own


def logged(url: str) -> int:
    with psycopg.connect(url, connect_timeout=2) as conn:
        row = conn.execute("SELECT count(*) FROM predictions").fetchone()
    return int(row[0]) if row else 0


def sample(client: TestClient, name: str, labels: str = "") -> float:
    return metric_samples(client.get("/metrics").text, name).get(labels, 0.0)


def test_a_replica_keeps_answering_while_its_store_is_down(
    store: str, loans_data: Path, cluster: Postgres
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    url = cluster.create_database("gateway")
    settings = in_process_settings(store, store_url=url, log_buffer=50, store_timeout_s=1)
    core = GatewayCore(load(settings), settings, GatewayMetrics())
    with TestClient(create_app(lambda: core)) as client:
        first = client.post("/predict/bulk", json={"applications": loan_variants(20)})
        assert first.status_code == 200
        wait_until(lambda: logged(url) == 20, 10, "the first answers in the store")

        cluster.stop()
        during = client.post("/predict/bulk", json={"applications": loan_variants(30)})
        assert during.status_code == 200
        assert client.post("/predict", json={"application": APPLICATION}).status_code == 200
        wait_until(
            lambda: sample(client, "gateway_monitor_errors_total", '{stage="log"}') >= 1,
            10,
            "a failed write, counted",
        )
        refused = client.post(
            "/feedback", json={"request_id": first.json()["request_ids"][0], "label": 1}
        )
        assert refused.status_code == 503, refused.text
        more = client.post("/predict/bulk", json={"applications": loan_variants(40)})
        assert more.status_code == 200  # 31 + 40 answered while down; the buffer keeps 50
        assert sample(client, "gateway_monitor_samples_dropped_total") == 21

        cluster.start()
        wait_until(lambda: logged(url) == 20 + 50, 30, "the kept answers written")
        again = client.post(
            "/feedback", json={"request_id": first.json()["request_ids"][0], "label": 1}
        )
        assert again.json() == {"recorded": 1}
    with psycopg.connect(url) as conn:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM predictions ORDER BY id")]
    assert ids[20:50] == during.json()["request_ids"]  # the oldest kept first, in order
