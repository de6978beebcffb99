"""Windowed state as mergeable counts: a window's values counted into its reference's bins.

Counts add: two windows, two workers or two days merge by ``+``, and nothing holds raw rows.
Per column a window keeps the count per bin (the reference's fine bins, or its categories and
the unseen bin), ``missing`` (NaN, null), ``nonfinite`` (±inf), and for numeric columns the
two tail sums the Wasserstein sketch needs (Σ distance below the first edge and above the
last). A column the window does not carry is counted in ``absent`` (rows), so a feature
missing from the log shows as such, never as a zero drift.

>>> import numpy as np, pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> ref = fit_reference(pa.table({"c": ["a", "b"] * 50}))
>>> w = count(ref, pa.table({"c": ["a", "z", None]}))
>>> w.columns["c"].counts.tolist(), w.columns["c"].missing
([1, 0, 1], 1)
>>> (w + w).columns["c"].counts.tolist()
[2, 0, 2]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import MonitoringError
from closedloop.monitoring.cells import Binner
from closedloop.monitoring.reference import (
    ColumnReference,
    Reference,
    is_numeric,
    numeric_values,
    value_counts,
)

_I = np.ndarray[Any, np.dtype[np.int64]]
_F = np.ndarray[Any, np.dtype[np.float64]]


@dataclass
class ColumnCounts:
    """One column's counts in one window (see the module)."""

    counts: _I
    missing: int = 0
    nonfinite: int = 0
    absent: int = 0                    # rows of windows that did not carry the column
    below: float = 0.0
    above: float = 0.0
    out_of_range: int = 0              # numeric: values outside the reference's [low, high]

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def __add__(self, other: ColumnCounts) -> ColumnCounts:
        if self.counts.shape != other.counts.shape:
            raise MonitoringError("counts over different bins cannot be merged",
                                  fix="merge windows counted against one reference")
        return ColumnCounts(self.counts + other.counts, self.missing + other.missing,
                            self.nonfinite + other.nonfinite, self.absent + other.absent,
                            self.below + other.below, self.above + other.above,
                            self.out_of_range + other.out_of_range)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "missing": self.missing,
                "nonfinite": self.nonfinite, "absent": self.absent, "below": self.below,
                "above": self.above, "out_of_range": self.out_of_range}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnCounts:
        return cls(np.asarray(data["counts"], dtype=np.int64), int(data["missing"]),
                   int(data["nonfinite"]), int(data["absent"]), float(data["below"]),
                   float(data["above"]), int(data.get("out_of_range", 0)))


