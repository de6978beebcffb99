"""The embedded offline engine: DuckDB over Parquet/CSV files, out of core when memory runs short.

It implements the written semantics (docs/architecture.md, "Feature semantics") with
non-quadratic plans:

* snapshot features — dedup by (entity, event time) with the tie rule, then one ASOF join per
  view; with an arrival column, a running arg-max in visibility order, then an ASOF join;
* windowed aggregations — per-hop partial aggregates (tiles) keyed by (entity, hop of the event
  time, hop of the visibility time). A query row at t with hop index T reads the tiles of hops
  T-n .. T-1 that were fully visible before hop T (an equi-join on the enumerated hop indexes:
  at most n+1 lookups per row and window, whatever the history length) plus the raw events that
  became visible inside hop T up to t. This is what the online store serves from its tiles.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from closedloop.backends import duckdb_ranges, ranges
from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS
from closedloop.backends.duckdb_types import COMPATIBLE, NANO_INSTANTS, SQL_TYPES, logical
from closedloop.backends.eventlog import EventLog
from closedloop.backends.windowsql import (
    hop_ctes,
    horizon_of,
    nulls_low,
    profile,
    q,
    us,
)
from closedloop.data.instants import FLOOR_FIX
from closedloop.data.sources import AnySource, LogicalType
from closedloop.errors import (
    BackendError,
    ConfigError,
    DataError,
    PointInTimeError,
    SchemaMismatch,
)
from closedloop.features.definitions import FeatureView, WindowedFeature

_PLANS = ("auto", "sql", "ranges")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class DuckDBEngine:
    """Offline engine on DuckDB. ``root`` resolves relative source paths.

    ``window_plan``: ``"auto"`` computes count, sum, mean, min and max windows as ranges over
    the events sorted in memory (``backends/ranges.py``) when they fit in half the memory
    limit, and everything else with the SQL plan (out of core); ``"sql"`` and ``"ranges"``
    force one plan (``"ranges"`` still leaves to SQL what it cannot compute). All plans give
    the same results.

    ``tile_min_compression``: the SQL plan computes windows from per-hop tiles when tiles would
    hold at least this many events on average, else from the events themselves (same results).

    >>> engine = DuckDBEngine(root=".")
    >>> engine.close()
    """

    def __init__(self, root: str | os.PathLike[str] = ".", memory_limit: str | None = None,
                 threads: int | None = None, temp_directory: str | None = None,
                 tile_min_compression: float = 2.0, log_root: str | None = None,
                 window_plan: str = "auto") -> None:
        if window_plan not in _PLANS:
            raise ConfigError(f"window_plan {window_plan!r} is unknown",
                              fix=f"use one of {', '.join(_PLANS)}")
        self.root = Path(root)
        self.window_plan = window_plan
        # The range plan's scan depth, listing limit and rows per chunk (see
        # backends/ranges.py); tests lower them to exercise the slow paths and chunking.
        self._range_depth, self._range_limit, self._range_chunk = 32, 20_000_000, 1 << 16
        self.log_root = log_root
        self.tile_min_compression = tile_min_compression
        self.memory_limit = memory_limit
        self.threads = threads
        self.temp_directory = temp_directory
        self._con: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()
        self._seq = 0

    # -- connection -------------------------------------------------------------------------
    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            config: dict[str, Any] = {"preserve_insertion_order": False}
            if self.memory_limit:
                config["memory_limit"] = self.memory_limit
            if self.threads:
                config["threads"] = self.threads
            if self.temp_directory:
                Path(self.temp_directory).mkdir(parents=True, exist_ok=True)
                config["temp_directory"] = self.temp_directory
            self._con = duckdb.connect(":memory:", config=config)
            self._con.execute("SET TimeZone = 'UTC'")
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _log(self, source: AnySource) -> EventLog | None:
        if self.log_root is None:
            return None
        return EventLog(Path(self.log_root) / source.name)

    def _path(self, source: AnySource) -> str:
        path = Path(source.path)
        if not path.is_absolute():
            path = self.root / path
        if not path.exists():
            raise DataError(f"source {source.name!r} has no data at {str(path)!r}",
                            fix="write its files there, or point path= at them")
        if path.is_dir():
            ext = "csv" if source.file_format == "csv" else "parquet"
            files = sorted(path.rglob(f"*.{ext}"))
            if not files:
                raise DataError(f"source {source.name!r}: folder {str(path)!r} holds no "
                                f".{ext} files", fix="write the source's files there")
            return str(path / "**" / f"*.{ext}")
        return str(path)

    def _scan(self, source: AnySource) -> str:
        """The source's rows: its files, and the rows pushed to its event log."""
        events = self._log(source)
        parts = events.parts() if events is not None else []
        log = (f"read_parquet([{', '.join(_lit(str(p)) for p in parts)}], union_by_name = true)"
               if parts else None)
        path = Path(source.path)
        if log is not None and not (path if path.is_absolute() else self.root / path).exists():
            return log                    # nothing but pushed rows so far
        path_sql = _lit(self._path(source))
        if source.file_format == "csv":
            declared = {c: SQL_TYPES[t] for c, t in source.logical_schema.items()}
            types = ", ".join(f"{_lit(c)}: {_lit(t)}" for c, t in declared.items())
            extra = f", types = {{{types}}}" if types else ""
            base = f"read_csv({path_sql}, header = true, union_by_name = true{extra})"
        else:
            base = f"read_parquet({path_sql}, union_by_name = true)"
        if log is None:
            return base
        return f"(SELECT * FROM {base} UNION ALL BY NAME SELECT * FROM {log})"

    def append(self, source: AnySource, rows: pa.Table,
               unique: Sequence[str] | None = None) -> pa.Table:
        events = self._required_log(source)
        if not unique:
            events.append(rows)
            return rows
        with events.writing():                 # no other deduplicating writer in between
            fresh = self._not_held(source, rows, list(unique))
            if fresh.num_rows:
                events.append(fresh)
        return fresh

    def _not_held(self, source: AnySource, rows: pa.Table, unique: list[str]) -> pa.Table:
        """The first of the rows sharing each ``unique`` value the source does not hold yet,
        in their order."""
        cols = ", ".join(q(c) for c in unique)
        sql = "SELECT min(r.__i) AS __i FROM __rows r"
        if self._has_data(source) and all(c in self.columns(source) for c in unique):
            on = " AND ".join(f"r.{q(c)} IS NOT DISTINCT FROM s.{q(c)}" for c in unique)
            sql += (f" ANTI JOIN (SELECT DISTINCT {cols} FROM {self._scan(source)}) s "
                    f"ON {on}")
        sql += " GROUP BY " + ", ".join(f"r.{q(c)}" for c in unique)
        narrow = rows.select(unique).append_column(
            "__i", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        keep = self._over(sql, narrow)["__i"].to_numpy()
        if len(keep) == rows.num_rows:
            return rows
        return rows.take(pa.array(np.sort(keep), pa.int64()))

    def _has_data(self, source: AnySource) -> bool:
        events = self._log(source)
        if events is not None and events.parts():
            return True
        path = Path(source.path)
        return (path if path.is_absolute() else self.root / path).exists()

    def read(self, source: AnySource, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row the source holds (its files and its event log), ``columns`` only when
        given; an empty table when it holds none yet."""
        if not self._has_data(source):
            return pa.table({c: pa.array([], pa.null()) for c in columns or []})
        cols = ", ".join(q(c) for c in columns) if columns else "*"
        return self._query(f"SELECT {cols} FROM {self._scan(source)}")

    def compact(self, source: AnySource, small_rows: int = 1_000_000) -> int:
        events = self._log(source)
        return 0 if events is None else events.compact(small_rows)   # no log: nothing to do

    def _required_log(self, source: AnySource) -> EventLog:
        events = self._log(source)
        if events is None:
            raise BackendError("this offline engine has no event log",
                               fix="open the project with closedloop.Project, which sets one")
        return events

    # -- schema -----------------------------------------------------------------------------
    def columns(self, source: AnySource) -> dict[str, str]:
        return {name: logical(kind) for name, kind in self._described(source).items()}

    def _described(self, source: AnySource) -> dict[str, str]:
        """The source's columns and their DuckDB types."""
        sql = f"DESCRIBE SELECT * FROM {self._scan(source)}"
        try:
            with self._lock:
                described = self._connection().execute(sql).fetchall()
        except duckdb.Error as exc:
            raise DataError(f"source {source.name!r} cannot be read: {exc}",
                            fix=f"check the files at {source.path!r}") from exc
        return {str(row[0]): str(row[1]) for row in described}

    def _check_micros(self, source: AnySource, described: dict[str, str],
                      columns: Sequence[str]) -> None:
        """Refuse nanosecond instants finer than a microsecond in the source's own files (the
        boundary ingestion and push guard for the rest): never rounded, as everywhere."""
        finer = [c for c in dict.fromkeys(columns)
                 if described.get(c, "").upper() in NANO_INSTANTS]
        if not finer:
            return
        counts = ", ".join(f"count(*) FILTER (WHERE epoch_ns({q(c)}) % 1000 <> 0)"
                           for c in finer)
        with self._lock:
            row = self._connection().execute(
                f"SELECT {counts} FROM {self._scan(source)}").fetchall()[0]
        for c, n in zip(finer, row, strict=True):
            if n:
                raise PointInTimeError(
                    f"column {c!r} of source {source.name!r} has {n:,} instant(s) finer than "
                    "a microsecond; closedloop keeps instants to the microsecond and does not "
                    "round them", fix=FLOOR_FIX)

    def check_source(self, source: AnySource, key: str, key_type: LogicalType,
                     needed: Sequence[str]) -> dict[str, str]:
        """Check that a source has what a view reads; return its columns."""
        described = self._described(source)
        cols = {name: logical(kind) for name, kind in described.items()}
        self._check_micros(source, described, [c for c in (*source.time_columns, *needed)
                                               if cols.get(c) == "timestamp"])
        for col, role in [(source.timestamp, "timestamp"), *(
                [(source.tie_column, "tie")] if source.tie_column else [])]:
            if col not in cols:
                raise SchemaMismatch(
                    f"source {source.name!r} has no {role} column {col!r}",
                    fix=f"its columns are {sorted(cols)}; set {role}= to one of them")
            if cols[col] == "timestamp_naive":
                raise PointInTimeError(
                    f"column {col!r} of source {source.name!r} holds naive timestamps (no time "
                    "zone); closedloop does not guess the zone",
                    fix="store UTC instants: pyarrow timestamp('us', tz='UTC'), or CSV strings "
                        "ending in 'Z' or '+00:00'")
            if cols[col] != "timestamp":
                raise SchemaMismatch(
                    f"{role} column {col!r} of source {source.name!r} is {cols[col]}, "
                    "not a timestamp", fix="store it as a UTC timestamp")
        if key not in cols:
            raise SchemaMismatch(f"source {source.name!r} has no entity key column {key!r}",
                                 fix=f"its columns are {sorted(cols)}")
        if cols[key] != key_type:
            raise SchemaMismatch(
                f"entity key {key!r} is {cols[key]} in source {source.name!r} but the entity "
                f"declares {key_type}", fix="declare the entity dtype to match the data")
        declared = source.logical_schema
        for col in needed:
            if col not in cols:
                raise SchemaMismatch(f"source {source.name!r} has no column {col!r}",
                                     fix=f"its columns are {sorted(cols)}")
            want = declared.get(col)
            if want is not None and cols[col] not in COMPATIBLE[want]:
                raise SchemaMismatch(
                    f"column {col!r} of source {source.name!r} is {cols[col]}, but the source "
                    f"declares {want}", fix="fix the data or the declared schema")
        return cols

    # -- point in time ----------------------------------------------------------------------
    def point_in_time(self, rows: pa.Table, view: FeatureView,
                      features: Sequence[str]) -> pa.Table:
        source = view.source
        key_type = view.entity.spec()["dtype"]
        needed = ([w.column for w in view.windowed if w.name in features] if view.aggregations
                  else list(view.row_columns))
        types = self.check_source(source, view.entity.key, key_type, sorted(set(needed)))
        if not view.aggregations:
            return self._run(self._snapshot_sql(view, list(features)), rows)
        wanted = [w for w in view.windowed if w.name in features]
        fast = [] if self.window_plan == "sql" else [
            w for w in wanted if w.fn in ranges.FNS and (
                w.fn == "count" or types.get(w.column) in ("int64", "float64"))]
        if fast:
            fast = duckdb_ranges.ranges_fit(self, view, fast, rows.num_rows)
        parts = []
        if fast:
            part, done = duckdb_ranges.windows(self, view, fast, rows, types)
            if done:                              # the rest go to the SQL plan, in one query
                parts.append(part)
                wanted = [w for w in wanted if w not in done]
        if wanted or not parts:
            parts.append(self._run(self._windowed_sql(view, wanted, types,
                                                      horizon_of(rows)), rows))
        out = parts[0]
        for part in parts[1:]:
            for name in part.column_names[1:]:
                out = out.append_column(name, part[name])
        return out

    def _run(self, sql: str, rows: pa.Table) -> pa.Table:
        result = self._over(sql, rows)
        if result.num_rows != rows.num_rows:  # pragma: no cover - an engine bug, not bad input
            raise BackendError(f"point-in-time query returned {result.num_rows} rows for "
                               f"{rows.num_rows}", fix="report this as a bug")
        return result

    def lookup(self, keys: pa.Array | pa.ChunkedArray,
               values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """For each of ``keys``, the position in ``values`` (distinct, of the same type) of
        the equal value; null where there is none. A hash join in DuckDB, in parallel — several
        times faster than Arrow's single-threaded ``index_in`` on millions of strings."""
        n = len(keys)
        at = np.arange(max(n, len(values)), dtype=np.int64)    # both sides' positions
        found = self._over("SELECT i, j FROM __rows JOIN __values USING (k)",
                           pa.table({"k": keys, "i": pa.array(at[:n])}),
                           pa.table({"k": values, "j": pa.array(at[:len(values)])}))
        out = np.full(n, -1, dtype=np.int64)
        for i, j in zip(found["i"].chunks, found["j"].chunks, strict=True):  # one table's
            out[i.to_numpy()] = j.to_numpy()                                  # batches
        missing = out < 0
        return pa.array(out, mask=missing if missing.any() else None)

    def encode(self, keys: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
        """``keys`` dictionary-encoded: the distinct values, then each key's position among
        them (``lookup``) — DuckDB's parallel hash table, where Arrow's encoder is one
        thread."""
        distinct = self._over("SELECT DISTINCT k FROM __rows WHERE k IS NOT NULL",
                              pa.table({"k": keys}))["k"].combine_chunks()
        return pa.DictionaryArray.from_arrays(self.lookup(keys, distinct), distinct)

    def _over(self, sql: str, rows: pa.Table, values: pa.Table | None = None) -> pa.Table:
        """Run ``sql`` with ``rows`` registered as ``__rows`` (and ``values`` as
        ``__values``); DuckDB's errors as ours."""
        with self._lock:
            con = self._connection()
            self._seq += 1
            names = {"__rows": rows} if values is None else {"__rows": rows, "__values": values}
            for name, table in names.items():
                con.register(f"{name}_{self._seq}", table)
                sql = sql.replace(name, f"{name}_{self._seq}")
            try:
                result = con.sql(sql).to_arrow_table()
            except duckdb.OutOfMemoryException as exc:
                raise BackendError(f"DuckDB ran out of memory: {exc}",
                                   fix="raise [offline] memory_limit or set temp_directory "
                                       "so it can spill") from exc
            except duckdb.IOException as exc:
                raise BackendError(f"the offline engine could not read or write: {exc}",
                                   fix="check the source files and [offline] temp_directory"
                                   ) from exc
            except duckdb.Error as exc:
                raise DataError(f"the offline query failed: {exc}",
                                fix="check the source files against their definitions") from exc
            finally:
                for name in names:
                    con.unregister(f"{name}_{self._seq}")
        return result

    def _source_cte(self, view: FeatureView, columns: Sequence[str]) -> str:
        source = view.source
        ts = us(q(source.timestamp))
        tie = us(q(source.tie_column)) if source.tie_column else "NULL::BIGINT"
        vis = source.visibility_column
        v = f"greatest({ts}, {us(q(vis))})" if vis else ts
        cols = "".join(f", {q(c)}" for c in dict.fromkeys(columns))
        return (f"SELECT CAST({q(view.entity.key)} AS {self._key_sql(view)}) AS __k, "
                f"{ts} AS __et, "
                f"{v} AS __v, {tie} AS __tie{cols} FROM {self._scan(source)} "
                f"WHERE {q(view.entity.key)} IS NOT NULL AND {q(source.timestamp)} IS NOT NULL")

    def _snapshot_sql(self, view: FeatureView, features: list[str]) -> str:
        all_cols = list(view.row_columns)  # the tie rule orders by every column of the row
        ttl = view.ttl_micros
        flag = view.deleted_column
        keys = [nulls_low("__tie"), *(nulls_low(q(c)) for c in all_cols)]
        payload = ", ".join(f"{q('f_' + c)} := {q(c)}"
                            for c in ([flag] if flag else []) + list(features))
        src = self._source_cte(view, all_cols)
        if view.source.visibility_column is None:
            # ASOF on the narrow (key, event time) pairs finds the latest event time at or
            # before t; an equi-join then gathers the rows sharing it and the tie order
            # picks one. Cheaper than deduplicating every row of the source first.
            order = ", ".join(f"o{j} := {k}" for j, k in enumerate(keys))
            narrow = (f"SELECT CAST({q(view.entity.key)} AS {self._key_sql(view)}) AS __k, "
                      f"{us(q(view.source.timestamp))} AS __et "
                      f"FROM {self._scan(view.source)} WHERE {q(view.entity.key)} IS NOT NULL "
                      f"AND {q(view.source.timestamp)} IS NOT NULL")
            matched = (f"SELECT r.{ROW_ID}, r.{ROW_KEY}, r.{ROW_TS}, n.__et FROM __rows r "
                       f"ASOF LEFT JOIN ({narrow}) n ON r.{ROW_KEY} = n.__k "
                       f"AND r.{ROW_TS} >= n.__et")
            best = (f"SELECT m.{ROW_ID}, any_value(m.{ROW_TS}) AS {ROW_TS}, "
                    f"any_value(m.__et) AS __et, arg_max(struct_pack({payload}), "
                    f"struct_pack({order})) AS b FROM ({matched}) m LEFT JOIN ({src}) s "
                    f"ON s.__k = m.{ROW_KEY} AND s.__et = m.__et GROUP BY m.{ROW_ID}")
            keep = "TRUE" if ttl is None else f"{ROW_TS} - __et <= {ttl}"
            if flag:                               # the latest row is a delete: no state
                keep += f" AND b.{q('f_' + flag)} IS NOT TRUE"
            outs = ", ".join(f"CASE WHEN {keep} THEN b.{q('f_' + c)} END AS {q(c)}"
                             for c in features)
            return f"SELECT {ROW_ID}, {outs} FROM ({best}) ORDER BY {ROW_ID}"
        # With arrival times: a running arg-max of the tie order in visibility order.
        order = ", ".join(f"o{j} := {k}" for j, k in enumerate(["__et", *keys]))
        latest = (f"SELECT DISTINCT ON (__k, __v) __k, __v, arg_max(struct_pack(et := __et, "
                  f"{payload}), struct_pack({order})) OVER (PARTITION BY __k ORDER BY __v "
                  f"RANGE UNBOUNDED PRECEDING) AS b FROM ({src})")
        keep = "TRUE" if ttl is None else f"r.{ROW_TS} - l.b.et <= {ttl}"
        if flag:
            keep += f" AND l.b.{q('f_' + flag)} IS NOT TRUE"
        outs = ", ".join(f"CASE WHEN {keep} THEN l.b.{q('f_' + c)} END AS {q(c)}"
                         for c in features)
        return (f"SELECT r.{ROW_ID}, {outs} FROM __rows r ASOF LEFT JOIN ({latest}) l "
                f"ON r.{ROW_KEY} = l.__k AND r.{ROW_TS} >= l.__v ORDER BY r.{ROW_ID}")

    @staticmethod
    def _key_sql(view: FeatureView) -> str:
        return SQL_TYPES[view.entity.spec()["dtype"]]

    def _windowed_sql(self, view: FeatureView, wanted: list[WindowedFeature],
                      types: dict[str, str], horizon: int | None = None) -> str:
        """The SQL plan's query; ``horizon``: the latest row's instant — the events visible
        after it are read by no row, and left out of the scan and the profile alike."""
        columns = list(dict.fromkeys(w.column for w in wanted))
        seen = "" if horizon is None else f" WHERE __v <= {int(horizon)}"
        ctes = [f"src AS ({self._source_cte(view, columns)})",
                f"ev AS (SELECT * FROM src{seen})"]
        hops = sorted({w.hop for w in wanted})
        summed = sorted({w.column for w in wanted if w.fn in ("sum", "mean", "stddev")})
        ints = {c for c in summed if types.get(c) == "int64"}
        compression, scales = self._profile(view, hops, summed, ints, horizon)
        selects: list[str] = []
        joins: list[str] = []
        for i, hop in enumerate(hops):
            group = [w for w in wanted if w.hop == hop]
            tiled = compression[hop] >= self.tile_min_compression
            ctes += hop_ctes(i, hop, group, tiled=tiled, scales=scales, ints=ints)
            selects += [f"coalesce(h{i}.{q(w.name)}, 0) AS {q(w.name)}"
                        if w.fn in ("count", "sum") else f"h{i}.{q(w.name)}" for w in group]
            joins.append(f"LEFT JOIN h{i} ON h{i}.{ROW_ID} = r.{ROW_ID}")
        return (f"WITH {', '.join(ctes)} SELECT r.{ROW_ID}, {', '.join(selects)} "
                f"FROM __rows r {' '.join(joins)} ORDER BY r.{ROW_ID}")

    def _profile(self, view: FeatureView, hops: list[int], summed: list[str],
                 ints: Collection[str] = (), horizon: int | None = None,
                 ) -> tuple[dict[int, float], dict[str, tuple[float, float] | None]]:
        """One scan of the source (of the rows visible by ``horizon``): tiles' compression
        and the sums' scales (``windowsql.profile``)."""
        def first_row(sql: str) -> tuple[Any, ...]:
            with self._lock:
                return tuple(self._connection().execute(sql).fetchall()[0])
        return profile(view, hops, summed, ints, self._scan(view.source), first_row, horizon)

    # -- materialization (backends/duckdb_materialize.py) ----------------------------------
    def latest(self, view: FeatureView, at: int, since: int | None = None,
               written: int | None = None) -> pa.Table:
        """Per entity, the snapshot row visible at ``at`` (see ``duckdb_materialize``)."""
        from closedloop.backends import duckdb_materialize

        return duckdb_materialize.latest(self, view, at, since, written)

    def tiles(self, view: FeatureView, hop: int, span: int, at: int,
              since: int | None = None, written: int | None = None) -> pa.Table:
        """Per entity and hop bucket, the partial aggregates (see ``duckdb_materialize``)."""
        from closedloop.backends import duckdb_materialize

        return duckdb_materialize.tiles(self, view, hop, span, at, since, written)

    def _query(self, sql: str) -> pa.Table:
        with self._lock:
            try:
                return self._connection().sql(sql).to_arrow_table()
            except duckdb.Error as exc:
                raise DataError(f"the offline query failed: {exc}",
                                fix="check the source files against their definitions") from exc
