"""The monitor's signals, from one table of served predictions joined to their labels (what
``project.serving.predictions`` returns): drift per version and window against the version's
reference, constraint violations, the outcome lag, and metrics on matured slices.

Windows: the last ``w`` windows of ``window`` each, ending at the monitor's instant; a row
belongs to the window its ``time`` falls in. Predictions the fallback answered carry no
features and are left out of drift and constraints (counted as ``fallback``). The label is
counted only where it is known (matured); a window whose labels have not come yet shows the
label as ``absent``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.monitoring.constraints import CONSTRAINTS, Constraints, constraint_counts
from closedloop.monitoring.counts import (
    WindowCounts,
    WindowState,
    count,
    count_categorical,
    count_numeric,
    empty,
)
from closedloop.monitoring.detect import DriftResult, DriftRule, compare, decide
from closedloop.monitoring.reference import Reference, numeric_values
from closedloop.training import evaluation
from closedloop.training.reference import LABEL, SCORE

#: Label-delay histogram bounds, in seconds (the last bucket is open).
DELAY_BOUNDS = (60, 300, 900, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400)


@dataclass(frozen=True)
class WindowSignals:
    """One version's window: its rows, drift (overall, and per slice value: ``"country=FR"``)
    and constraint violations. One Holm correction covers every column of the window and
    of its slices."""

    start: int
    end: int
    rows: int
    fallback: int
    drift: DriftResult | None           # None: no row to compare
    constraints: Constraints
    slices: Mapping[str, DriftResult] = field(default_factory=dict)
    source: str = "log"                 # counted from the log, or the workers' "counts"

    def drifted(self) -> tuple[str, ...]:
        """Every drifted column, ``slice:column`` for those in a slice."""
        found = [] if self.drift is None else list(self.drift.drifted)
        for name, result in self.slices.items():
            found.extend(f"{name}:{column}" for column in result.drifted)
        return tuple(found)


@dataclass(frozen=True)
class VersionSignals:
    version: int
    windows: tuple[WindowSignals, ...]
    persisted: tuple[str, ...]          # columns drifted in k of the last w windows


@dataclass(frozen=True)
class OutcomeLag:
    """How late labels come: the delay histogram of settled labels (counts per bucket of
    ``DELAY_BOUNDS``, the last open) and the share of predictions with a label by age."""

    delays: tuple[int, ...]
    matured_by_age: tuple[tuple[int, int, int], ...]   # (age bucket's upper bound s, rows,
    median_delay_s: float | None                       #  labelled rows)

    def matured_share(self, older_than_s: int) -> float | None:
        rows = sum(r for bound, r, _ in self.matured_by_age if bound > older_than_s)
        done = sum(d for bound, _, d in self.matured_by_age if bound > older_than_s)
        return done / rows if rows else None


@dataclass(frozen=True)
class SliceSignals:
    """Metrics on the matured rows of one slice (or of all rows: ``slice`` None)."""

    column: str | None
    slice: str | None
    rows: int
    positives: int
    scored: bool
    auc: evaluation.Interval | None = None
    calibration_gap: evaluation.Interval | None = None   # mean score − observed rate
    ece: float | None = None
    kpis: Mapping[str, float] = field(default_factory=dict)
    reason: str | None = None


def _window_table(rows: pa.Table, reference: Reference, keys: Mapping[str, str],
                  ) -> tuple[pa.Table, int, dict[str, np.ndarray[Any, Any]]]:
    """The reference's feature columns and the score out of the logged rows (those the model
    scored: the fallback's carry no features), how many the fallback answered, and per
    feature which rows' records hold its key at all. ``keys``: each feature's key in the
    logged map (its pinned column, ``view@version.feature``)."""
    scored = _scored(rows)
    columns: dict[str, Any] = {}
    present: dict[str, np.ndarray[Any, Any]] = {}
    features = scored["features"] if "features" in scored.column_names else None
    for name in (n for n in reference.columns if n not in (SCORE, LABEL)):
        if features is None:
            present[name] = np.zeros(scored.num_rows, dtype=bool)
            columns[name] = pa.nulls(scored.num_rows, pa.float64())
            continue
        key = pa.scalar(keys.get(name, name))
        present[name] = np.asarray(pc.is_valid(pc.map_lookup(features, key, "all")))
        columns[name] = pc.map_lookup(features, key, "first")
    columns[SCORE] = scored["score"]
    return pa.table(columns), rows.num_rows - scored.num_rows, present


def _label_counts(rows: pa.Table, reference: Reference, counts: WindowCounts) -> None:
    """The label of the rows whose label is known, counted into ``counts``."""
    if LABEL in reference.columns and "label" in rows.column_names:
        labelled = rows.filter(pc.is_valid(rows["label"]))
        label = reference.columns[LABEL]
        if labelled.num_rows and label.kind == "categorical":   # 0/1, as the run binned it
            values = pc.cast(pc.cast(labelled["label"], pa.int64()), pa.string())
            counts.columns[LABEL] = count_categorical(label, values)
        elif labelled.num_rows:
            counts.columns[LABEL] = count_numeric(label, numeric_values(labelled["label"]))


def _counted(rows: pa.Table, reference: Reference,
             keys: Mapping[str, str]) -> tuple[WindowCounts, pa.Table, int, dict[str, Any]]:
    """Rows counted against the reference: features and score of the rows the model scored,
    the label of those whose label is known."""
    table, fallback, present = _window_table(rows, reference, keys)
    counts = count(reference, table)
    _label_counts(rows, reference, counts)
    return counts, table, fallback, present


def _scored(rows: pa.Table) -> pa.Table:
    """The logged rows the model scored (the fallback's carry no features)."""
    if "fallback" not in rows.column_names:
        return rows
    return rows.filter(pc.invert(pc.fill_null(rows["fallback"], False)))


def scored_rows(rows: pa.Table) -> int:
    """How many of the logged rows the model scored."""
    return int(_scored(rows).num_rows)


def _with_labels(counts: WindowCounts, rows: pa.Table, reference: Reference) -> WindowCounts:
    """A worker-counted window's counts with its label counted from the log (labels come
    after the prediction; no worker sees them)."""
    out = WindowCounts(counts.reference, counts.rows, dict(counts.columns))
    _label_counts(rows, reference, out)
    return out


def window_signals(rows: pa.Table, reference: Reference, rule: DriftRule, start: int,
                   end: int, keys: Mapping[str, str] | None = None,
                   slices: Sequence[str] = (), state: WindowState | None = None,
                   ) -> WindowSignals:
    """One version's window of rows against its reference (``keys``: see ``_window_table``),
    overall and per value of each ``slices`` column of ``rows``. ``state``: the workers'
    merged counts of exactly these rows (``source`` "counts"): the features, score and
    constraints are taken from it and only the label is counted from ``rows``."""
    if state is not None:
        fallback = rows.num_rows - scored_rows(rows)
        counts = _with_labels(state.counts, rows, reference)
        constraints = Constraints(state.counts.rows, {
            name: state.constraints.get(name, 0) for name in CONSTRAINTS})
        scored = state.counts.rows
    else:
        counts, table, fallback, present = _counted(rows, reference, keys or {})
        constraints = constraint_counts(reference, table, present)
        scored = table.num_rows
    source = "log" if state is None else "counts"
    if not scored:
        return WindowSignals(start, end, rows.num_rows, fallback, None, constraints,
                             source=source)
    results = {"": compare(reference, counts, rule, verdicts=False)}
    for column in slices:
        if column not in rows.column_names:
            continue
        values = pc.cast(rows[column], pa.string()).fill_null("(null)")
        for value in pc.unique(values).to_pylist():
            part = rows.filter(pc.equal(values, value))
            if state is not None:
                found = state.slices.get(f"{column}={value}")   # None: only the fallback's
                part_counts = _with_labels(empty(reference) if found is None else found,
                                           part, reference)
            else:
                part_counts = _counted(part, reference, keys or {})[0]
            results[f"{column}={value}"] = compare(reference, part_counts, rule,
                                                   verdicts=False)
    joined = {f"{name}|{col}": drift for name, result in results.items()
              for col, drift in result.columns.items()}
    decided = decide(joined, rule)                     # one Holm correction for them all
    split = {name: DriftResult(result.rows, {col: decided[f"{name}|{col}"]
                                             for col in result.columns})
             for name, result in results.items()}
    overall = split.pop("")
    return WindowSignals(start, end, rows.num_rows, fallback, overall, constraints, split,
                         source)


def usable_state(rows: pa.Table, found: Sequence[WindowState], end: int,
                 slices: Sequence[str]) -> WindowState | None:
    """The workers' states of one window merged, if they account for exactly its logged rows
    the model scored (``rows``: the window's, of one version): every prediction counted
    before ``end`` (the window's end, or the monitor's instant), as many as the log holds,
    and a state for every slice value the log shows. Else None: the log is counted."""
    if not found:
        return None
    state = found[0]
    for other in found[1:]:
        state = state + other
    scored = _scored(rows)
    if state.latest >= end or state.counts.rows != scored.num_rows:
        return None
    for column in slices:
        if column not in scored.column_names:
            continue
        values = pc.cast(scored[column], pa.string()).fill_null("(null)")
        if any(f"{column}={v}" not in state.slices for v in pc.unique(values).to_pylist()):
            return None
    return state


def persisted(windows: Sequence[WindowSignals], k: int) -> tuple[str, ...]:
    """Columns drifted in at least ``k`` of these windows."""
    hits: dict[str, int] = {}
    for w in windows:
        for name in w.drifted():
            hits[name] = hits.get(name, 0) + 1
    return tuple(sorted(name for name, n in hits.items() if n >= k))


def outcome_lag(rows: pa.Table, now: int) -> OutcomeLag:
    """The label delays of settled predictions and the matured share by age."""
    times = np.asarray(pc.cast(rows["time"], pa.int64()), dtype=np.int64)
    if "label_settled_at" in rows.column_names:
        settled = pc.cast(rows["label_settled_at"], pa.int64())
        known = np.asarray(pc.is_valid(rows["label"]))
        at = np.asarray(pc.fill_null(settled, 0), dtype=np.int64)
    else:
        known, at = np.zeros(times.size, dtype=bool), np.zeros(times.size, dtype=np.int64)
    bounds = np.asarray(DELAY_BOUNDS, dtype=np.float64)
    delay_s = np.maximum(at[known] - times[known], 0) / 1e6
    delays = np.bincount(np.searchsorted(bounds, delay_s, side="left"),
                         minlength=len(DELAY_BOUNDS) + 1)
    age_s = np.maximum(now - times, 0) / 1e6
    bucket = np.searchsorted(bounds, age_s, side="left")
    rows_by = np.bincount(bucket, minlength=len(DELAY_BOUNDS) + 1)
    done_by = np.bincount(bucket[known], minlength=len(DELAY_BOUNDS) + 1)
    upper = [*DELAY_BOUNDS, 2**62]
    return OutcomeLag(tuple(int(d) for d in delays),
                      tuple((int(u), int(r), int(d)) for u, r, d in zip(upper, rows_by, done_by,
                                                                         strict=True)),
                      float(np.median(delay_s)) if delay_s.size else None)


def _kpis(rows: pa.Table) -> dict[str, float]:
    """Each decision's share and the label's rate: the business figures declared by the
    serving's decisions."""
    out: dict[str, float] = {}
    if rows.num_rows and "decision" in rows.column_names:
        counted = pc.value_counts(pc.fill_null(rows["decision"], "none"))
        for value, n in zip(counted.field("values").to_pylist(),
                            counted.field("counts").to_pylist(), strict=True):
            out[f"decision:{value}"] = n / rows.num_rows
    return out


def slice_signals(rows: pa.Table, slices: Sequence[str], min_size: int,
                  min_class: int = 10) -> list[SliceSignals]:
    """AUC (DeLong interval), the calibration gap (normal interval) and ECE on the matured
    rows, overall and per value of each slice column; slices under ``min_size`` rows or
    ``min_class`` of a class are listed, unscored."""
    if "label" not in rows.column_names:
        return []
    matured = rows.filter(pc.is_valid(rows["label"]))
    y = np.asarray(pc.cast(matured["label"], pa.float64()), dtype=np.float64)
    p = np.asarray(matured["score"].to_numpy(zero_copy_only=False), dtype=np.float64)
    groups: list[tuple[str | None, str | None, np.ndarray[Any, Any]]] = [
        (None, None, np.ones(y.size, dtype=bool))]
    for column in slices:
        if column not in matured.column_names:
            continue
        values = pc.cast(matured[column], pa.string()).fill_null("(null)")
        for found in pc.unique(values).to_pylist():
            groups.append((column, str(found), np.asarray(pc.equal(values, found))))
    out = []
    for name, value, inside in groups:
        yy, pp = y[inside], p[inside]
        n, pos = int(yy.size), int(yy.sum())
        kpis = _kpis(matured.filter(pa.array(inside)))
        if n < min_size or pos < min_class or n - pos < min_class:
            out.append(SliceSignals(name, value, n, pos, False, kpis=kpis,
                                    reason=f"too small: needs {min_size} matured rows with "
                                           f"{min_class} of each class"))
            continue
        gap = pp - yy
        se = float(gap.std(ddof=1) / np.sqrt(n))
        mean = float(gap.mean())
        out.append(SliceSignals(name, value, n, pos, True, evaluation.delong(yy, pp),
                                evaluation.Interval(mean, mean - 1.96 * se, mean + 1.96 * se, se),
                                evaluation.reliability(yy, pp)[0], kpis))
    return out


def counted_from_log(rows: pa.Table, states: Mapping[int, Sequence[WindowState]],
                     bounds: Sequence[tuple[int, int]], slices: Sequence[str]) -> bool:
    """Whether some window of ``bounds`` holds rows the model scored that the workers'
    ``states`` do not account for (``usable_state``): its features must be read from the
    log."""
    times = pc.cast(rows["time"], pa.int64())
    for start, end in bounds:
        inside = rows.filter(pc.and_(pc.greater_equal(times, start), pc.less(times, end)))
        if scored_rows(inside) and usable_state(inside, states.get(start, ()), end,
                                                slices) is None:
            return True
    return False


def version_signals(rows: pa.Table, reference: Reference, rule: DriftRule,
                    bounds: Sequence[tuple[int, int]], k: int, version: int,
                    keys: Mapping[str, str] | None = None,
                    slices: Sequence[str] = (),
                    states: Mapping[int, Sequence[WindowState]] | None = None,
                    ) -> VersionSignals:
    """Each window of ``bounds`` ([start, end) µs); ``states``: the workers' states by window
    start (see ``usable_state``)."""
    times = pc.cast(rows["time"], pa.int64())
    windows = []
    for start, end in bounds:
        inside = rows.filter(pc.and_(pc.greater_equal(times, start), pc.less(times, end)))
        state = usable_state(inside, (states or {}).get(start, ()), end, slices)
        windows.append(window_signals(inside, reference, rule, start, end, keys, slices,
                                      state))
    return VersionSignals(version, tuple(windows), persisted(windows, k))


__all__ = [
    "DELAY_BOUNDS",
    "LABEL",
    "SCORE",
    "Constraints",
    "OutcomeLag",
    "SliceSignals",
    "VersionSignals",
    "WindowSignals",
    "constraint_counts",
    "counted_from_log",
    "outcome_lag",
    "persisted",
    "scored_rows",
    "slice_signals",
    "usable_state",
    "version_signals",
    "window_signals",
]
