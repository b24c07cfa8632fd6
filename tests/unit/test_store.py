"""The shared store on both engines: migrations applied once, leases that exactly one holder
gets, alerts seen once, feedback that can be corrected, and one clear line when it is down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import MIGRATIONS, Store
from tests.helpers import free_port
from tests.services import Postgres
from trainers.sqlstore import StoreError, redact


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'predictions.db'}"
    pg: Postgres = request.getfixturevalue("pg")
    return pg.create_database(f"store_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = Store(url)
    yield opened
    opened.close()


def test_migrations_are_applied_once_and_recorded(url: str) -> None:
    for _ in range(2):  # a second process opening the store applies nothing again
        opened = Store(url)
        applied = opened.db.query("SELECT version, name FROM schema_migrations ORDER BY version")
        opened.close()
    files = sorted((MIGRATIONS / opened.db.dialect).glob("*.sql"))
    assert applied == [(int(f.name.split("_")[0]), f.stem) for f in files]


def test_one_holder_at_a_time_and_another_after_expiry(store: Store) -> None:
    assert store.hold("controller/loans", "a", 0.6)
    assert not store.hold("controller/loans", "b", 0.6)
    assert store.hold("controller/loans", "a", 0.6)  # renewed by its holder
    holder = store.holder("controller/loans")
    assert holder is not None
    assert holder[0] == "a"
    time.sleep(0.8)
    assert store.holder("controller/loans") is None
    assert store.hold("controller/loans", "b", 5)
    assert not store.hold("controller/loans", "a", 5)
    store.let_go("controller/loans", "b")
    assert store.hold("controller/loans", "a", 5)


def test_an_alert_is_seen_once_and_feedback_can_be_corrected(store: Store) -> None:
    assert store.first_alert("group|f1|t0", "alertmanager", {"labels": {"model": "loans"}})
    assert not store.first_alert("group|f1|t0", "alertmanager", {})
    store.forget_alert("group|f1|t0")
    assert store.first_alert("group|f1|t0", "alertmanager", {})
    store.record_feedback([("r1", 1), ("r2", 0)])
    store.record_feedback([("r1", 0)])
    labels = dict(store.db.query("SELECT request_id, label FROM feedback"))
    assert labels == {"r1": "0", "r2": "0"}


def test_retrains_run_until_their_outcome_is_recorded(store: Store) -> None:
    store.retrain_started("drift-1", "drift-1", model="loans", host="h", pid=1, log="x.log")
    assert [r["alert_id"] for r in store.running_retrains("loans")] == ["drift-1"]
    store.retrain_finished("drift-1", "promoted", "v2 promoted", "2")
    store.retrain_finished("drift-1", "failed", "late second word", None)  # the first stands
    assert store.running_retrains("loans") == []
    (done,) = store.retrains("loans")
    assert (done["result"], done["version"], done["alert_key"]) == ("promoted", "2", "drift-1")


def test_a_store_that_is_down_is_one_clear_line_without_the_password() -> None:
    url = f"postgresql://gateway:hunter2@127.0.0.1:{free_port()}/state"
    store = Store(url, connect_timeout_s=1)
    with pytest.raises(StoreError) as caught:
        store.hold("controller/loans", "a", 1)
    message = str(caught.value)
    assert "\n" not in message
    assert "hunter2" not in message
    assert redact(url) in message
