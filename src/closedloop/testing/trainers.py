"""The checks every trainer must pass (``closedloop.training.trainers.Trainer``), each a named
check of its own (``TRAINER_CHECKS``) that fits fresh copies of the trainer it is handed."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

NAMES = [f"v.f{i}" for i in range(5)]


def _data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """2,000 rows of a plain signal on the first two of five columns, 5% of values missing
    (training sets have gaps): rows ``:1500`` train, ``1500:1750`` validate, the rest test."""
    rng = np.random.default_rng(42)
    X = rng.normal(size=(2000, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=2000) > 0).astype(np.int64)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X, y


def _fit(trainer: Any, arrow: bool = False) -> Any:
    """A fresh copy of ``trainer`` fitted on the check's rows (as numpy, or as an Arrow table
    of float64 columns with nulls for the gaps)."""
    X, y = _data()
    shape = _table if arrow else (lambda rows: rows)
    fitted = copy.deepcopy(trainer)
    fitted.fit(shape(X[:1500]), y[:1500], X_valid=shape(X[1500:1750]), y_valid=y[1500:1750],
               feature_names=NAMES)
    return fitted


def _table(rows: np.ndarray[Any, Any]) -> pa.Table:
    return pa.table({name: pa.array(rows[:, i], from_pandas=True)
                     for i, name in enumerate(NAMES)})


def _test_rows() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    X, y = _data()
    return X[1750:], y[1750:]


def trainer_implements_the_protocol(trainer: Any) -> None:
    """It is a ``Trainer`` (fit, predict_proba, to_bytes, load, params)."""
    from closedloop.training.trainers import Trainer

    if not isinstance(trainer, Trainer):
        raise AssertionError(f"{trainer!r} does not implement the Trainer protocol")


def trainer_learns_a_plain_signal(trainer: Any) -> None:
    """From rows with missing values it learns a signal two columns carry (test AUC ≥ 0.8);
    its probabilities are one per row, in [0, 1]."""
    from sklearn.metrics import roc_auc_score

    X, y = _test_rows()
    p = _fit(trainer).predict_proba(X)
    if p.shape != (len(X),) or not np.all((p >= 0) & (p <= 1)):
        raise AssertionError(f"predict_proba gave shape {p.shape} or values outside [0, 1]")
    auc = roc_auc_score(y, p)
    if auc < 0.8:
        raise AssertionError(f"the trainer did not learn a plain signal (AUC {auc:.3f})")


def trainer_is_reproducible(trainer: Any) -> None:
    """Two fits of fresh copies on the same rows give the same bytes: a retrain is bit for
    bit."""
    if _fit(trainer).to_bytes() != _fit(trainer).to_bytes():
        raise AssertionError("two fits on the same data gave different bytes: not reproducible")


def trainer_loads_its_bytes(trainer: Any) -> None:
    """A model loaded from its bytes predicts exactly as the one that wrote them."""
    X, _ = _test_rows()
    first = _fit(trainer)
    loaded = copy.deepcopy(trainer)
    loaded.load(first.to_bytes())
    if not np.array_equal(loaded.predict_proba(X), first.predict_proba(X)):
        raise AssertionError("a model loaded from its bytes predicts differently")


def trainer_takes_arrow_as_numpy(trainer: Any) -> None:
    """The same values as an Arrow table of float64 columns (nulls for the gaps) learn the
    same bytes and are scored the same."""
    X, _ = _test_rows()
    first, arrow = _fit(trainer), _fit(trainer, arrow=True)
    if arrow.to_bytes() != first.to_bytes():
        raise AssertionError("the same values as an Arrow table gave a different model")
    if not np.array_equal(arrow.predict_proba(_table(X)), first.predict_proba(X)):
        raise AssertionError("the same rows as an Arrow table were scored differently")


def trainer_params_are_plain_data(trainer: Any) -> None:
    """``params()`` of a fitted trainer is JSON (the run records it)."""
    import json

    try:
        json.dumps(_fit(trainer).params())
    except TypeError as exc:
        raise AssertionError(f"params() is not plain data: {exc}") from None


def trainer_refuses_a_single_class(trainer: Any) -> None:
    """A training set of one class is a ``TrainingError``, not a silent constant model."""
    from closedloop.errors import TrainingError

    X, _ = _data()
    try:
        copy.deepcopy(trainer).fit(X[:100], np.zeros(100, dtype=np.int64))
    except TrainingError:
        return
    raise AssertionError("fitting a single class did not raise TrainingError")


#: The trainer's named checks; each fits its own fresh copies.
TRAINER_CHECKS: dict[str, Callable[[Any], None]] = {
    "implements_the_protocol": trainer_implements_the_protocol,
    "learns_a_plain_signal": trainer_learns_a_plain_signal,
    "is_reproducible": trainer_is_reproducible,
    "loads_its_bytes": trainer_loads_its_bytes,
    "takes_arrow_as_numpy": trainer_takes_arrow_as_numpy,
    "params_are_plain_data": trainer_params_are_plain_data,
    "refuses_a_single_class": trainer_refuses_a_single_class,
}


def check_trainer(trainer: Any, *, only: str | None = None) -> None:
    """Raise AssertionError unless ``trainer`` behaves as the Trainer protocol says
    (``TRAINER_CHECKS``); ``only`` runs one of them."""
    if only is not None and only not in TRAINER_CHECKS:
        raise AssertionError(f"no trainer check {only!r}: {sorted(TRAINER_CHECKS)}")
    trainer_implements_the_protocol(trainer)
    for name, check in TRAINER_CHECKS.items():
        if only is None or name == only:
            check(trainer)
