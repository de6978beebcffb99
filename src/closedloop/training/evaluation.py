"""Offline evaluation of a binary classifier on a held-out test set.

* **Metrics**: AUC, log loss, Brier score, average precision; calibration as the expected
  calibration error over ten equal-width bins and its reliability curve; the PR curve.
* **Confidence intervals**: AUC by DeLong's method (Sun & Xu's fast algorithm), log loss and
  Brier by the normal approximation of a mean of per-row losses; the difference between two
  models scored on the same rows by the paired versions of both (DeLong's covariance for AUC).
* **Slices**: the same per value of a slice column (numbers cut at their quartiles), with
  intervals, for slices of at least ``min_size`` rows holding ``min_class`` of each class;
  smaller ones are named and left unscored.
* **Fairness** per protected attribute at the decision threshold: the demographic-parity
  difference (largest minus smallest selection rate across groups) and the equal-opportunity
  difference (the same of true-positive rates).
* **Leakage, warning**: a single feature whose univariate AUC is at least ``suspicious``.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(delong(y, p).value, 2)
0.75
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_EPS = 1e-15


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval (``level``, two-sided)."""

    value: float
    low: float
    high: float
    se: float
    level: float = 0.95

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _midrank(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(x)              # ties share one rank: the order among them is moot
    sorted_x = x[order]
    n = x.size
    ranks = np.empty(n, dtype=np.float64)
    # Runs of equal values share the mean of their positions.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], n]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def _components(y: np.ndarray[Any, Any], p: np.ndarray[Any, Any],
                ) -> tuple[float, np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """AUC and DeLong's structural components (per positive, per negative)."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = pos.size, neg.size
    tx, ty = _midrank(pos), _midrank(neg)
    tz = _midrank(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n
    v10 = 1.0 - (tz[m:] - ty) / m
    return float(auc), v01, v10


def _checked(y: Any, p: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    yy = np.asarray(y).astype(np.int64)
    pp = np.asarray(p, dtype=np.float64)
    if yy.shape != pp.shape or yy.ndim != 1:
        raise ValueError(f"labels {yy.shape} and scores {pp.shape} differ in shape")
    return yy, pp


def delong(y: Any, p: Any, level: float = 0.95) -> Interval:
    """The AUC and its DeLong confidence interval."""
    yy, pp = _checked(y, p)
    auc, v01, v10 = _components(yy, pp)
    m, n = v01.size, v10.size
    var = (np.var(v01, ddof=1) / m if m > 1 else 0.0) + (np.var(v10, ddof=1) / n
                                                         if n > 1 else 0.0)
    se = math.sqrt(max(float(var), 0.0))
    z = _z(level)
    return Interval(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), se, level)


def delong_difference(y: Any, p_a: Any, p_b: Any, level: float = 0.95) -> Interval:
    """AUC(a) − AUC(b) on the same rows, with DeLong's paired interval."""
    yy, pa_ = _checked(y, p_a)
    _, pb_ = _checked(y, p_b)
    auc_a, a01, a10 = _components(yy, pa_)
    auc_b, b01, b10 = _components(yy, pb_)
    m, n = a01.size, a10.size
    var = np.var(a01 - b01, ddof=1) / m + np.var(a10 - b10, ddof=1) / n
    se = math.sqrt(max(float(var), 0.0))
    diff = auc_a - auc_b
    z = _z(level)
    return Interval(diff, diff - z * se, diff + z * se, se, level)


def _mean_interval(values: np.ndarray[Any, Any], level: float) -> Interval:
    mean = float(values.mean())
    se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
    z = _z(level)
    return Interval(mean, mean - z * se, mean + z * se, se, level)


def _log_losses(y: np.ndarray[Any, Any], p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    q = np.clip(p, _EPS, 1 - _EPS)
    out: np.ndarray[Any, Any] = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return out


def log_loss(y: Any, p: Any, level: float = 0.95) -> Interval:
    yy, pp = _checked(y, p)
    return _mean_interval(_log_losses(yy, pp), level)


def brier(y: Any, p: Any, level: float = 0.95) -> Interval:
    yy, pp = _checked(y, p)
    return _mean_interval((pp - yy) ** 2, level)


def reliability(y: Any, p: Any, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """The expected calibration error over ``bins`` equal-width bins, and the curve: per
    non-empty bin, the mean score, the observed positive rate and the row count."""
    yy, pp = _checked(y, p)
    index = np.minimum((pp * bins).astype(np.int64), bins - 1)
    curve = []
    ece = 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if not count:
            continue
        mean_p, rate = float(pp[inside].mean()), float(yy[inside].mean())
        ece += count / yy.size * abs(mean_p - rate)
        curve.append({"bin": b, "mean_score": mean_p, "positive_rate": rate, "rows": count})
    return ece, curve


def pr_curve(y: Any, p: Any, points: int = 100) -> tuple[float, list[dict[str, float]]]:
    """Average precision (scikit-learn's definition: Σ (Rₙ − Rₙ₋₁) Pₙ over the distinct
    thresholds) and the precision–recall curve, at most ``points`` points."""
    yy, pp = _checked(y, p)
    order = np.argsort(-pp)            # each threshold's counts are taken at its run's end
    scores, hits = pp[order], yy[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]   # each threshold's end
    tp = np.cumsum(hits)[last].astype(np.float64)
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / tp[-1] if tp[-1] else np.zeros_like(tp)
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    # From the lowest recall up, as scikit-learn lists it reversed, ending at (0, 1).
    curve_p, curve_r = np.r_[precision, 1.0], np.r_[recall, 0.0]
    keep = np.unique(np.linspace(0, curve_p.size - 1, min(points, curve_p.size))
                     .astype(np.int64))
    curve = [{"recall": float(curve_r[i]), "precision": float(curve_p[i])} for i in keep]
    return ap, curve


def roc_curve(y: Any, p: Any, points: int = 100) -> list[dict[str, float]]:
    """The ROC curve — false-positive rate against true-positive rate at each distinct
    threshold, from (0, 0) to (1, 1), as scikit-learn's ``roc_curve`` lists it — thinned to at
    most ``points`` points."""
    yy, pp = _checked(y, p)
    order = np.argsort(-pp, kind="stable")
    scores, hits = pp[order], yy[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]   # each threshold's end
    tp = np.cumsum(hits)[last].astype(np.float64)
    fp = (last + 1) - tp
    positives, negatives = tp[-1], fp[-1]
    tpr = np.r_[0.0, tp / positives if positives else np.zeros_like(tp)]
    fpr = np.r_[0.0, fp / negatives if negatives else np.zeros_like(fp)]
    keep = np.unique(np.linspace(0, tpr.size - 1, min(points, tpr.size)).astype(np.int64))
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i])} for i in keep]


