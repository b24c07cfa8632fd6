"""The retrain path on its own: alert intake and dedupe, one retrain at a time, its outcome read
from the registry, and the retrains a controller that stopped left behind. Real shared store
(sqlite) and tracking store (sqlite, one per module); the retrain is a stand-in process
(``tests/loopkit.py``) that exits when the test says so."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from gateway.loop import HOST, RetrainLoop, _trigger_id
from gateway.metrics import GatewayMetrics
from gateway.model import LoadedModel
from gateway.predlog import request_ids
from gateway.settings import GatewaySettings
from gateway.store import Store
from tests import loopkit
from trainers.pipelines.loans import PIPELINE, LoanApplication, LoanDecision

pytestmark = pytest.mark.anyio
NAME = "loans"
RETRAIN_ARGS = "--param epochs=2 --min-improvement 0.01"


@dataclass(frozen=True)
class Registry:
    client: MlflowClient
    uri: str
    champion_run: str
    """The run of version 1, the first champion: what a retrain starts from."""

    def champion(self) -> str:
        return str(self.client.get_model_version_by_alias(NAME, "champion").version)

    def status(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.status)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    client = loopkit.tracking_store(tmp_path_factory.mktemp("tracking"), NAME)
    run = loopkit.retrain_run(client, NAME, None)  # trained by hand, not retrained
    assert loopkit.gated(client, NAME, run, "promoted") == "1"
    return Registry(client, client.tracking_uri, run)


@dataclass
class Controller:
    """One loop controller's retrain path over the test's shared store."""

    loop: RetrainLoop
    store: Store
    metrics: GatewayMetrics
    follows: list[str] = field(default_factory=list)

    def count(self, result: str) -> float:
        return self.value("gateway_retrains_total", result=result)

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, {"model": NAME, **labels})
        return found or 0.0

    def row(self, trigger: str) -> dict[str, Any]:
        (found,) = [r for r in self.store.retrains(NAME) if r["alert_id"] == trigger]
        return found

    async def outcome(self, trigger: str) -> dict[str, Any]:
        """The recorded end of the retrain ``trigger``, once it is recorded."""
        await loopkit.eventually(lambda: self.row(trigger)["result"], 20, f"{trigger} recorded")
        return self.row(trigger)


@dataclass
class Rig:
    """A test's shared store, its state directory and the controllers made over them."""

    tmp: Path
    registry: Registry
    model: LoadedModel
    control: Path
    controllers: list[Controller] = field(default_factory=list)

    @property
    def snapshot(self) -> Path:
        return self.tmp / "snapshot.parquet"

    def controller(
        self,
        follow: Callable[[], Awaitable[Any]] | None = None,
        command: list[str] | None = None,
        **overrides: Any,
    ) -> Controller:
        options = {
            "state_dir": self.tmp / "state",
            "retrain_data": str(self.snapshot),
            "retrain_args": RETRAIN_ARGS,
            **overrides,
        }
        settings = GatewaySettings(tracking_uri=self.registry.uri, **options)
        store, metrics, follows = Store(settings.shared_store), GatewayMetrics(), []

        async def followed() -> str:
            follows.append("followed")
            return "v2 loaded"

        loop = RetrainLoop(
            settings,
            metrics,
            store,
            lambda: self.model,
            follow or followed,
            command=loopkit.retrain_command(self.control) if command is None else command,
        )
        made = Controller(loop, store, metrics, follows)
        self.controllers.append(made)
        return made


@pytest.fixture
async def rig(tmp_path: Path, registry: Registry) -> AsyncIterator[Rig]:
    model = LoadedModel(
        NAME,
        "1",
        registry.champion_run,
        "application",
        LoanApplication,
        LoanDecision,
        None,
        PIPELINE,
    )
    control = tmp_path / "control"
    control.mkdir()
    made = Rig(tmp_path, registry, model, control)
    yield made
    for controller in made.controllers:
        await controller.loop.stop()
        controller.store.close()
    loopkit.end_stand_ins(control)  # a retrain outlives its controller: end this test's


