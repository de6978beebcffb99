"""Trainers: one small protocol over scikit-learn, LightGBM and XGBoost.

A trainer is a binary classifier of rows of a float matrix (``training/matrix.py``: a numpy
array with NaN for a missing value, or an Arrow table of float64 columns with nulls). The
constructor stores its arguments; ``fit`` learns (state in attributes ending in ``_``);
``predict_proba`` gives the positive class's probability; ``to_bytes`` serialises the fitted
model deterministically (same data, same seed → the same bytes, so a retrain can be checked bit
for bit) and ``load`` restores one. ``params()`` lists the arguments, for lineage.

>>> import numpy as np
>>> X = np.random.default_rng(0).normal(size=(200, 3)); y = (X[:, 0] > 0).astype(int)
>>> trainer = LightGBMTrainer(num_boost_round=20)
>>> trainer.fit(X, y)
>>> bool((trainer.predict_proba(X)[y == 1] > 0.5).mean() > 0.9)
True
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from closedloop.errors import DefinitionError, TrainingError
from closedloop.training.matrix import Matrix, as_array, shape

_THREADED_ROWS = 256                  # fewer rows are scored on one thread
_SCORE_BLOCK = 1 << 16               # rows per block when scoring a table


@runtime_checkable
class Trainer(Protocol):
    """What every trainer does; see the module's docstring."""

    kind: str

    def fit(self, X: Matrix, y: np.ndarray[Any, Any], *,
            X_valid: Matrix | None = None,
            y_valid: np.ndarray[Any, Any] | None = None,
            feature_names: list[str] | None = None) -> None: ...

    def predict_proba(self, X: Matrix) -> np.ndarray[Any, Any]: ...

    def params(self) -> dict[str, Any]: ...

    def to_bytes(self) -> bytes: ...

    def load(self, data: bytes) -> None: ...


def _check_xy(X: Matrix, y: np.ndarray[Any, Any]) -> None:
    dims = shape(X)
    if len(dims) != 2 or y.ndim != 1 or dims[0] != y.shape[0]:
        raise TrainingError(f"fit needs a 2-d X and a 1-d y of the same length; got "
                            f"{dims} and {y.shape}", fix="pass one label per row")
    if dims[0] == 0:
        raise TrainingError("fit got no rows", fix="train on a non-empty training set")
    classes = np.unique(y)
    if classes.size < 2:
        raise TrainingError(f"every training label is {classes.tolist()}: nothing to learn",
                            fix="train on rows with both classes (a later cutoff, more data)")


