"""Workload `push`: events pushed into the online aggregates (sum/count/mean/max over 1h, 1d,
30d of the amount) on one core, after materializing the `windows` data as of its end.

Figures: ``per_s`` (events per second sustained over the whole stream) and ``p99_ms`` (delay
from a batch's push to an online read that sees it). The floor is the raw cost of making the
same events durable: an ``executemany`` INSERT into SQLite per batch, committed. Mismatches
compare the served 30-day counts after the stream with a hand-written DuckDB count.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset  # imported up front (it imports pandas) so no system pays it in its timing
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks import windows
from benchmarks.data import windows_data

START = datetime(2026, 4, 1, tzinfo=UTC)          # the fraud world ends 2026-04-01
EVENTS, BATCH, KEPT = 100_000, 500, 2_000
OUTPUTS = ["amount_count_30d"]


def _stream(data: Path) -> pa.Table:
    users = pq.read_table(data / "labels.parquet", columns=["user_id"])["user_id"]
    names = np.unique(users.to_numpy(zero_copy_only=False))
    rng = np.random.default_rng(3)
    start = int(START.timestamp()) * 1_000_000
    ts = start + np.arange(EVENTS, dtype=np.int64) * 2_000          # 500 events per second
    arrival = ts + 1_000_000
    stamp = pa.timestamp("us", tz="UTC")
    return pa.table({"txn_id": [f"p{i}" for i in range(EVENTS)],
                     "user_id": names[rng.integers(0, names.size, size=EVENTS)],
                     "amount": np.round(rng.lognormal(3.3, 0.6, size=EVENTS), 2),
                     "event_time": pa.array(ts).cast(stamp),
                     "ingested_at": pa.array(arrival).cast(stamp)})


def _end(stream: pa.Table) -> datetime:
    last = stream["ingested_at"][-1].as_py()
    assert isinstance(last, datetime)
    return last


def _closedloop(store: str) -> Any:
    def setup(data: Path) -> Any:
        root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
        cl.init_project(root, definitions=windows.DEFINITIONS.format(
            path=str(data / "events.parquet"), windows=list(windows.WINDOWS), fns=windows.FNS))
        config = "[offline]\nthreads = 1\n"
        if store == "redis":
            config += f'[online]\nstore = "redis"\nprefix = "clbench:{uuid.uuid4().hex}:"\n'
        (root / "closedloop.toml").write_text(config)
        project = cl.Project(root)
        project.features.materialize(at=START)
        stream = _stream(data)
        users = sorted(set(stream["user_id"].to_pylist()))[:KEPT]

        def job() -> Any:
            delays = []
            start = time.perf_counter()
            for i in range(0, EVENTS, BATCH):
                batch = stream.slice(i, BATCH)
                at = batch["ingested_at"][-1].as_py()
                user = batch["user_id"][-1].as_py()
                before = time.perf_counter()
                project.features.push("ev", batch, at=at)
                project.features.online({"user_id": user}, ["w.amount_count_1h"], at=at)
                delays.append(time.perf_counter() - before)
            seconds = time.perf_counter() - start
            end = _end(stream)
            got = project.features.online([{"user_id": u} for u in users],
                                          ["w.amount_count_30d"], at=end)
            assert isinstance(got, list)
            table = pa.table({"label_id": np.arange(len(users), dtype=np.int64),
                              "amount_count_30d": [v.values["w.amount_count_30d"] for v in got]})
            delays.sort()
            if store == "redis":
                for view in project.catalog.views.values():
                    project.online_store.clear(f"{view.name}@{view.version}")
                project.online_store.clear("__closedloop")
            project.close()
            return table, {"per_s": EVENTS / seconds,
                           "p99_ms": delays[int(len(delays) * 0.99)] * 1e3}
        return job
    return setup


def _floor(data: Path) -> Any:
    stream = _stream(data)
    users = sorted(set(stream["user_id"].to_pylist()))[:KEPT]
    db = sqlite3.connect(Path(tempfile.mkdtemp()) / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE ev (txn_id TEXT PRIMARY KEY, user_id TEXT, amount REAL, "
               "event_time INTEGER, ingested_at INTEGER)")
    rows = list(zip(stream["txn_id"].to_pylist(), stream["user_id"].to_pylist(),
                    stream["amount"].to_pylist(),
                    pc.cast(stream["event_time"], pa.int64()).to_pylist(),
                    pc.cast(stream["ingested_at"], pa.int64()).to_pylist(), strict=True))

    def job() -> Any:
        delays = []
        start = time.perf_counter()
        for i in range(0, EVENTS, BATCH):
            before = time.perf_counter()
            db.execute("BEGIN")
            db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?, ?)", rows[i:i + BATCH])
            db.execute("COMMIT")
            db.execute("SELECT count(*) FROM ev WHERE user_id = ?", (rows[i][1],)).fetchall()
            delays.append(time.perf_counter() - before)
        seconds = time.perf_counter() - start
        delays.sort()
        # What the served 30-day counts must be at the end: a hand-written DuckDB count over
        # what reached the online store — the base rows visible when it was materialized at
        # START (rows arriving later were neither materialized nor pushed), and the stream.
        end = int(_end(stream).timestamp() * 1_000_000)
        start_us = int(START.timestamp()) * 1_000_000
        start_30d = (end // 86_400_000_000) * 86_400_000_000 - 30 * 86_400_000_000
        con = duckdb.connect()
        con.register("pushed", stream)
        counts = dict(con.sql(f"""
            SELECT user_id, count(amount) FROM (
                SELECT user_id, amount, event_time, ingested_at
                FROM read_parquet('{data / "events.parquet"}')
                WHERE greatest(epoch_us(event_time), epoch_us(ingested_at)) <= {start_us}
                UNION ALL SELECT user_id, amount, event_time, ingested_at FROM pushed)
            WHERE epoch_us(event_time) >= {start_30d}
              AND greatest(epoch_us(event_time), epoch_us(ingested_at)) <= {end}
            GROUP BY user_id""").fetchall())
        table = pa.table({"label_id": np.arange(len(users), dtype=np.int64),
                          "amount_count_30d": [counts.get(u, 0) for u in users]})
        return table, {"per_s": EVENTS / seconds,
                       "p99_ms": delays[int(len(delays) * 0.99)] * 1e3}
    return job


class _Push:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite"),
                                         "closedloop-redis": _closedloop("redis"),
                                         "floor": _floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = None
    METRIC = "p99_ms"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(windows_data)


push = _Push
