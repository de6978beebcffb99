"""Point-in-time training sets: every requested feature as known at each entity row's own
time, computed by the offline engine view by view, then the transforms."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS, OfflineEngine
from closedloop.data.instants import as_instants, to_micros
from closedloop.data.labels import SETTLED
from closedloop.data.sources import ARROW_TYPES
from closedloop.errors import SchemaMismatch
from closedloop.features import transforms
from closedloop.features.catalog import Resolution
from closedloop.features.definitions import FeatureView
from closedloop.features.materialize import Progress


def timestamp_column(table: pa.Table, timestamp: str | None) -> str:
    if timestamp is not None:
        if timestamp not in table.column_names:
            raise SchemaMismatch(f"entity rows have no timestamp column {timestamp!r}",
                                 fix=f"their columns are {table.column_names}")
        return timestamp
    # A labelled training set's label_settled_at is the label's time, never the row's.
    found = [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.name != SETTLED]
    if len(found) != 1:
        raise SchemaMismatch(
            f"entity rows have {len(found)} timestamp columns {found}; closedloop needs to "
            "know which one is the row's time", fix="pass timestamp='column'")
    return str(found[0])


def compute(engine: OfflineEngine, table: pa.Table, resolution: Resolution,
            timestamp: str | None, progress: Progress | None) -> dict[str, pa.ChunkedArray]:
    """Every requested feature (view features, then transforms) as of each row's time."""
    ts_col = timestamp_column(table, timestamp)
    micros = to_micros(table[ts_col], f"timestamp column {ts_col!r} of the entity rows")
    row_ids = pa.array(np.arange(table.num_rows, dtype=np.int64))
    values: dict[str, pa.ChunkedArray] = {}
    groups = resolution.by_view()
    steps = len(groups) + len(resolution.transforms)
    for n, (view, names) in enumerate(groups):
        if progress:
            progress(n, steps, f"{view.name} v{view.version}: {len(names)} features")
        keys = _keys(table, view)
        rows = pa.table({ROW_ID: row_ids, ROW_KEY: keys, ROW_TS: micros})
        result = engine.point_in_time(rows, view, names)
        for name in names:
            values[f"{view.key}.{name}"] = _finish(
                result[name], view, name)
    for n, t in enumerate(resolution.transforms, start=len(groups)):
        if progress:
            progress(n, steps, f"transform {t.name}")
        values[t.name] = transforms.apply(t, transforms.training_inputs(
            t, table, resolution.keys, values), table.num_rows)
    if progress:
        progress(steps, steps, "done")
    return values


def _keys(table: pa.Table, view: FeatureView) -> pa.ChunkedArray:
    key = view.entity.key
    if key not in table.column_names:
        raise SchemaMismatch(
            f"entity rows have no column {key!r}, the key of entity {view.entity.name!r} "
            f"(needed by view {view.name!r})", fix=f"their columns are {table.column_names}")
    want = ARROW_TYPES[view.entity.spec()["dtype"]]
    col = table[key]
    ok = (pa.types.is_string(want) and (pa.types.is_string(col.type)
                                        or pa.types.is_large_string(col.type))) or (
        pa.types.is_integer(want) and pa.types.is_integer(col.type))
    if not ok:
        raise SchemaMismatch(
            f"column {key!r} of the entity rows is {col.type}, but entity "
            f"{view.entity.name!r} declares {want}", fix=f"cast the column to {want}")
    return pc.cast(col, want)


def _finish(column: pa.ChunkedArray, view: FeatureView, name: str) -> pa.ChunkedArray:
    want = ARROW_TYPES[view.output_type(name)]
    if pa.types.is_timestamp(column.type):    # instants: the one conversion
        column = as_instants(column, f"feature {view.name}.{name}")
    column = pc.cast(column, want) if column.type != want else column
    default = view.default(name)
    if default is not None and column.null_count:
        column = pc.fill_null(column, pa.scalar(default, type=want))
    return column