class LightGBMTrainer:
    """LightGBM's binary objective. Deterministic by default (``deterministic``, one fixed
    ``num_threads``, ``seed``), so a retrain is bit for bit; early stopping on the validation
    set when ``early_stopping_rounds`` is set.

    ``num_threads`` defaults to 1: a fit then never costs more than its own work when another
    process holds a core. Beside a busy core LightGBM's OpenMP threads spin-wait for each
    other, and two threads took 1.3–2.3× as long as one (docs/architecture.md, "Training
    threads"). On a machine the fit has to itself, ``num_threads=2`` or more is faster (1.3–1.7×
    on two cores); it is part of the model's spec, so a retrain uses the same count."""

    kind = "lightgbm"

    def __init__(self, num_boost_round: int = 200, learning_rate: float = 0.05,
                 num_leaves: int = 31, min_data_in_leaf: int = 20, feature_fraction: float = 1.0,
                 bagging_fraction: float = 1.0, lambda_l2: float = 0.0, seed: int = 0,
                 num_threads: int = 1, early_stopping_rounds: int | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.seed = seed
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise DefinitionError(f"LightGBMTrainer num_threads={num_threads!r} is not a "
                                  "positive whole number", fix="use 1, or 2+ on a machine "
                                  "the fit has to itself")
        self.num_threads = num_threads
        self.early_stopping_rounds = early_stopping_rounds
        self.extra = extra

    def params(self) -> dict[str, Any]:
        return {"num_boost_round": self.num_boost_round, "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                "feature_fraction": self.feature_fraction,
                "bagging_fraction": self.bagging_fraction, "lambda_l2": self.lambda_l2,
                "seed": self.seed, "num_threads": self.num_threads,
                "early_stopping_rounds": self.early_stopping_rounds,
                "extra": dict(self.extra or {})}

    def _lgb_params(self) -> dict[str, Any]:
        params = {"objective": "binary", "learning_rate": self.learning_rate,
                  "num_leaves": self.num_leaves, "min_data_in_leaf": self.min_data_in_leaf,
                  "feature_fraction": self.feature_fraction,
                  "bagging_fraction": self.bagging_fraction,
                  "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
                  "lambda_l2": self.lambda_l2, "seed": self.seed,
                  "num_threads": self.num_threads, "deterministic": True,
                  "force_row_wise": True, "verbosity": -1}
        params.update(self.extra or {})
        return params

    def fit(self, X: Matrix, y: np.ndarray[Any, Any], *,
            X_valid: Matrix | None = None,
            y_valid: np.ndarray[Any, Any] | None = None,
            feature_names: list[str] | None = None) -> None:
        import lightgbm as lgb

        _check_xy(X, y)
        names = feature_names or [f"f{i}" for i in range(shape(X)[1])]
        names = [n.replace(".", "__").replace(" ", "_") for n in names]
        train = lgb.Dataset(X, label=y, feature_name=names, free_raw_data=False,
                            params={"verbosity": -1})
        callbacks: list[Any] = []
        valid_sets = []
        if X_valid is not None and y_valid is not None and self.early_stopping_rounds:
            valid_sets = [lgb.Dataset(X_valid, label=y_valid, reference=train)]
            callbacks.append(lgb.early_stopping(self.early_stopping_rounds, verbose=False))
        try:
            self.booster_ = lgb.train(self._lgb_params(), train,
                                      num_boost_round=self.num_boost_round,
                                      valid_sets=valid_sets or None, callbacks=callbacks)
        except lgb.basic.LightGBMError as exc:
            raise TrainingError(f"LightGBM failed: {exc}", fix="check the parameters") from exc

    def predict_proba(self, X: Matrix) -> np.ndarray[Any, Any]:
        """Scores; a table is scored a block of rows at a time as a small row-major matrix
        (LightGBM scores numpy rows faster than Arrow columns; the same scores)."""
        if not isinstance(X, pa.Table):
            return self._predict(X)
        out = np.empty(X.num_rows, dtype=np.float64)
        for start in range(0, X.num_rows, _SCORE_BLOCK):
            out[start:start + _SCORE_BLOCK] = self._predict(
                as_array(X.slice(start, _SCORE_BLOCK)))
        return out

    def _predict(self, X: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        # A few rows (serving) on one thread: waking a thread pool costs more than the rows;
        # each row's score is computed alone either way, so the scores are the same.
        threads = self.num_threads if len(X) >= _THREADED_ROWS else 1
        return np.asarray(self.booster_.predict(
            X, num_iteration=self.booster_.best_iteration or None, num_threads=threads))

    def importance(self) -> list[float]:
        """Each feature's total gain over the trees (LightGBM's ``importance_type="gain"``),
        in the order of the fitted matrix's columns."""
        return [float(g) for g in self.booster_.feature_importance(importance_type="gain")]

    def to_bytes(self) -> bytes:
        text: str = self.booster_.model_to_string(
            num_iteration=self.booster_.best_iteration or None)
        return text.encode()

    def load(self, data: bytes) -> None:
        import lightgbm as lgb

        self.booster_ = lgb.Booster(model_str=data.decode())


class SklearnTrainer:
    """Any scikit-learn classifier or pipeline with ``predict_proba``. Fitted models are
    pickled (protocol 5): the same fitted state gives the same bytes. Seeds live in the
    estimator (``random_state``)."""

    kind = "sklearn"

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def params(self) -> dict[str, Any]:
        from sklearn.base import clone

        clone(self.estimator)  # the estimator must be a scikit-learn estimator
        params: dict[str, Any] = self.estimator.get_params(deep=False)
        return {"estimator": type(self.estimator).__name__,
                **{k: _plain(v) for k, v in params.items()}}

    def fit(self, X: Matrix, y: np.ndarray[Any, Any], *,
            X_valid: Matrix | None = None,
            y_valid: np.ndarray[Any, Any] | None = None,
            feature_names: list[str] | None = None) -> None:
        from sklearn.base import clone

        _check_xy(X, y)
        model = clone(self.estimator)
        model.fit(as_array(X), y)
        if not hasattr(model, "predict_proba"):
            raise DefinitionError(f"{type(model).__name__} has no predict_proba",
                                  fix="use a probabilistic classifier")
        self.model_ = model

    def predict_proba(self, X: Matrix) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = self.model_.predict_proba(as_array(X))[:, 1]
        return out

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        pickle.dump(self.model_, buffer, protocol=5)
        return buffer.getvalue()

    def load(self, data: bytes) -> None:
        self.model_ = pickle.loads(data)   # artefacts are hash-checked before they are loaded


class XGBoostTrainer:
    """XGBoost's ``binary:logistic`` (the ``xgboost`` extra). Deterministic with a fixed
    ``seed`` and ``nthread``."""

    kind = "xgboost"

    def __init__(self, num_boost_round: int = 200, learning_rate: float = 0.1,
                 max_depth: int = 6, seed: int = 0, nthread: int = 2,
                 extra: dict[str, Any] | None = None) -> None:
        self.num_boost_round = num_boost_round
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.seed = seed
        self.nthread = nthread
        self.extra = extra

    def params(self) -> dict[str, Any]:
        return {"num_boost_round": self.num_boost_round, "learning_rate": self.learning_rate,
                "max_depth": self.max_depth, "seed": self.seed, "nthread": self.nthread,
                "extra": dict(self.extra or {})}

    @staticmethod
    def _xgb() -> Any:
        try:
            import xgboost
        except ImportError as exc:
            raise DefinitionError("XGBoostTrainer needs the xgboost package",
                                  fix='pip install "closedloop[xgboost]"') from exc
        return xgboost

    def fit(self, X: Matrix, y: np.ndarray[Any, Any], *,
            X_valid: Matrix | None = None,
            y_valid: np.ndarray[Any, Any] | None = None,
            feature_names: list[str] | None = None) -> None:
        xgb = self._xgb()
        _check_xy(X, y)
        params = {"objective": "binary:logistic", "eta": self.learning_rate,
                  "max_depth": self.max_depth, "seed": self.seed, "nthread": self.nthread,
                  "tree_method": "hist", **(self.extra or {})}
        self.booster_ = xgb.train(params, xgb.DMatrix(as_array(X), label=y),
                                  num_boost_round=self.num_boost_round)

    def predict_proba(self, X: Matrix) -> np.ndarray[Any, Any]:
        xgb = self._xgb()
        out: np.ndarray[Any, Any] = self.booster_.predict(xgb.DMatrix(as_array(X)))
        return out

    def to_bytes(self) -> bytes:
        raw: bytearray = self.booster_.save_raw(raw_format="ubj")
        return bytes(raw)

    def load(self, data: bytes) -> None:
        xgb = self._xgb()
        self.booster_ = xgb.Booster()
        self.booster_.load_model(bytearray(data))


def _plain(value: Any) -> Any:
    """A parameter as lineage records it: plain values as they are, anything else by repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)
