"""The smallest reproductions of the ways online and offline disagreed (issue 14), each the
test that failed before its fix: late rows of arrival-less sources across incremental runs,
nanosecond and sub-microsecond instants, NaN from transforms, null keys, replayed pushes, and
online reads before the materialization instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import closedloop as cl
from closedloop.errors import DefinitionError, PointInTimeError
from closedloop.testing import same_value

STAMP = pa.timestamp("us", tz="UTC")
DAY0 = datetime(2026, 3, 1, tzinfo=UTC)

LATE = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
profiles = cl.TableSource("profiles", path="data/profiles", timestamp="ts", created="created",
                          schema={"user_id": str, "spend": float})
accounts = cl.TableSource("accounts", path="data/accounts", timestamp="ts", deleted="gone",
                          schema={"user_id": str, "state": str})
clicks = cl.EventSource("clicks", path="data/clicks", timestamp="ts",
                        schema={"user_id": str, "n": float})
profile = cl.FeatureView("profile", entity=user, source=profiles, features=["spend"], ttl="2d")
account = cl.FeatureView("account", entity=user, source=accounts, features=["state"])
click = cl.FeatureView("click", entity=user, source=clicks,
                       aggregations=[cl.Agg("n", "sum", windows=["1d"])])
'''
LATE_FEATURES = ["profile.spend", "account.state", "click.n_sum_1d"]


def _at(hours: float) -> datetime:
    return DAY0 + timedelta(hours=hours)


def _table(**columns: Any) -> pa.Table:
    return pa.table({name: pa.array(values, STAMP) if name in ("ts", "created") else values
                     for name, values in columns.items()})


def _agree(project: cl.Project, features: list[str], keys: list[Any], at: datetime) -> None:
    """Online at ``at`` equals the training set at ``at``, feature for feature."""
    offline = project.features.training_set(
        pa.table({"user_id": pa.array(keys, pa.string()), "t": pa.array([at] * len(keys),
                                                                         STAMP)}), features)
    served = project.features.online([{"user_id": k} for k in keys], features, at=at)
    for i, vector in enumerate(served):
        for ref in features:
            assert same_value(vector.values[ref], offline[ref][i].as_py()), (
                keys[i], at, ref, vector.values[ref], offline[ref][i].as_py())


def test_rows_written_after_the_watermark_land_in_every_kind_of_source(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.1: a table source with created, a CDC table source and an event source with
    no arrival column; rows with event times before the watermark, ingested after it."""
    p = make_project(LATE)
    p.data.ingest("profiles", [_table(user_id=["u1"], ts=[_at(10)], created=[_at(10 + 5 / 60)],
                                      spend=[1.0])], at=_at(10.1))
    p.data.ingest("accounts", [_table(user_id=["u1"], ts=[_at(10)], state=["open"])],
                  at=_at(10.1))
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])], at=_at(10.1))
    p.features.materialize(at=_at(12))
    p.data.ingest("profiles", [_table(user_id=["u1"], ts=[_at(11)], spend=[2.0])],
                  at=_at(12.5))
    p.data.ingest("accounts", [_table(user_id=["u1"], ts=[_at(11)], state=["open"],
                                      gone=[True])], at=_at(12.5))
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(11)], n=[2.0])], at=_at(12.5))
    reports = p.features.materialize(at=_at(13))
    assert [r.entities for r in reports] == [1, 1, 1]
    served = p.features.online({"user_id": "u1"}, LATE_FEATURES, at=_at(13))
    assert served.values == {"profile.spend": 2.0, "account.state": None,
                             "click.n_sum_1d": 3.0}
    _agree(p, LATE_FEATURES, ["u1"], _at(13))


def test_a_nightly_snapshot_written_late_is_served_through_hourly_runs(make_project) -> None:  # type: ignore[no-untyped-def]
    """A snapshot as of midnight, written at 00:25; hourly incremental runs and a 2-day TTL:
    before the fix the store served yesterday's value, then None for good."""
    p = make_project(LATE)
    for hour in range(0, 4 * 24):
        day, h = divmod(hour, 24)
        if h == 0:        # the export lands 25 minutes after its as-of instant
            p.data.ingest("profiles", [_table(user_id=["u1", "u2"], ts=[_at(24 * day)] * 2,
                                              spend=[float(day), 10.0 + day])],
                          at=_at(24 * day + 25 / 60))
        p.features.materialize(["profile"], at=_at(hour + 1))
        _agree(p, ["profile.spend"], ["u1", "u2"], _at(hour + 1))
    assert p.features.online({"user_id": "u1"}, ["profile.spend"],
                             at=_at(4 * 24)).values["profile.spend"] == 3.0


