"""Fixtures (imported by tests/conftest.py): a fraud project with two registered versions
(production; canary and shadow) and its online features materialized, built once per test
session and copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import closedloop as cl
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, write_fraud_project
from closedloop.sim.fraud_project import SERVING as DEMO_SERVING

END = FraudWorld().end
SMALL = ("trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, "
         "seed=7)")
FAST = "trainer=cl.LightGBMTrainer(num_boost_round=40, learning_rate=0.1, num_leaves=15, seed=7)"
CHALLENGER = ("trainer=cl.LightGBMTrainer(num_boost_round=30, learning_rate=0.1, num_leaves=7, "
              "seed=8)")
SERVING = '''

risk = cl.Model("risk", features=["user_txn.amount_sum_1d", "user_txn.amount_count_30d",
                                  "user_profile.lifetime_spend"],
                label="chargebacks", rows="transactions",
                trainer=cl.LightGBMTrainer(num_boost_round=20, num_leaves=7, seed=3),
                calibration="isotonic")

serving = cl.Serving("fraud", unit="user_id", subject="txn_id", holdout=0.1, canary=0.2,
                     shadow=True, decisions=[("block", 0.5), ("review", 0.1)],
                     default_decision="allow", fallback=0.01)
'''


@pytest.fixture(scope="session")
def served_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_fraud_project(tmp_path_factory.mktemp("serving") / "proj", n_users=600,
                               seed=3)
    text = (root / "definitions.py").read_text().replace(SMALL, FAST).replace(
        DEMO_SERVING, "") + SERVING
    (root / "definitions.py").write_text(text)
    with cl.Project(root) as p:
        p.apply()
        for source, export in EXPORTS.items():
            p.data.ingest(source, root / "data" / export, at=END)
        first = p.training.train("fraud", cutoff=END)
        p.registry.set_alias("fraud", "production", p.registry.register(first.id).version)
        risk = p.training.train("risk", cutoff=END)
        p.registry.set_alias("risk", "production", p.registry.register(risk.id).version)
        p.features.materialize(at=END)
    # A challenger: the same features, another trainer — version 2, canary and shadow.
    (root / "definitions.py").write_text(text.replace(FAST, CHALLENGER))
    with cl.Project(root) as p:
        second = p.registry.register(p.training.train("fraud", cutoff=END).id).version
        p.registry.set_alias("fraud", "canary", second)
        p.registry.set_alias("fraud", "shadow", second)
    (root / "definitions.py").write_text(text)
    return root


@pytest.fixture
def served(served_world: Path, tmp_path: Path) -> Iterator[cl.Project]:
    root = tmp_path / "proj"
    shutil.copytree(served_world, root)
    with cl.Project(root) as p:
        yield p
