"""Every trainer passes the shared trainer checks."""

from __future__ import annotations

from typing import Any

import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from closedloop.testing import check_trainer
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


@pytest.mark.parametrize("trainer", TRAINERS)
def test_trainer_conformance(trainer: Any) -> None:
    check_trainer(trainer)
