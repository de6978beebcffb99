"""Drift counts kept on the request path: each served prediction's features and score counted
against its version's reference, per window, in the process that served it.

``observe`` only appends the record to a buffer; every ``batch`` records the buffer is counted
at once (numpy over columns, the same ``count_numeric`` / ``count_categorical`` the monitor
uses), so a prediction costs a few microseconds. Counts are ``WindowCounts`` per window start:
two workers' merge by addition. ``drift()`` is the current window against the reference —
what the server exports as ``closedloop_live_drift_psi`` (per worker).

>>> import pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> ref = fit_reference(pa.table({"x": [float(i) for i in range(100)], "(score)": [0.5] * 100}))
>>> live = LiveCounts(ref, window_micros=3_600_000_000, batch=2)
>>> live.observe(10, {"x": 5.0}, 0.5); live.observe(20, {"x": 500.0}, 0.5)
>>> live.windows_[0].columns["x"].n, live.windows_[0].columns["x"].out_of_range
(2, 1)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.monitoring.cells import Binner
from closedloop.monitoring.counts import WindowCounts, count_categorical, count_numeric, empty
from closedloop.monitoring.detect import DriftResult, DriftRule, compare
from closedloop.monitoring.reference import Reference

SCORE = "(score)"


def _number(value: Any) -> float:
    """A served value as a number, NaN when it is none (a constraint counts it apart)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class LiveCounts:
    """One version's drift counts on the request path (see module)."""

    def __init__(self, reference: Reference, keys: Mapping[str, str] | None = None, *,
                 window_micros: int, batch: int = 512) -> None:
        self.reference = reference
        self.keys = dict(keys or {})
        self.window_micros = window_micros
        self.batch = batch
        self.windows_: dict[int, WindowCounts] = {}
        self._buffer: list[tuple[int, list[Any], float]] = []
        self._names = [n for n in reference.columns if not n.startswith("(")]
        self._binners = {n: Binner(c.edges) for n, c in reference.columns.items()
                         if c.kind == "numeric" and c.edges}
        self._numeric = [n for n in self._names if reference.columns[n].kind == "numeric"]
        self._keys = [self.keys.get(n, n) for n in self._names]
        self._numeric_at = [self._names.index(n) for n in self._numeric]
        self._categorical = [n for n in self._names if n not in self._numeric]

    def observe(self, time: int, features: Mapping[str, Any], score: float) -> None:
        """One served prediction (its time in µs, features as served, score). Only the
        values are kept, not the record (nothing of the request outlives it)."""
        self._buffer.append((time, [features.get(k) for k in self._keys], score))
        if len(self._buffer) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Count what the buffer holds."""
        buffer, self._buffer = self._buffer, []
        if not buffer:
            return
        starts = np.asarray([t for t, _, _ in buffer], dtype=np.int64)
        starts -= starts % self.window_micros
        for start in np.unique(starts):
            rows = [buffer[i] for i in np.flatnonzero(starts == start)]
            counts = empty(self.reference)
            counts.rows = len(rows)
            numeric = self._numeric
            if numeric:                           # one matrix: None (and absent) is NaN
                at = self._numeric_at
                try:
                    matrix = np.array([[r[1][j] for j in at] for r in rows], dtype=np.float64)
                except (TypeError, ValueError):  # a value that is not a number: missing
                    matrix = np.array([[_number(r[1][j]) for j in at] for r in rows],
                                      dtype=np.float64)
                for j, name in enumerate(numeric):
                    counts.columns[name] = count_numeric(
                        self.reference.columns[name], np.ascontiguousarray(matrix[:, j]),
                        self._binners.get(name))
            for name in self._categorical:
                j = self._names.index(name)
                counts.columns[name] = count_categorical(self.reference.columns[name], pa.array(
                    [None if (v := r[1][j]) is None else str(v) for r in rows], pa.string()))
            if SCORE in self.reference.columns:
                counts.columns[SCORE] = count_numeric(self.reference.columns[SCORE], np.asarray(
                    [r[2] for r in rows], dtype=np.float64), self._binners.get(SCORE))
            found = self.windows_.get(int(start))
            self.windows_[int(start)] = counts if found is None else found + counts

    def drift(self, rule: DriftRule | None = None) -> DriftResult | None:
        """The latest window's drift against the reference (None before any count)."""
        self.flush()
        if not self.windows_:
            return None
        latest = max(self.windows_)
        for start in [s for s in self.windows_ if s < latest - self.window_micros]:
            del self.windows_[start]                  # keep the current and previous window
        return compare(self.reference, self.windows_[latest], rule)


__all__ = ["LiveCounts"]
