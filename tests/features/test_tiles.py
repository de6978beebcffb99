"""Tiles keep only the partials a view's functions need. Property: for any choice of functions
over a numeric and a string column, materializing part of a history and pushing the rest
serves, at the push's instant, what the plain-Python reference computes from all of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import closedloop as cl
from closedloop.backends.duckdb import DuckDBEngine
from closedloop.backends.sqlite import SQLiteOnlineStore
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.features.tiles import TileLayout
from closedloop.testing import same_value
from tests.features.test_pointintime_property import KEYS, MIN, T0, _ts
from tests.reference import reference_features

NOW = T0 + 3 * 24 * 60 * MIN
NUMERIC_FNS = ("sum", "count", "mean", "min", "max", "last", "stddev")
STRING_FNS = ("count", "min", "max", "last")

rows = st.lists(st.fixed_dictionaries({
    "user_id": st.sampled_from(KEYS),
    "ts": st.integers(0, 3 * 24 * 60).map(lambda m: NOW - m * MIN),
    "lag": st.sampled_from([0, 0, MIN, 10 * MIN]),
    "amount": st.none() | st.integers(-5, 20).map(float),
    "tag": st.none() | st.sampled_from(["p", "q", "r"]),
}), min_size=1, max_size=30)


def _dt(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def _view(path: Path, numeric: list[str], string: list[str]) -> cl.FeatureView:
    src = cl.EventSource("ev", path=str(path), timestamp="ts", arrival="arrival",
                         schema={"user_id": str, "amount": float, "tag": str})
    aggs = [cl.Agg("amount", fn, windows=["10m", "1h", "1d"]) for fn in numeric]
    aggs += [cl.Agg("tag", fn, windows=["1h", "2d"]) for fn in string]
    return cl.FeatureView("w", entity=cl.Entity("user", key="user_id"), source=src,
                          aggregations=aggs)


def _table(events: list[dict[str, Any]]) -> pa.Table:
    return pa.table({"user_id": pa.array([e["user_id"] for e in events], pa.string()),
                     "ts": _ts([e["ts"] for e in events]),
                     "arrival": _ts([e["arrival"] for e in events]),
                     "amount": pa.array([e["amount"] for e in events], pa.float64()),
                     "tag": pa.array([e["tag"] for e in events], pa.string())})


def test_a_layout_keeps_only_the_partials_its_functions_need(tmp_path: Path) -> None:
    layout = TileLayout(_view(tmp_path / "x.parquet", ["sum", "max"], ["last"]))
    amount, tag = layout.columns
    assert (amount.n, amount.s, amount.c, amount.hi, amount.m2, amount.lo) == (
        -1, 1, 2, 3, -1, -1)
    assert (tag.last, tag.oet, tag.otie) == (4, 5, 6)
    assert layout.width == 7
    assert [hop for hop, _ in layout.hops] == sorted(hop for hop, _ in layout.hops)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(events=rows, split=st.floats(0, 1),
       numeric=st.lists(st.sampled_from(NUMERIC_FNS), unique=True, max_size=4),
       string=st.lists(st.sampled_from(STRING_FNS), unique=True, max_size=2))
def test_any_function_subset_serves_the_reference(tmp_path: Path, events: list[dict[str, Any]],
                                                  split: float, numeric: list[str],
                                                  string: list[str]) -> None:
    if not numeric and not string:
        numeric = ["count"]
    for e in events:
        e["arrival"] = min(e["ts"] + e["lag"], NOW)
    events.sort(key=lambda e: e["arrival"])
    cut = int(len(events) * split)
    base, pushed = events[:cut], events[cut:]
    folder = tmp_path / f"case-{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    path = folder / "ev.parquet"
    pq.write_table(_table(base) if base else _table([]), path)
    view = _view(path, numeric, string)
    engine = DuckDBEngine(log_root=str(folder / "log"))
    store = SQLiteOnlineStore(folder / "online.db")
    try:
        service = FeatureService(Catalog([view]), engine, store)
        start = max([e["arrival"] for e in base] + [T0])
        service.materialize(at=_dt(start))
        if pushed:
            service.push("ev", _table(pushed), at=_dt(NOW))
        refs = [f"w.{f}" for f in view.feature_names]
        served = service.online([{"user_id": k} for k in [*KEYS, "zz"]], refs, at=_dt(NOW))
        assert isinstance(served, list)
        for key, vector in zip([*KEYS, "zz"], served, strict=True):
            want = reference_features(view, events, key, NOW)
            for f in view.feature_names:
                assert same_value(vector.values[f"w.{f}"], want[f]), (key, f, vector.values,
                                                                      want)
    finally:
        store.close()
        engine.close()


def test_a_record_in_another_format_is_a_clear_error(tmp_path: Path) -> None:
    from closedloop.errors import DataError
    from closedloop.features.tiles import WindowReader

    view = _view(tmp_path / "x.parquet", ["sum"], [])
    reader = WindowReader(view, [("w.amount_sum_1h", view.windowed[0])])
    old = {"300000000": [[1, [[1, 2.0, 0.0, 2.0, 2.0, 2.0, None]]]]}   # the earlier layout
    with pytest.raises(DataError, match="materialize --full"):
        reader.read(old, NOW, {})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="materialize --full"):
        TileLayout.of(view).fold(old, [], NOW)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(fns=st.lists(st.sampled_from(NUMERIC_FNS), unique=True, min_size=1, max_size=5),
       seed=st.integers(0, 2**32 - 1))
def test_the_compiled_merge_is_the_columns_merge(fns: list[str], seed: int) -> None:
    """The straight-line merge compiled per layout does what ``ColumnSlots.merge`` does."""
    import random

    layout = TileLayout(_view(Path("x.parquet"), fns, ["last"]))
    rnd = random.Random(seed)

    def tile() -> list[Any]:
        out: list[Any] = [7]
        for _ in range(3):
            x = rnd.choice([None, 0.1 * rnd.randint(-50, 50), float(rnd.randint(-3, 3))])
            tag = rnd.choice([None, "a", "b"])
            one = layout.fields([x, tag], rnd.randint(0, 10), rnd.choice([None, 1, 2]))
            if len(out) == 1:
                out += one
            else:
                for c in layout.columns:
                    c.merge(out, 0, [7, *one], 0)
        return out

    a, b = tile(), tile()
    want = list(a)
    for c in layout.columns:
        c.merge(want, 0, b, 0)
    layout.merge(a, 0, b, 0)
    assert a == want


@settings(max_examples=200, deadline=None)
@given(fns=st.lists(st.sampled_from(NUMERIC_FNS), unique=True, min_size=1, max_size=5),
       last=st.booleans(),
       x=st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-2**63, 2**63 - 1)),
       tag=st.one_of(st.none(), st.sampled_from(["a", "b"])),
       et=st.integers(-2**40, 2**40), tie=st.one_of(st.none(), st.integers(0, 10)))
def test_the_compiled_fields_are_the_columns_fields(fns: list[str], last: bool, x: Any,
                                                    tag: Any, et: int, tie: Any) -> None:
    """The straight-line ``fields`` compiled per layout gives what every column's ``one``
    gives, value and type (an exact int sum's remainder, the int 0 for an exact c)."""
    layout = TileLayout(_view(Path("x.parquet"), fns, ["last"] if last else []))
    values = [x, tag] if last else [x]
    got, want = layout.fields(values, et, tie), layout.fields_of(values, et, tie)
    assert got == want
    assert [type(v) for v in got] == [type(v) for v in want]
