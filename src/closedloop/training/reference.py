"""The monitor's reference of a run's version: fitted when the run writes its bundle (see
``closedloop.monitoring.reference``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.monitoring.reference import Reference, fit_reference
from closedloop.training.build import Built
from closedloop.training.model import Model

#: The names the reference gives the score and the label beside the features (no feature
#: reference can take them: those are identifiers and dots).
SCORE, LABEL = "(score)", "(label)"


def fit_run_reference(model: Model, run_id: str, built: Built,
                      scores: np.ndarray[Any, Any]) -> Reference:
    """What the monitor compares this version's traffic with: the test rows' features (as the
    model reads them), its calibrated scores and their labels (by value)."""
    table = built.features_of(2)
    table = table.append_column(SCORE, pa.array(scores, pa.float64()))
    labels = built.y[built.rows(2)]
    binary = bool(np.isin(labels, (0, 1)).all())
    table = table.append_column(LABEL, pa.array(labels.astype(np.int64) if binary else labels))
    return fit_reference(table, model=model.name, run_id=run_id,
                         categorical=[LABEL] if binary else [])


__all__ = ["LABEL", "SCORE", "fit_run_reference"]
