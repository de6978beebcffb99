"""Every trainer passes the shared trainer checks."""

from __future__ import annotations

from typing import Any

import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from closedloop.testing import TRAINER_CHECKS, check_trainer
from closedloop.training.trainers import LightGBMTrainer, SklearnTrainer, XGBoostTrainer

TRAINERS: list[Any] = [
    pytest.param(LightGBMTrainer(num_boost_round=50), id="lightgbm"),
    pytest.param(LightGBMTrainer(num_boost_round=200, early_stopping_rounds=10,
                                 bagging_fraction=0.8, feature_fraction=0.8, seed=3),
                 id="lightgbm-early-stopping-bagging"),
    pytest.param(SklearnTrainer(make_pipeline(SimpleImputer(), StandardScaler(),
                                              LogisticRegression())), id="sklearn-pipeline"),
    pytest.param(SklearnTrainer(HistGradientBoostingClassifier(max_iter=50, random_state=0)),
                 id="sklearn-hist-gbm"),
    pytest.param(SklearnTrainer(make_pipeline(SimpleImputer(), RandomForestClassifier(
        n_estimators=30, random_state=0, n_jobs=2))), id="sklearn-forest"),
    pytest.param(XGBoostTrainer(num_boost_round=30), id="xgboost"),
]


@pytest.mark.parametrize("check", list(TRAINER_CHECKS))
@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_conformance(trainer: Any, check: str) -> None:
    check_trainer(trainer, only=check)


def test_the_check_catches_a_trainer_that_is_not_reproducible() -> None:
    """A forest with no fixed seed fits differently each time, and the check says so."""
    forest = SklearnTrainer(RandomForestClassifier(n_estimators=5))
    with pytest.raises(AssertionError, match="not reproducible"):
        check_trainer(forest, only="is_reproducible")
