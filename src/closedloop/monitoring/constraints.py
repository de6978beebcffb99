"""Constraints counted on served predictions, from the version's reference — by the batch
monitor over a window of the log, and on the request path over each buffer of served
predictions (``closedloop.monitoring.live``): one function, ``constraint_counts``, over a
table of the values as served.

The constraints: ``missing_input`` (a feature null or NaN), ``nonfinite_input`` (±inf),
``out_of_range`` (outside the reference's [min, max]), ``unseen_category``,
``score_out_of_range`` (outside [0, 1] or not finite) and ``schema_mismatch`` (the record
lacks a feature the version reads). Each is counted in rows: a row with two NaN features
counts once for ``missing_input``.

>>> import numpy as np, pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> ref = fit_reference(pa.table({"x": [0.0, 10.0], "(score)": [0.1, 0.2]}))
>>> found = constraint_counts(ref, pa.table({"x": [50.0, np.nan, 5.0],
...                                          "(score)": [0.3, 1.5, 0.5]}))
>>> {k: v for k, v in found.counts.items() if v}
{'missing_input': 1, 'out_of_range': 1, 'score_out_of_range': 1}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.monitoring.reference import Reference

#: Every constraint, in the order a report lists them.
CONSTRAINTS = ("missing_input", "nonfinite_input", "out_of_range", "unseen_category",
               "score_out_of_range", "schema_mismatch")
SCORE = "(score)"
LABEL = "(label)"


@dataclass(frozen=True)
class Constraints:
    """Violations counted per constraint in one window (rows, not values)."""

    rows: int
    counts: Mapping[str, int]

    def share(self, name: str) -> float:
        return self.counts.get(name, 0) / self.rows if self.rows else 0.0


def constraint_counts(reference: Reference, table: pa.Table,
                      present: Mapping[str, Any] | None = None) -> Constraints:
    """Rows of ``table`` (the reference's feature columns and ``(score)``, as served)
    violating each constraint (see module). ``present``: per feature, which rows' records
    hold its key (a record without it is a schema mismatch; with it and no value, a missing
    input); default: every row holds every key the table has a column for."""
    n = table.num_rows
    hits: dict[str, np.ndarray[Any, Any]] = {k: np.zeros(n, dtype=bool) for k in CONSTRAINTS}
    for name, ref in reference.columns.items():
        if name == LABEL:
            continue
        if name not in table.column_names:
            if name != SCORE:
                hits["schema_mismatch"][:] = True
            continue
        held = (np.ones(n, dtype=bool) if present is None or name not in present
                else np.asarray(present[name], dtype=bool))
        if name != SCORE:
            hits["schema_mismatch"] |= ~held
        column = table[name]
        if ref.kind == "numeric":
            values = np.asarray(pc.fill_null(pc.cast(column, pa.float64()), np.nan)
                                .to_numpy(zero_copy_only=False), dtype=np.float64)
            nan, inf = np.isnan(values), np.isinf(values)
            with np.errstate(invalid="ignore"):
                if name == SCORE:
                    hits["score_out_of_range"] |= nan | inf | (values < 0) | (values > 1)
                    continue
                hits["out_of_range"] |= held & ~inf & ((values < ref.low) | (values > ref.high))
            hits["missing_input"] |= held & nan
            hits["nonfinite_input"] |= held & inf
        else:
            strings = pc.cast(column, pa.string())
            known = np.asarray(pc.fill_null(pc.is_in(strings, value_set=pa.array(
                ref.categories, pa.string())), False))
            null = np.asarray(pc.is_null(strings))
            hits["missing_input"] |= held & null
            hits["unseen_category"] |= held & ~null & ~known
    return Constraints(n, {k: int(v.sum()) for k, v in hits.items()})



__all__ = ["CONSTRAINTS", "Constraints", "constraint_counts"]