def _pandas_ns(texts: list[str]) -> pd.Series:
    """Instants as pandas holds them by default (before pandas 3): nanoseconds, UTC."""
    return pd.Series(pd.to_datetime(texts)).astype("datetime64[ns, UTC]")


def test_pandas_nanosecond_instants_are_instants_everywhere(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.2: pandas writes timestamp[ns, tz=UTC]; a pushed pandas row no longer poisons
    the source, and source files written by pandas read as instants."""
    p = make_project(LATE)
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "n": [1.0, 2.0],
                          "ts": _pandas_ns(["2026-03-01T10:00:00Z", "2026-03-01T10:30:00Z"])})
    assert pa.table(frame)["ts"].type == pa.timestamp("ns", tz="UTC")
    (p.root / "data" / "clicks").mkdir(parents=True, exist_ok=True)
    frame.to_parquet(p.root / "data" / "clicks" / "part.parquet")
    pushed = pd.DataFrame({"user_id": ["u1"], "n": [4.0],
                           "ts": _pandas_ns(["2026-03-01T11:00:00.000001Z"])})
    p.features.push("clicks", pushed, at=_at(11.5))
    rows = pd.DataFrame({"user_id": ["u1", "u2"],
                         "t": _pandas_ns(["2026-03-01T12:00:00Z"] * 2)})
    got = p.features.training_set(rows, ["click.n_sum_1d"])
    assert got["click.n_sum_1d"].to_pylist() == [5.0, 2.0]
    p.features.materialize(["click"], at=_at(12))
    assert p.features.compact(["clicks"]) == {"clicks": 0}
    _agree(p, ["click.n_sum_1d"], ["u1", "u2"], _at(12))


def _nanos(text: str) -> pa.Array:
    return pa.array([pd.Timestamp(text).value], pa.int64()).cast(
        pa.timestamp("ns", tz="UTC"))


def test_instants_finer_than_a_microsecond_are_refused_at_every_boundary(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.7: never a raw ArrowInvalid, never a silent rounding: a PointInTimeError that
    says how to floor them, and a quarantined row at ingestion."""
    p = make_project(LATE)
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])], at=_at(10))
    fine = _nanos("2026-03-01T12:00:00.123456789Z")
    rows = pa.table({"user_id": ["u1"], "t": fine})
    with pytest.raises(PointInTimeError, match="finer than a microsecond") as info:
        p.features.training_set(rows, ["click.n_sum_1d"])
    assert "floor" in info.value.fix
    assert "2026-03-01T12:00:00.123456789Z" in str(info.value)
    with pytest.raises(PointInTimeError, match="finer than a microsecond"):
        p.features.push("clicks", pa.table({"user_id": ["u1"], "ts": fine, "n": [1.0]}),
                        at=_at(13))
    whole = _nanos("2026-03-01T12:00:00.123456Z")    # nanoseconds, but whole microseconds
    p.features.push("clicks", pa.table({"user_id": ["u1"], "ts": whole, "n": [2.0]}),
                    at=_at(13))
    report = p.data.ingest("clicks", [pa.table({"user_id": ["u1", "u2"],
                                                "ts": pa.concat_arrays([fine, whole]),
                                                "n": [5.0, 6.0]})], at=_at(13))
    assert (report.accepted, report.quarantined) == (1, 1)
    assert [r for r, _ in report.reasons] == [
        "ts: instant finer than a microsecond (floor it to the microsecond)"]
    csv = p.root / "clicks.csv"
    csv.write_text("user_id,ts,n\nu3,2026-03-01T12:00:00.123456789Z,1\n"
                   "u4,2026-03-01T12:00:00.123456000Z,2\n")
    report = p.data.ingest("clicks", [csv], at=_at(13))
    assert (report.accepted, report.quarantined) == (1, 1)
    got = p.features.training_set(pa.table({"user_id": ["u1", "u4"],
                                            "t": pa.array([_at(13)] * 2, STAMP)}),
                                  ["click.n_sum_1d"])
    assert got["click.n_sum_1d"].to_pylist() == [3.0, 2.0]


