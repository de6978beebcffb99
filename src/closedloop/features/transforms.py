"""Transforms, applied the same way on both paths: ``apply`` runs a transform over N training
rows or a served batch and takes its output by one rule; ``training_inputs`` and
``served_inputs`` give it the same numpy arrays from a training set or a served batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import DataError, SchemaMismatch
from closedloop.features.definitions import Transform


def served_inputs(t: Transform, batch: Sequence[Mapping[str, Any]],
                  vectors: Sequence[Mapping[str, Any]], keys: Mapping[str, str],
                  types: Mapping[str, pa.DataType]) -> dict[str, Any]:
    """A transform's inputs over a served batch: request fields from the rows, features from
    the fetched vectors, each as the numpy array training would have given it."""
    inputs = {}
    for inp in t.inputs:
        if inp.startswith("request."):
            column = inp.removeprefix("request.")
            if any(column not in row for row in batch):
                raise SchemaMismatch(f"transform {t.name!r} reads {inp!r}, which the "
                                     "request does not carry", fix=f"send {column!r}")
            data_in = [row[column] for row in batch]
            try:
                inputs[inp] = _column(data_in, None)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DataError(f"transform {t.name!r}: the request's {column!r} "
                                f"values are not all of one kind: {exc}",
                                fix=f"send {column!r} as one type") from None
        else:
            key = keys[inp]
            inputs[inp] = _column([v[key] for v in vectors], types.get(key))
    return inputs


def training_inputs(t: Transform, table: pa.Table, keys: Mapping[str, str],
                    values: Mapping[str, pa.ChunkedArray]) -> dict[str, Any]:
    """A transform's inputs over a training set: request columns from the entity rows,
    features from the computed columns, as numpy arrays."""
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
            data = values[keys[inp]]
        inputs[inp] = data.to_numpy(zero_copy_only=False)
    return inputs


def apply(t: Transform, inputs: dict[str, Any], n: int) -> pa.Array:
    """The one transform applier of both paths: run ``t`` over ``n`` rows' inputs, and take
    its values by the one rule (a null or NaN is no value: null, or its ``default``)."""
    return _output(t, _call(t, inputs, n))


def _call(t: Transform, inputs: dict[str, Any], n: int) -> Any:
    """Run a transform the same way for N training rows and for one served row."""
    try:
        out = np.asarray(t(inputs))
    except Exception as exc:
        raise DataError(f"transform {t.name!r} raised {type(exc).__name__}: {exc}",
                        fix="fix the transform; it gets numpy arrays by input name") from exc
    if out.shape != (n,):
        raise DataError(f"transform {t.name!r} returned shape {out.shape} for {n} rows",
                        fix="return one value per row")
    return out


def _output(t: Transform, out: Any) -> pa.Array:
    """A transform's values as a column, by the one rule of both paths: a null or a NaN is no
    value — null, or the transform's ``default`` when it declares one."""
    result = pa.array(out, from_pandas=True)          # NaN (and NaT) as null
    if t.default is not None and result.null_count:
        result = pc.fill_null(result, t.default)
    return result


def _column(values: list[Any], arrow_type: pa.DataType | None) -> Any:
    """Served values as the numpy array training would have given the transform (typed, so
    that a missing float is NaN there as here). The common cases of a served batch — floats
    (None as NaN) for a float feature, all floats or all strings for a request input — are
    built directly, as Arrow would build them; the rest go through Arrow."""
    if arrow_type is None or pa.types.is_float64(arrow_type):
        kinds = {type(v) for v in values}
        if kinds <= ({float, type(None)} if arrow_type is not None else {float}):
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if arrow_type is None and kinds == {str}:
            return np.array(values, dtype=object)
    return pa.array(values, type=arrow_type, from_pandas=True).to_numpy(zero_copy_only=False)
