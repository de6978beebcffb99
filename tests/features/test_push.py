"""Push and late data through the project: pushed events are durable (a fresh process trains on
them) and served at once; a row arriving after its window was materialized still lands on the
next incremental run (Feast's incremental materialization skips it); bad pushes are refused
whole, with nothing appended."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.errors import PointInTimeError, SchemaMismatch, UnknownFeatureError
from tests.features.test_online import FEATURES, T0

STAMP = pa.timestamp("us", tz="UTC")


def _rows(user: str, amount: float, ts: object, arr: object | None = None) -> pa.Table:
    cols = {"user_id": [user], "ts": pa.array([ts], STAMP), "amount": [amount]}
    if arr is not None:
        cols["arr"] = pa.array([arr], STAMP)
    return pa.table(cols)


def test_pushed_events_are_served_at_once_and_trained_on_after_a_restart(online_project) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(days=1)
    online_project.features.materialize(at=at)
    before = online_project.features.online({"user_id": "u3", "amount": 1.0}, FEATURES, at=at)
    now = at + timedelta(minutes=1)
    report = online_project.features.push("txns", _rows("u3", 1000.0, now), at=now)
    assert (report.rows, report.entities) == (1, 1)
    after = online_project.features.online({"user_id": "u3", "amount": 1.0}, FEATURES, at=now)
    assert after.values["user_txn.amount_max_1d"] == 1000.0
    assert after.values["last_txn.amount"] == 1000.0
    assert after.values["user_txn.amount_sum_1h"] == before.values["user_txn.amount_sum_1h"] \
        + 1000.0
    root = online_project.root
    online_project.close()
    with cl.Project(root) as fresh:          # the event log is on disk, not in memory
        rows = pa.table({"user_id": ["u3"], "t": pa.array([now], STAMP)})
        train = fresh.features.training_set(rows, ["user_txn.amount_max_1d", "last_txn.amount"])
        assert train["user_txn.amount_max_1d"].to_pylist() == [1000.0]
        assert train["last_txn.amount"].to_pylist() == [1000.0]


def test_a_late_row_lands_on_the_next_incremental_materialization(online_project) -> None:  # type: ignore[no-untyped-def]
    t1 = T0 + timedelta(hours=6)
    online_project.features.materialize(at=t1)
    old = online_project.features.online({"user_id": "u5"}, ["user_txn.amount_max_1d"], at=t1)
    # A row whose event time (t1 - 2h) is long before the run at t1, arriving after it.
    late = pa.table({"user_id": ["u5"], "ts": pa.array([t1 - timedelta(hours=2)], STAMP),
                     "arr": pa.array([t1 + timedelta(minutes=30)], STAMP), "amount": [777.0]})
    path = Path(online_project.root) / "data" / "txns.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(path), late]), path)
    t2 = t1 + timedelta(hours=1)
    reports = online_project.features.materialize(at=t2)
    redone = {r.view: r.entities for r in reports}["user_txn@1"]
    assert 0 < redone < 50, redone          # incremental: not every entity is redone
    new = online_project.features.online({"user_id": "u5"}, ["user_txn.amount_max_1d"], at=t2)
    assert old.values["user_txn.amount_max_1d"] < 777.0
    assert new.values["user_txn.amount_max_1d"] == 777.0


def test_bad_pushes_are_refused_whole(online_project) -> None:  # type: ignore[no-untyped-def]
    log = Path(online_project.root) / ".closedloop" / "log"
    now = T0 + timedelta(days=1)
    with pytest.raises(UnknownFeatureError, match="nope"):
        online_project.features.push("nope", _rows("u1", 1.0, now))
    with pytest.raises(SchemaMismatch, match="amount"):
        online_project.features.push("txns", _rows("u1", 1.0, now).drop_columns(["amount"]))
    naive = pa.table({"user_id": ["u1"], "ts": pa.array([now.replace(tzinfo=None)],
                                                        pa.timestamp("us")), "amount": [1.0]})
    with pytest.raises(PointInTimeError, match="ts"):
        online_project.features.push("txns", naive)
    wrong = pa.table({"user_id": ["u1"], "ts": pa.array([now], STAMP), "amount": ["lots"]})
    with pytest.raises(SchemaMismatch, match="amount"):
        online_project.features.push("txns", wrong)
    assert not list(log.rglob("*.parquet")), "a refused push must append nothing"


def test_rows_not_yet_visible_are_served_from_their_time_on(online_project) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(days=1)
    online_project.features.materialize(at=at)
    now = at + timedelta(minutes=1)
    refs = ["user_txn.amount_max_1d", "user_txn.amount_sum_1h", "last_txn.amount"]
    early = pa.table({"user_id": ["u4", "u4", "u9"],
                      "ts": pa.array([now, now + timedelta(minutes=10),        # clock skew
                                      now + timedelta(minutes=3)], STAMP),
                      "arr": pa.array([now + timedelta(minutes=5), now, now], STAMP),
                      "amount": [900.0, 950.0, 5.0]})
    report = online_project.features.push("txns", early, at=now)
    assert (report.rows, report.pending) == (3, 3)
    for minutes in (1, 4, 6, 12, 90):            # before, between and after their times
        t = at + timedelta(minutes=minutes)
        rows = pa.table({"user_id": ["u4", "u9"], "t": pa.array([t, t], STAMP)})
        offline = online_project.features.training_set(rows, refs)
        served = online_project.features.online([{"user_id": "u4"}, {"user_id": "u9"}], refs,
                                                at=t)
        for i, vector in enumerate(served):
            assert vector.values == {r: offline[r][i].as_py() for r in refs}, (minutes, i)
    late = at + timedelta(minutes=12)
    served = online_project.features.online({"user_id": "u4"}, refs, at=late)
    assert served.values["user_txn.amount_max_1d"] == 950.0
    # A later push folds the rows that have become visible; the rest keep waiting.
    online_project.features.push("txns", _rows("u4", 1.0, late), at=late)
    served = online_project.features.online({"user_id": "u4"}, refs, at=late)
    assert served.values["last_txn.amount"] == 1.0
    assert served.values["user_txn.amount_sum_1h"] == 900.0 + 950.0 + 1.0


def test_a_materialization_keeps_rows_still_pending(online_project) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(days=1)
    online_project.features.materialize(at=at)
    ahead = at + timedelta(minutes=30)
    online_project.features.push("txns", _rows("u6", 4242.0, ahead, arr=at), at=at)
    online_project.features.materialize(at=at + timedelta(minutes=10), incremental=False)
    served = online_project.features.online({"user_id": "u6"}, ["user_txn.amount_max_1d"],
                                            at=ahead)
    assert served.values["user_txn.amount_max_1d"] == 4242.0


def test_materialization_compacts_what_pushes_left(online_project) -> None:  # type: ignore[no-untyped-def]
    log = Path(online_project.root) / ".closedloop" / "log" / "txns"
    now = T0 + timedelta(days=1)
    for i in range(5):
        online_project.features.push("txns", _rows("u7", 100.0 + i, now), at=now)
    assert len(list(log.glob("part-*.parquet"))) == 5
    reports = online_project.features.materialize(at=now)
    assert {r.view for r in reports} == {"user_txn@1", "last_txn@1"}
    assert online_project.features.compact() == {"txns": 0}      # already merged
    served = online_project.features.online({"user_id": "u7"}, ["user_txn.amount_max_1d"],
                                            at=now)
    assert served.values["user_txn.amount_max_1d"] == 104.0
    rows = pa.table({"user_id": ["u7"], "t": pa.array([now], STAMP)})
    train = online_project.features.training_set(rows, ["user_txn.amount_max_1d"])
    assert train["user_txn.amount_max_1d"].to_pylist() == [104.0]
    with pytest.raises(UnknownFeatureError, match="nope"):
        online_project.features.compact(["nope"])


def test_a_long_stream_compacts_its_log_in_the_background(online_project) -> None:  # type: ignore[no-untyped-def]
    log = Path(online_project.root) / ".closedloop" / "log" / "txns"
    now = T0 + timedelta(days=1)
    for i in range(70):
        online_project.features.push("txns", _rows("u8", float(i), now), at=now)
    online_project.features.close()                  # waits for the compaction it started
    from closedloop.backends.eventlog import EventLog

    assert len(EventLog(log).parts()) < 10
    rows = pa.table({"user_id": ["u8"], "t": pa.array([now], STAMP)})
    train = online_project.features.training_set(rows, ["user_txn.amount_sum_1h"])
    assert train["user_txn.amount_sum_1h"].to_pylist() == [float(sum(range(70)))]  # each once
