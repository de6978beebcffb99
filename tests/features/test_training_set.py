"""Training sets through the project façade: order, count, defaults, transforms, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.errors import DataError, PointInTimeError, SchemaMismatch, UnknownFeatureError

T0 = datetime(2026, 2, 1, tzinfo=UTC)

DEFS = '''
import numpy as np
import closedloop as cl

user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="data/txns.parquet", timestamp="ts", arrival="arr",
                      schema={"user_id": str, "amount": float})
profile = cl.TableSource("profile", path="data/profile.csv", timestamp="ts",
                         schema={"user_id": str, "tier": str, "spend": float})
user_txn = cl.FeatureView("user_txn", entity=user, source=txns,
                          aggregations=[cl.Agg("amount", "sum", windows=["1h"]),
                                        cl.Agg("amount", "max", windows=["1d"], default=-1.0)])
user_profile = cl.FeatureView("user_profile", entity=user, source=profile,
                              features=["tier", "spend"], ttl="2d", defaults={"tier": "none"})

@cl.transform(inputs=["request.amount", "user_txn.amount_sum_1h"])
def share_of_hour(c):
    return c["request.amount"] / (c["request.amount"] + c["user_txn.amount_sum_1h"])
'''


def _ts(values: list[datetime]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _write_data(root: Path) -> None:
    pq.write_table(pa.table({
        "user_id": ["a", "a", "b", "a"],
        "ts": _ts([T0, T0 + timedelta(minutes=10), T0, T0 + timedelta(hours=5)]),
        "arr": _ts([T0, T0 + timedelta(minutes=11), T0 + timedelta(hours=2),
                    T0 + timedelta(hours=5)]),
        "amount": [10.0, 20.0, 5.0, 7.0]}), root / "data" / "txns.parquet")
    (root / "data" / "profile.csv").write_text(
        "user_id,ts,tier,spend\n"
        "a,2026-01-31T00:00:00Z,gold,100.5\n"
        "b,2026-01-25T00:00:00+00:00,silver,3\n")


@pytest.fixture
def project(make_project):  # type: ignore[no-untyped-def]
    p = make_project(DEFS)
    _write_data(p.root)
    return p


def test_rows_keep_order_count_and_their_own_columns(project) -> None:  # type: ignore[no-untyped-def]
    rows = pa.table({
        "user_id": ["b", "a", "zz", "a", "a"],
        "at": _ts([T0 + timedelta(hours=1), T0 + timedelta(minutes=10, seconds=30),
                   T0, T0 + timedelta(minutes=11), T0 + timedelta(minutes=11)]),
        "amount": [1.0, 2.0, 3.0, 4.0, 5.0], "label": [1, 0, 0, 1, 0]})
    out = project.features.training_set(
        rows, ["user_txn.amount_sum_1h", "user_txn.amount_max_1d", "user_profile.tier",
               "user_profile.spend", "share_of_hour"])
    assert out.num_rows == 5
    assert out.column_names[:4] == ["user_id", "at", "amount", "label"]
    assert out["label"].to_pylist() == [1, 0, 0, 1, 0]
    # b's event arrives at 02:00: unseen at 01:00. a's 00:10 event arrives at 00:11.
    assert out["user_txn.amount_sum_1h"].to_pylist() == [0.0, 10.0, 0.0, 30.0, 30.0]
    assert out["user_txn.amount_max_1d"].to_pylist() == [-1.0, 10.0, -1.0, 20.0, 20.0]
    # b's profile is 7 days old: absent under a 2-day TTL, so the declared default.
    assert out["user_profile.tier"].to_pylist() == ["none", "gold", "none", "gold", "gold"]
    assert out["user_profile.spend"].to_pylist() == [None, 100.5, None, 100.5, 100.5]
    np.testing.assert_allclose(out["share_of_hour"].to_numpy(),
                               [1.0, 2 / 12, 1.0, 4 / 34, 5 / 35])


def test_pandas_rows_are_accepted(project) -> None:  # type: ignore[no-untyped-def]
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"user_id": ["a"], "t": [pd.Timestamp(T0 + timedelta(hours=1))]})
    out = project.features.training_set(frame, ["user_txn.amount_sum_1h"])
    assert out["user_txn.amount_sum_1h"].to_pylist() == [30.0]


def test_backfill_adds_a_new_feature_to_old_rows(project) -> None:  # type: ignore[no-untyped-def]
    rows = pa.table({"user_id": ["a", "a"], "t": _ts([T0 + timedelta(minutes=30),
                                                      T0 + timedelta(hours=6)])})
    old = project.features.training_set(rows, ["user_txn.amount_sum_1h"])
    new = project.features.backfill(old, ["user_txn.amount_max_1d"])
    assert new.column_names == [*old.column_names, "user_txn.amount_max_1d"]
    assert new["user_txn.amount_max_1d"].to_pylist() == [20.0, 20.0]
    assert new["user_txn.amount_sum_1h"].to_pylist() == old["user_txn.amount_sum_1h"].to_pylist()


@pytest.mark.parametrize(("rows", "features", "error", "match"), [
    (pa.table({"user_id": pa.array([], pa.string()), "t": _ts([])}),
     ["user_txn.amount_sum_1h"], DataError, "empty"),
    (pa.table({"user_id": ["a"], "t": pa.array([T0.replace(tzinfo=None)], pa.timestamp("us"))}),
     ["user_txn.amount_sum_1h"], PointInTimeError, "naive"),
    (pa.table({"user_id": ["a"], "t": _ts([None])}), ["user_txn.amount_sum_1h"],
     PointInTimeError, "null"),
    (pa.table({"uid": ["a"], "t": _ts([T0])}), ["user_txn.amount_sum_1h"], SchemaMismatch,
     "user_id"),
    (pa.table({"user_id": [1], "t": _ts([T0])}), ["user_txn.amount_sum_1h"], SchemaMismatch,
     "int64"),
    (pa.table({"user_id": ["a"]}), ["user_txn.amount_sum_1h"], SchemaMismatch, "timestamp"),
    (pa.table({"user_id": ["a"], "t": _ts([T0])}), ["user_txn.amount_sum_2h"],
     UnknownFeatureError, "amount_sum_2h"),
    (pa.table({"user_id": ["a"], "t": _ts([T0])}), ["share_of_hour"], SchemaMismatch,
     "request.amount"),
])
def test_bad_entity_rows(project, rows, features, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match) as info:
        project.features.training_set(rows, features)
    assert info.value.fix


def _defs_with(source_line: str) -> str:
    return ('import closedloop as cl\nuser = cl.Entity("user", key="user_id")\n'
            f"src = {source_line}\n"
            'v = cl.FeatureView("v", entity=user, source=src, features=["x"])\n')


@pytest.mark.parametrize(("table", "source", "error", "match"), [
    (pa.table({"user_id": ["a"], "when": _ts([T0]), "x": [1.0]}),
     'cl.TableSource("s", path="data/s.parquet", timestamp="ts", schema={"x": float})',
     SchemaMismatch, "no timestamp column 'ts'"),
    (pa.table({"user_id": ["a"], "ts": pa.array([T0.replace(tzinfo=None)], pa.timestamp("us")),
               "x": [1.0]}),
     'cl.TableSource("s", path="data/s.parquet", timestamp="ts", schema={"x": float})',
     PointInTimeError, "naive"),
    (pa.table({"user_id": ["a"], "ts": _ts([T0]), "x": ["text"]}),
     'cl.TableSource("s", path="data/s.parquet", timestamp="ts", schema={"x": float})',
     SchemaMismatch, "declares float64"),
    (pa.table({"user_id": [7], "ts": _ts([T0]), "x": [1.0]}),
     'cl.TableSource("s", path="data/s.parquet", timestamp="ts", schema={"x": float})',
     SchemaMismatch, "entity key 'user_id' is int64"),
    (None, 'cl.TableSource("s", path="data/s.parquet", timestamp="ts", schema={"x": float})',
     DataError, "no data at"),
])
def test_bad_sources(make_project, table, source, error, match) -> None:  # type: ignore[no-untyped-def]
    p = make_project(_defs_with(source))
    if table is not None:
        pq.write_table(table, p.root / "data" / "s.parquet")
    rows = pa.table({"user_id": ["a"], "t": _ts([T0])})
    with pytest.raises(error, match=match):
        p.features.training_set(rows, ["v.x"])


def test_folder_sources_read_every_file(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(_defs_with(
        'cl.TableSource("s", path="data/parts", timestamp="ts", schema={"x": float})'))
    (p.root / "data" / "parts" / "day=1").mkdir(parents=True)
    for i in range(3):
        pq.write_table(pa.table({"user_id": ["a"], "ts": _ts([T0 + timedelta(days=i)]),
                                 "x": [float(i)]}),
                       p.root / "data" / "parts" / "day=1" / f"{i}.parquet")
    rows = pa.table({"user_id": ["a", "a"], "t": _ts([T0 + timedelta(days=1, hours=1),
                                                      T0 + timedelta(days=5)])})
    assert p.features.training_set(rows, ["v.x"])["v.x"].to_pylist() == [1.0, 2.0]


def test_window_sums_are_the_same_bits_on_one_thread_or_two(tmp_path: Path) -> None:
    """Float sums are exact (scaled 128-bit integers), so the threads' order of addition
    cannot change a bit, and a rebuilt training set hashes the same."""
    from closedloop.backends.duckdb import DuckDBEngine
    from closedloop.features.catalog import Catalog
    from closedloop.features.service import FeatureService
    from closedloop.training.lineage import table_hash

    rng = np.random.default_rng(0)
    n = 200_000
    stamp = pa.timestamp("us", tz="UTC")
    t0 = 1_767_225_600_000_000
    ts = t0 + rng.integers(0, 30 * 86_400_000_000, size=n)
    pq.write_table(pa.table({
        "user_id": np.char.add("u", rng.integers(0, 500, n).astype(str)),
        "amount": rng.lognormal(3, 1.5, n) * rng.choice([-1.0, 1.0], n),
        "ts": pa.array(ts).cast(stamp)}), tmp_path / "ev.parquet")
    user = cl.Entity("user", key="user_id")
    src = cl.EventSource("ev", path=str(tmp_path / "ev.parquet"), timestamp="ts",
                         schema={"user_id": str, "amount": float})
    view = cl.FeatureView("w", entity=user, source=src, aggregations=[
        cl.Agg("amount", fn, windows=["1h", "1d", "30d"]) for fn in ("sum", "mean", "stddev")])
    rows = pa.table({"user_id": np.char.add("u", rng.integers(0, 500, 50_000).astype(str)),
                     "t": pa.array(t0 + rng.integers(0, 31 * 86_400_000_000, 50_000)).cast(
                         stamp)})
    refs = [f"w.{f}" for f in view.feature_names]
    hashes = set()
    for threads in (1, 2, 2):
        engine = DuckDBEngine(threads=threads)
        got = FeatureService(Catalog([view]), engine).training_set(rows, refs)
        hashes.add(table_hash(got))
        engine.close()
    assert len(hashes) == 1
