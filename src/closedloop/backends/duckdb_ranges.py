"""The DuckDB engine's side of the range plan (``backends/ranges.py``): whether a query's
windows fit it, the view's events and the rows sorted by entity and time as its inputs, and
its results as point-in-time columns."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends import ranges
from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS
from closedloop.backends.windowsql import horizon_of, q
from closedloop.data.sources import ARROW_TYPES
from closedloop.errors import DataError
from closedloop.features.definitions import FeatureView, WindowedFeature

if TYPE_CHECKING:
    from closedloop.backends.duckdb import DuckDBEngine


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10,
          "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _bytes(setting: str) -> int:
    """DuckDB's memory_limit setting ("18.6 GiB") in bytes."""
    number, _, unit = setting.strip().partition(" ")
    try:
        return int(float(number) * _UNITS.get(unit.upper() or "B", 1))
    except ValueError:
        return 0


def _ascending(ids: np.ndarray[Any, Any]) -> bool:
    return bool(ids.size < 2 or (ids[1:] >= ids[:-1]).all())


def ranges_fit(engine: DuckDBEngine, view: FeatureView, fast: list[WindowedFeature],
                rows: int) -> list[WindowedFeature]:
    """``fast`` if the range plan's arrays fit in half the memory limit (or the plan is
    forced), else none."""
    if engine.window_plan == "ranges":
        return fast
    with engine._lock:
        con = engine._connection()
        # fetchall: a result left half-read blocks the connection's next statement.
        events = int(con.execute(f"SELECT count(*) FROM {engine._scan(view.source)}")
                     .fetchall()[0][0])
        limit = str(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])
    columns = {w.column for w in fast}
    extremes = sum(1 for w in fast if w.fn in ("min", "max"))
    # code, time, visibility, running max; per column values, validity, counts and limbs;
    # a sparse table of ~16 levels per min/max; per row ~12 arrays.
    need = 8 * (events * (4 + 6 * len(columns) + 16 * extremes) + rows * 12)
    return fast if need <= _bytes(limit) // 2 else []

def windows(engine: DuckDBEngine, view: FeatureView, fast: list[WindowedFeature], rows: pa.Table,
            types: dict[str, str]) -> tuple[pa.Table, list[WindowedFeature]]:
    """The ``fast`` windows the range plan computes, ordered by row id like every
    point-in-time result, and which they are: not those over columns holding NaN or
    infinities, nor any if the slow path would list too many events."""
    events, at, codes, t = range_inputs(engine, view, fast, rows, types)
    odd = {c for c, col in events.columns.items() if col.values.dtype.kind == "f"
           and not np.isfinite(col.values).all()}
    easy = [w for w in fast if w.fn == "count" or w.column not in odd]
    n = rows.num_rows
    try:
        values = (ranges.aggregate(events, codes, t, easy, at, n,
                                   depth=engine._range_depth, limit=engine._range_limit,
                                   chunk=engine._range_chunk,
                                   threads=engine.threads or os.cpu_count() or 1)
                  if easy else {})
    except ranges.TooDeep:
        easy, values = [], {}
    ids = rows[ROW_ID].to_numpy(zero_copy_only=False)
    order = None
    if not _ascending(ids):                   # row i of the result: the i-th smallest id
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
    columns: dict[str, pa.Array] = {ROW_ID: pa.array(ids)}
    for w in easy:
        full, mask = values[w.name]
        if order is not None:
            full, mask = full[order], None if mask is None else mask[order]
        kind = (pa.float64() if w.fn in ("sum", "mean") else pa.int64() if w.fn == "count"
                else events.columns[w.column].arrow_type)
        columns[w.name] = pa.array(full, type=kind, mask=mask)
    return pa.table(columns), easy

def range_inputs(engine: DuckDBEngine, view: FeatureView, fast: list[WindowedFeature],
                 rows: pa.Table, types: dict[str, str],
                  ) -> tuple[ranges.Events, np.ndarray[Any, Any], np.ndarray[Any, Any],
                             np.ndarray[Any, Any]]:
    """The view's events sorted by (entity code, event time) with the columns ``fast``
    reads; and the rows whose entity has events, sorted by (code, time): their positions
    in ``rows``, codes and times. ``types``: the source's logical column types."""
    values = {w.column for w in fast if w.fn != "count"}
    columns = list(dict.fromkeys(w.column for w in fast))
    cast = {c: ("BIGINT" if types.get(c) == "int64" else "DOUBLE") for c in values}
    picks = "".join(
        f", e.{q(c)}::{cast[c]} AS {q('x' + str(i))}" if c in cast else
        f", (e.{q(c)} IS NOT NULL) AS {q('x' + str(i))}" for i, c in enumerate(columns))
    with engine._lock:
        con = engine._connection()
        engine._seq += 1
        ev, ks, name = f"__ev_{engine._seq}", f"__ks_{engine._seq}", f"__rk_{engine._seq}"
        keys = pa.table({"__i": pa.array(np.arange(rows.num_rows, dtype=np.int64)),
                         "__k": rows[ROW_KEY], "__t": rows[ROW_TS]})
        con.register(name, keys)
        try:
            horizon = horizon_of(rows)        # events no row can see are not read
            seen = "" if horizon is None else f" WHERE __v <= {horizon}"
            con.execute(f"CREATE TEMP TABLE {ev} AS SELECT * FROM "
                        f"({engine._source_cte(view, columns)}){seen}")
            con.execute(f"CREATE TEMP TABLE {ks} AS SELECT __k, (row_number() OVER () "
                        f"- 1)::BIGINT AS __c FROM (SELECT DISTINCT __k FROM {ev})")
            sorted_events = con.sql(
                f"SELECT k.__c, e.__et, e.__v{picks} FROM {ev} e JOIN {ks} k "
                f"USING (__k) ORDER BY k.__c, e.__et").to_arrow_table()
            found = con.sql(f"SELECT r.__i, k.__c, r.__t::BIGINT AS __t FROM {name} r "
                            f"JOIN {ks} k ON r.__k = k.__k ORDER BY k.__c, r.__t"
                            ).to_arrow_table()
        except duckdb.Error as exc:
            raise DataError(f"the offline query failed: {exc}",
                            fix="check the source files against their definitions") from exc
        finally:
            con.unregister(name)
            con.execute(f"DROP TABLE IF EXISTS {ev}")
            con.execute(f"DROP TABLE IF EXISTS {ks}")
    cols: dict[str, ranges.Column] = {}
    for i, c in enumerate(columns):
        arr = sorted_events[f"x{i}"]
        if c in cast:
            zero = pa.scalar(0, arr.type)
            cols[c] = ranges.Column(
                pc.fill_null(arr, zero).to_numpy(), pc.is_valid(arr).to_numpy(),
                ARROW_TYPES[types[c]])
        else:
            valid = arr.to_numpy(zero_copy_only=False)
            cols[c] = ranges.Column(np.zeros(valid.size, np.int64), valid, pa.int64())
    events = ranges.Events(sorted_events["__c"].to_numpy(), sorted_events["__et"].to_numpy(),
                           sorted_events["__v"].to_numpy(), cols)
    return (events, found["__i"].to_numpy(), found["__c"].to_numpy(),
            found["__t"].to_numpy())

