"""A prediction traced back: the answered object as the serving replica logged it in the shared
store, and the retrain and alert records of the loop that made its model version. The tables are
the gateway's (its migrations); this module only reads them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.errors import RegistryError
from trainers.sqlstore import Database, StoreError, embedded_url

DEFAULT_STATE_DIR = Path("gateway-state")


def default_store_url() -> str:
    """``$GATEWAY_STORE_URL``, else the embedded store of ``$GATEWAY_STATE_DIR``."""
    explicit = os.environ.get("GATEWAY_STORE_URL")
    if explicit:
        return explicit
    return embedded_url(Path(os.environ.get("GATEWAY_STATE_DIR", DEFAULT_STATE_DIR)))


def is_request_id(ref: str) -> bool:
    """Request ids are 32 hex digits (run ids look the same: the store decides)."""
    return len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)


@dataclass(frozen=True)
class Prediction:
    request_id: str
    ts: float
    model: str
    version: str
    input: dict[str, Any]
    output: dict[str, Any]
    label: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "ts": self.ts,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "output": self.output,
            "label": self.label,
        }


def find_prediction(url: str, request_id: str) -> Prediction | None:
    """The logged answer ``request_id``, or None when the store does not hold it (or there is
    no store at ``url``)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    db = Database(url)
    try:
        rows = db.query(
            "SELECT p.request_id, p.ts, p.model, p.version, p.input, p.output, f.label "
            "FROM predictions p LEFT JOIN feedback f ON f.request_id = p.request_id "
            "WHERE p.request_id = ?",
            (request_id,),
        )
    except StoreError as exc:
        raise RegistryError(f"cannot read the prediction log: {exc}") from exc
    finally:
        db.close()
    if not rows:
        return None
    rid, ts, model, version, inputs, output, label = rows[0]
    found = json.loads(label) if label is not None else None
    return Prediction(rid, float(ts), model, version, json.loads(inputs), json.loads(output), found)


def trigger_record(url: str, trigger: str) -> dict[str, Any] | None:
    """The retrain the loop started for ``trigger`` (a run's ``lineage.trigger``), with the
    alert that started it (its source and detail: the drift window, or Alertmanager's labels)."""
    db = Database(url)
    try:
        rows = db.query(
            "SELECT r.alert_id, r.alert_key, r.started, r.finished, r.result, r.detail, "
            "a.source, a.ts, a.detail FROM retrains r LEFT JOIN alerts a ON a.key = r.alert_key "
            "WHERE r.alert_id = ?",
            (trigger,),
        )
    except StoreError:
        return None  # a trigger from a store that is not this one (or a manual one)
    finally:
        db.close()
    if not rows:
        return None
    alert_id, key, started, finished, result, detail, source, at, alert = rows[0]
    return {
        "retrain": {
            "alert_id": alert_id,
            "started": started,
            "finished": finished,
            "result": result,
            "detail": detail,
        },
        "alert": None
        if source is None
        else {"key": key, "source": source, "ts": at, "detail": json.loads(alert)},
    }
