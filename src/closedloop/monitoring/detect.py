"""Drift of a window against its reference, and the decision to call it drift.

``compare(reference, counts)`` gives every statistic per column from the counts alone:
PSI, KL, JS and χ² on the coarse bins (or categories + unseen); KS and the normalised
Wasserstein distance from the fine bins, each with a bound on its error against the exact
value on the raw rows (docs/architecture.md, "Monitoring: the statistics"):

* KS: D is read at the fine edges, where both CDFs are known exactly; between two edges
  each CDF rises by at most its bin's share, so the exact D lies in
  [D, D + max over bins of max(reference share, window share)].
* Wasserstein: between two fine edges both CDFs are taken as linear; the exact value differs
  by at most Σ width × max(reference share, window share) over the inner bins; beyond the outer
  edges the tail sums give ∫F exactly for each side, and |∫F_ref − ∫F_cur| is used, within
  2·min of the two. The sum of the bounds, divided like the value, is ``wasserstein_error``.

The decision (``DriftRule``) accounts for sample size: a column drifts in a window when its
χ² test is significant at the window's size after Holm's correction across every column
(and slice) tested together, **and** its PSI is at least an effect floor — a large window
does not alarm on noise, a small one is judged by significance alone. Persistence over k of
the last w windows is the monitor's (``Persistence``).

>>> import numpy as np, pyarrow as pa
>>> from closedloop.monitoring.reference import fit_reference
>>> rng = np.random.default_rng(0)
>>> ref = fit_reference(pa.table({"x": rng.normal(size=20_000)}))
>>> detector = DriftDetector(ref)
>>> detector.update(pa.table({"x": rng.normal(0.5, 1, size=5_000)}))
>>> detector.result.drifted
('x',)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.errors import MonitoringError
from closedloop.monitoring.counts import ColumnCounts, WindowCounts, count, empty
from closedloop.monitoring.drift import EPS, ChiSquare, chi_square, js_distance, kl_divergence
from closedloop.monitoring.drift import psi as psi_of
from closedloop.monitoring.reference import ColumnReference, Reference

_F = np.ndarray[Any, np.dtype[np.float64]]

#: χ²'s bins are merged until each expects at least this many values on both sides.
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class DriftRule:
    """When a column's change in a window counts as drift (see the module)."""

    alpha: float = 0.01            # false alarms per window, across every column and slice
    min_psi: float = 0.005         # the effect floor: smaller shifts are not worth an alert
    min_rows: int = 100            # fewer values than this: no decision ("insufficient")
    eps: float = EPS               # PSI's and KL's floor under an empty bin

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or self.min_psi < 0 or self.min_rows < 1 or self.eps <= 0:
            raise MonitoringError(f"drift rule {self} is invalid", fix="use 0 < alpha < 1, "
                                  "min_psi >= 0, min_rows >= 1 and eps > 0")


@dataclass(frozen=True)
class ColumnDrift:
    """One column's statistics in one window, and the verdict.

    ``status``: ``drift``, ``ok``, ``insufficient`` (fewer than ``min_rows`` values),
    ``no_values`` (the window's values are all missing) or ``absent`` (the window does not
    carry the column). Statistics are NaN where there is nothing to compare — never 0.
    """

    column: str
    kind: str
    n_reference: int
    n_current: int
    missing_share: float
    unseen_share: float                # categorical: share of values the reference never held
    psi: float
    kl: float
    js: float
    chi_square: ChiSquare
    ks: float = float("nan")
    ks_error: float = float("nan")
    wasserstein: float = float("nan")
    wasserstein_error: float = float("nan")
    status: str = "ok"

    @property
    def drifted(self) -> bool:
        return self.status == "drift"


@dataclass(frozen=True)
class DriftResult:
    """A window's drift: per column, with the verdicts after the multiple-testing correction."""

    rows: int
    columns: Mapping[str, ColumnDrift]

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(name for name, c in self.columns.items() if c.drifted)


