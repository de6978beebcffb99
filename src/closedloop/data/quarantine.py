"""The quarantine: the rows ingestion refused, with why, where they came from and their
original payload — never dropped silently."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.data.durable import write_durably

_QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("reason", pa.string()), ("payload", pa.string()),
    ("quarantined_at", pa.timestamp("us", tz="UTC"))])


class QuarantineStore:
    """Rows that failed validation, kept as Parquet under ``folder/<source>/``: the source, the
    file and row they came from (the line for CSV and JSON lines, the 1-based position for
    Parquet), the reason, and the original payload (JSON, or the raw text of
    a row that did not parse). Each batch's rejects are one file named by their content, so
    ingesting a file again does not quarantine its bad rows twice.

    >>> import tempfile
    >>> q = QuarantineStore(tempfile.mkdtemp())
    >>> bad = [{"file": "a.csv", "row": 3, "reason": "amount: not a float64", "payload": "{}"}]
    >>> q.write("txns", bad, now=0); q.write("txns", bad, now=5)
    >>> q.read("txns").num_rows
    1
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def write(self, source: str, rows: Sequence[dict[str, Any]], now: int) -> None:
        digest = hashlib.sha256(json.dumps(
            [[r["file"], r["row"], r["reason"], r["payload"]] for r in rows]).encode())
        path = self.folder / source / f"q-{digest.hexdigest()[:24]}.parquet"
        if path.exists():
            return
        table = pa.table({
            "source": [source] * len(rows), "file": [r["file"] for r in rows],
            "row": [r["row"] for r in rows], "reason": [r["reason"] for r in rows],
            "payload": [r["payload"] for r in rows],
            "quarantined_at": pa.array([now] * len(rows), pa.int64()).cast(
                _QUARANTINE_SCHEMA.field("quarantined_at").type)}, schema=_QUARANTINE_SCHEMA)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, table)

    def read(self, source: str | None = None) -> pa.Table:
        """The quarantined rows of one source (or all), oldest first."""
        folders = [self.folder / source] if source else sorted(
            p for p in self.folder.glob("*") if p.is_dir())
        parts = [pq.read_table(p) for folder in folders for p in sorted(folder.glob("q-*.parquet"))]
        if not parts:
            return _QUARANTINE_SCHEMA.empty_table()
        table = pa.concat_tables(parts)
        return table.sort_by([("quarantined_at", "ascending"), ("file", "ascending"),
                              ("row", "ascending")])

