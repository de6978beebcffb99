"""Property: on random small histories, the DuckDB training set equals the plain-Python reference.

Times fall on a coarse grid so that window bounds, hop boundaries, ties and TTL edges are hit
often; arrivals are sometimes late (minutes to a day); values are sometimes null.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import closedloop as cl
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.testing import same_value
from tests.reference import reference_features

T0 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000
MIN = 60_000_000
KEYS = ["a", "b", "c"]

times = st.integers(0, 3 * 24 * 60).map(lambda m: T0 + m * MIN) | st.integers(
    0, 3 * 24 * 60).map(lambda m: T0 + m * MIN - 1)
lags = st.sampled_from([0, 0, 0, 30_000_000, 10 * MIN, 2 * 60 * MIN, 24 * 60 * MIN])
values = st.none() | st.integers(-5, 20).map(float) | st.sampled_from(
    [1e9, -1e9, 1e16, -1e16, 0.01, 1e5])      # level shifts and sums that cancel

events = st.lists(st.fixed_dictionaries({
    "user_id": st.sampled_from(KEYS), "ts": times, "lag": lags, "amount": values,
}), min_size=0, max_size=40)
snapshots = st.lists(st.fixed_dictionaries({
    "user_id": st.sampled_from(KEYS), "ts": times,
    "created_lag": st.sampled_from([0, MIN, 5 * MIN]),
    "spend": values, "tier": st.none() | st.sampled_from(["x", "y"]),
    "deleted": st.sampled_from([False, False, False, True, None]),   # CDC: some are deletes
}), min_size=0, max_size=25)
queries = st.lists(st.tuples(st.sampled_from([*KEYS, "zz", None]), times), min_size=1,
                   max_size=20)


def _ts(values: list[int], nanos: bool = False) -> pa.Array:
    """Instants in µs, or the same instants as pandas keeps them: nanoseconds."""
    if nanos:
        return pa.array([v * 1000 for v in values], pa.int64()).cast(
            pa.timestamp("ns", tz="UTC"))
    return pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))


@dataclass
class History:
    """Random source rows written to Parquet, and the views over them."""

    ev_rows: list[dict[str, Any]]
    snap_rows: list[dict[str, Any]]
    views: dict[str, cl.FeatureView]

    @property
    def refs(self) -> list[str]:
        return [f"{n}.{f}" for n, v in self.views.items() for f in v.feature_names]

    def source_rows(self, name: str) -> list[dict[str, Any]]:
        return self.snap_rows if name == "s" else self.ev_rows


def write_history(folder: str, evs: list[dict[str, Any]], snaps: list[dict[str, Any]],
                  use_arrival: bool, ttl: str | None, nanos: bool = False) -> History:
    """The rows as Parquet files (instants in µs, or in ns with ``nanos``), and the views."""
    ev_rows = [{"ev_id": f"e{i}", "user_id": e["user_id"], "ts": e["ts"],
                "arrival": e["ts"] + e["lag"], "amount": e["amount"]}
               for i, e in enumerate(evs)] or [
        {"ev_id": "e0", "user_id": "nobody", "ts": T0, "arrival": T0, "amount": None}]
    snap_rows = [{"user_id": s["user_id"], "ts": s["ts"], "created": s["ts"] + s["created_lag"],
                  "spend": s["spend"], "tier": s["tier"], "deleted": s["deleted"]}
                 for s in snaps] or [
        {"user_id": "nobody", "ts": T0, "created": T0, "spend": None, "tier": None,
         "deleted": False}]
    ev_path, snap_path = Path(folder) / "ev.parquet", Path(folder) / "snap.parquet"
    pq.write_table(pa.table({
        "ev_id": [r["ev_id"] for r in ev_rows],
        "user_id": [r["user_id"] for r in ev_rows], "ts": _ts([r["ts"] for r in ev_rows], nanos),
        "arrival": _ts([r["arrival"] for r in ev_rows], nanos),
        "amount": pa.array([r["amount"] for r in ev_rows], pa.float64())}), ev_path)
    pq.write_table(pa.table({
        "user_id": [r["user_id"] for r in snap_rows],
        "ts": _ts([r["ts"] for r in snap_rows], nanos),
        "created": _ts([r["created"] for r in snap_rows], nanos),
        "spend": pa.array([r["spend"] for r in snap_rows], pa.float64()),
        "tier": pa.array([r["tier"] for r in snap_rows], pa.string()),
        "deleted": pa.array([r["deleted"] for r in snap_rows], pa.bool_())}), snap_path)
    user = cl.Entity("user", key="user_id")
    ev_src = cl.EventSource("ev", path=str(ev_path), timestamp="ts", id="ev_id",
                            arrival="arrival" if use_arrival else None,
                            schema={"ev_id": str, "user_id": str, "amount": float})
    tab_src = cl.TableSource("tab", path=str(snap_path), timestamp="ts", created="created",
                             deleted="deleted",
                             schema={"user_id": str, "spend": float, "tier": str})
    windowed = cl.FeatureView("w", entity=user, source=ev_src, aggregations=[
        cl.Agg("amount", fn, windows=["10m", "1h", "1d"])
        for fn in ("sum", "count", "mean", "min", "max", "last", "stddev")])
    snapshot = cl.FeatureView("s", entity=user, source=tab_src, features=["spend", "tier"],
                              ttl=ttl)
    ev_snapshot = cl.FeatureView("e", entity=user, source=ev_src, features=["amount"], ttl=ttl)
    return History(ev_rows, snap_rows, {"w": windowed, "s": snapshot, "e": ev_snapshot})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(evs=events, snaps=snapshots, qs=queries, use_arrival=st.booleans(),
       ttl=st.sampled_from([None, "2h", "1d"]), nanos=st.booleans())
def test_training_set_equals_reference(engine, evs, snaps, qs, use_arrival, ttl, nanos):  # type: ignore[no-untyped-def]
    """... with instants in µs or, as pandas writes them, in ns (sources and rows alike)."""
    with tempfile.TemporaryDirectory() as folder:
        h = write_history(folder, evs, snaps, use_arrival, ttl, nanos)
        service = FeatureService(Catalog(list(h.views.values())), engine)
        # Edges the grid rarely hits by chance: exact arrival, window start and TTL expiry.
        for e in h.ev_rows[:3]:
            qs = [*qs, (e["user_id"], e["arrival"]), (e["user_id"], e["ts"] + 3_600_000_000)]
        ttl_us = h.views["s"].ttl_micros
        for r in h.snap_rows[:3]:
            if ttl_us is not None:
                qs = [*qs, (r["user_id"], r["ts"] + ttl_us), (r["user_id"], r["ts"] + ttl_us + 1)]
        rows = pa.table({"user_id": pa.array([k for k, _ in qs], pa.string()),
                         "t": _ts([t for _, t in qs], nanos)})
        got = service.training_set(rows, h.refs)
    horizon = max(t for _, t in qs)           # the grid of exact sums: what was visible then
    for i, (key, t) in enumerate(qs):
        for name, view in h.views.items():
            want = reference_features(view, h.source_rows(name), key, t, horizon)
            for feature, value in want.items():
                have = got[f"{name}.{feature}"][i].as_py()
                if _exact(view, feature):      # the exact sum rounded once: the same bits
                    assert have == value, (name, feature, key, t, have, value)
                assert same_value(have, value), (name, feature, key, t, have, value)


def _exact(view: cl.FeatureView, feature: str) -> bool:
    return any(w.name == feature and w.fn in ("sum", "mean") for w in view.windowed)


@settings(max_examples=30, deadline=None)
@given(nanos=st.lists(st.integers(-(2**52), 2**52).map(lambda n: n * 1000)
                     | st.integers(-(2**62), 2**62), min_size=1, max_size=5))
def test_nanosecond_instants_are_taken_whole_or_refused_never_rounded(nanos: list[int]) -> None:
    """The one conversion of instants: nanoseconds that are whole microseconds become those
    microseconds (pre-1970 included); any finer value refuses the column, with the fix."""
    from closedloop.data.instants import as_instants
    from closedloop.errors import PointInTimeError

    column = pa.array(nanos, pa.int64()).cast(pa.timestamp("ns", tz="Europe/Paris"))
    if all(n % 1000 == 0 for n in nanos):
        got = as_instants(column, "t").cast(pa.int64()).to_pylist()
        assert got == [n // 1000 for n in nanos]
    else:
        with pytest.raises(PointInTimeError, match="finer than a microsecond") as info:
            as_instants(column, "t")
        assert "floor" in info.value.fix
