"""A deliberately simple, slow reference of the feature semantics, in plain Python.

It restates docs/architecture.md ("Feature semantics") row by row, with no cleverness, so that
the engines can be checked against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from closedloop.backends.windowsql import sum_exponent
from closedloop.features.definitions import FeatureView


def _low(value: Any) -> tuple[bool, Any]:
    """Ordering key in which null sorts below every value."""
    return (value is not None, value if value is not None else 0)


def reference_features(view: FeatureView, source_rows: Sequence[dict[str, Any]],
                       key: Any, t: int, horizon: int | None = None) -> dict[str, Any]:
    """The features of ``view`` for entity ``key`` at time ``t`` (µs), from raw source rows.

    ``source_rows`` hold the entity key, the timestamp (and tie/arrival) columns as int µs.
    ``horizon``: the latest instant of the query ``t`` is part of — exact sums are on the
    grid of the rows visible by then (every row when None).
    """
    src = view.source
    k = view.entity.key
    arrival = src.visibility_column
    tie = src.tie_column

    def visible(r: dict[str, Any]) -> bool:
        if r[k] is None or r[src.timestamp] is None or r[k] != key:
            return False
        if r[src.timestamp] > t:
            return False
        return not (arrival is not None and r[arrival] is not None and r[arrival] > t)

    rows = [r for r in source_rows if visible(r)]
    out: dict[str, Any] = {}
    if not view.aggregations:
        def order(r: dict[str, Any]) -> tuple[Any, ...]:
            return (r[src.timestamp], _low(r[tie] if tie else None),
                    *(_low(r[c]) for c in view.row_columns))
        best = max(rows, key=order) if rows else None
        ttl = view.ttl_micros
        if best is not None and ttl is not None and t - best[src.timestamp] > ttl:
            best = None
        if best is not None and view.deleted_column and best[view.deleted_column]:
            best = None                                  # the latest change was a delete
        for f in view.features:
            value = None if best is None else best[f]
            out[f] = view.default(f) if value is None else value
        return out
    for w in view.windowed:
        # Sums are exact on one grid, from the column's largest magnitude and row count over
        # the rows visible by the query's latest instant.
        held = [r for r in source_rows if r[k] is not None and r[src.timestamp] is not None
                and (horizon is None or (r[src.timestamp] <= horizon and (
                    arrival is None or r[arrival] is None or r[arrival] <= horizon)))]
        largest = max((abs(float(r[w.column])) for r in held
                       if isinstance(r[w.column], int | float)), default=0.0)
        grid = sum_exponent(largest, len(held))
        start = (t // w.hop) * w.hop - w.window
        inside = [r for r in rows if r[src.timestamp] >= start and r[w.column] is not None]
        vals = [r[w.column] for r in inside]
        value: Any
        if w.fn == "count":
            value = len(vals)
        elif w.fn == "sum":
            value = _exact_sum(vals, grid)
        elif not vals:
            value = None
        elif w.fn == "mean":
            value = _exact_sum(vals, grid) / len(vals)
        elif w.fn == "min":
            value = min(vals)
        elif w.fn == "max":
            value = max(vals)
        elif w.fn == "stddev":
            mean = _exact_sum(vals, grid) / len(vals)
            value = math.sqrt(math.fsum((x - mean) ** 2 for x in vals) / len(vals))
        else:  # last
            last = max(inside, key=lambda r: (r[src.timestamp], _low(r[tie] if tie else None),
                                              r[w.column]))
            value = last[w.column]
        out[w.name] = w.default if value is None and w.default is not None else value
    return out


def _exact_sum(values: Sequence[Any], k: int) -> float:
    """The exact sum rounded once to a float: integers as integers; floats each rounded to a
    multiple of 2^-k (half to even), then added as integers."""
    if all(type(v) is int for v in values):
        return float(sum(values))
    if any(not math.isfinite(v) for v in values):
        return math.fsum(values)
    return float(sum(round(math.ldexp(v, k)) for v in values)) / 2.0 ** k
