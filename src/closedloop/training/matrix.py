"""The features a trainer takes: a float matrix, as a numpy array or an Arrow table.

A training set's features reach a trainer as an Arrow table of float64 columns (a null is a
missing value) — a trainer that reads Arrow (LightGBM) takes it as it is, with no matrix in
between; the others turn it into a row-major float matrix (NaN for a missing value) with
``as_array``. Serving passes small numpy matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import TrainingError

#: A trainer's input: a 2-d float array, or an Arrow table of float64 columns.
Matrix: TypeAlias = "np.ndarray[Any, Any] | pa.Table"

_BLOCK = 4096                        # rows per block when interleaving the feature matrix


def shape(X: Matrix) -> tuple[int, ...]:
    """(rows, columns) of either form (a numpy array's own shape)."""
    if isinstance(X, pa.Table):
        return (X.num_rows, X.num_columns)
    return tuple(X.shape)


def as_array(X: Matrix) -> np.ndarray[Any, Any]:
    """The row-major float matrix of either form."""
    if isinstance(X, pa.Table):
        return feature_matrix(X, X.column_names)
    return X


def feature_table(table: pa.Table, features: Sequence[str]) -> pa.Table:
    """The model's features from a training set as float64 columns, in the model's order
    (float columns as they are, no copy; others cast)."""
    columns = []
    for ref in features:
        values, nulls = _numeric(table[ref], ref)
        column = table[ref]
        if column.type != pa.float64():
            column = pa.chunked_array([pa.array(values.astype(np.float64), mask=nulls)])
        columns.append(column)
    return pa.table(columns, names=list(features))


def _numeric(column: pa.ChunkedArray, name: str,
             ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """A feature's values as numbers (a view of the Arrow buffer where it can be) and which
    of them are null (``None`` if none is)."""
    t = column.type
    if pa.types.is_boolean(t):
        column = pc.cast(column, pa.int8())
    elif pa.types.is_timestamp(t):
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    elif pa.types.is_null(t):
        return np.full(len(column), np.nan), None
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise TrainingError(f"feature {name} is {t}, not a number",
                            fix="turn it into a number with a @cl.transform")
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not array.null_count:
        values: np.ndarray[Any, Any] = array.to_numpy()
        return values, None
    data = np.frombuffer(array.buffers()[1], dtype=array.type.to_pandas_dtype(),
                         count=array.offset + len(array))[array.offset:]
    return data, pc.is_null(array).to_numpy(zero_copy_only=False)


def feature_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray[Any, Any]:
    """The model's input matrix from a training set (or scoring rows): one float column per
    feature, in the model's order, nulls as NaN. Row-major, as trainers take it without a
    copy (a row slice — a time split — stays contiguous); written a block of rows at a time,
    so each block stays in cache while its columns are interleaved."""
    columns = [_numeric(table[ref], ref) for ref in features]
    n = table.num_rows
    out = np.empty((n, len(features)), dtype=np.float64)
    for start in range(0, n, _BLOCK):
        block = out[start:start + _BLOCK]
        for j, (values, nulls) in enumerate(columns):
            block[:, j] = values[start:start + _BLOCK]
            if nulls is not None:
                np.copyto(block[:, j], np.nan, where=nulls[start:start + _BLOCK])
    return out
