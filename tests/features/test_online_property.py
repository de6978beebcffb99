"""Property: materialize the offline store as of t, read online at t: the served vector equals
the offline training set at t, feature for feature — on SQLite and on Redis."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.backends.duckdb import DuckDBEngine
from closedloop.data.instants import now_micros
from closedloop.data.sources import INGESTED_AT
from closedloop.features.catalog import Catalog
from closedloop.features.definitions import transform
from closedloop.features.service import FeatureService
from closedloop.testing import same_value
from tests.features.test_pointintime_property import (
    KEYS,
    MIN,
    _ts,
    events,
    snapshots,
    times,
    write_history,
)

HOUR, DAY = 60 * MIN, 24 * 60 * MIN


def _dt(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


@transform(inputs=["w.amount_sum_1h", "w.amount_mean_1h"], default=-1.0)
def spread(c: dict[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """NaN (no value: the default) for a missing mean or a negative difference, -inf for 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out: np.ndarray[Any, Any] = np.log(c["w.amount_sum_1h"] - c["w.amount_mean_1h"])
    return out


def _late(late_ev: list[dict[str, Any]], late_snaps: list[dict[str, Any]],
          stamp: int) -> tuple[pa.Table, pa.Table]:
    """Rows given to the store at ``stamp`` (as ingestion stamps them), whatever their times."""
    ev = pa.table({"ev_id": [f"late{i}" for i in range(len(late_ev))],
                   "user_id": pa.array([e["user_id"] for e in late_ev], pa.string()),
                   "ts": _ts([e["ts"] for e in late_ev]),
                   "arrival": _ts([e["ts"] + e["lag"] for e in late_ev]),
                   "amount": pa.array([e["amount"] for e in late_ev], pa.float64()),
                   INGESTED_AT: _ts([stamp] * len(late_ev))})
    tab = pa.table({"user_id": pa.array([r["user_id"] for r in late_snaps], pa.string()),
                    "ts": _ts([r["ts"] for r in late_snaps]),
                    "created": _ts([r["ts"] + r["created_lag"] for r in late_snaps]),
                    "spend": pa.array([r["spend"] for r in late_snaps], pa.float64()),
                    "tier": pa.array([r["tier"] for r in late_snaps], pa.string()),
                    "deleted": pa.array([r["deleted"] for r in late_snaps], pa.bool_()),
                    INGESTED_AT: _ts([stamp] * len(late_snaps))})
    return ev, tab


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(evs=events, snaps=snapshots, use_arrival=st.booleans(), at=times,
       ttl=st.sampled_from([None, "2h", "1d"]), split=st.sampled_from([None, 1, 3 * 3_600_000_000]),
       late=st.sampled_from([0, 2, 3]))
def test_online_at_t_equals_offline_at_t(online_store, evs, snaps, use_arrival, at, ttl,
                                         split, late):  # type: ignore[no-untyped-def]
    """... also when every ``late``-th row reaches the store only after the earlier run, with
    whatever times it has (a source without arrival included): the next incremental run must
    take it."""
    with tempfile.TemporaryDirectory() as folder:
        engine = DuckDBEngine(log_root=str(Path(folder) / "log"))
        try:
            held = [bool(late and split and i % late == 0) for i in range(max(len(evs),
                                                                             len(snaps)))]
            late_ev = [e for i, e in enumerate(evs) if held[i]]
            late_snaps = [r for i, r in enumerate(snaps) if held[i]]
            h = write_history(folder, [e for i, e in enumerate(evs) if not held[i]],
                              [r for i, r in enumerate(snaps) if not held[i]], use_arrival, ttl)
            for view in h.views.values():
                online_store.clear(f"{view.name}@{view.version}")
            online_store.clear("__closedloop")
            service = FeatureService(Catalog([*h.views.values(), spread]), engine,
                                     online_store)
            if split is not None:       # an earlier incremental run
                service.materialize(at=_dt(at - split))
                ev, tab = _late(late_ev, late_snaps, now_micros())   # given after the run
                if ev.num_rows:
                    engine.append(h.views["w"].source, ev)
                if tab.num_rows:
                    engine.append(h.views["s"].source, tab)
            # Then runs at t and at the edges t rarely hits by chance — a row at a window's
            # first instant, its arrival, its TTL expiry — each incremental on the last.
            ats = {at}
            for e in h.ev_rows[:2]:
                ats |= {e["arrival"], *(e["ts"] + w for w in (10 * MIN, HOUR, DAY))}
            for r in h.snap_rows[:2]:
                ats |= {r["ts"] + 2 * HOUR, r["ts"] + 2 * HOUR + 1, r["ts"] + DAY}
            for t in sorted(a for a in ats if a >= at):
                service.materialize(at=_dt(t))
                keys = [*KEYS, "zz", None]
                rows = pa.table({"user_id": pa.array(keys, pa.string()),
                                 "t": _ts([t] * len(keys))})
                refs = [*h.refs, "spread"]
                offline = service.training_set(rows, refs)
                served = service.online([{"user_id": k} for k in keys], refs, at=_dt(t))
                for i, vector in enumerate(served):
                    for ref in refs:
                        want = offline[ref][i].as_py()
                        assert same_value(vector.values[ref], want), (
                            keys[i], t, ref, vector.values[ref], want)
        finally:
            engine.close()


def test_dt_round_trips() -> None:
    micros = 1_767_225_600_123_456
    got = _dt(micros)
    assert int(got.timestamp()) * 1_000_000 + got.microsecond == micros
