"""A model version's reference distributions, fitted once (when its run writes the bundle)
and stored in the bundle: what every later window is compared with.

Per column (each feature, the score, the label):

* **numeric** (floats and integers): the finite, non-null values' quantiles, computed with
  numpy's default (linear) rule, give the bin edges. Two grids share one set of edges:

  - the *coarse* grid, which PSI, KL, JS and χ² use: the ``bins`` − 1 inner quantiles
    (deciles by default) plus two *guard* edges at the ``tail`` and 1 − ``tail`` quantiles
    (0.001 and 0.999), so mass moving far into a tail is seen even though the outer decile
    already covers it; the outer bins are open (−∞, +∞);
  - the *fine* grid, which the KS and Wasserstein sketches use: every 1/``resolution``
    quantile (256 by default) as well, so each fine bin holds about 0.4% of the reference.

  Tied quantiles (discrete data) collapse into one edge. NaN and null are counted as
  ``missing``, ±inf as ``nonfinite``; neither is in a bin.
* **categorical** (strings, booleans, dictionaries): one bin per category the reference
  holds (the ``max_categories`` most frequent; the rest share the last, "unseen" bin with
  every category the reference never held). Null is ``missing``.

>>> import numpy as np, pyarrow as pa
>>> ref = fit_reference(pa.table({"x": np.arange(1000.0), "c": ["a", "b"] * 500}))
>>> ref.columns["x"].kind, len(ref.columns["x"].coarse) - 1, ref.columns["c"].categories
('numeric', 12, ('a', 'b'))
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import MonitoringError
from closedloop.monitoring.cells import Quantiles

_F = np.ndarray[Any, np.dtype[np.float64]]
_I = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True)
class Binning:
    """How a reference bins a column (see the module)."""

    bins: int = 10                     # coarse quantile bins, before the guard bins
    tail: float | None = 0.001         # guard edges at these reference quantiles; None: none
    resolution: int = 256              # fine quantile bins for the KS and W sketches
    max_categories: int = 1000         # categories kept per column, most frequent first

    def __post_init__(self) -> None:
        if self.bins < 2 or self.resolution < 2 or self.max_categories < 1:
            raise MonitoringError(f"binning {self} is invalid", fix="use bins >= 2, "
                                  "resolution >= 2 and max_categories >= 1")
        if self.tail is not None and not 0 < self.tail < 1 / self.bins:
            raise MonitoringError(f"tail {self.tail} is not inside the first quantile bin",
                                  fix=f"pass 0 < tail < {1 / self.bins}, or None")

    def coarse_levels(self) -> _F:
        inner = np.linspace(0, 1, self.bins + 1)[1:-1]
        if self.tail is None:
            return inner
        return np.concatenate([[self.tail], inner, [1 - self.tail]])

    def fine_levels(self) -> _F:
        return np.unique(np.concatenate([self.coarse_levels(),
                                         np.arange(1, self.resolution) / self.resolution]))


@dataclass(frozen=True)
class ColumnReference:
    """One column's reference: its bins and the reference's counts in them."""

    name: str
    kind: str                                  # "numeric" | "categorical"
    counts: tuple[int, ...]                    # per fine bin (numeric) or category + unseen
    rows: int                                  # rows seen, including missing and nonfinite
    missing: int = 0
    nonfinite: int = 0
    edges: tuple[float, ...] = ()              # numeric: the fine inner edges, ascending
    coarse: tuple[int, ...] = ()               # numeric: fine-bin index where each coarse
    categories: tuple[str, ...] = ()           # bin starts, and the fine-bin count at the end
    low: float = float("nan")                  # numeric: smallest and largest finite value,
    high: float = float("nan")                 # mean and standard deviation
    mean: float = float("nan")
    std: float = float("nan")
    below: float = 0.0                         # Σ (edges[0] − x) over x below the first edge
    above: float = 0.0                         # Σ (x − edges[-1]) over x above the last

    @property
    def n(self) -> int:
        """Values in the bins."""
        return int(sum(self.counts))

    def coarse_counts(self, fine: Any) -> _I:
        """Counts per coarse bin, summed from counts per fine bin (categorical: as they are)."""
        counts: _I = np.asarray(fine, dtype=np.int64)
        if self.kind != "numeric" or counts.size == 0:
            return counts
        coarse: _I = np.add.reduceat(counts, np.asarray(self.coarse[:-1]))
        return coarse

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnReference:
        fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in data.items()}
        return cls(**fields)


@dataclass(frozen=True)
class Reference:
    """A model's reference: the columns it watches, fitted on one table."""

    model: str
    run_id: str
    columns: Mapping[str, ColumnReference]
    rows: int
    binning: Binning = field(default_factory=Binning)

    def to_json(self) -> bytes:
        return json.dumps({"kind": "closedloop.reference", "model": self.model,
                           "run_id": self.run_id, "rows": self.rows,
                           "binning": self.binning.__dict__,
                           "columns": [c.to_dict() for c in self.columns.values()]},
                          sort_keys=True, allow_nan=True).encode()

    @classmethod
    def from_json(cls, blob: bytes | str) -> Reference:
        data = json.loads(blob)
        if data.get("kind") != "closedloop.reference":
            raise MonitoringError("the blob is not a closedloop reference",
                                  fix="load the reference a bundle names")
        columns = [ColumnReference.from_dict(c) for c in data["columns"]]
        return cls(data["model"], data["run_id"], {c.name: c for c in columns}, data["rows"],
                   Binning(**data["binning"]))

    @functools.cached_property
    def hash(self) -> str:
        """The content hash (computed once: a reference never changes)."""
        return hashlib.sha256(self.to_json()).hexdigest()


