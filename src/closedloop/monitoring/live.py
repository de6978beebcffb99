"""Drift counts kept on the request path: each served prediction's features and score counted
against its version's reference, per window and per slice value, with the constraints it
violated, in the process that served it.

``observe`` only appends the record to a buffer; every ``batch`` records the buffer is counted
at once (numpy over columns, the same ``count_numeric`` / ``count_categorical`` the monitor
uses), so a prediction costs a few microseconds. A window's state is a ``WindowState`` (its
``WindowCounts`` overall and per slice value, the rows violating each constraint): two
workers' merge by addition. ``drift()`` is the current window against the reference — what
the server exports as ``closedloop_live_drift_psi`` (per worker) — and ``states()`` is every
window kept, for the server to publish to the monitor store, where the monitor merges the
workers' states instead of counting the log again.

Windows are those of the grid (a window starts at a multiple of ``window_micros``). The
latest ``keep`` windows are kept (3: the current one and two before it), an older one until
it is published once more (``states``, then ``published``); a record for an older window
(rare: its time is when its features were read) is not counted, so that window's published
state stays short of the log and the monitor counts it from the log.

Slice values are rendered as the monitor renders a logged request field (a string as is, an
integer in decimal, none as ``(null)``); a value of another type (a float, a boolean, a list)
marks its window's slices unusable (``slices`` left empty, ``sliced`` False).

>>> import pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> ref = fit_reference(pa.table({"x": [float(i) for i in range(100)], "(score)": [0.5] * 100}))
>>> live = LiveCounts(ref, window_micros=3_600_000_000, batch=2, slices=["country"])
>>> live.observe(10, {"x": 5.0}, 0.5, {"country": "FR"})
>>> live.observe(20, {"x": 500.0}, 0.5, {"country": "DE"}, ("out_of_range",))
>>> state = live.states()[0]
>>> state.counts.columns["x"].n, state.counts.columns["x"].out_of_range, state.constraints
(2, 1, {'out_of_range': 1})
>>> sorted(state.slices), state.latest
(['country=DE', 'country=FR'], 20)
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.monitoring.cells import Binner
from closedloop.monitoring.counts import (
    WindowCounts,
    WindowState,
    count_categorical,
    count_numeric,
    empty,
)
from closedloop.monitoring.detect import DriftResult, DriftRule, compare
from closedloop.monitoring.reference import Reference

SCORE = "(score)"


#: A slice value the monitor could render otherwise (see module).
UNSLICEABLE = "\x00"


def slice_value(value: Any) -> str:
    """A request field's value as a slice names it (``UNSLICEABLE``: not safely)."""
    if value is None:
        return "(null)"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return UNSLICEABLE


