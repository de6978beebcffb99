"""Workloads `online`, `online-batch` and `materialize`, on the `pit` data (two snapshot views of
five floats each, one with a 2-day TTL), served as of the data's last day.

Systems: closedloop-sqlite and closedloop-redis (in-process ``project.features.online``), feast
(Feast's in-process ``get_online_features`` on its SQLite online store), and the floor (a raw
SQLite primary-key lookup of a row that already holds the ten values).
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset  # imported up front (it imports pandas) so no system pays it in its timing
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks import pit
from benchmarks.data import FEATURES_A, FEATURES_B, pit_data

OUTPUTS = FEATURES_A + FEATURES_B
DATA = pit_data
AT = datetime(2026, 4, 1, tzinfo=UTC)            # the data runs to 2026-03-31
REFS = [f"fa.{c}" for c in FEATURES_A] + [f"fb.{c}" for c in FEATURES_B]
WARMUP, READS, KEPT = 1_000, 10_000, 2_000
BATCH, BATCHES = 100, 300


def _users(data: Path, n: int, seed: int = 5) -> list[str]:
    count = pq.read_metadata(data / "a.parquet").num_rows  # ~10 rows per user per 9 days
    n_users = max(10, round(count / 100))
    rng = np.random.default_rng(seed)
    return [f"u{i}" for i in rng.integers(0, n_users, size=n)]


def _result(users: list[str], rows: list[dict[str, Any]], figures: dict[str, float]
            ) -> tuple[pa.Table, dict[str, float]]:
    table = pa.table({"label_id": np.arange(len(rows), dtype=np.int64),
                      **{c: pa.array([r.get(c) for r in rows], pa.float64()) for c in OUTPUTS}})
    return table, figures


def _timed_reads(read: Callable[[list[str]], list[dict[str, Any]]], users: list[str],
                 batch: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Warm up, then time each call; keep the first KEPT rows for the mismatch count."""
    n_calls = BATCHES if batch > 1 else READS
    for i in range(WARMUP // batch):
        read(users[i * batch:(i + 1) * batch])
    kept: list[dict[str, Any]] = []
    times = []
    for i in range(n_calls):
        chunk = users[(i * batch) % len(users):(i * batch) % len(users) + batch]
        start = time.perf_counter()
        rows = read(chunk)
        times.append(time.perf_counter() - start)
        if len(kept) < KEPT:
            kept.extend(rows)
    times.sort()
    return kept[:KEPT], {"p50_ms": times[len(times) // 2] * 1e3,
                         "p99_ms": times[int(len(times) * 0.99)] * 1e3}


def _project(data: Path, store: str) -> cl.Project:
    root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    cl.init_project(root, definitions=pit.DEFINITIONS.format(
        a=str(data / "a.parquet"), b=str(data / "b.parquet"), fa=FEATURES_A, fb=FEATURES_B))
    if store == "redis":
        (root / "closedloop.toml").write_text(
            f'[online]\nstore = "redis"\nprefix = "clbench:{uuid.uuid4().hex}:"\n')
    return cl.Project(root)


def _closedloop(store: str, batch: int) -> Callable[[Path], Any]:
    def setup(data: Path) -> Callable[[], Any]:
        project = _project(data, store)
        project.features.materialize(at=AT)
        users = _users(data, WARMUP + READS * max(1, batch // 10) + BATCH)

        def read(chunk: list[str]) -> list[dict[str, Any]]:
            got = project.features.online([{"user_id": u} for u in chunk], REFS, at=AT)
            assert isinstance(got, list)
            return [{c: v.values[r] for c, r in zip(OUTPUTS, REFS, strict=True)} for v in got]

        def read_one(chunk: list[str]) -> list[dict[str, Any]]:
            v = project.features.online({"user_id": chunk[0]}, REFS, at=AT)
            assert not isinstance(v, list)
            return [{c: v.values[r] for c, r in zip(OUTPUTS, REFS, strict=True)}]

        def job() -> Any:
            try:
                kept, figures = _timed_reads(read_one if batch == 1 else read, users, batch)
                return _result(users, kept, figures)
            finally:
                if store == "redis":
                    for view in project.catalog.views.values():
                        project.online_store.clear(f"{view.name}@{view.version}")
                    project.online_store.clear("__closedloop")
                project.close()
        return job
    return setup


def _floor_db(data: Path) -> sqlite3.Connection:
    """The ten values of every user as of AT, computed by DuckDB, in one SQLite row each."""
    at_us = int(AT.timestamp()) * 1_000_000
    con = duckdb.connect()
    table = con.sql(f"""
        WITH a AS (SELECT * FROM read_parquet('{data / "a.parquet"}')
                   WHERE epoch_us(event_timestamp) <= {at_us}
                   QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC,
                       (created IS NOT NULL) DESC, created DESC,
                       {", ".join(f"({c} IS NOT NULL) DESC, {c} DESC" for c in FEATURES_A)}) = 1),
             b AS (SELECT * FROM read_parquet('{data / "b.parquet"}')
                   WHERE epoch_us(event_timestamp) <= {at_us}
                   QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC,
                       {", ".join(f"({c} IS NOT NULL) DESC, {c} DESC" for c in FEATURES_B)}) = 1)
        SELECT coalesce(a.user_id, b.user_id) AS user_id,
               {", ".join(f"a.{c}" for c in FEATURES_A)},
               {", ".join(f"CASE WHEN {at_us} - epoch_us(b.event_timestamp) <= {pit.TTL_B} "
                          f"THEN b.{c} END AS {c}" for c in FEATURES_B)}
        FROM a FULL OUTER JOIN b ON a.user_id = b.user_id""").fetchall()
    path = Path(tempfile.mkdtemp()) / "floor.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"CREATE TABLE f (user_id TEXT PRIMARY KEY, {', '.join(OUTPUTS)}) WITHOUT ROWID")
    db.execute("BEGIN")
    db.executemany(f"INSERT INTO f VALUES ({', '.join(['?'] * (len(OUTPUTS) + 1))})", table)
    db.execute("COMMIT")
    return db


def _floor(batch: int) -> Callable[[Path], Any]:
    def setup(data: Path) -> Callable[[], Any]:
        db = _floor_db(data)
        users = _users(data, WARMUP + READS * max(1, batch // 10) + BATCH)
        one = f"SELECT {', '.join(OUTPUTS)} FROM f WHERE user_id = ?"
        many = f"SELECT user_id, {', '.join(OUTPUTS)} FROM f WHERE user_id IN " \
               f"({', '.join(['?'] * batch)})"

        def read(chunk: list[str]) -> list[dict[str, Any]]:
            if batch == 1:
                row = db.execute(one, chunk).fetchone()
                return [dict(zip(OUTPUTS, row, strict=True)) if row else {}]
            found = {r[0]: r[1:] for r in db.execute(many, chunk).fetchall()}
            return [dict(zip(OUTPUTS, found[u], strict=True)) if u in found else {}
                    for u in chunk]

        def job() -> Any:
            kept, figures = _timed_reads(read, users, batch)
            return _result(users, kept, figures)
        return job
    return setup


def _feast(batch: int) -> Callable[[Path], Any]:
    def setup(data: Path) -> Callable[[], Any]:
        store = _feast_store(data)
        store.materialize(start_date=AT - timedelta(days=120), end_date=AT)
        users = _users(data, WARMUP + READS * max(1, batch // 10) + BATCH)
        refs = [f"fa:{c}" for c in FEATURES_A] + [f"fb:{c}" for c in FEATURES_B]

        def read(chunk: list[str]) -> list[dict[str, Any]]:
            got = store.get_online_features(features=refs,
                                            entity_rows=[{"user_id": u} for u in chunk]).to_dict()
            return [{c: got[c][i] for c in OUTPUTS} for i in range(len(chunk))]

        def job() -> Any:
            kept, figures = _timed_reads(read, users, batch)
            return _result(users, kept, figures)
        return job
    return setup


def _feast_store(data: Path) -> Any:
    return pit.feast_store(data)


class _Online:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite", 1),
               "closedloop-redis": _closedloop("redis", 1), "feast": _feast(1), "floor": _floor(1)}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = "feast"
    METRIC = "p50_ms"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(pit_data)


class _OnlineBatch(_Online):
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite", BATCH),
               "closedloop-redis": _closedloop("redis", BATCH), "feast": _feast(BATCH),
               "floor": _floor(BATCH)}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)


# -- materialize ------------------------------------------------------------------------------
def _materialize_closedloop(data: Path) -> Callable[[], Any]:
    project = _project(data, "sqlite")
    users = _users(data, KEPT)
    rows = pq.read_metadata(data / "a.parquet").num_rows + \
        pq.read_metadata(data / "b.parquet").num_rows

    def job() -> Any:
        start = time.perf_counter()
        project.features.materialize(at=AT, incremental=False)
        seconds = time.perf_counter() - start
        got = project.features.online([{"user_id": u} for u in users], REFS, at=AT)
        assert isinstance(got, list)
        kept = [{c: v.values[r] for c, r in zip(OUTPUTS, REFS, strict=True)} for v in got]
        project.close()
        return _result(users, kept, {"per_s": rows / seconds, "materialize_s": seconds})
    return job


def _materialize_feast(data: Path) -> Callable[[], Any]:
    store = _feast_store(data)
    users = _users(data, KEPT)
    rows = pq.read_metadata(data / "a.parquet").num_rows + \
        pq.read_metadata(data / "b.parquet").num_rows
    refs = [f"fa:{c}" for c in FEATURES_A] + [f"fb:{c}" for c in FEATURES_B]

    def job() -> Any:
        start = time.perf_counter()
        store.materialize(start_date=AT - timedelta(days=120), end_date=AT)
        seconds = time.perf_counter() - start
        got = store.get_online_features(features=refs,
                                        entity_rows=[{"user_id": u} for u in users]).to_dict()
        kept = [{c: got[c][i] for c in OUTPUTS} for i in range(len(users))]
        return _result(users, kept, {"per_s": rows / seconds, "materialize_s": seconds})
    return job


def _materialize_floor(data: Path) -> Callable[[], Any]:
    users = _users(data, KEPT)
    rows = pq.read_metadata(data / "a.parquet").num_rows + \
        pq.read_metadata(data / "b.parquet").num_rows

    def job() -> Any:
        start = time.perf_counter()
        db = _floor_db(data)
        seconds = time.perf_counter() - start
        found = {r[0]: r[1:] for r in db.execute(f"SELECT user_id, {', '.join(OUTPUTS)} FROM f")}
        kept = [dict(zip(OUTPUTS, found[u], strict=True)) if u in found else {} for u in users]
        return _result(users, kept, {"per_s": rows / seconds, "materialize_s": seconds})
    return job


class _Materialize:
    SYSTEMS: ClassVar[dict[str, Any]] = {
        "closedloop-sqlite": _materialize_closedloop, "feast": _materialize_feast,
        "floor": _materialize_floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = "feast"
    METRIC = "materialize_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(pit_data)


online = _Online
online_batch = _OnlineBatch
materialize = _Materialize
