"""The DuckDB engine's materialization queries: per entity, the snapshot row visible at an
instant (``latest``) and the tiles of partial aggregates a window can still read (``tiles``),
for every entity or only those an incremental run redoes (``changed``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pyarrow as pa

from closedloop.backends.windowsql import double, fdiv, nulls_low, q, us
from closedloop.data.sources import INGESTED_AT
from closedloop.features.definitions import FeatureView

if TYPE_CHECKING:
    from closedloop.backends.duckdb import DuckDBEngine


def _no_rows(names: Sequence[str]) -> pa.Table:
    """An empty result with these columns."""
    return pa.table({n: pa.array([], pa.null()) for n in names})


def changed(engine: DuckDBEngine, view: FeatureView, at: int, since: int | None,
             written: int | None = None) -> str:
    """The filter to the entities an incremental run redoes: those with a row that became
    visible after ``since`` (its arrival, or its event time where the source records no
    arrival), or that the store was given after the last run — by its ``created`` instant
    (after ``since``) or its ingest stamp, the wall-clock instant every row ingested or
    pushed carries (after ``written``, the wall-clock instant the last run began; after
    ``since`` for a run that did not record it) — so a late row lands whatever its times,
    in every kind of source, and whatever the project's clock."""
    if since is None:
        return ""
    source = view.source
    cols = engine.columns(source)
    # A run at its watermark's own instant: only what the store was given since counts.
    given = {c: since for c in [source.tie_column] if c is not None and since < at}
    given[INGESTED_AT] = since if written is None else written
    late = "".join(f" OR {us(q(c))} > {after}" for c, after in given.items()
                   if cols.get(c) == "timestamp")
    ts = us(q(source.timestamp))
    vis = source.visibility_column
    v = f"greatest({ts}, {us(q(vis))})" if vis else ts
    return (f" AND __k IN (SELECT CAST({q(view.entity.key)} AS {engine._key_sql(view)}) "
            f"FROM {engine._scan(source)} WHERE {q(view.entity.key)} IS NOT NULL AND "
            f"{q(source.timestamp)} IS NOT NULL AND (({v} > {since} AND {v} <= {at})"
            f"{late}))")

def latest(engine: DuckDBEngine, view: FeatureView, at: int, since: int | None = None,
           written: int | None = None) -> pa.Table:
    """Per entity, the snapshot row visible at ``at`` (for entities with rows that became
    visible after ``since``, when given): key, event time, tie, then the features."""
    cols = list(view.row_columns)
    if not engine._has_data(view.source):      # nothing ingested or pushed yet: no entity
        return _no_rows(["key", "et", "tie", *cols])
    engine.check_source(view.source, view.entity.key, view.entity.spec()["dtype"], cols)
    keys = [nulls_low("__tie"), *(nulls_low(q(c)) for c in cols)]
    order = ", ".join(f"o{j} := {k}" for j, k in enumerate(["__et", *keys]))
    payload = ", ".join(["et := __et", "tie := __tie",
                         *(f"{q('f_' + c)} := {q(c)}" for c in cols)])
    outs = ", ".join(["b.et AS et", "b.tie AS tie",
                      *(f"b.{q('f_' + c)} AS {q(c)}" for c in cols)])
    sql = (f"WITH src AS ({engine._source_cte(view, cols)}) "
           f"SELECT CAST(__k AS VARCHAR) AS key, {outs} "
           f"FROM (SELECT __k, arg_max(struct_pack({payload}), struct_pack({order})) AS b "
           f"FROM src WHERE __v <= {at}{changed(engine, view, at, since, written)} "
           "GROUP BY __k)")
    return engine._query(sql)

def tiles(engine: DuckDBEngine, view: FeatureView, hop: int, span: int, at: int,
          since: int | None = None, written: int | None = None) -> pa.Table:
    """Per entity and hop bucket, the partial aggregates of every aggregated column over
    the rows visible at ``at``, for the buckets a window of ``span`` hops can still read
    (for entities with rows that became visible after ``since``, when given)."""
    columns = list(dict.fromkeys(a.column for a in view.aggregations))
    if not engine._has_data(view.source):
        return _no_rows(["key", "b", *(f"{f}{i}" for i in range(len(columns))
                                       for f in ("n", "s", "c", "m", "lo", "hi", "l", "o"))])
    types = engine.check_source(view.source, view.entity.key, view.entity.spec()["dtype"],
                              columns)
    summed = [c for c in columns if types[c] in ("int64", "float64", "bool")]
    ints = {c for c in summed if types[c] != "float64"}
    _, scales = engine._profile(view, [], [c for c in summed if c not in ints], ints,
                                horizon=at)
    parts = []
    sums = []
    for i, c in enumerate(columns):
        qc = q(c)
        numeric = c in summed
        order = "struct_pack(et := __et, tp := __tie IS NOT NULL, tie := coalesce(__tie, 0))"
        # Float sums in a fixed order, so that a rerun writes the same bits.
        fixed = f"ORDER BY __et, __tie, {qc}"
        if not numeric:
            parts += [f"0.0 AS s{i}", f"0.0 AS c{i}"]
        elif c in ints or scales.get(c) is not None:
            # The tile's exact sum H (a 128-bit integer: the values, or the values × 2^k
            # as the training-set plans add them) as the pair s + c the online tiles keep.
            k = 1.0 if c in ints else scales[c][0]  # type: ignore[index]  # not None
            term = (f"CAST(CAST({qc} AS BIGINT) AS HUGEINT)" if c in ints
                    else f"CAST({qc}::DOUBLE * {double(k)} AS HUGEINT)")
            parts.append(f"sum({term}) AS h{i}")
            sums.append(f"coalesce(CAST(h{i} AS DOUBLE) / {double(k)}, 0.0) AS s{i}, "
                        f"coalesce(CAST(h{i} - CAST(CAST(h{i} AS DOUBLE) AS HUGEINT) AS "
                        f"DOUBLE) / {double(k)}, 0.0) AS c{i}")
        else:                      # NaN or infinities: a float sum in a fixed order
            parts += [f"sum({qc}::DOUBLE {fixed}) AS s{i}", f"0.0 AS c{i}"]
        parts += [
            f"count({qc}) AS n{i}",
            f"coalesce(var_pop({qc}::DOUBLE {fixed}) * count({qc}), 0) AS m{i}" if numeric
            else f"0.0 AS m{i}",
            f"min({qc}) AS lo{i}", f"max({qc}) AS hi{i}",
            f"arg_max({qc}, struct_pack(o := {order}, v := {qc})) "
            f"FILTER (WHERE {qc} IS NOT NULL) AS l{i}",
            f"max({order}) FILTER (WHERE {qc} IS NOT NULL) AS o{i}",
        ]
    b = fdiv("__et", hop)
    sql = (f"WITH src AS ({engine._source_cte(view, columns)}) "
           f"SELECT CAST(__k AS VARCHAR) AS key, {b} AS b, {', '.join(parts)} FROM src "
           f"WHERE __v <= {at} AND {b} >= {fdiv(str(at), hop)} - {span}"
           f"{changed(engine, view, at, since, written)} GROUP BY ALL")
    if sums:
        drop = ", ".join(f"h{i}" for i, c in enumerate(columns)
                         if c in summed and (c in ints or scales.get(c) is not None))
        sql = f"SELECT * EXCLUDE ({drop}), {', '.join(sums)} FROM ({sql})"
    return engine._query(sql)