def dead_pid() -> int:
    """The id of a process of this host that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


# -- one retrain: started, followed, recorded ---------------------------------------------------
async def test_an_alert_starts_one_retrain_from_the_champions_run_with_its_trigger(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.loop")
    one = rig.controller()
    key = "drift-loans-v1-1700000000"

    answer = await one.loop.alert(key, "monitor", {"window": "loans-v1-00003"})

    started = await loopkit.started(rig.control, key)
    assert answer == {
        "alert": key,
        "accepted": True,
        "retrain": "started",
        "trigger": key,
        "pid": started["pid"],
    }
    assert started["args"] == [
        "retrain",
        "--from-run",
        rig.registry.champion_run,
        "--data",
        str(rig.snapshot.resolve()),
        "--trigger",
        key,
        *RETRAIN_ARGS.split(),
    ]
    # The stores reach the retrain through MLflow's variables, not its command line.
    assert started["env"] == {
        "MLFLOW_TRACKING_URI": rig.registry.uri,
        "MLFLOW_REGISTRY_URI": rig.registry.uri,
    }
    row = one.row(key)
    assert {k: row[k] for k in ("alert_id", "alert_key", "host", "pid", "finished")} == {
        "alert_id": key,
        "alert_key": key,
        "host": HOST,
        "pid": started["pid"],
        "finished": None,
    }
    log = rig.tmp / "state" / "retrains" / f"{key}.log"
    assert row["log"] == str(log)
    assert await one.loop.busy(rig.model)
    assert not one.store.first_alert(key, "monitor", {})  # recorded for every controller
    assert one.value("gateway_drift_alerts_total", source="monitor") == 1
    assert one.value("gateway_retrain_running") == 1

    run = loopkit.retrain_run(rig.registry.client, NAME, key)
    version = loopkit.gated(rig.registry.client, NAME, run, "rejected")
    champion = rig.registry.champion()
    loopkit.release(rig.control, key, 0)
    ended = await one.outcome(key)

    assert (ended["result"], ended["version"]) == ("rejected", version)
    assert ended["detail"] == f"v{version} rejected by the gate; v1 keeps serving"
    assert one.follows == []
    assert rig.registry.champion() == champion
    assert one.count("rejected") == 1
    assert one.value("gateway_retrain_running") == 0
    assert not await one.loop.busy(rig.model)
    # The retrain's log is its own file, echoed into the controller's log as it grows.
    assert f"stand-in retrain {key}: epoch 2/2" in log.read_text()
    echoed = [r.getMessage() for r in caplog.records if r.name == "gateway.loop"]
    assert f"retrain {key} | stand-in retrain {key}: epoch 1/2" in echoed


async def test_a_promoted_retrain_counts_as_running_until_the_controller_has_followed_it(
    rig: Rig,
) -> None:
    following, go_on = asyncio.Event(), asyncio.Event()

    async def follow() -> str:
        following.set()
        await go_on.wait()
        return "v2 loaded"

    one = rig.controller(follow)
    first = "drift-loans-v1-first"
    assert (await one.loop.alert(first, "monitor", {}))["retrain"] == "started"
    await loopkit.started(rig.control, first)
    version = loopkit.gated(
        rig.registry.client, NAME, loopkit.retrain_run(rig.registry.client, NAME, first), "promoted"
    )
    loopkit.release(rig.control, first, 0)
    await asyncio.wait_for(following.wait(), 20)  # the retrain exited; its version promoted

    during = await one.loop.alert("drift-loans-v1-during", "monitor", {})
    assert during == {
        "alert": "drift-loans-v1-during",
        "accepted": False,
        "reason": "a retrain is running",
    }
    webhook = await one.loop.alert("group-f1-t0", "alertmanager", {})
    assert (webhook["accepted"], webhook["retrain"]) == (True, "busy")
    assert loopkit.stand_ins(rig.control) == [first]

    go_on.set()
    ended = await one.outcome(first)
    assert (ended["result"], ended["version"]) == ("promoted", version)
    assert ended["detail"].startswith(f"v{version} promoted after ")
    assert ended["detail"].endswith("the controller follows: v2 loaded")
    assert one.count("promoted") == 1

    after = await one.loop.alert("drift-loans-v2-after", "monitor", {})
    assert after["retrain"] == "started", after


async def test_a_promotion_the_controller_cannot_follow_is_still_recorded_promoted(
    rig: Rig,
) -> None:
    async def follow() -> str:
        raise ConnectionError("registry unreachable")

    one = rig.controller(follow)
    key = "drift-loans-v1-unfollowed"
    await one.loop.alert(key, "monitor", {})
    await loopkit.started(rig.control, key)
    run = loopkit.retrain_run(rig.registry.client, NAME, key)
    version = loopkit.gated(rig.registry.client, NAME, run, "promoted")
    loopkit.release(rig.control, key, 0)

    ended = await one.outcome(key)
    assert (ended["result"], ended["version"]) == ("promoted", version)
    assert ended["detail"].endswith("the controller follows: not yet (registry unreachable)")


async def test_a_retrain_that_exits_non_zero_is_recorded_failed_and_the_champion_serves_on(
    rig: Rig,
) -> None:
    one = rig.controller()
    key = "drift-loans-v1-crash"
    await one.loop.alert(key, "monitor", {})
    await loopkit.started(rig.control, key)
    champion = rig.registry.champion()
    loopkit.release(rig.control, key, 3)

    ended = await one.outcome(key)
    assert (ended["result"], ended["version"]) == ("failed", None)
    assert ended["detail"].startswith("exit status 3 after ")
    assert str(rig.tmp / "state" / "retrains" / f"{key}.log") in ended["detail"]
    assert one.follows == []
    assert rig.registry.champion() == champion
    assert one.count("failed") == 1
    assert one.value("gateway_retrain_running") == 0
    # Nothing holds the next alert back.
    again = await one.loop.alert("drift-loans-v1-crash-again", "monitor", {})
    assert again["retrain"] == "started", again


async def test_a_retrain_that_registers_no_version_is_recorded_failed(rig: Rig) -> None:
    one = rig.controller()
    key = "drift-loans-v1-nothing"
    await one.loop.alert(key, "monitor", {})
    await loopkit.started(rig.control, key)
    loopkit.release(rig.control, key, 0)

    ended = await one.outcome(key)
    assert (ended["result"], ended["version"]) == ("failed", None)
    assert "the retrain registered no version after " in ended["detail"]
    assert one.count("failed") == 1
    assert one.follows == []


async def test_a_killed_retrain_is_recorded_failed_and_its_run_marked_failed(rig: Rig) -> None:
    one = rig.controller()
    key = "drift-loans-v1-oom"
    await one.loop.alert(key, "monitor", {})
    started = await loopkit.started(rig.control, key)
    client = rig.registry.client
    run = loopkit.retrain_run(client, NAME, key)  # in the middle of its epochs
    other = loopkit.retrain_run(client, NAME, "someone-else")  # another retrain's run
    champion = rig.registry.champion()

    os.kill(started["pid"], signal.SIGKILL)

    ended = await one.outcome(key)
    assert (ended["result"], ended["version"]) == ("failed", None)
    assert ended["detail"].startswith(f"exit status {-signal.SIGKILL} after ")
    assert rig.registry.status(run) == "FAILED"  # not left RUNNING for ever
    assert rig.registry.status(other) == "RUNNING"
    assert rig.registry.champion() == champion
    assert one.follows == []


# -- one at a time -----------------------------------------------------------------------------
async def test_alerts_at_once_start_a_single_retrain(rig: Rig) -> None:
    one = rig.controller()
    answers = await asyncio.gather(
        *(one.loop.alert(f"group-f{i}-t0", "alertmanager", {}) for i in range(4))
    )
    assert sorted(a["retrain"] for a in answers) == ["busy", "busy", "busy", "started"]
    (started,) = [a for a in answers if a["retrain"] == "started"]
    await loopkit.started(rig.control, started["trigger"])
    assert [r["alert_id"] for r in one.store.retrains(NAME)] == [started["trigger"]]
    assert loopkit.stand_ins(rig.control) == [started["trigger"]]
    assert one.value("gateway_drift_alerts_total", source="alertmanager") == 4


async def test_a_retrain_running_for_one_controller_holds_back_another(rig: Rig) -> None:
    one, other = rig.controller(), rig.controller()
    key = "drift-loans-v1-one"
    assert (await one.loop.alert(key, "monitor", {}))["retrain"] == "started"
    await loopkit.started(rig.control, key)

    refused = await other.loop.alert("drift-loans-v1-other", "monitor", {})
    assert refused["reason"] == "a retrain is running"
    busy = await other.loop.alert("group-f1-t0", "alertmanager", {})
    assert busy["retrain"] == "busy"
    assert await other.loop.busy(rig.model)
    # The same key at the other controller: seen before, by the store both share.
    assert (await other.loop.alert(key, "alertmanager", {}))["reason"] == "already seen"
    assert [r["alert_id"] for r in other.store.retrains(NAME)] == [key]
    assert loopkit.stand_ins(rig.control) == [key]


# -- intake ------------------------------------------------------------------------------------
async def test_an_alert_key_starts_the_path_once(rig: Rig) -> None:
    one = rig.controller()
    key = "drift-loans-v1-once"
    first = await one.loop.alert(key, "monitor", {})
    assert first["retrain"] == "started"
    await loopkit.started(rig.control, key)
    loopkit.release(rig.control, key, 1)
    await one.outcome(key)

    again = await one.loop.alert(key, "monitor", {})
    assert again == {"alert": key, "accepted": False, "reason": "already seen"}
    assert loopkit.stand_ins(rig.control) == [key]
    assert one.value("gateway_drift_alerts_total", source="monitor") == 1


def test_a_trigger_id_is_the_key_when_it_is_file_name_safe_else_a_stable_hash() -> None:
    assert _trigger_id("drift-loans-v1-1700000000") == "drift-loans-v1-1700000000"
    assert _trigger_id("v1.2_a-b") == "v1.2_a-b"
    key = '{}/{alertname="GatewayInputDrift"}|3f2a9c|2026-01-01T00:00:00Z'
    made = _trigger_id(key)
    assert made == _trigger_id(key)
    assert made.startswith("alertmanager-")
    assert len(made.removeprefix("alertmanager-")) == 12
    assert all(c.isalnum() or c == "-" for c in made)
    assert _trigger_id(key.replace("2026", "2027")) != made
    assert _trigger_id("a/b") != _trigger_id("a|b")


def webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"groupKey": '{}:{alertname="GatewayInputDrift"}', "alerts": list(alerts)}


def firing(fingerprint: str, starts: str, status: str = "firing") -> dict[str, Any]:
    return {
        "status": status,
        "fingerprint": fingerprint,
        "startsAt": starts,
        "labels": {"alertname": "GatewayInputDrift", "model": NAME},
    }


async def test_alertmanager_alerts_are_keyed_by_firing_episode(rig: Rig) -> None:
    one = rig.controller()
    group = webhook()["groupKey"]

    sent = await one.loop.alertmanager(
        webhook(firing("aa", "2026-01-01T00:00:00Z"), firing("bb", "t0", status="resolved"))
    )

    first, resolved = sent["alerts"]
    key = f"{group}|aa|2026-01-01T00:00:00Z"
    assert first["fingerprint"] == "aa"
    assert first["alert"] == key
    assert first["retrain"] == "started"
    assert first["trigger"] == _trigger_id(key) != key
    assert resolved == {"fingerprint": "bb", "ignored": "resolved"}
    await loopkit.started(rig.control, _trigger_id(key))
    loopkit.release(rig.control, _trigger_id(key), 1)
    await one.outcome(_trigger_id(key))

    resent = await one.loop.alertmanager(webhook(firing("aa", "2026-01-01T00:00:00Z")))
    assert resent["alerts"][0]["reason"] == "already seen"
    episode = await one.loop.alertmanager(webhook(firing("aa", "2026-01-02T00:00:00Z")))
    assert episode["alerts"][0]["retrain"] == "started"  # fired again after it resolved
    assert one.value("gateway_drift_alerts_total", source="alertmanager") == 2
    recorded = json.loads(
        one.store.db.query("SELECT detail FROM alerts WHERE key = ?", (key,))[0][0]
    )
    assert recorded == {
        "group": group,
        "labels": {"alertname": "GatewayInputDrift", "model": NAME},
        "startsAt": "2026-01-01T00:00:00Z",
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "expected Alertmanager's webhook JSON"),
        ({"alerts": "firing"}, "expected Alertmanager's webhook JSON"),
        ({"alerts": ["firing"]}, "every entry of 'alerts' must be an object"),
    ],
)
async def test_a_payload_that_is_not_alertmanagers_is_refused(
    rig: Rig, payload: Any, message: str
) -> None:
    one = rig.controller()
    with pytest.raises(ValueError, match=message):
        await one.loop.alertmanager(payload)
    assert loopkit.stand_ins(rig.control) == []


async def test_with_retrains_off_an_alert_is_recorded_and_counted_but_starts_nothing(
    rig: Rig,
) -> None:
    one = rig.controller(retrain_on_alert=False)
    answer = await one.loop.alert("drift-loans-v1-off", "monitor", {})
    assert answer == {"alert": "drift-loans-v1-off", "accepted": True, "retrain": "disabled"}
    assert not one.store.first_alert("drift-loans-v1-off", "monitor", {})
    assert one.value("gateway_drift_alerts_total", source="monitor") == 1
    assert one.store.retrains(NAME) == []
    assert loopkit.stand_ins(rig.control) == []


async def test_a_retrain_that_cannot_start_is_counted_failed_and_holds_nothing(rig: Rig) -> None:
    one = rig.controller(command=[str(rig.tmp / "no-such-trainers")])
    answer = await one.loop.alert("drift-loans-v1-nocmd", "monitor", {})
    assert (answer["accepted"], answer["retrain"]) == (True, "failed")
    assert "no-such-trainers" in answer["reason"]
    assert one.count("failed") == 1
    assert one.store.retrains(NAME) == []
    assert not await one.loop.busy(rig.model)


# -- the data: labelled production traffic -----------------------------------------------------
def log_labelled(store: Store, version: str, seed: int, rows: int, labelled: int) -> pd.DataFrame:
    """``rows`` answered objects of ``version`` in the prediction log, the first ``labelled`` of
    them with ground truth; returns the labelled ones as a snapshot would hold them."""
    frame = PIPELINE.generate(rows, 0.0, seed)
    inputs = PIPELINE.inputs_from_frame(frame)
    answer = LoanDecision(default_probability=0.2, decision="review").model_dump_json()
    ids = request_ids(rows)
    columns = [
        c for rid, x in zip(ids, inputs, strict=True) for c in (rid, x.model_dump_json(), answer)
    ]
    store.append(1.0, NAME, version, columns)
    labels = frame[PIPELINE.target].tolist()
    store.record_feedback(list(zip(ids[:labelled], labels[:labelled], strict=True)))
    return frame.iloc[:labelled]


async def test_a_retrain_on_feedback_exports_the_labelled_traffic_of_every_version(
    rig: Rig,
) -> None:
    one = rig.controller(retrain_data="feedback", retrain_min_labels=5)
    key = "drift-loans-v1-feedback"
    older = log_labelled(one.store, "0", seed=1, rows=4, labelled=2)
    log_labelled(one.store, "1", seed=9, rows=3, labelled=0)

    short = await one.loop.alert(key, "monitor", {})
    assert short == {
        "alert": key,
        "accepted": True,
        "retrain": "skipped",
        "reason": "2 labelled objects, 5 needed (send ground truth to /feedback)",
    }
    assert one.count("skipped") == 1
    assert loopkit.stand_ins(rig.control) == []

    newer = log_labelled(one.store, "1", seed=2, rows=6, labelled=4)
    again = await one.loop.alert(key, "monitor", {})  # forgotten: the same alert tries again
    assert again["retrain"] == "started", again

    started = await loopkit.started(rig.control, key)
    data = Path(started["args"][started["args"].index("--data") + 1])
    assert data == (rig.tmp / "state" / "retrains" / f"{key}.parquet").resolve()
    exported = pd.read_parquet(data)
    assert list(exported.columns) == [*LoanApplication.model_fields, PIPELINE.target]
    expected = pd.concat([older, newer], ignore_index=True)[list(exported.columns)]
    pd.testing.assert_frame_equal(exported, expected, check_dtype=False)
    PIPELINE.validate_frame(exported, "the export")  # a snapshot `trainers retrain` takes


# -- taking over -------------------------------------------------------------------------------
async def test_a_stopped_controller_leaves_its_retrain_running_for_the_next_to_adopt(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    one = rig.controller()
    key = "drift-loans-v1-handover"
    await one.loop.alert(key, "monitor", {})
    started = await loopkit.started(rig.control, key)
    await one.loop.stop()  # the controller stands down; the retrain is not its to end

    assert loopkit.alive(started["pid"])
    assert one.row(key)["finished"] is None
    client = rig.registry.client
    version = loopkit.gated(client, NAME, loopkit.retrain_run(client, NAME, key), "promoted")
    loopkit.release(rig.control, key, 0)
    await loopkit.eventually(lambda: not loopkit.alive(started["pid"]), 20, "the retrain to end")

    other = rig.controller()
    with caplog.at_level(logging.WARNING, logger="gateway.loop"):
        await other.loop.adopt()
    ended = await other.outcome(key)

    assert (ended["result"], ended["version"]) == ("promoted", version)
    assert "(adopted)" in ended["detail"]
    assert other.follows == ["followed"]
    assert one.count("promoted") == 0
    assert other.count("promoted") == 1
    assert any("was left running" in r.getMessage() for r in caplog.records)


async def test_an_adopted_retrain_whose_process_died_is_failed_and_its_run_marked_failed(
    rig: Rig,
) -> None:
    one = rig.controller()
    key = "drift-loans-v1-orphan"
    await one.loop.alert(key, "monitor", {})
    started = await loopkit.started(rig.control, key)
    run = loopkit.retrain_run(rig.registry.client, NAME, key)
    await one.loop.stop()
    os.kill(started["pid"], signal.SIGKILL)  # with its controller gone: nobody saw it end
    await loopkit.eventually(lambda: not loopkit.alive(started["pid"]), 20, "the kill")

    other = rig.controller()
    await other.loop.adopt()
    ended = await other.outcome(key)

    assert ended["result"] == "failed"
    assert ended["detail"] == "adopted: its process is gone"
    assert rig.registry.status(run) == "FAILED"
    assert other.count("failed") == 1


async def test_an_adopted_retrain_whose_run_failed_is_recorded_failed(rig: Rig) -> None:
    other = rig.controller()
    key = "drift-loans-v1-runfailed"
    run = loopkit.retrain_run(rig.registry.client, NAME, key)
    rig.registry.client.set_terminated(run, "FAILED")  # the retrain ended its own run
    other.store.retrain_started(key, key, model=NAME, host="elsewhere", pid=1, log="")

    await other.loop.adopt()
    ended = await other.outcome(key)
    assert ended["detail"] == "adopted: run FAILED"


async def test_an_adopted_retrain_past_its_timeout_is_given_up(rig: Rig) -> None:
    other = rig.controller(retrain_timeout_s=0.001)
    key = "drift-loans-v1-late"
    run = loopkit.retrain_run(rig.registry.client, NAME, key)
    other.store.retrain_started(key, key, model=NAME, host="elsewhere", pid=1, log="")

    await other.loop.adopt()
    ended = await other.outcome(key)
    assert (ended["result"], ended["detail"]) == ("failed", "adopted: it did not finish in time")
    assert rig.registry.status(run) == "RUNNING"  # only a process known gone has its run ended


async def test_an_adopted_retrain_still_running_elsewhere_is_followed_not_failed(
    rig: Rig,
) -> None:
    other = rig.controller()
    key = "drift-loans-v1-elsewhere"
    loopkit.retrain_run(rig.registry.client, NAME, key)
    # On another host the process cannot be looked up: its pid here means nothing.
    other.store.retrain_started(key, key, model=NAME, host="elsewhere", pid=dead_pid(), log="")

    await other.loop.adopt()
    await asyncio.sleep(0.3)  # the first look has been taken
    assert other.row(key)["finished"] is None
    assert await other.loop.busy(rig.model)


async def test_a_controller_does_not_adopt_the_retrain_it_follows_itself(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    one = rig.controller()
    key = "drift-loans-v1-mine"
    await one.loop.alert(key, "monitor", {})
    await loopkit.started(rig.control, key)
    with caplog.at_level(logging.WARNING, logger="gateway.loop"):
        await one.loop.adopt()  # the lease taken again, e.g. after a blip
    assert not any("was left running" in r.getMessage() for r in caplog.records)
    loopkit.release(rig.control, key, 1)
    assert (await one.outcome(key))["result"] == "failed"
    assert one.count("failed") == 1
