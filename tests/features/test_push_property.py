"""Property: push events (in arrival order, in batches) after a materialization; after every
batch, the online vector at that instant equals the offline training set at that instant —
which now reads the pushed rows from the event log too — including rows pushed before their
event time (clock skew), which count from their time on. On SQLite and on Redis."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.backends.duckdb import DuckDBEngine
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.testing import same_value
from tests.features.test_pointintime_property import KEYS, T0, _ts, events, write_history
from tests.reference import reference_features


def _dt(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(base=events, pushed=events, batches=st.integers(1, 4), use_arrival=st.booleans(),
       skew=st.booleans(), replay=st.booleans())
def test_pushed_events_are_served_as_offline_sees_them(online_store, base, pushed, batches,
                                                        use_arrival, skew, replay):  # type: ignore[no-untyped-def]
    """... and, with ``replay``, every batch pushed again and a base event pushed once more
    (a stream delivering at least once): the source's id makes each count once, on both
    paths."""
    with tempfile.TemporaryDirectory() as folder:
        h = write_history(folder, base, [], use_arrival, "1d")
        views = [h.views["w"], h.views["e"]]
        for view in views:
            online_store.clear(f"{view.name}@{view.version}")
        online_store.clear("__closedloop")
        engine = DuckDBEngine(log_root=str(Path(folder) / "log"))
        try:
            service = FeatureService(Catalog(views), engine, online_store)
            start = max([r["arrival"] for r in h.ev_rows] + [T0])
            service.materialize(at=_dt(start))
            # Events to push arrive after `start`, in arrival order; with skew, some arrive
            # before their event time (a clock ahead): not visible until then.
            rows = sorted(({"ev_id": f"p{n}", "user_id": e["user_id"], "ts": e["ts"],
                            "arrival": max(start + 1, e["ts"] + (-e["lag"] if skew else
                                                                  e["lag"])),
                            "amount": e["amount"]} for n, e in enumerate(pushed)),
                          key=lambda r: r["arrival"])
            size = max(1, len(rows) // batches)
            refs = [f"{n}.{f}" for n, v in (("w", views[0]), ("e", views[1]))
                    for f in v.feature_names]
            for i in range(0, len(rows), size):
                chunk = rows[i:i + size]
                now = chunk[-1]["arrival"]
                table = pa.table({"ev_id": [r["ev_id"] for r in chunk],
                                  "user_id": [r["user_id"] for r in chunk],
                                  "ts": _ts([r["ts"] for r in chunk]),
                                  "arrival": _ts([r["arrival"] for r in chunk]),
                                  "amount": pa.array([r["amount"] for r in chunk], pa.float64())})
                if not use_arrival:
                    table = table.drop_columns(["arrival"])
                service.push("ev", table, at=_dt(now))
                if replay:                       # delivered again: nothing changes
                    again = service.push("ev", table, at=_dt(now))
                    assert (again.rows, again.duplicates) == (0, table.num_rows)
                    old = h.ev_rows[0]
                    service.push("ev", pa.table({
                        "ev_id": [old["ev_id"]], "user_id": [old["user_id"]],
                        "ts": _ts([old["ts"]]), "arrival": _ts([now]),
                        "amount": pa.array([old["amount"]], pa.float64())}).select(
                            table.column_names), at=_dt(now))
                keys = [*KEYS, "zz"]
                # At the push, and later — when rows pushed ahead of their time come due.
                due = sorted({r["ts"] for r in chunk if r["ts"] > now})[:3]
                for t in [now, *due]:
                    offline = service.training_set(
                        pa.table({"user_id": keys, "t": _ts([t] * len(keys))}), refs)
                    served = service.online([{"user_id": k} for k in keys], refs, at=_dt(t))
                    for j, vector in enumerate(served):
                        for ref in refs:
                            want = offline[ref][j].as_py()
                            assert same_value(vector.values[ref], want), (
                                keys[j], t, ref, vector.values[ref], want)
            # Both paths count each event once: offline equals the reference over the base
            # rows and the pushed rows, each taken once.
            if rows:
                end = max(max(r["arrival"], r["ts"]) for r in rows)
                offline = service.training_set(
                    pa.table({"user_id": KEYS, "t": _ts([end] * len(KEYS))}), refs)
                for j, key in enumerate(KEYS):
                    want = reference_features(views[0], [*h.ev_rows, *rows], key, end)
                    for name, value in want.items():
                        have = offline[f"w.{name}"][j].as_py()
                        assert same_value(have, value), (key, name, have, value)
        finally:
            engine.close()