def _nan_drift(ref: ColumnReference, cur: ColumnCounts, status: str,
               missing_share: float) -> ColumnDrift:
    nan = float("nan")
    return ColumnDrift(ref.name, ref.kind, ref.n, cur.n, missing_share, nan, nan, nan, nan,
                       ChiSquare(nan, 0, nan), status=status)


def _sketches(ref: ColumnReference, r: _F, c: _F,
              cur: ColumnCounts) -> tuple[float, float, float, float]:
    """KS and normalised W₁ from fine-bin shares ``r`` and ``c``, with their error bounds."""
    if len(ref.edges) == 0:
        nan = float("nan")
        return nan, nan, nan, nan
    edges = np.asarray(ref.edges)
    gap = np.cumsum(r)[:-1] - np.cumsum(c)[:-1]               # F_ref − F_cur at each edge
    ks = float(np.abs(gap).max())
    ks_error = float(np.maximum(r, c).max())
    widths = np.diff(edges)
    a, b = gap[:-1], gap[1:]
    same = np.sign(a) * np.sign(b) >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing = (a * a + b * b) / (2 * (np.abs(a) + np.abs(b)))
    inner = widths * np.where(same, (np.abs(a) + np.abs(b)) / 2, np.nan_to_num(crossing))
    inner_error = widths * np.maximum(r[1:-1], c[1:-1])
    n_r, n_c = max(ref.n, 1), max(cur.n, 1)
    tails = [(ref.below / n_r, cur.below / n_c), (ref.above / n_r, cur.above / n_c)]
    w = float(inner.sum()) + sum(abs(x - y) for x, y in tails)
    w_error = float(inner_error.sum()) + sum(2 * min(x, y) for x, y in tails)
    scale = max(ref.std, 0.001)
    return ks, ks_error, w / scale, w_error / scale


def compare(reference: Reference, counts: WindowCounts, rule: DriftRule | None = None,
            *, tests: int | None = None, verdicts: bool = True) -> DriftResult:
    """Every column's drift in ``counts``; verdicts corrected (Holm) over ``tests`` tests
    (default: the columns here that have enough values). ``verdicts=False``: the statistics
    only (no column ``drift`` yet), to decide with others in one correction (``decide``)."""
    rule = rule or DriftRule()
    if counts.reference != reference.hash:
        raise MonitoringError("these counts were made against another reference",
                              fix="count the window against the model version's reference")
    found: dict[str, ColumnDrift] = {}
    for name, ref in reference.columns.items():
        cur = counts.columns[name]
        seen = cur.n + cur.missing + cur.nonfinite
        missing_share = (cur.missing + cur.nonfinite) / seen if seen else float("nan")
        if cur.absent and not seen:
            found[name] = _nan_drift(ref, cur, "absent", missing_share)
            continue
        if cur.n == 0 or ref.n == 0:
            found[name] = _nan_drift(ref, cur, "no_values", missing_share)
            continue
        fine_r = np.asarray(ref.counts, dtype=np.float64) / ref.n
        fine_c = cur.counts / cur.n
        coarse_ref, coarse_cur = ref.coarse_counts(ref.counts), ref.coarse_counts(cur.counts)
        r, c = coarse_ref / ref.n, coarse_cur / cur.n
        unseen = float(c[-1]) if ref.kind == "categorical" else float("nan")
        nan = float("nan")
        ks, ks_error, w, w_error = (_sketches(ref, fine_r, fine_c, cur)
                                    if ref.kind == "numeric" else (nan, nan, nan, nan))
        found[name] = ColumnDrift(
            name, ref.kind, ref.n, cur.n, missing_share, unseen,
            psi_of(r, c, eps=rule.eps), kl_divergence(r, c, eps=rule.eps), js_distance(r, c),
            chi_square(*_pooled(coarse_ref, coarse_cur)), ks, ks_error, w, w_error,
            status="insufficient" if cur.n < rule.min_rows else "ok")
    return DriftResult(counts.rows, decide(found, rule, tests=tests) if verdicts else found)


