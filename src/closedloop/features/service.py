"""The feature service: point-in-time training sets and backfills over the offline engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS, OfflineEngine
from closedloop.errors import DataError, PointInTimeError, SchemaMismatch
from closedloop.features.catalog import Catalog, Resolution
from closedloop.features.definitions import FeatureView, Transform

_ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(),
                "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}

#: Called before each step: (steps done, steps in all, what the next step is).
Progress = Callable[[int, int, str], None]


def _as_table(rows: Any) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if isinstance(rows, pa.RecordBatch):
        return pa.Table.from_batches([rows])
    if hasattr(rows, "__arrow_c_stream__") or type(rows).__name__ == "DataFrame":
        try:
            return pa.table(rows)
        except (TypeError, pa.ArrowInvalid) as exc:
            raise DataError(f"entity rows could not be read as a table: {exc}",
                            fix="pass a pyarrow.Table or a pandas DataFrame") from exc
    raise DataError(f"entity rows of type {type(rows).__name__} are not a table",
                    fix="pass a pyarrow.Table or a pandas DataFrame")


def _timestamp_column(table: pa.Table, timestamp: str | None) -> str:
    if timestamp is not None:
        if timestamp not in table.column_names:
            raise SchemaMismatch(f"entity rows have no timestamp column {timestamp!r}",
                                 fix=f"their columns are {table.column_names}")
        return timestamp
    found = [f.name for f in table.schema if pa.types.is_timestamp(f.type)]
    if len(found) != 1:
        raise SchemaMismatch(
            f"entity rows have {len(found)} timestamp columns {found}; closedloop needs to "
            "know which one is the row's time", fix="pass timestamp='column'")
    return str(found[0])


def to_micros(column: pa.ChunkedArray, what: str) -> pa.ChunkedArray:
    """UTC instants as int64 µs; naive timestamps are refused, never guessed."""
    if not pa.types.is_timestamp(column.type):
        raise PointInTimeError(f"{what} is {column.type}, not a timestamp",
                               fix="use timezone-aware UTC timestamps")
    if column.type.tz is None:
        raise PointInTimeError(
            f"{what} holds naive timestamps (no time zone); closedloop does not guess the zone",
            fix="make them UTC instants, e.g. pandas .dt.tz_localize('UTC') or "
                "pyarrow timestamp('us', tz='UTC')")
    if column.null_count:
        raise PointInTimeError(f"{what} has {column.null_count} null timestamps",
                               fix="every entity row needs the time it is asked about")
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())


class FeatureService:
    """Builds training sets: ``project.features``."""

    def __init__(self, catalog: Catalog, engine: OfflineEngine) -> None:
        self.catalog = catalog
        self.engine = engine

    def training_set(self, entity_rows: Any, features: Sequence[str], *,
                     timestamp: str | None = None, progress: Progress | None = None) -> pa.Table:
        """Every requested feature as known at each row's timestamp, beside the row's columns.

        Row order and count are preserved; a missing value is the declared default or null.
        """
        table = _as_table(entity_rows)
        resolution = self.catalog.resolve(list(features))
        if table.num_rows == 0:
            raise DataError("the entity table is empty", fix="pass at least one row")
        clash = [r for r in resolution.requested if r in table.column_names]
        if clash:
            raise SchemaMismatch(f"entity rows already have columns named {clash}",
                                 fix="rename those columns or drop them")
        values = self._compute(table, resolution, timestamp, progress)
        out = table
        for ref in resolution.requested:
            out = out.append_column(ref, values[resolution.columns[ref]])
        return out

    def backfill(self, training_set: Any, features: Sequence[str], *,
                 timestamp: str | None = None, progress: Progress | None = None) -> pa.Table:
        """Add features to an existing training set, computed as of each row's own time.

        The same code path as ``training_set``: a feature added today gets its history from
        the raw sources.
        """
        table = _as_table(training_set)
        return self.training_set(table, features, timestamp=timestamp, progress=progress)

    def _compute(self, table: pa.Table, resolution: Resolution, timestamp: str | None,
                 progress: Progress | None) -> dict[str, pa.ChunkedArray]:
        ts_col = _timestamp_column(table, timestamp)
        micros = to_micros(table[ts_col], f"timestamp column {ts_col!r} of the entity rows")
        row_ids = pa.array(np.arange(table.num_rows, dtype=np.int64))
        values: dict[str, pa.ChunkedArray] = {}
        groups = resolution.by_view()
        steps = len(groups) + len(resolution.transforms)
        for n, (view, names) in enumerate(groups):
            if progress:
                progress(n, steps, f"{view.name} v{view.version}: {len(names)} features")
            keys = self._keys(table, view)
            rows = pa.table({ROW_ID: row_ids, ROW_KEY: keys, ROW_TS: micros})
            result = self.engine.point_in_time(rows, view, names)
            for name in names:
                values[f"{view.name}@{view.version}.{name}"] = self._finish(
                    result[name], view, name)
        for n, t in enumerate(resolution.transforms, start=len(groups)):
            if progress:
                progress(n, steps, f"transform {t.name}")
            values[t.name] = self._run_transform(t, table, resolution, values)
        if progress:
            progress(steps, steps, "done")
        return values

    @staticmethod
    def _keys(table: pa.Table, view: FeatureView) -> pa.ChunkedArray:
        key = view.entity.key
        if key not in table.column_names:
            raise SchemaMismatch(
                f"entity rows have no column {key!r}, the key of entity {view.entity.name!r} "
                f"(needed by view {view.name!r})", fix=f"their columns are {table.column_names}")
        want = _ARROW_TYPES[view.entity.spec()["dtype"]]
        col = table[key]
        ok = (pa.types.is_string(want) and (pa.types.is_string(col.type)
                                            or pa.types.is_large_string(col.type))) or (
            pa.types.is_integer(want) and pa.types.is_integer(col.type))
        if not ok:
            raise SchemaMismatch(
                f"column {key!r} of the entity rows is {col.type}, but entity "
                f"{view.entity.name!r} declares {want}", fix=f"cast the column to {want}")
        return pc.cast(col, want)

    @staticmethod
    def _finish(column: pa.ChunkedArray, view: FeatureView, name: str) -> pa.ChunkedArray:
        want = _ARROW_TYPES[view.output_type(name)]
        column = pc.cast(column, want) if column.type != want else column
        default = view.default(name)
        if default is not None and column.null_count:
            column = pc.fill_null(column, pa.scalar(default, type=want))
        return column

    @staticmethod
    def _run_transform(t: Transform, table: pa.Table, resolution: Resolution,
                       values: dict[str, pa.ChunkedArray]) -> pa.ChunkedArray:
        inputs: dict[str, Any] = {}
        for inp in t.inputs:
            if inp.startswith("request."):
                column = inp.removeprefix("request.")
                if column not in table.column_names:
                    raise SchemaMismatch(
                        f"transform {t.name!r} reads {inp!r}, but the entity rows have no "
                        f"column {column!r}", fix=f"add the request column {column!r}")
                data = table[column]
            else:
                data = values[resolution.keys[inp]]
            inputs[inp] = data.to_numpy(zero_copy_only=False)
        try:
            out = np.asarray(t(inputs))
        except Exception as exc:
            raise DataError(f"transform {t.name!r} raised {type(exc).__name__}: {exc}",
                            fix="fix the transform; it gets numpy arrays by input name") from exc
        if out.shape != (table.num_rows,):
            raise DataError(f"transform {t.name!r} returned shape {out.shape} for "
                            f"{table.num_rows} rows", fix="return one value per row")
        result = pa.chunked_array([pa.array(out, from_pandas=True)])
        if t.default is not None and result.null_count:
            result = pc.fill_null(result, t.default)
        return result
