"""Versioned data snapshots: parquet files identified by the sha256 of their full content."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trainers.contract import Pipeline
from trainers.errors import DataError

_META_KEY = b"lineage_gateway"


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read for training: the frame and what identifies it."""

    frame: pd.DataFrame
    source: str
    sha256: str
    rows: int
    metadata: dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_snapshot(frame: pd.DataFrame, path: Path, metadata: dict[str, Any]) -> str:
    """Write ``frame`` with ``metadata`` in the parquet footer; return the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    footer = {**(table.schema.metadata or {}), _META_KEY: json.dumps(metadata, sort_keys=True)}
    pq.write_table(table.replace_schema_metadata(footer), path)
    return sha256_file(path)


def read_snapshot(path: Path, pipeline: Pipeline[Any, Any, Any]) -> Snapshot:
    """Read and validate a snapshot for ``pipeline``; every problem names the file and column."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet snapshot ({exc})") from exc
    raw = (table.schema.metadata or {}).get(_META_KEY)
    metadata = json.loads(raw) if raw else {}
    frame = pipeline.validate_frame(table.to_pandas(), str(path))
    if frame.empty:
        raise DataError(f"{path}: the snapshot has no rows")
    return Snapshot(frame, str(path.resolve()), sha256_file(path), len(frame), metadata)
