"""Monitoring: drift of every feature, the score and the label against the model version's
reference, from mergeable counts (``reference``, ``counts``, ``detect``), with the plain
statistics in ``drift``. The statistics, the reference and the counts stand alone (numpy,
pyarrow, scipy): the training run fits a reference, the server counts requests."""

from closedloop.monitoring.counts import ColumnCounts, WindowCounts, count
from closedloop.monitoring.detect import (
    ColumnDrift,
    DriftDetector,
    DriftResult,
    DriftRule,
    Persistence,
    compare,
)
from closedloop.monitoring.drift import (
    EPS,
    ChiSquare,
    chi_square,
    js_distance,
    kl_divergence,
    ks_statistic,
    psi,
    psi_null_threshold,
    wasserstein_normed,
)
from closedloop.monitoring.reference import Binning, ColumnReference, Reference, fit_reference

__all__ = ["EPS", "Binning", "ChiSquare", "ColumnCounts", "ColumnDrift", "ColumnReference",
           "DriftDetector", "DriftResult", "DriftRule", "Persistence", "Reference",
           "WindowCounts", "chi_square", "compare", "count", "fit_reference", "js_distance",
           "kl_divergence", "ks_statistic", "psi", "psi_null_threshold", "wasserstein_normed"]