@dataclass
class WindowCounts:
    """A window's counts for every column of a reference, and its row count."""

    reference: str                     # the reference's hash: counts merge only with their own
    rows: int = 0
    columns: dict[str, ColumnCounts] = field(default_factory=dict)

    def __add__(self, other: WindowCounts) -> WindowCounts:
        if self.reference != other.reference:
            raise MonitoringError("counts against two different references cannot be merged",
                                  fix="merge windows of one model version")
        names = self.columns.keys() | other.columns.keys()
        return WindowCounts(self.reference, self.rows + other.rows, {
            n: (self.columns[n] + other.columns[n] if n in self.columns and n in other.columns
                else self.columns.get(n) or other.columns[n]) for n in sorted(names)})

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "rows": self.rows,
                "columns": {k: v.to_dict() for k, v in self.columns.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowCounts:
        return cls(data["reference"], int(data["rows"]),
                   {k: ColumnCounts.from_dict(v) for k, v in data["columns"].items()})


@dataclass
class WindowState:
    """What one process counted of one version's window: its counts overall and per slice
    value (``"country=FR"``), the rows violating each constraint, and the latest prediction
    time counted (µs). States of two workers merge by ``+``; ``to_dict`` is JSON."""

    counts: WindowCounts
    slices: dict[str, WindowCounts] = field(default_factory=dict)
    constraints: dict[str, int] = field(default_factory=dict)
    latest: int = 0

    def __add__(self, other: WindowState) -> WindowState:
        slices = dict(self.slices)
        for name, part in other.slices.items():
            slices[name] = slices[name] + part if name in slices else part
        constraints = dict(self.constraints)
        for name, n in other.constraints.items():
            constraints[name] = constraints.get(name, 0) + n
        return WindowState(self.counts + other.counts, slices, constraints,
                           max(self.latest, other.latest))

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.to_dict(), "constraints": self.constraints,
                "latest": self.latest,
                "slices": {k: v.to_dict() for k, v in self.slices.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowState:
        return cls(WindowCounts.from_dict(data["counts"]),
                   {k: WindowCounts.from_dict(v) for k, v in data["slices"].items()},
                   {k: int(v) for k, v in data["constraints"].items()}, int(data["latest"]))


def empty(reference: Reference) -> WindowCounts:
    """A window with no rows yet."""
    return WindowCounts(reference.hash, 0, {
        name: ColumnCounts(np.zeros(len(c.counts), dtype=np.int64))
        for name, c in reference.columns.items()})


def count_numeric(column: ColumnReference, values: _F,
                  binner: Binner | None = None) -> ColumnCounts:
    """``values`` (float64, NaN for missing) counted into ``column``'s fine bins (``binner``:
    one made for its edges already, when counting many small batches)."""
    finite = np.isfinite(values)
    n_finite = int(finite.sum())
    n_missing = int(np.isnan(values).sum()) if n_finite < values.size else 0
    n_nonfinite = int(values.size - n_finite - n_missing)
    if n_finite < values.size:
        values = values[finite]
    edges = np.asarray(column.edges)
    if edges.size == 0:                         # the reference had no value: one open bin
        return ColumnCounts(np.array([n_finite], dtype=np.int64), n_missing, n_nonfinite)
    index = (binner or Binner(edges)).bins(values)
    counts = np.bincount(index, minlength=edges.size + 1).astype(np.int64)
    below = above = 0.0
    if counts[0]:
        low = values[index == 0]
        below = float(edges[0] * low.size - low.sum())
    if counts[-1]:
        high = values[values > edges[-1]]
        above = float(high.sum() - edges[-1] * high.size)
    outside = (int(np.count_nonzero(values < column.low))
               + int(np.count_nonzero(values > column.high)))
    return ColumnCounts(counts, n_missing, n_nonfinite, 0, below, above, outside)


def count_categorical(column: ColumnReference,
                      values: pa.ChunkedArray | pa.Array) -> ColumnCounts:
    """``values`` counted per reference category; every other category in the unseen bin."""
    counts = np.zeros(len(column.categories) + 1, dtype=np.int64)
    distinct, found = value_counts(values)
    if len(distinct):
        where = pc.index_in(distinct, value_set=pa.array(column.categories, pa.string()))
        slots = np.asarray(pc.fill_null(where, len(column.categories)), dtype=np.int64)
        np.add.at(counts, slots, found)
    return ColumnCounts(counts, values.null_count)


def count(reference: Reference, table: pa.Table,
          binners: Mapping[str, Binner] | None = None) -> WindowCounts:
    """``table``'s rows counted against ``reference``: every reference column the table
    carries; the others are ``absent`` for these rows. ``binners``: made already for the
    numeric columns' edges (when counting many small tables)."""
    out = empty(reference)
    out.rows = table.num_rows
    for name, column in reference.columns.items():
        if name not in table.column_names:
            out.columns[name].absent = table.num_rows
            continue
        data = table[name]
        if column.kind == "numeric":
            if not (is_numeric(data.type) or pa.types.is_null(data.type)):
                raise MonitoringError(f"column {name!r} is {data.type} here and numeric in "
                                      "the reference", fix="log the feature with its type")
            out.columns[name] = count_numeric(column, numeric_values(data),
                                              (binners or {}).get(name))
        else:
            out.columns[name] = count_categorical(column, data)
    return out


__all__ = ["ColumnCounts", "WindowCounts", "WindowState", "count", "count_categorical",
           "count_numeric", "empty"]