def test_a_source_file_with_sub_microsecond_instants_is_refused_not_rounded(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(LATE)
    (p.root / "data" / "clicks").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"user_id": ["u1"], "n": [1.0],
                             "ts": _nanos("2026-03-01T10:00:00.000000001Z")}),
                   p.root / "data" / "clicks" / "part.parquet")
    rows = pa.table({"user_id": ["u1"], "t": pa.array([_at(12)], STAMP)})
    with pytest.raises(PointInTimeError, match="finer than a microsecond"):
        p.features.training_set(rows, ["click.n_sum_1d"])
    with pytest.raises(PointInTimeError, match="finer than a microsecond"):
        p.features.materialize(["click"], at=_at(12))


NAN = '''
import numpy as np
import closedloop as cl
user = cl.Entity("user", key="user_id")
clicks = cl.EventSource("clicks", path="data/clicks", timestamp="ts",
                        schema={"user_id": str, "n": float})
click = cl.FeatureView("click", entity=user, source=clicks,
                       aggregations=[cl.Agg("n", "mean", windows=["1d"])])

@cl.transform(inputs=["click.n_mean_1d", "request.x"], default=-1.0)
def ratio(c):
    with np.errstate(invalid="ignore", divide="ignore"):
        return c["request.x"] / c["click.n_mean_1d"]

@cl.transform(inputs=["click.n_mean_1d", "request.x"])
def bare(c):
    with np.errstate(invalid="ignore"):
        return np.sqrt(c["request.x"] - c["click.n_mean_1d"])
'''


def test_a_transform_returning_nan_gets_its_default_on_both_paths(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.3: NaN is no value, by one rule for both paths: the default, or null."""
    p = make_project(NAN)
    p.data.ingest("clicks", [_table(user_id=["u1", "u2"], ts=[_at(10)] * 2, n=[4.0, 0.0])],
                  at=_at(10))
    p.features.materialize(at=_at(12))
    requests = [{"user_id": "u1", "x": 2.0}, {"user_id": "u2", "x": 0.0},
                {"user_id": "u9", "x": 1.0}]
    rows = pa.table({"user_id": [r["user_id"] for r in requests],
                     "x": [r["x"] for r in requests], "t": pa.array([_at(12)] * 3, STAMP)})
    offline = p.features.training_set(rows, ["ratio", "bare"])
    served = p.features.online(requests, ["ratio", "bare"], at=_at(12))
    # 0/0 and x/None are NaN: the default; sqrt of a negative is NaN: no value (null).
    assert offline["ratio"].to_pylist() == [0.5, -1.0, -1.0]
    assert [v.values["ratio"] for v in served] == [0.5, -1.0, -1.0]
    assert offline["bare"].to_pylist() == [None, 0.0, None]
    assert [v.values["bare"] for v in served] == [None, 0.0, None]


def test_a_null_key_gets_the_defaults_online_as_offline(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.6: a null key is not an error on either path; the vector says which views
    it lacks."""
    p = make_project(LATE)
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])], at=_at(10))
    p.data.ingest("profiles", [_table(user_id=["u1"], ts=[_at(10)], spend=[1.0])], at=_at(10))
    p.data.ingest("accounts", [_table(user_id=["u1"], ts=[_at(10)], state=["open"])],
                  at=_at(10))
    p.features.materialize(at=_at(12))
    one = p.features.online({"user_id": None}, LATE_FEATURES, at=_at(12))
    assert one.values == {"profile.spend": None, "account.state": None, "click.n_sum_1d": 0.0}
    assert one.missing == ("profile@1", "account@1", "click@1")
    known, null = p.features.online([{"user_id": "u1"}, {"user_id": None}], LATE_FEATURES,
                                    at=_at(12))
    assert known.values["click.n_sum_1d"] == 1.0
    assert null.values == one.values
    _agree(p, LATE_FEATURES, ["u1", None], _at(12))


EVENTS = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
clicks = cl.EventSource("clicks", path="data/clicks", timestamp="ts", id="click_id",
                        schema={"click_id": str, "user_id": str, "n": float})
click = cl.FeatureView("click", entity=user, source=clicks,
                       aggregations=[cl.Agg("n", "sum", windows=["1d"]),
                                     cl.Agg("n", "count", windows=["1d"])])
