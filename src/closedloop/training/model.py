"""Model declarations: what a model is trained on, how, and how it is judged.

>>> from closedloop.training.trainers import LightGBMTrainer
>>> m = Model("fraud", features=["user_txn.amount_sum_1h"], label="chargebacks",
...           rows="transactions", trainer=LightGBMTrainer(), slices=["country"])
>>> m.split.test
0.2
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from closedloop.data.sources import check_name, content_hash, declared_in
from closedloop.errors import DefinitionError
from closedloop.training.trainers import Trainer


@dataclass(frozen=True)
class TimeSplit:
    """Train / validation / held-out test by time, never at random: the latest ``test`` share
    of the rows' instants is the test set, the ``validation`` share before it validates, the
    rest trains. Cuts fall between distinct instants, so rows of one instant stay together."""

    validation: float = 0.1
    test: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.test < 1 and 0 <= self.validation < 1
                and self.test + self.validation < 0.9):
            raise DefinitionError(f"split validation={self.validation}, test={self.test} "
                                  "leaves too little to train on",
                                  fix="use shares like validation=0.1, test=0.2")

    def assign(self, times: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], int, int]:
        """Per row, 0 (train), 1 (validation) or 2 (test); and the two cut instants (the first
        instant of validation and of test)."""
        order = np.sort(times)
        n = order.size
        test_cut = int(order[min(n - 1, int(n * (1 - self.test)))])
        valid_cut = int(order[min(n - 1, int(n * (1 - self.test - self.validation)))])
        part = np.zeros(n, dtype=np.int8)
        part[times >= valid_cut] = 1
        part[times >= test_cut] = 2
        return part, valid_cut, test_cut

    def spec(self) -> dict[str, Any]:
        return {"kind": "time", "validation": self.validation, "test": self.test}


@dataclass(frozen=True)
class Model:
    """A model of the project: ``features`` (references, as for training sets) scored for
    the rows of source ``rows`` (one per prediction: a transaction, a session), labelled by
    label source ``label`` once matured; fitted by ``trainer``; split by ``split``; judged on
    the test set overall and per ``slices`` (row columns or features), with fairness reported
    per ``protected`` column at ``threshold``. With ``calibration="isotonic"`` a monotone map
    fitted on the validation split's scores becomes part of the version: the test set is
    judged, and serving answers, with calibrated scores."""

    name: str
    features: Sequence[str]
    label: str
    rows: str
    trainer: Trainer
    slices: Sequence[str] = ()
    protected: Sequence[str] = ()
    split: TimeSplit = field(default_factory=TimeSplit)
    threshold: float = 0.5
    min_slice_size: int = 200
    suspicious_auc: float = 0.97
    description: str = ""
    calibration: str | None = None

    def __post_init__(self) -> None:
        check_name("model", self.name)
        if isinstance(self.features, str) or not self.features:
            raise DefinitionError(f"model {self.name!r} has no features",
                                  fix="pass features=['view.feature', ...]")
        if len(set(self.features)) != len(self.features):
            raise DefinitionError(f"model {self.name!r} lists a feature twice",
                                  fix="list each feature once")
        if not isinstance(self.trainer, Trainer):
            raise DefinitionError(f"model {self.name!r}: trainer {self.trainer!r} is not a "
                                  "Trainer", fix="use LightGBMTrainer, SklearnTrainer(...) or "
                                  "XGBoostTrainer")
        if self.calibration not in (None, "isotonic"):
            raise DefinitionError(f"model {self.name!r}: calibration {self.calibration!r} is "
                                  "unknown", fix="use calibration='isotonic', or leave it out")
        if not 0 < self.threshold < 1:
            raise DefinitionError(f"model {self.name!r}: threshold {self.threshold} is not "
                                  "in (0, 1)", fix="use a probability such as 0.5")

    def spec(self) -> dict[str, Any]:
        return {"kind": "model", "name": self.name, "features": list(self.features),
                "label": self.label, "rows": self.rows,
                "trainer": {"kind": self.trainer.kind, "params": self.trainer.params()},
                "slices": list(self.slices), "protected": list(self.protected),
                "split": self.split.spec(), "threshold": self.threshold,
                "min_slice_size": self.min_slice_size,
                **({"calibration": self.calibration} if self.calibration else {})}

    @property
    def hash(self) -> str:
        return content_hash(self.spec())


def models_from_module(module: ModuleType) -> dict[str, Model]:
    """Every model a definitions module declares at its top level."""
    return declared_in(module, Model, lambda m: m.name, "two models are named {name!r}",
                       fix="give each model its own name")