def _pooled(ref: Any, cur: Any, least: float = MIN_EXPECTED) -> tuple[Any, Any]:
    """Adjacent bins merged until each holds an expected count of at least ``least`` in both
    rows of the table (under no drift: the pooled share times each side's size) — χ²'s
    large-sample condition. A guard bin (0.1% of the reference) stands alone from about
    5,000 rows of window; below that it joins its neighbour."""
    total = ref + cur
    n_ref, n_cur = ref.sum(), cur.sum()
    if n_ref == 0 or n_cur == 0:
        return ref, cur
    smaller = min(n_ref, n_cur) / (n_ref + n_cur)
    groups: list[int] = []                         # the first bin of each merged group
    held = 0.0
    for i, t in enumerate(total):
        if not groups or held * smaller >= least:
            groups.append(i)
            held = 0.0
        held += t
    if len(groups) > 1 and held * smaller < least:   # a short last group joins the one before
        groups.pop()
    starts = np.asarray(groups)
    return np.add.reduceat(ref, starts), np.add.reduceat(cur, starts)


def decide(columns: Mapping[str, ColumnDrift], rule: DriftRule, *,
           tests: int | None = None) -> dict[str, ColumnDrift]:
    """Holm's step-down correction over the testable columns (``tests`` at least), then the
    effect floor: the verdicts, as new ``ColumnDrift`` values."""
    testable = sorted((c.chi_square.p_value, name) for name, c in columns.items()
                      if c.status == "ok")
    m = max(len(testable), tests or 0)
    out = dict(columns)
    for i, (p, name) in enumerate(testable):
        if p > rule.alpha / (m - i):
            break                              # Holm: the first failure stops the rest
        if columns[name].psi >= rule.min_psi:
            out[name] = _with_status(columns[name], "drift")
    return out


def _with_status(column: ColumnDrift, status: str) -> ColumnDrift:
    return replace(column, status=status)


class DriftDetector:
    """Counts windows against a reference; ``result`` is the drift of all rows seen so far.

    Constructors store; ``update(table)`` counts a batch (any reference column it lacks is
    ``absent`` for those rows); ``merge(counts)`` adds counts made elsewhere (another worker).
    """

    _counts: WindowCounts | None = None

    def __init__(self, reference: Reference, rule: DriftRule | None = None) -> None:
        self.reference = reference
        self.rule = rule

    @property
    def counts_(self) -> WindowCounts:
        """The counts so far (an empty window before the first update)."""
        if self._counts is None:
            self._counts = empty(self.reference)
        return self._counts

    def update(self, batch: pa.Table) -> None:
        self._counts = self.counts_ + count(self.reference, batch)

    def merge(self, counts: WindowCounts) -> None:
        self._counts = self.counts_ + counts

    @property
    def result(self) -> DriftResult:
        return compare(self.reference, self.counts_, self.rule)


@dataclass
class Persistence:
    """An alert when a column drifted in at least ``k`` of the last ``w`` windows."""

    k: int = 2
    w: int = 3
    history: dict[str, deque[bool]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.w:
            raise MonitoringError(f"persistence {self.k} of {self.w} is impossible",
                                  fix="use 1 <= k <= w")

    def update(self, result: DriftResult) -> tuple[str, ...]:
        """Record a window's verdicts; the columns whose alert holds after it."""
        for name, column in result.columns.items():
            seen = self.history.setdefault(name, deque(maxlen=self.w))
            seen.append(column.drifted)
        return tuple(name for name, seen in self.history.items() if sum(seen) >= self.k)

    def reset(self, columns: Iterable[str] | None = None) -> None:
        for name in list(self.history if columns is None else columns):
            self.history.pop(name, None)


__all__ = ["ColumnDrift", "DriftDetector", "DriftResult", "DriftRule", "Persistence",
           "compare", "decide"]
