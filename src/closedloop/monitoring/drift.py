"""Drift statistics: plain functions over binned proportions or counts, and two exact ones
over samples (KS, normalised Wasserstein) — usable alone, checked against the shared
reference (``../shared/reference/drift``) to 1e-6.

Every definition is written out in docs/architecture.md ("Monitoring: the statistics"):

* ``psi(ref, cur)``: Σ (c − r) · ln(c / r) over bins, each proportion floored at ``eps``
  (1e-4) first, so an empty bin adds a large but finite term. Not normalised after the floor.
* ``kl_divergence(ref, cur)``: KL(ref ‖ cur) = Σ r · ln(r / c), natural log, after the same
  floor and then normalising both to sum 1 (what ``scipy.stats.entropy`` does).
* ``js_distance(ref, cur)``: the Jensen–Shannon *distance* (the square root of the
  divergence), natural log, no floor (it is finite with empty bins); at most √ln 2.
* ``chi_square(ref_counts, cur_counts)``: Pearson's test of homogeneity on the 2 × B table of
  counts, bins empty in both left out; its p-value from χ²(B' − 1).
* ``psi_null_threshold(n_ref, n_cur, bins, alpha)``: the upper ``alpha`` quantile of PSI
  when nothing drifted, (1/n_ref + 1/n_cur) · χ²₁₋α(bins − 1) (large-sample).
* ``ks_statistic(ref, cur)``: the two-sample Kolmogorov–Smirnov D, exact on samples.
* ``wasserstein_normed(ref, cur)``: W₁(ref, cur) / max(std(ref), 0.001), exact on samples.

>>> import numpy as np
>>> round(psi(np.array([0.5, 0.5]), np.array([0.6, 0.4])), 6)
0.040547
>>> round(js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) ** 2, 6)  # ln 2
0.693147
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special  # the χ² distribution's tails (scipy.stats costs 0.7 s to import)

from closedloop.errors import MonitoringError

#: The floor under an empty bin's proportion in PSI and KL.
EPS = 1e-4

_F = np.ndarray[Any, np.dtype[np.float64]]


def _proportions(values: Any, name: str) -> _F:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise MonitoringError(f"{name} must be a non-empty 1-d array of proportions, got shape "
                              f"{array.shape}", fix="pass one proportion per bin")
    if not np.isfinite(array).all() or (array < 0).any():
        raise MonitoringError(f"{name} holds a negative or non-finite proportion",
                              fix="pass counts divided by their total")
    return array


def _pair(reference: Any, current: Any) -> tuple[_F, _F]:
    ref, cur = _proportions(reference, "reference"), _proportions(current, "current")
    if ref.shape != cur.shape:
        raise MonitoringError(f"reference has {ref.size} bins and current {cur.size}",
                              fix="bin both on the reference's edges")
    return ref, cur


def psi(reference: Any, current: Any, *, eps: float = EPS) -> float:
    """Population stability index of two binned distributions (proportions per bin)."""
    ref, cur = _pair(reference, current)
    r, c = np.maximum(ref, eps), np.maximum(cur, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def kl_divergence(reference: Any, current: Any, *, eps: float = EPS) -> float:
    """KL(reference ‖ current), natural log, each floored at ``eps`` then normalised."""
    ref, cur = _pair(reference, current)
    r, c = np.maximum(ref, eps), np.maximum(cur, eps)
    r, c = r / r.sum(), c / c.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(r > 0, r * np.log(r / c), 0.0)
    return float(np.sum(terms))


def js_distance(reference: Any, current: Any) -> float:
    """Jensen–Shannon distance (√ of the divergence, natural log) of two distributions."""
    ref, cur = _pair(reference, current)
    if ref.sum() == 0 or cur.sum() == 0:
        raise MonitoringError("a distribution with no mass has no Jensen–Shannon distance",
                              fix="compare windows that hold rows")
    p, q = ref / ref.sum(), cur / cur.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    return float(math.sqrt(max((kl_p + kl_q) / 2, 0.0)))


@dataclass(frozen=True)
class ChiSquare:
    """Pearson's χ² test of homogeneity: the statistic, its degrees of freedom, p-value."""

    statistic: float
    dof: int
    p_value: float


def chi_square(reference_counts: Any, current_counts: Any) -> ChiSquare:
    """Test that two count vectors over the same bins come from one distribution."""
    ref, cur = _pair(reference_counts, current_counts)
    keep = (ref + cur) > 0
    ref, cur = ref[keep], cur[keep]
    n_ref, n_cur = ref.sum(), cur.sum()
    dof = int(ref.size) - 1
    if n_ref == 0 or n_cur == 0 or dof < 1:
        return ChiSquare(0.0, max(dof, 0), 1.0)
    total = ref + cur
    expected_ref = total * n_ref / (n_ref + n_cur)
    expected_cur = total * n_cur / (n_ref + n_cur)
    statistic = float(((ref - expected_ref) ** 2 / expected_ref).sum()
                      + ((cur - expected_cur) ** 2 / expected_cur).sum())
    return ChiSquare(statistic, dof, float(special.chdtrc(dof, statistic)))


def psi_null_threshold(n_reference: float, n_current: float, bins: int,
                       alpha: float = 0.001) -> float:
    """The PSI that undrifted samples of these sizes exceed with probability ``alpha``."""
    if n_reference <= 0 or n_current <= 0 or bins < 2 or not 0 < alpha < 1:
        raise MonitoringError(f"no PSI threshold for n_reference={n_reference}, n_current="
                              f"{n_current}, bins={bins}, alpha={alpha}",
                              fix="pass positive sizes, at least 2 bins and 0 < alpha < 1")
    return float((1 / n_reference + 1 / n_current) * special.chdtri(bins - 1, alpha))


def _sample(values: Any, name: str) -> _F:
    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.ndim != 1 or array.size == 0:
        raise MonitoringError(f"{name} holds no values", fix="compare non-empty samples")
    return array


def ks_statistic(reference: Any, current: Any) -> float:
    """The two-sample Kolmogorov–Smirnov D: the largest gap between the two empirical CDFs
    (NaNs left out)."""
    ref, cur = np.sort(_sample(reference, "reference")), np.sort(_sample(current, "current"))
    both = np.concatenate([ref, cur])
    gap = (np.searchsorted(ref, both, side="right") / ref.size
           - np.searchsorted(cur, both, side="right") / cur.size)
    return float(np.abs(gap).max())


def wasserstein_normed(reference: Any, current: Any) -> float:
    """W₁ between the two samples divided by the reference's standard deviation (at least
    0.001), so the figure reads in reference standard deviations (NaNs left out)."""
    ref, cur = np.sort(_sample(reference, "reference")), np.sort(_sample(current, "current"))
    both = np.sort(np.concatenate([ref, cur]))
    widths = np.diff(both)
    gap = (np.searchsorted(ref, both[:-1], side="right") / ref.size
           - np.searchsorted(cur, both[:-1], side="right") / cur.size)
    return float(np.sum(np.abs(gap) * widths) / max(float(np.std(ref)), 0.001))


__all__ = ["EPS", "ChiSquare", "chi_square", "js_distance", "kl_divergence", "ks_statistic",
           "psi", "psi_null_threshold", "wasserstein_normed"]