def confusion(y: Any, p: Any, thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """The confusion matrix at each threshold (a score at or above it is a positive), with
    precision, recall and the false-positive rate."""
    yy, pp = _checked(y, p)
    out = []
    for t in sorted(set(float(x) for x in thresholds)):
        predicted = pp >= t
        tp = int((predicted & (yy == 1)).sum())
        fp = int((predicted & (yy == 0)).sum())
        fn = int((~predicted & (yy == 1)).sum())
        tn = int(yy.size - tp - fp - fn)
        out.append({"threshold": t, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                    "precision": tp / (tp + fp) if tp + fp else None,
                    "recall": tp / (tp + fn) if tp + fn else None,
                    "false_positive_rate": fp / (fp + tn) if fp + tn else None})
    return out


def auc(y: Any, p: Any) -> float:
    """The AUC (the Mann–Whitney statistic, ties counted half)."""
    yy, pp = _checked(y, p)
    ranks = _midrank(pp)
    positives = int(yy.sum())
    negatives = yy.size - positives
    return float((ranks[yy == 1].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def permutation_importance(score: Any, X: pa.Table, y: Any, *, seed: int = 0,
                           max_rows: int = 10_000) -> dict[str, float]:
    """Each feature's permutation importance: the test AUC lost when the feature's values
    are shuffled among the rows (seeded), on at most ``max_rows`` rows. ``score`` maps a
    feature table to scores."""
    yy = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if X.num_rows > max_rows:
        keep = np.sort(rng.choice(X.num_rows, max_rows, replace=False))
        X, yy = X.take(pa.array(keep)), yy[keep]
    if not 0 < yy.sum() < yy.size:
        return {}
    base = auc(yy, score(X))
    out = {}
    for i, name in enumerate(X.column_names):
        shuffled = X.set_column(i, name, X.column(i).take(pa.array(rng.permutation(X.num_rows))))
        out[name] = base - auc(yy, score(shuffled))
    return out


@dataclass(frozen=True)
class Metrics:
    """The headline metrics of one set of rows."""

    rows: int
    positives: int
    auc: Interval | None
    log_loss: Interval
    brier: Interval
    ece: float
    average_precision: float | None
    reliability: list[dict[str, float]] = field(default_factory=list)
    pr_curve: list[dict[str, float]] = field(default_factory=list)
    roc_curve: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metrics(y: Any, p: Any, *, curves: bool = True, level: float = 0.95) -> Metrics:
    """Every headline metric of scores ``p`` against labels ``y``."""
    yy, pp = _checked(y, p)
    both = 0 < yy.sum() < yy.size
    ece, curve = reliability(yy, pp)
    ap, pr = pr_curve(yy, pp) if both else (None, [])
    roc = roc_curve(yy, pp) if both and curves else []
    return Metrics(int(yy.size), int(yy.sum()), delong(yy, pp, level) if both else None,
                   log_loss(yy, pp, level), brier(yy, pp, level), ece, ap,
                   curve if curves else [], pr if curves else [], roc)


def _groups(values: Sequence[Any] | pa.Array | pa.ChunkedArray,
            ) -> tuple[list[str], np.ndarray[Any, Any]]:
    """Slice labels per row: a value's text, or for floats the quartile bin it falls in.
    An Arrow column is grouped without a Python object per row."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_floating(values.type):
            numbers = pc.fill_null(values, math.nan).to_numpy(zero_copy_only=False)
            present = ~np.isnan(numbers)
            distinct = np.sort(numbers[present])
            if distinct.size and np.count_nonzero(np.diff(distinct)) + 1 > 8:
                return _quartiles(numbers, present)
        encoded = pc.dictionary_encode(values)
        texts = ["missing" if v is None else str(v) for v in encoded.dictionary.to_pylist()]
        names = sorted({*texts, *(["missing"] if encoded.null_count else [])})
        where = {name: i for i, name in enumerate(names)}
        remap = np.array([*(where[t] for t in texts), where.get("missing", 0)], np.int64)
        codes = pc.fill_null(encoded.indices, len(texts)).to_numpy(zero_copy_only=False)
        return names, remap[codes]
    array: np.ndarray[Any, Any] = np.asarray(values, dtype=object)
    present = np.array([v is not None and not (isinstance(v, float) and math.isnan(v))
                        for v in array], dtype=bool)
    floats = present.any() and all(isinstance(v, float) for v in array[present])
    if floats and np.unique(array[present].astype(np.float64)).size > 8:
        numbers = np.full(array.size, math.nan)
        numbers[present] = array[present].astype(np.float64)
        return _quartiles(numbers, present)
    words = np.array(["missing" if v is None else str(v) for v in array], dtype=str)
    unique, index = np.unique(words, return_inverse=True)
    return [str(n) for n in unique], index


def _quartiles(numbers: np.ndarray[Any, Any], present: np.ndarray[Any, Any],
               ) -> tuple[list[str], np.ndarray[Any, Any]]:
    """Quartile bins of the present numbers, and "missing" for the rest."""
    cuts = np.quantile(numbers[present], [0.25, 0.5, 0.75])
    edges = [-math.inf, *cuts.tolist(), math.inf]
    names = [f"[{lo:.4g}, {hi:.4g})" for lo, hi in itertools.pairwise(edges)]
    index = np.full(numbers.size, len(names), dtype=np.int64)        # "missing"
    index[present] = np.searchsorted(cuts, numbers[present], side="right")
    used = np.flatnonzero(np.bincount(index, minlength=len(names) + 1))
    labels = [*names, "missing"]
    remap = np.zeros(len(names) + 1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    return [labels[i] for i in used], remap[index]


def slice_metrics(y: Any, p: Any, values: Sequence[Any] | pa.Array | pa.ChunkedArray, *,
                  min_size: int = 100, min_class: int = 10,
                  level: float = 0.95) -> list[dict[str, Any]]:
    """Per slice: rows, positives, and (when large enough) AUC, log loss and Brier with
    their intervals; a slice too small says so."""
    yy, pp = _checked(y, p)
    out = []
    for entry, inside in _slices(yy, values, min_size, min_class):
        if entry["scored"]:
            entry["auc"] = asdict(delong(yy[inside], pp[inside], level))
            entry["log_loss"] = asdict(log_loss(yy[inside], pp[inside], level))
            entry["brier"] = asdict(brier(yy[inside], pp[inside], level))
        out.append(entry)
    return out


def _slices(yy: np.ndarray[Any, Any], values: Sequence[Any] | pa.Array | pa.ChunkedArray,
            min_size: int, min_class: int,
            ) -> list[tuple[dict[str, Any], np.ndarray[Any, Any]]]:
    """Each slice's entry (name, rows, positives, whether it is large enough to score, and
    why not) with its rows' mask."""
    names, index = _groups(values)
    out = []
    for i, name in enumerate(names):
        inside = index == i
        n, pos = int(inside.sum()), int(yy[inside].sum())
        entry: dict[str, Any] = {"slice": name, "rows": n, "positives": pos, "scored": True}
        if n < min_size or pos < min_class or n - pos < min_class:
            entry["scored"] = False
            entry["reason"] = (f"too small: needs {min_size} rows with {min_class} of each "
                               "class")
        out.append((entry, inside))
    return out


def fairness(y: Any, p: Any, values: Sequence[Any] | pa.Array | pa.ChunkedArray,
             threshold: float) -> dict[str, Any]:
    """Selection and true-positive rates per group at ``threshold``, and their spreads."""
    yy, pp = _checked(y, p)
    names, index = _groups(values)
    chosen = pp >= threshold
    groups: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        inside = index == i
        pos = inside & (yy == 1)
        groups.append({"group": name, "rows": int(inside.sum()),
                       "selection_rate": float(chosen[inside].mean()),
                       "true_positive_rate": float(chosen[pos].mean()) if pos.any() else None})
    rates = [float(g["selection_rate"]) for g in groups]
    tprs = [float(g["true_positive_rate"]) for g in groups
            if g["true_positive_rate"] is not None]
    return {"threshold": threshold, "groups": groups,
            "demographic_parity_difference": max(rates) - min(rates) if rates else 0.0,
            "equal_opportunity_difference": max(tprs) - min(tprs) if len(tprs) > 1 else 0.0}


def comparison(y: Any, ours: Any, theirs: Any, level: float = 0.95) -> dict[str, Any]:
    """Ours − theirs on the same rows: AUC (paired DeLong) and log loss (paired means)."""
    yy, a = _checked(y, ours)
    _, b = _checked(y, theirs)
    out: dict[str, Any] = {"rows": int(yy.size)}
    if 0 < yy.sum() < yy.size:
        out["auc_difference"] = asdict(delong_difference(yy, a, b, level))
    out["log_loss_difference"] = asdict(_mean_interval(
        _log_losses(yy, a) - _log_losses(yy, b), level))
    return out


def slice_comparisons(y: Any, ours: Any, theirs: Any,
                      values: Sequence[Any] | pa.Array | pa.ChunkedArray, *,
                      min_size: int = 100, min_class: int = 10,
                      level: float = 0.95) -> list[dict[str, Any]]:
    """``comparison`` on each slice (as ``slice_metrics`` cuts them) large enough to score:
    ours − theirs on the same rows of the slice."""
    yy, a = _checked(y, ours)
    _, b = _checked(y, theirs)
    out = []
    for entry, inside in _slices(yy, values, min_size, min_class):
        if entry["scored"]:
            entry.update(comparison(yy[inside], a[inside], b[inside], level))
        out.append(entry)
    return out


def univariate_aucs(X: np.ndarray[Any, Any], y: Any,
                    names: Sequence[str]) -> dict[str, float]:
    """Each feature's own AUC, as max(AUC, 1 − AUC) over its non-missing rows."""
    yy = np.asarray(y).astype(np.int64)
    out = {}
    for j, name in enumerate(names):
        col = X[:, j]
        seen = ~np.isnan(col)
        ys = yy[seen]
        if not 0 < ys.sum() < ys.size:
            continue
        ranks = _midrank(col[seen])
        m, n = int(ys.sum()), int(ys.size - ys.sum())
        auc = (ranks[ys == 1].sum() - m * (m + 1) / 2) / (m * n)
        out[name] = float(max(auc, 1 - auc))
    return out


def suspicious_features(aucs: Mapping[str, float], threshold: float) -> list[str]:
    """Features that alone separate the classes suspiciously well."""
    return sorted(n for n, a in aucs.items() if a >= threshold)


def isotonic_map(y: np.ndarray[Any, Any], scores: np.ndarray[Any, Any],
                 ) -> tuple[list[float], list[float]]:
    """A monotone calibration map fitted on (scores, labels): the breakpoints (x, y) of a
    piecewise-linear function, clipped beyond its ends (scikit-learn's isotonic regression).

    >>> x, y = isotonic_map(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    >>> y == sorted(y)
    True
    """
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    model.fit(np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return ([float(v) for v in model.X_thresholds_], [float(v) for v in model.y_thresholds_])


def calibrate(scores: np.ndarray[Any, Any], mapping: tuple[Any, Any] | None,
              ) -> np.ndarray[Any, Any]:
    """Scores through a calibration map (unchanged without one)."""
    if mapping is None:
        return scores
    out: np.ndarray[Any, Any] = np.interp(scores, mapping[0], mapping[1])
    return out
