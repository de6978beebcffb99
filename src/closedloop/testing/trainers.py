"""The checks every trainer must pass."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


def check_trainer(trainer: Any) -> None:
    """The shared checks every trainer must pass (``closedloop.training.trainers.Trainer``):
    it learns a plain signal from rows with missing values; probabilities are one per row in
    [0, 1]; two fits of fresh copies give the same bytes (a retrain is bit for bit); a model
    loaded from its bytes predicts exactly as the one that wrote them; given the same values
    as an Arrow table of float64 columns (nulls for the gaps) it learns the same bytes and
    predicts the same; its parameters are plain data; a single-class training set is a
    ``TrainingError``."""
    import copy
    import json

    from sklearn.metrics import roc_auc_score

    from closedloop.errors import TrainingError
    from closedloop.training.trainers import Trainer

    if not isinstance(trainer, Trainer):
        raise AssertionError(f"{trainer!r} does not implement the Trainer protocol")
    rng = np.random.default_rng(42)
    X = rng.normal(size=(2000, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=2000) > 0).astype(np.int64)
    X[rng.random(X.shape) < 0.05] = np.nan                      # training sets have gaps
    first, second = copy.deepcopy(trainer), copy.deepcopy(trainer)
    first.fit(X[:1500], y[:1500], X_valid=X[1500:1750], y_valid=y[1500:1750],
              feature_names=[f"v.f{i}" for i in range(5)])
    second.fit(X[:1500], y[:1500], X_valid=X[1500:1750], y_valid=y[1500:1750],
               feature_names=[f"v.f{i}" for i in range(5)])
    p = first.predict_proba(X[1750:])
    if p.shape != (250,) or not np.all((p >= 0) & (p <= 1)):
        raise AssertionError(f"predict_proba gave shape {p.shape} or values outside [0, 1]")
    auc = roc_auc_score(y[1750:], p)
    if auc < 0.8:
        raise AssertionError(f"the trainer did not learn a plain signal (AUC {auc:.3f})")
    if first.to_bytes() != second.to_bytes():
        raise AssertionError("two fits on the same data gave different bytes: not reproducible")
    loaded = copy.deepcopy(trainer)
    loaded.load(first.to_bytes())
    if not np.array_equal(loaded.predict_proba(X[1750:]), p):
        raise AssertionError("a model loaded from its bytes predicts differently")
    def table(rows: np.ndarray[Any, Any]) -> pa.Table:
        return pa.table({f"v.f{i}": pa.array(rows[:, i], from_pandas=True) for i in range(5)})

    arrow = copy.deepcopy(trainer)
    arrow.fit(table(X[:1500]), y[:1500], X_valid=table(X[1500:1750]), y_valid=y[1500:1750],
              feature_names=[f"v.f{i}" for i in range(5)])
    if arrow.to_bytes() != first.to_bytes():
        raise AssertionError("the same values as an Arrow table gave a different model")
    if not np.array_equal(arrow.predict_proba(table(X[1750:])), p):
        raise AssertionError("the same rows as an Arrow table were scored differently")
    json.dumps(first.params())
    try:
        copy.deepcopy(trainer).fit(X[:100], np.zeros(100, dtype=np.int64))
    except TrainingError:
        pass
    else:
        raise AssertionError("fitting a single class did not raise TrainingError")