'''


def test_push_is_idempotent_on_the_declared_id(make_project) -> None:  # type: ignore[no-untyped-def]
    """Issue 14.8: pushing event b twice counts it once, online and offline; a later ingest of
    b is a duplicate; an id pushed twice within one push counts once."""
    p = make_project(EVENTS)
    p.features.materialize(at=_at(10))

    def event(click_id: str, n: float, hours: float) -> pa.Table:
        return _table(click_id=[click_id], user_id=["u1"], ts=[_at(hours)], n=[n])

    assert p.features.push("clicks", event("a", 1.0, 10.1), at=_at(10.2)).rows == 1
    first = p.features.push("clicks", event("b", 2.0, 10.3), at=_at(10.4))
    again = p.features.push("clicks", event("b", 2.0, 10.3), at=_at(10.5))
    assert (first.rows, again.rows, again.duplicates, again.entities) == (1, 0, 1, 0)
    both = p.features.push("clicks", pa.concat_tables([event("c", 3.0, 10.6),
                                                       event("c", 3.0, 10.6)]), at=_at(10.7))
    assert (both.rows, both.duplicates) == (1, 1)
    report = p.data.ingest("clicks", [event("b", 2.0, 10.3)], at=_at(11))
    assert (report.accepted, report.duplicates) == (0, 1)
    served = p.features.online({"user_id": "u1"}, ["click.n_sum_1d", "click.n_count_1d"],
                               at=_at(12))
    assert served.values == {"click.n_sum_1d": 6.0, "click.n_count_1d": 3}
    _agree(p, ["click.n_sum_1d", "click.n_count_1d"], ["u1"], _at(12))


def test_push_stamps_a_missing_or_null_arrival_and_created_as_ingest_does(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(LATE.replace('timestamp="ts",\n                        schema',
                                  'timestamp="ts", arrival="arr",\n                        schema'))
    before = datetime.now(UTC)
    p.features.push("clicks", _table(user_id=["u1", "u2"], ts=[_at(10)] * 2, n=[1.0, 2.0],
                                     arr=pa.array([_at(10.5), None], STAMP)), at=_at(11))
    p.features.push("profiles", _table(user_id=["u1"], ts=[_at(10)], spend=[1.0]), at=_at(11))
    clicks = p.data.read("clicks").sort_by("user_id")
    assert clicks["arr"].to_pylist() == [_at(10.5), _at(11)]
    stamps = clicks["_ingested_at"].to_pylist()       # when the store was given them: the
    assert stamps[0] == stamps[1] >= before              # wall clock's, whatever the push's at
    assert p.data.read("profiles")["created"].to_pylist() == [_at(11)]


def test_rows_given_after_a_run_at_the_same_instant_are_materialized(make_project) -> None:  # type: ignore[no-untyped-def]
    """A fixed clock materializes again and again at one instant: rows ingested or pushed
    between two such runs — visible at it, so as old as it or older — land in the second (by
    their wall-clock ingest stamp), which is not "current"; a third, given nothing, is."""
    clock = cl.Clock.of(_at(12))
    p = cl.Project(make_project(LATE).root, clock=clock)
    try:
        p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])])
        p.data.ingest("profiles", [_table(user_id=["u1"], ts=[_at(9)], spend=[5.0])])
        views = ["click", "profile"]
        wanted = ["profile.spend", "click.n_sum_1d"]
        assert {r.mode for r in p.features.materialize(views)} == {"full"}
        p.data.ingest("clicks", [_table(user_id=["u1", "u2"], ts=[_at(11)] * 2, n=[2.0, 4.0])])
        p.data.ingest("profiles", [_table(user_id=["u2"], ts=[_at(8)], spend=[7.0])])
        again = {r.view: r for r in p.features.materialize(views)}
        assert again["click@1"].mode == again["profile@1"].mode == "incremental"
        assert (again["click@1"].entities, again["profile@1"].entities) == (2, 1)
        _agree(p, wanted, ["u1", "u2"], _at(12))
        served = p.features.online({"user_id": "u2"}, wanted)
        assert served.values["click.n_sum_1d"] == 4.0
        assert served.values["profile.spend"] == 7.0
        assert {r.mode for r in p.features.materialize(views)} == {"current"}
    finally:
        p.close()


def test_an_online_read_before_the_materialization_instant_is_refused(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(LATE)
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])], at=_at(10))
    p.features.materialize(at=_at(12))
    with pytest.raises(PointInTimeError, match=r"before view .* materialization instant "
                                               r"2026-03-01T12:00:00Z"):
        p.features.online({"user_id": "u1"}, ["click.n_sum_1d"], at=_at(11))
    assert p.features.online({"user_id": "u1"}, ["click.n_sum_1d"],
                             at=_at(12)).values["click.n_sum_1d"] == 1.0


def test_marks_are_read_once_and_every_materialization_is_seen(make_project) -> None:  # type: ignore[no-untyped-def]
    """Reads at an instant check each view's mark without reading it every time: the first
    read fetches it, the next reads only records; this process's materialization is seen at
    once, and another process's once the kept mark is ``ttl_s`` old; a refusal is made on a
    mark just read."""
    p = make_project(LATE)
    p.data.ingest("clicks", [_table(user_id=["u1"], ts=[_at(10)], n=[1.0])], at=_at(10))
    p.features.materialize(at=_at(12))
    store = p.online_store
    asked: list[int] = []
    real_read = store.read

    def counting_read(keys):  # type: ignore[no-untyped-def]
        asked.append(len(keys))
        return real_read(keys)

    store.read = counting_read  # type: ignore[method-assign]  # a spy on the real store
    feature = ["click.n_sum_1d"]
    p.features._marks.ttl_s = 3600.0                  # no read here waits on the clock
    assert p.features.online({"user_id": "u1"}, feature, at=_at(13)).values[feature[0]] == 1.0
    assert p.features.online({"user_id": "u1"}, feature, at=_at(13)).values[feature[0]] == 1.0
    assert asked == [2, 1]                            # record + mark, then the record alone
    p.features.materialize(at=_at(14))                # here: seen at once
    with pytest.raises(PointInTimeError, match="materialization instant 2026-03-01T14"):
        p.features.online({"user_id": "u1"}, feature, at=_at(13))
    other = cl.Project(p.root)                        # another process's run, later
    try:
        other.features.materialize(at=_at(16))
    finally:
        other.close()
    p.features._marks.ttl_s = 0.0                     # the kept mark is now too old
    with pytest.raises(PointInTimeError, match="materialization instant 2026-03-01T16"):
        p.features.online({"user_id": "u1"}, feature, at=_at(15))


def test_a_default_on_sum_or_count_is_refused_as_it_would_never_apply() -> None:
    for fn in ("sum", "count"):
        with pytest.raises(DefinitionError, match="never apply"):
            cl.Agg("n", fn, windows=["1h"], default=-1.0)
    assert cl.Agg("n", "mean", windows=["1h"], default=-1.0).default == -1.0
    assert np.isfinite(cl.Agg("n", "sum", windows=["1h"]).outputs()[0].window)


# -- sums and stddev: every offline plan (the ``engine`` fixture), online, and pushed --------------
NUMBERS = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
ev = cl.EventSource("ev", path="data/ev.parquet", timestamp="ts",
                    schema={{"user_id": str, "x": {kind}}})
w = cl.FeatureView("w", entity=user, source=ev,
                   aggregations=[cl.Agg("x", fn, windows=["1h"])
                                 for fn in ("sum", "mean", "stddev", "count")])
'''
WINDOW = ["w.x_sum_1h", "w.x_mean_1h", "w.x_stddev_1h", "w.x_count_1h"]
INT64 = 2**53 + 1                          # not a float: the nearest double is 2**53


