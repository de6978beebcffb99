"""Workload `ingest`: a 5M-row Parquet file ingested into an event source that already holds
5M rows, deduplicated by the declared event id (10% of the file's ids are held already).

``closedloop`` runs ``project.data.ingest``: read, validate against the declared schema, stamp
the arrival, deduplicate within the file and against the store, write one durable part. The
floor is DuckDB's own raw ``INSERT INTO events SELECT * FROM read_parquet(file)`` into a table
already holding the 5M rows — no validation, no dedup, nothing made durable beyond DuckDB's
own table. ``ingest_s`` is the ingest's wall time, ``per_s`` the file's rows per second of
it; the output both compare is the number of distinct ids held afterwards (counted after the
timed part).
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks.data import ingest_data

OUTPUTS = ["ids"]
DEFINITIONS = '''import closedloop as cl

events = cl.EventSource("events", path="landing/events", timestamp="event_time",
                        arrival="ingested_at", id="txn_id",
                        schema={{"txn_id": str, "user_id": str, "amount": float,
                                 "country": str}})
'''


def _rows(data: Path) -> int:
    return int(pq.ParquetFile(data / "new.parquet").metadata.num_rows)


def _closedloop(data: Path) -> Any:
    root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    cl.init_project(root, definitions=DEFINITIONS.format())
    (root / "closedloop.toml").write_text("[offline]\nthreads = 2\n")
    project = cl.Project(root)
    project.data.ingest("events", data / "held.parquet",
                        at=datetime(2026, 4, 1, tzinfo=UTC))

    def job() -> Any:
        import time

        start = time.perf_counter()
        project.data.ingest("events", data / "new.parquet",
                            at=datetime(2026, 4, 2, tzinfo=UTC))
        seconds = time.perf_counter() - start
        ids = project.engine._query(               # counted outside the figure
            "SELECT count(DISTINCT txn_id) AS ids FROM "
            f"{project.engine._scan(project.data.source('events'))}")
        project.close()
        return (pa.table({"label_id": [0], "ids": ids["ids"]}),
                {"ingest_s": seconds, "per_s": _rows(data) / seconds})
    return job


def _floor(data: Path) -> Any:
    con = duckdb.connect(str(Path(tempfile.mkdtemp(prefix="cl-bench-")) / "floor.duckdb"),
                         config={"threads": 2})
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet('{data / 'held.parquet'}')")

    def job() -> Any:
        import time

        start = time.perf_counter()
        con.execute(f"INSERT INTO events SELECT * FROM read_parquet('{data / 'new.parquet'}')")
        con.execute("CHECKPOINT")
        seconds = time.perf_counter() - start
        ids = con.sql("SELECT count(DISTINCT txn_id) AS ids FROM events").to_arrow_table()
        con.close()
        return pa.table({"label_id": [0], "ids": ids["ids"]}), {"ingest_s": seconds,
                                                         "per_s": _rows(data) / seconds}
    return job


class _Ingest:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop": _closedloop, "floor": _floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = None
    METRIC = "ingest_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(ingest_data)


ingest = _Ingest