def is_numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_floating(kind) or pa.types.is_integer(kind)
                or pa.types.is_decimal(kind))


def numeric_values(column: pa.ChunkedArray | pa.Array) -> _F:
    """A numeric column as float64, null as NaN."""
    floats = pc.cast(column, pa.float64())
    if floats.null_count:
        floats = pc.fill_null(floats, float("nan"))
    out: _F = np.asarray(floats.to_numpy(), dtype=np.float64)
    return out


def fit_numeric(name: str, values: _F, binning: Binning) -> ColumnReference:
    """One numeric column's reference (values as float64, NaN for missing)."""
    rows = int(values.size)
    finite_mask = np.isfinite(values)
    n_finite = int(np.count_nonzero(finite_mask))
    n_nan = int(np.isnan(values).sum()) if n_finite < rows else 0
    if n_finite == 0:                          # nothing to bin: the column is all missing
        return ColumnReference(name, "numeric", (0,), rows, n_nan, rows - n_nan, (), (0, 1))
    finite = values[finite_mask] if n_finite < rows else values
    fitted = Quantiles(finite)
    fine = np.unique(fitted.quantiles(binning.fine_levels()))
    coarse_edges = np.unique(fitted.more(binning.coarse_levels()))
    starts = np.searchsorted(fine, coarse_edges) + 1          # fine bin after each edge
    below = fitted.below(fine)                                # values below each edge
    counts = np.diff(np.concatenate([[0], below, [n_finite]]))
    low = finite < fine[0]
    high = finite > fine[-1]
    low_n, high_n = int(below[0]), int(np.count_nonzero(high))
    return ColumnReference(
        name, "numeric", tuple(int(c) for c in counts), rows, n_nan,
        rows - n_nan - n_finite, tuple(float(e) for e in fine),
        (0, *(int(s) for s in starts), fine.size + 1), (), float(finite.min()),
        float(finite.max()), float(finite.mean()), float(finite.std()),
        float(fine[0] * low_n - finite[low].sum()),
        float(finite[high].sum() - fine[-1] * high_n))


def category_strings(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A categorical column as strings (booleans as "true"/"false")."""
    if pa.types.is_dictionary(column.type):
        column = pc.cast(column, column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = pc.cast(column, pa.string())
    return column


def value_counts(column: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, _I]:
    """The distinct non-null values of a categorical column (as strings) and their counts. A
    dictionary column is counted on its indices, without decoding a value per row."""
    if isinstance(column, pa.ChunkedArray) and pa.types.is_dictionary(column.type):
        column = column.unify_dictionaries()
        if column.num_chunks == 0:
            return pa.array([], pa.string()), np.zeros(0, dtype=np.int64)
        dictionary = column.chunk(0).dictionary
        counts = np.zeros(len(dictionary), dtype=np.int64)
        for chunk in column.chunks:
            indices = chunk.indices
            if chunk.null_count:
                indices = indices.drop_null()
            counts += np.bincount(np.asarray(indices), minlength=len(dictionary))
        keep = np.flatnonzero(counts)
        strings = category_strings(dictionary)
        return strings.take(pa.array(keep)), counts[keep]
    strings = category_strings(column)
    counted = pc.value_counts(strings.drop_null() if strings.null_count else strings)
    return counted.field("values"), np.asarray(counted.field("counts"), dtype=np.int64)


def fit_categorical(name: str, column: pa.ChunkedArray | pa.Array,
                    binning: Binning) -> ColumnReference:
    distinct, counts = value_counts(column)
    values = distinct.to_pylist()
    order = sorted(range(len(values)), key=lambda i: (-counts[i], values[i]))
    kept = order[:binning.max_categories]
    rest = int(counts[order[binning.max_categories:]].sum())
    return ColumnReference(name, "categorical", (*(int(counts[i]) for i in kept), rest),
                           len(column), column.null_count, categories=tuple(
                               str(values[i]) for i in kept))


def fit_reference(table: pa.Table, columns: Iterable[str] | None = None, *, model: str = "",
                  run_id: str = "", binning: Binning | None = None,
                  categorical: Iterable[str] = ()) -> Reference:
    """The reference of ``columns`` (default: all) of ``table``; see the module. Columns
    named in ``categorical`` are binned by value even when numeric (a 0/1 label)."""
    binning = binning or Binning()
    names = list(table.column_names if columns is None else columns)
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise MonitoringError(f"no column {missing[0]!r} to fit a reference on",
                              fix=f"choose from {table.column_names}")
    if table.num_rows == 0:
        raise MonitoringError("a reference needs rows, and the table has none",
                              fix="fit it on the rows the model was evaluated on")
    fitted = {}
    by_value = set(categorical)
    for name in names:
        column = table[name]
        if is_numeric(column.type) and name not in by_value:
            fitted[name] = fit_numeric(name, numeric_values(column), binning)
        else:
            fitted[name] = fit_categorical(name, column, binning)
    return Reference(model, run_id, fitted, table.num_rows, binning)


__all__ = ["Binning", "ColumnReference", "Reference", "category_strings", "fit_categorical",
           "fit_numeric", "fit_reference", "is_numeric", "numeric_values", "value_counts"]