def _events(folder: Any, values: list[tuple[str, float, Any]], kind: str) -> None:
    (folder / "data").mkdir(exist_ok=True)
    pq.write_table(pa.table({
        "user_id": [u for u, _, _ in values],
        "ts": pa.array([_at(h) for _, h, _ in values], STAMP),
        "x": pa.array([x for _, _, x in values], pa.int64() if kind == "int" else pa.float64())}),
        folder / "data" / "ev.parquet")


CASES = [
    # Issue 14.4: a level shift days before the window must not cost the variance.
    *[(f"shift-{b:g}", "float", [("u", 0.0, b), ("u", 96.0, 10.0), ("u", 96.1, 12.0)],
       96.2, {"w.x_stddev_1h": 1.0, "w.x_sum_1h": 22.0, "w.x_mean_1h": 11.0})
      for b in (1e5, 1e6, 1e9, 1e16)],
    ("constant", "float", [("u", 96.0, 7.0), ("u", 96.05, 7.0), ("u", 96.1, 7.0),
                           ("v", 0.0, 1e9)], 96.2,
     {"w.x_stddev_1h": 0.0, "w.x_mean_1h": 7.0}),
    ("constant-int", "int", [("u", 96.0, 3), ("u", 96.05, 3), ("v", 0.0, 10**12)], 96.2,
     {"w.x_stddev_1h": 0.0, "w.x_sum_1h": 6.0}),
    # Issue 14.5: cancelling sums are the exact sum rounded once, offline and online.
    ("cancel-cents", "float", [("u", 10.0, 1e9), ("u", 10.2, 0.01), ("u", 10.4, -1e9)], 10.5,
     {"w.x_sum_1h": 0.01, "w.x_count_1h": 3}),
    ("cancel-big", "float", [("u", 10.0, 1e16), ("u", 10.2, 1.0), ("u", 10.4, -1e16)], 10.5,
     {"w.x_sum_1h": 1.0, "w.x_mean_1h": 1.0 / 3}),
    # int64 sums beyond 2^53 are the exact integer sum, rounded once, in every plan.
    ("int64", "int", [("u", 10.0, INT64), ("u", 10.2, INT64), ("u", 10.4, -(2**53))], 10.5,
     {"w.x_sum_1h": float(2**53 + 2), "w.x_mean_1h": float(2**53 + 2) / 3}),
]


