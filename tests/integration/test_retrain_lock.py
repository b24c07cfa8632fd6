"""One retrain at a time, up to its recorded outcome: a retrain counts as running in the shared
store from the alert until the controller has followed the promoted version, so an alert that
comes in between (the old version's monitor still sees drift) does not retrain the old version a
second time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.loader import load
from gateway.loop import RetrainLoop
from gateway.metrics import GatewayMetrics
from gateway.store import Store
from tests.conftest import FAST_LOANS, train_ok
from tests.helpers import in_process_settings


def test_an_alert_during_the_swap_of_a_promoted_version_starts_no_retrain(
    store: str, loans_data: Path, tmp_path: Path
) -> None:
    train_ok(store, "loans", "--data", str(loans_data), *FAST_LOANS)
    settings = in_process_settings(
        store,
        state_dir=tmp_path / "state",
        retrain_data=str(loans_data),
        retrain_args="--param epochs=2 --min-improvement -1",  # always promoted
    )
    model = load(settings)
    metrics = GatewayMetrics()
    shared = Store(settings.shared_store)

    async def scenario() -> None:
        following, go_on = asyncio.Event(), asyncio.Event()
        swaps = 0

        async def follow() -> str:
            """The controller following the promoted version, held open until the test lets
            it finish."""
            nonlocal swaps
            swaps += 1
            following.set()
            await go_on.wait()
            return "v2"

        def finished() -> list[dict[str, Any]]:
            return [r for r in shared.retrains("loans") if r["result"]]

        loop = RetrainLoop(settings, metrics, shared, lambda: model, follow)
        first = await loop.alert("drift-loans-v1-first", "monitor", {})
        assert first["retrain"] == "started", first
        await asyncio.wait_for(following.wait(), 180)  # the retrain exited; v2 is promoted

        during = await loop.alert("drift-loans-v1-during", "monitor", {})
        assert during["accepted"] is False, during  # the monitor raises none meanwhile
        webhook = await loop.alert("group|f1|t0", "alertmanager", {})
        assert webhook["retrain"] == "busy", webhook

        go_on.set()
        while not finished():
            await asyncio.sleep(0.2)
        assert [r["result"] for r in finished()] == ["promoted"]

        after = await loop.alert("drift-loans-v1-after", "monitor", {})
        assert after["retrain"] == "started", after
        while len(finished()) < 2:
            await asyncio.sleep(0.2)
        assert swaps == 2
        await loop.stop()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 400))
    finally:
        shared.close()
