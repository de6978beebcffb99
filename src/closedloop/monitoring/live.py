"""Drift counts and constraints kept on the request path: each served prediction's features
and score counted against its version's reference, per window and per slice value, and
checked against its constraints, in the process that served it.

``observe`` only appends the prediction's values to a buffer (two ``itemgetter`` calls: about
a microsecond); every ``batch`` predictions the full buffer is handed to the process's
counting thread (off the event loop), where it becomes one table per window, which the batch
monitor's own ``count`` and ``constraint_counts`` count and check (numpy over columns), so
both paths agree by construction. ``flush`` (and ``states``, ``drift``) count whatever waits
in the calling thread first, so what they return covers every prediction observed. A
window's state is a ``WindowState`` (its ``WindowCounts`` overall and per slice value, the
rows violating each constraint): two workers' merge by addition; ``on_violations`` hears
each count's violations (the server's ``closedloop_constraint_violations_total``).
``drift()`` is the current window against the
reference — what the server exports as ``closedloop_live_drift_psi`` (per worker) — and
``states()`` is every window kept, for the server to publish to the monitor store, where the
monitor merges the workers' states instead of counting the log again.

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
>>> live.observe(20, {"x": 500.0}, 0.5, {"country": "DE"})
>>> state = live.states()[0]
>>> state.counts.columns["x"].n, state.counts.columns["x"].out_of_range, state.constraints
(2, 1, {'out_of_range': 1})
>>> sorted(state.slices), state.latest
(['country=DE', 'country=FR'], 20)
"""

from __future__ import annotations

import logging
import operator
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.monitoring.cells import Binner
from closedloop.monitoring.constraints import constraint_counts
from closedloop.monitoring.counts import WindowCounts, WindowState, count
from closedloop.monitoring.detect import DriftResult, DriftRule, compare
from closedloop.monitoring.reference import Reference

SCORE = "(score)"


_log = logging.getLogger("closedloop.monitoring")
_COUNTER: ThreadPoolExecutor | None = None
_COUNTER_LOCK = threading.Lock()


def _counter() -> ThreadPoolExecutor:
    """The process's one counting thread (made on first use)."""
    global _COUNTER
    with _COUNTER_LOCK:
        if _COUNTER is None:
            _COUNTER = ThreadPoolExecutor(1, thread_name_prefix="closedloop-counts")
        return _COUNTER


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