@pytest.mark.parametrize(("kind", "values", "hours", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sums_and_stddev_are_exact_in_every_offline_plan(engine, tmp_path, kind, values,  # type: ignore[no-untyped-def]
                                                         hours, want) -> None:
    from closedloop.features.catalog import Catalog
    from closedloop.features.service import FeatureService

    _events(tmp_path, values, kind)
    namespace: dict[str, Any] = {}
    exec(NUMBERS.format(kind=kind).replace(    # our own definitions text
        "data/ev.parquet", str(tmp_path / "data" / "ev.parquet")), namespace)
    service = FeatureService(Catalog([namespace["w"]]), engine)
    got = service.training_set(pa.table({"user_id": ["u"], "t": pa.array([_at(hours)],
                                                                         STAMP)}), WINDOW)
    for ref, value in want.items():
        assert got[ref][0].as_py() == value, (ref, got[ref][0].as_py(), value)


@pytest.mark.parametrize(("kind", "values", "hours", "want"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_sums_and_stddev_are_exact_online_materialized_and_pushed(make_project, kind, values,  # type: ignore[no-untyped-def]
                                                                  hours, want) -> None:
    p = make_project(NUMBERS.format(kind=kind))
    _events(p.root, values, kind)
    p.features.materialize(at=_at(hours))
    _agree(p, WINDOW, ["u"], _at(hours))
    served = p.features.online({"user_id": "u"}, WINDOW, at=_at(hours))
    for ref, value in want.items():
        assert served.values[ref] == value, (ref, served.values[ref], value)
    # The same events pushed one by one into a store that had none of them.
    q = make_project(NUMBERS.format(kind=kind), name="pushed")
    _events(q.root, values[:1], kind)
    q.features.materialize(at=_at(values[0][1]))
    for user, h, x in values[1:]:
        q.features.push("ev", pa.table({"user_id": [user], "ts": pa.array([_at(h)], STAMP),
                                        "x": pa.array([x], pa.int64() if kind == "int"
                                                      else pa.float64())}), at=_at(h))
    pushed = q.features.online({"user_id": "u"}, WINDOW, at=_at(hours))
    for ref, value in want.items():
        assert pushed.values[ref] == value, (ref, pushed.values[ref], value)


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.floats(-1e4, 1e4, allow_nan=False).filter(lambda v: v != 0),
                       min_size=3, max_size=30),
       later=st.floats(1e5, 1e15))
def test_a_training_set_is_the_same_after_later_rows_arrive(engine, tmp_path_factory,  # type: ignore[no-untyped-def]
                                                            values, later) -> None:
    """A training set is a function of what was known at its instants: a row that became
    visible after the latest of them — however large — changes no bit of it, so a run
    rebuilt after more data came reproduces (it once moved the sums' grid and plan)."""
    from closedloop.features.catalog import Catalog
    from closedloop.features.service import FeatureService

    folder = tmp_path_factory.mktemp("later")
    events = [("u", 1.0 + i * 0.01, v) for i, v in enumerate(values)]
    rows = pa.table({"user_id": ["u", "u"], "t": pa.array([_at(1.0 + len(values) * 0.005),
                                                          _at(2.0)], STAMP)})

    def build(extra: list[tuple[str, float, Any]]) -> pa.Table:
        _events(folder, events + extra, "float")
        namespace: dict[str, Any] = {}
        exec(NUMBERS.format(kind="float").replace(   # our own definitions text
            "data/ev.parquet", str(folder / "data" / "ev.parquet")), namespace)
        return FeatureService(Catalog([namespace["w"]]), engine).training_set(rows, WINDOW)

    before = build([])
    after = build([("v", 3.0, later), ("u", 2.5, -later)])    # both after the rows' instants
    assert after.equals(before)