def _number(value: Any) -> float:
    """A served value as a number, NaN when it is none (a constraint counts it apart)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class LiveCounts:
    """One version's drift counts on the request path (see module). ``slices``: the request
    fields its monitor cuts windows by; ``keep``: how many windows are kept."""

    def __init__(self, reference: Reference, keys: Mapping[str, str] | None = None, *,
                 window_micros: int, batch: int = 512, slices: Sequence[str] = (),
                 keep: int = 3) -> None:
        self.reference = reference
        self.keys = dict(keys or {})
        self.window_micros = window_micros
        self.batch = batch
        self.slices = tuple(slices)
        self._states: dict[int, WindowState] = {}
        self._sliced: dict[int, bool] = {}
        self._retired: dict[int, WindowState] = {}  # windows no longer kept, not yet published
        self.keep = keep
        self._dropped: int | None = None            # the newest window start no longer kept
        self._lock = threading.Lock()
        self._buffer: list[tuple[int, list[Any], float, tuple[str, ...], tuple[str, ...]]] = []
        self._names = [n for n in reference.columns if not n.startswith("(")]
        self._binners = {n: Binner(c.edges) for n, c in reference.columns.items()
                         if c.kind == "numeric" and c.edges}
        self._numeric = [n for n in self._names if reference.columns[n].kind == "numeric"]
        self._keys = [self.keys.get(n, n) for n in self._names]
        self._numeric_at = [self._names.index(n) for n in self._numeric]
        self._categorical = [(n, self._names.index(n)) for n in self._names
                             if n not in self._numeric]
        self._uncounted = [n for n in reference.columns if n.startswith("(") and n != SCORE]

    def observe(self, time: int, features: Mapping[str, Any], score: float,
                request: Mapping[str, Any] | None = None,
                violated: tuple[str, ...] = ()) -> None:
        """One served prediction: its time (µs), features as served, score, the request (its
        slice fields) and the constraints it violated. Only the values are kept, not the
        record (nothing of the request outlives it)."""
        sliced = tuple(slice_value((request or {}).get(f)) for f in self.slices)
        with self._lock:
            self._buffer.append((time, [features.get(k) for k in self._keys], score, sliced,
                                 violated))
            if len(self._buffer) >= self.batch:
                self._flush()

    def flush(self) -> None:
        """Count what the buffer holds."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        if not buffer:
            return
        starts = np.asarray([r[0] for r in buffer], dtype=np.int64)
        starts -= starts % self.window_micros
        for start in (int(s) for s in np.unique(starts)):
            if self._dropped is not None and start <= self._dropped:   # no longer kept
                continue
            rows = [buffer[i] for i in np.flatnonzero(starts == start)]
            constraints: dict[str, int] = {}
            for row in rows:
                for name in row[4]:
                    constraints[name] = constraints.get(name, 0) + 1
            state = WindowState(self._count(rows), {}, constraints, max(r[0] for r in rows))
            sliced = self._sliced.get(start, True)
            for j, field in enumerate(self.slices):
                values = [r[3][j] for r in rows]
                if UNSLICEABLE in values:
                    sliced = False
                    break
                for value in set(values):
                    state.slices[f"{field}={value}"] = self._count(
                        [r for r, v in zip(rows, values, strict=True) if v == value])
            found = self._states.get(start)
            self._states[start] = state if found is None else found + state
            self._sliced[start] = sliced
        for old in sorted(self._states)[:-self.keep]:     # keep the latest ``keep``
            self._retired[old] = self._sliced_state(old)    # until it is published
            del self._states[old]
            del self._sliced[old]
            self._dropped = old if self._dropped is None else max(self._dropped, old)

    def _count(self, rows: list[Any]) -> WindowCounts:
        """Rows of one window counted against the reference."""
        counts = empty(self.reference)
        counts.rows = len(rows)
        numeric = self._numeric
        if numeric:                               # one matrix: None (and absent) is NaN
            at = self._numeric_at
            try:
                matrix = np.array([[r[1][j] for j in at] for r in rows], dtype=np.float64)
            except (TypeError, ValueError):      # a value that is not a number: missing
                matrix = np.array([[_number(r[1][j]) for j in at] for r in rows],
                                  dtype=np.float64)
            for j, name in enumerate(numeric):
                counts.columns[name] = count_numeric(
                    self.reference.columns[name], np.ascontiguousarray(matrix[:, j]),
                    self._binners.get(name))
        for name, j in self._categorical:
            counts.columns[name] = count_categorical(self.reference.columns[name], pa.array(
                [None if (v := r[1][j]) is None else str(v) for r in rows], pa.string()))
        for name in self._uncounted:             # the label: it comes later, from the log
            counts.columns[name].absent = len(rows)
        if SCORE in self.reference.columns:
            counts.columns[SCORE] = count_numeric(self.reference.columns[SCORE], np.asarray(
                [r[2] for r in rows], dtype=np.float64), self._binners.get(SCORE))
        return counts

    def _sliced_state(self, start: int) -> WindowState:
        state = self._states[start]
        if self._sliced[start]:
            return state
        return WindowState(state.counts, {}, state.constraints, state.latest)

    def states(self) -> dict[int, WindowState]:
        """Every window kept, and those no longer kept but not yet ``published``, by start
        (µs), as counted so far; a window whose slice values could not be rendered safely
        has no slices (see module)."""
        with self._lock:
            self._flush()
            return {**self._retired, **{s: self._sliced_state(s) for s in self._states}}

    def published(self, starts: Iterable[int]) -> None:
        """These windows' states are in the store: those no longer kept are forgotten."""
        with self._lock:
            for start in starts:
                self._retired.pop(start, None)

    @property
    def windows_(self) -> dict[int, WindowCounts]:
        """Each kept window's counts (overall), by start."""
        return {start: state.counts for start, state in self.states().items()
                if start in self._states}

    def drift(self, rule: DriftRule | None = None) -> DriftResult | None:
        """The latest window's drift against the reference (None before any count)."""
        states = self.states()
        if not states:
            return None
        return compare(self.reference, states[max(states)].counts, rule)


__all__ = ["UNSLICEABLE", "LiveCounts", "slice_value"]
