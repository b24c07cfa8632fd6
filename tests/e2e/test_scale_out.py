"""Beyond one machine: two serving replicas, each on a host of its own (a network namespace with
its own address and state directory), two loop controllers, PostgreSQL as the shared store and
``mlflow server`` on PostgreSQL as the tracking store; nothing shared through files.

Drifted traffic to both replicas → exactly one alert → exactly one retrain; the active controller
is killed (-9) while the retrain runs and the other takes over and completes the loop; the
promoted version answers on both replicas; a replica is killed and the clients of the other see
no failure; an answer is traced back to the alert that made its version."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_LOANS, make_snapshot, train_ok
from tests.helpers import cli, run_controller, serve_gateway, wait_until
from tests.services import PSYCOPG, NetHost, Postgres, mlflow_server, network_hosts, postgres
from tests.traffic import SteadyClient, objects

WINDOW = 100
POLL_S = 1.0
LEASE_TTL_S = 3.0

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespaces for the test hosts need root"
)


def statuses(controllers: list[str]) -> list[dict[str, Any] | None]:
    found: list[dict[str, Any] | None] = []
    for base in controllers:
        try:
            found.append(httpx.get(f"{base}/ready", timeout=5).json())
        except httpx.HTTPError:
            found.append(None)
    return found


def version_on(data: str) -> str:
    r = httpx.post(f"{data}/predict", json={"application": objects(1, 0.0, 5)[0][0]}, timeout=30)
    return str(r.json()["model_version"])


@pytest.fixture
def hosts() -> Iterator[list[NetHost]]:
    with network_hosts(2) as made:
        yield made


def test_two_replicas_two_controllers_one_loop(
    hosts: list[NetHost], tmp_path: Path, snapshots: Path, loans_data: Path
) -> None:
    listen = ["127.0.0.1", *(h.gateway for h in hosts)]
    with ExitStack() as stack:
        pg: Postgres = stack.enter_context(postgres(listen))
        pg.create_database("mlflow")
        state = pg.create_database("gateway")
        tracking = stack.enter_context(
            mlflow_server(pg.url("mlflow", PSYCOPG), tmp_path / "artifacts", tmp_path, "0.0.0.0")
        )
        port = tracking.rsplit(":", 1)[1]
        train_ok(tracking, "loans", "--data", str(loans_data), *FAST_LOANS)

        loop = {
            "store_url": state,
            "drift_window": str(WINDOW),
            "drift_interval_s": "1",
            "drift_alert_windows": "2",
            "poll_interval_s": str(POLL_S),
            "lease_ttl_s": str(LEASE_TTL_S),
            "retrain_data": str(make_snapshot(snapshots, "loans", 3000, shift=1.0, seed=11)),
            "retrain_args": "--param epochs=4",
        }
        controllers: list[str] = []
        processes = []
        for n in (1, 2):
            settings = {**loop, "state_dir": str(tmp_path / f"controller-{n}")}
            base, proc = stack.enter_context(
                run_controller(
                    tracking, tmp_path, settings=settings, name=f"controller-{n}", active=False
                )
            )
            controllers.append(base)
            processes.append(proc)
        replicas: list[str] = []
        for n, host in enumerate(hosts, 1):
            on_host = {
                "store_url": pg.url("gateway").replace("127.0.0.1", host.gateway),
                "state_dir": str(tmp_path / f"replica-{n}"),
                "poll_interval_s": str(POLL_S),
            }
            _, data = stack.enter_context(
                serve_gateway(
                    f"http://{host.gateway}:{port}",
                    tmp_path,
                    workers=1,
                    settings=on_host,
                    host=host.address,
                    prefix=host.prefix,
                    name=f"replica-{n}",
                )
            )
            replicas.append(data)

        # Exactly one controller is active.
        wait_until(
            lambda: sum(bool(s and s["active"]) for s in statuses(controllers)) == 1,
            30,
            "one active controller",
        )
        assert [version_on(r) for r in replicas] == ["1", "1"]

        # Drifted traffic to both replicas, a window's worth at a time, until a retrain starts.
        active = next(i for i, s in enumerate(statuses(controllers)) if s and s["active"])
        shifted, _ = objects(4000, 1.0, 12)
        sent = 0

        def retrain_started() -> bool:
            nonlocal sent
            found = httpx.get(f"{controllers[active]}/retrains", timeout=10).json()["retrains"]
            if found:
                return True
            for replica in replicas:
                chunk = shifted[sent % 3600 : sent % 3600 + WINDOW // 2]
                r = httpx.post(f"{replica}/predict/bulk", json={"applications": chunk}, timeout=60)
                assert r.status_code == 200, r.text
                sent += len(chunk)
            return False

        wait_until(retrain_started, 240, "drift on both replicas to start a retrain")

        # The active controller dies mid-retrain; the other takes over and completes the loop.
        killed_at = time.monotonic()
        os.kill(processes[active].pid, signal.SIGKILL)
        other = controllers[1 - active]
        wait_until(
            lambda: bool((statuses([other])[0] or {}).get("active")),
            LEASE_TTL_S * 2 + 10,
            "the standby to take over",
        )
        takeover_s = time.monotonic() - killed_at

        def recorded() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = httpx.get(f"{other}/retrains", timeout=10).json()[
                "retrains"
            ]
            return found if found and all(r["result"] for r in found) else []

        wait_until(lambda: bool(recorded()), 300, "the adopted retrain's outcome")
        (retrain,) = recorded()
        assert retrain["result"] == "promoted", retrain
        assert retrain["version"] == "2"
        promoted_at = time.monotonic()
        wait_until(
            lambda: [version_on(r) for r in replicas] == ["2", "2"], 30, "v2 on both replicas"
        )
        both_on_v2_s = time.monotonic() - promoted_at

        # Exactly one alert and one retrain, in the shared store.
        import psycopg

        with psycopg.connect(state) as conn:
            alerts = conn.execute("SELECT key, source FROM alerts").fetchall()
            retrains = conn.execute("SELECT alert_id FROM retrains").fetchall()
            logged = conn.execute("SELECT count(*) FROM predictions").fetchone()
        assert len(alerts) == 1, alerts
        assert alerts[0][1] == "monitor"
        assert retrains == [(retrain["alert_id"],)]
        assert logged is not None
        assert logged[0] >= sent

        # A replica dies; the clients of the other see no failure.
        with SteadyClient(replicas[1], objects(200, 1.0, 71)[0], 0.01) as survivor:
            wait_until(lambda: survivor.statuses[200] >= 20, 30, "answers from replica 2")
            first = httpx.get(f"{replicas[0]}/ready", timeout=5)
            assert first.status_code == 200
            on_host_1 = [
                p for p in os.listdir("/proc") if p.isdigit() and _in_namespace(p, hosts[0])
            ]
            assert on_host_1
            for pid in map(int, on_host_1):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: _unreachable(replicas[0]), 10, "replica 1 gone")
            answered = survivor.statuses[200]
            wait_until(lambda: survivor.statuses[200] >= answered + 50, 30, "replica 2 going on")
        assert survivor.failures == [], survivor.failures[:5]
        assert set(survivor.versions) == {"2"}

        # Any answer, traced to the alert that made its version.
        answer = httpx.post(
            f"{replicas[1]}/predict", json={"application": shifted[0]}, timeout=30
        ).json()
        time.sleep(1)  # the prediction log's writer appends within 0.2 s
        traced = cli(tracking, "lineage", answer["request_id"], "--json", "--store", state)
        assert traced.exit_code == 0, traced.output
        chain = json.loads(traced.output)
        assert chain["prediction"]["version"] == "2"
        assert chain["run"]["trigger"] == retrain["alert_id"]
        assert chain["loop"]["alert"]["source"] == "monitor"
        assert chain["loop"]["alert"]["detail"]["window"].startswith("loans-v1-")

    print(f"takeover {takeover_s:.1f} s; promoted → both replicas on v2 {both_on_v2_s:.1f} s")
    assert takeover_s <= LEASE_TTL_S * 4 / 3 + 5


def _in_namespace(pid: str, host: NetHost) -> bool:
    """Whether process ``pid`` runs in ``host``'s network namespace."""
    try:
        inode = os.stat(f"/run/netns/{host.namespace}").st_ino
        return os.readlink(f"/proc/{pid}/ns/net") == f"net:[{inode}]"
    except OSError:
        return False


def _unreachable(base: str) -> bool:
    try:
        httpx.get(f"{base}/live", timeout=1)
    except httpx.HTTPError:
        return True
    return False
