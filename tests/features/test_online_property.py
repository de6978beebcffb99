"""Property: materialize the offline store as of t, read online at t: the served vector equals
the offline training set at t, feature for feature — on SQLite and on Redis."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.backends.duckdb import DuckDBEngine
from closedloop.features.catalog import Catalog
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(evs=events, snaps=snapshots, use_arrival=st.booleans(), at=times,
       ttl=st.sampled_from([None, "2h", "1d"]), split=st.sampled_from([None, 1, 3 * 3_600_000_000]))
def test_online_at_t_equals_offline_at_t(online_store, evs, snaps, use_arrival, at, ttl,
                                         split):  # type: ignore[no-untyped-def]
    engine = DuckDBEngine()
    try:
        with tempfile.TemporaryDirectory() as folder:
            h = write_history(folder, evs, snaps, use_arrival, ttl)
            for view in h.views.values():
                online_store.clear(f"{view.name}@{view.version}")
            online_store.clear("__closedloop")
            service = FeatureService(Catalog(list(h.views.values())), engine, online_store)
            if split is not None:       # an earlier incremental run
                service.materialize(at=_dt(at - split))
            # Then runs at t and at the edges t rarely hits by chance — a row at a window's
            # first instant, its arrival, its TTL expiry — each incremental on the last.
            ats = {at}
            for e in h.ev_rows[:2]:
                ats |= {e["arrival"], *(e["ts"] + w for w in (10 * MIN, HOUR, DAY))}
            for r in h.snap_rows[:2]:
                ats |= {r["ts"] + 2 * HOUR, r["ts"] + 2 * HOUR + 1, r["ts"] + DAY}
            for t in sorted(a for a in ats if a >= at):
                service.materialize(at=_dt(t))
                keys = [*KEYS, "zz"]
                rows = pa.table({"user_id": keys, "t": _ts([t] * len(keys))})
                offline = service.training_set(rows, h.refs)
                served = service.online([{"user_id": k} for k in keys], h.refs, at=_dt(t))
                for i, vector in enumerate(served):
                    for ref in h.refs:
                        want = offline[ref][i].as_py()
                        assert same_value(vector.values[ref], want), (
                            keys[i], t, ref, vector.values[ref], want)
    finally:
        engine.close()


def test_dt_round_trips() -> None:
    micros = 1_767_225_600_123_456
    got = _dt(micros)
    assert int(got.timestamp()) * 1_000_000 + got.microsecond == micros