def _getter(keys: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The values of ``keys`` out of a mapping, as a tuple (KeyError when one is absent)."""
    if not keys:
        return lambda features: ()
    if len(keys) == 1:
        key = keys[0]
        return lambda features: (features[key],)
    return operator.itemgetter(*keys)


class _Buffer:
    """Buffered predictions, column by column (nothing to transpose when they are counted):
    times, numeric values, categorical values, scores, slice values, and by position the
    features whose keys a record lacks."""

    __slots__ = ("absent", "labels", "numbers", "scores", "sliced", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.numbers: list[tuple[Any, ...]] = []
        self.labels: list[tuple[Any, ...]] = []
        self.scores: list[float] = []
        self.sliced: list[tuple[str, ...]] = []
        self.absent: dict[int, frozenset[str]] = {}

    def take(self, at: Any) -> _Buffer:
        """The rows at positions ``at``."""
        out = _Buffer()
        out.times = [self.times[i] for i in at]
        out.numbers = [self.numbers[i] for i in at]
        out.labels = [self.labels[i] for i in at]
        out.scores = [self.scores[i] for i in at]
        out.sliced = [self.sliced[i] for i in at]
        where = {int(i): k for k, i in enumerate(at)}
        out.absent = {where[i]: a for i, a in self.absent.items() if i in where}
        return out


class LiveCounts:
    """One version's drift counts and constraint violations on the request path (see
    module). ``slices``: the request fields its monitor cuts windows by; ``keep``: how many
    windows are kept; ``on_violations``: called with each flush's rows per constraint."""

    def __init__(self, reference: Reference, keys: Mapping[str, str] | None = None, *,
                 window_micros: int, batch: int = 2048, slices: Sequence[str] = (),
                 keep: int = 3,
                 on_violations: Callable[[Mapping[str, int]], None] | None = None) -> None:
        self.reference = reference
        self.keys = dict(keys or {})
        self.window_micros = window_micros
        self.batch = batch
        self.slices = tuple(slices)
        self.keep = keep
        self.on_violations = on_violations
        self._states: dict[int, WindowState] = {}
        self._sliced: dict[int, bool] = {}
        self._retired: dict[int, WindowState] = {}  # windows no longer kept, not yet published
        self._dropped: int | None = None            # the newest window start no longer kept
        self._lock = threading.Lock()               # the buffers
        self._counting = threading.Lock()           # the states, and counting into them
        self._buffer = _Buffer()
        self._pending: deque[_Buffer] = deque()     # full buffers, waiting to be counted
        names = [n for n in reference.columns if not n.startswith("(")]
        self._numeric = [n for n in names if reference.columns[n].kind == "numeric"]
        self._categorical = [n for n in names if n not in self._numeric]
        self._numbers = _getter([self.keys.get(n, n) for n in self._numeric])
        self._labels = _getter([self.keys.get(n, n) for n in self._categorical])
        self._binners = {n: Binner(c.edges) for n, c in reference.columns.items()
                         if c.kind == "numeric" and c.edges}

    def observe(self, time: int, features: Mapping[str, Any], score: float,
                request: Mapping[str, Any] | None = None) -> None:
        """One served prediction: its time (µs), features as served, score and the request
        (its slice fields). Only the values are kept, not the record (nothing of the request
        outlives it); they are counted and checked at the next flush."""
        sliced = (tuple(slice_value((request or {}).get(f)) for f in self.slices)
                  if self.slices else ())
        try:
            numbers, labels, absent = self._numbers(features), self._labels(features), None
        except KeyError:                              # a record without some feature
            numbers = tuple(features.get(self.keys.get(n, n)) for n in self._numeric)
            labels = tuple(features.get(self.keys.get(n, n)) for n in self._categorical)
            absent = frozenset(n for n in (*self._numeric, *self._categorical)
                               if self.keys.get(n, n) not in features)
        with self._lock:
            b = self._buffer
            if absent is not None:
                b.absent[len(b.times)] = absent
            b.times.append(time)
            b.numbers.append(numbers)
            b.labels.append(labels)
            b.scores.append(score)
            b.sliced.append(sliced)
            if len(b.times) < self.batch:
                return
            self._pending.append(b)
            self._buffer = _Buffer()
        _counter().submit(self._drain)              # counted off the caller's thread

    def flush(self) -> None:
        """Count and check everything observed so far (in the calling thread)."""
        with self._counting:
            with self._lock:
                if self._buffer.times:
                    self._pending.append(self._buffer)
                    self._buffer = _Buffer()
            self._count_pending()

    def _drain(self) -> None:
        """The counting thread's turn: every full buffer waiting. A failure is logged; its
        windows then fall short of the log, which the monitor counts instead."""
        try:
            with self._counting:
                self._count_pending()
        except Exception:
            _log.exception("counting served predictions for drift failed")

    def _count_pending(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                buffer = self._pending.popleft()
            self._count_buffer(buffer)

    def _count_buffer(self, buffer: _Buffer) -> None:
        times = np.asarray(buffer.times, dtype=np.int64)
        starts = times - times % self.window_micros
        violations: dict[str, int] = {}
        for start in (int(s) for s in np.unique(starts)):
            if self._dropped is not None and start <= self._dropped:   # no longer kept
                continue
            inside = np.flatnonzero(starts == start)
            rows = buffer if inside.size == times.size else buffer.take(inside)
            table, present = self._table(rows)
            found = constraint_counts(self.reference, table, present).counts
            for name, n in found.items():
                violations[name] = violations.get(name, 0) + n
            state = WindowState(count(self.reference, table, self._binners), {},
                                {k: n for k, n in found.items() if n},
                                int(times[inside].max()))
            sliced = self._sliced.get(start, True)
            for j, field in enumerate(self.slices):
                values = [r[j] for r in rows.sliced]
                if UNSLICEABLE in values:
                    sliced = False
                    break
                for value in set(values):
                    mask = pa.array([v == value for v in values], pa.bool_())
                    state.slices[f"{field}={value}"] = count(self.reference,
                                                             table.filter(mask), self._binners)
            before = self._states.get(start)
            self._states[start] = state if before is None else before + state
            self._sliced[start] = sliced
        for old in sorted(self._states)[:-self.keep]:     # keep the latest ``keep``
            self._retired[old] = self._sliced_state(old)    # until it is published
            del self._states[old]
            del self._sliced[old]
            self._dropped = old if self._dropped is None else max(self._dropped, old)
        if self.on_violations is not None and any(violations.values()):
            self.on_violations(violations)

    def _table(self, rows: _Buffer) -> tuple[pa.Table, dict[str, Any] | None]:
        """One window's rows as the table the batch monitor counts (the reference's names,
        NaN or null for no value), and which rows hold each feature's key (None: all)."""
        n = len(rows.times)
        columns: dict[str, Any] = {}
        present: dict[str, Any] | None = None
        if rows.absent:
            present = {name: np.ones(n, dtype=bool)
                       for name in (*self._numeric, *self._categorical)}
            for i, lacked in rows.absent.items():
                for name in lacked:
                    present[name][i] = False
        if self._numeric:
            try:                                  # one matrix: None is NaN
                matrix = np.array(rows.numbers, dtype=np.float64).reshape(n, -1)
            except (TypeError, ValueError):      # a value that is not a number
                matrix, present = self._numbers_apart(rows.numbers, present)
            by_column = np.ascontiguousarray(matrix.T)  # pa.array of a strided column: slow
            for j, name in enumerate(self._numeric):
                columns[name] = pa.array(by_column[j])
        for j, name in enumerate(self._categorical):
            columns[name] = pa.array([None if (v := r[j]) is None else str(v)
                                      for r in rows.labels], pa.string())
        columns[SCORE] = pa.array(np.array(rows.scores, dtype=np.float64))
        return pa.table(columns), present

    def _numbers_apart(self, numbers: list[tuple[Any, ...]], present: dict[str, Any] | None,
                       ) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        """The numeric values one by one: one that is not a number is no value, and its
        record does not hold the feature (a schema mismatch)."""
        present = present or {name: np.ones(len(numbers), dtype=bool)
                              for name in (*self._numeric, *self._categorical)}
        matrix = np.full((len(numbers), len(self._numeric)), np.nan)
        for i, values in enumerate(numbers):
            for j, value in enumerate(values):
                if value is None:
                    continue
                try:
                    matrix[i, j] = float(value)
                except (TypeError, ValueError):
                    present[self._numeric[j]][i] = False
        return matrix, present

    def _sliced_state(self, start: int) -> WindowState:
        state = self._states[start]
        if self._sliced[start]:
            return state
        return WindowState(state.counts, {}, state.constraints, state.latest)

    def states(self) -> dict[int, WindowState]:
        """Every window kept, and those no longer kept but not yet ``published``, by start
        (µs), as counted so far; a window whose slice values could not be rendered safely
        has no slices (see module)."""
        self.flush()
        with self._counting:
            return {**self._retired, **{s: self._sliced_state(s) for s in self._states}}

    def published(self, starts: Iterable[int]) -> None:
        """These windows' states are in the store: those no longer kept are forgotten."""
        with self._counting:
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
