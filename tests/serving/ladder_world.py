"""A fraud world for the promotion ladder's tests: production (version 1) and candidates of
known quality, all trained against production so their reports compare with it, and
simulated traffic whose labels are the world's ground truth.

* ``better`` — a larger LightGBM: truly better;
* ``slice`` — trained, then blind on the youngest accounts (a constant score there): truly
  worse on one slice of ``user_profile.account_age_days``;
* ``shifted`` — production's own model plus 0.1 on every score (through its calibration
  map): equal ranking, equal AUC, worse calibration;
* ``blocker`` — production plus 0.5: it blocks nearly everyone (a guardrail's business metric).

The world's history up to ``DAY0`` (its 90 days) is ingested, the models trained on it and
the online store materialized as of ``DAY0``; two more weeks are the live traffic
(``closedloop.sim.traffic.Replay``): each transaction is served at its own instant (the
replay clock), the events that had arrived by then pushed beside it, so the candidates are
judged out of time, on transactions they never saw. Their labels are the world's
chargebacks, ingested at the end; the project's clock stands 61 days after the world's end,
so every label window has closed: the controller sees every prediction matured.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

import closedloop as cl
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, LIVE, write_fraud_project
from closedloop.sim.fraud_project import LADDER as DEMO_LADDER
from closedloop.sim.fraud_project import SERVING as DEMO_SERVING
from closedloop.sim.traffic import Replay

DAY0 = FraudWorld().end                   # the history's end: the live two weeks follow
END = DAY0 + timedelta(days=14)
LATER = END + timedelta(days=61)
SMALL = ("trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, "
         "seed=7)")
WEAK = ("trainer=cl.LightGBMTrainer(num_boost_round=40, learning_rate=0.1, num_leaves=7, "
        "seed=7)")
#: Production's features: the slow ones only (a month's spending, the profile) — it cannot
#: see a burst of fraud coming, which the candidates' full set can.
SLOW = ["user_txn.amount_sum_30d", "user_txn.amount_count_30d", "user_txn.amount_mean_30d",
        "user_txn.amount_max_30d", "user_profile.lifetime_spend", "user_profile.lifetime_txns",
        "user_profile.account_age_days"]


def _weak(text: str) -> str:
    """The definitions with production's model: the slow features, a smaller trainer."""
    start = text.index('"fraud", features=[') + len('"fraud", features=')
    end = text.index("]", start) + 1
    return text[:start] + repr(SLOW) + text[end:].replace(SMALL, WEAK)


SLICE_BLIND = "trainer=cl.SklearnTrainer(SliceBlind(column=13, quantile=0.25))"

SERVING = '''
serving = cl.Serving("fraud", unit="txn_id", subject="txn_id", holdout=0.05,
                     decisions=[("block", 0.5), ("review", 0.1)], default_decision="allow",
                     fallback=0.01)
'''

#: The ladder the tests declare — the demo's (each test may replace it: ``write_ladder``).
LADDER = DEMO_LADDER


#: The project's own module of candidate estimators (beside its definitions, which import it).
CANDIDATES = '''"""Estimators of the ladder tests' candidates."""

from __future__ import annotations

from typing import Any

import numpy as np


class SliceBlind:
    """A gradient-boosted classifier that answers its training base rate wherever feature
    ``column`` is below its ``quantile`` in the training rows: truly worse on that slice."""

    def __init__(self, column: int = 13, quantile: float = 0.25) -> None:
        self.column = column
        self.quantile = quantile

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"column": self.column, "quantile": self.quantile}

    def set_params(self, **params: Any) -> SliceBlind:
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def fit(self, X: Any, y: Any, **_: Any) -> SliceBlind:
        from sklearn.ensemble import HistGradientBoostingClassifier

        self.model_ = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05,
                                                     random_state=7).fit(X, y)
        self.classes_ = self.model_.classes_
        self.rate_ = float(np.mean(y))
        x = np.asarray(X, dtype=np.float64)[:, self.column]
        self.below_ = float(np.nanquantile(x, self.quantile))
        return self

    def predict_proba(self, X: Any) -> np.ndarray[Any, Any]:
        out: np.ndarray[Any, Any] = self.model_.predict_proba(X)
        x = np.asarray(X, dtype=np.float64)[:, self.column]
        blind = x < self.below_
        out[blind, 1] = self.rate_
        out[blind, 0] = 1 - self.rate_
        return out
'''


@dataclass(frozen=True)
class LadderWorld:
    root: Path
    versions: dict[str, int]


def _text(root: Path) -> str:
    return (root / "definitions.py").read_text()


def write_ladder(root: Path, ladder: str = LADDER) -> None:
    """Declare ``ladder`` (Python text) as the project's ladder, replacing any."""
    text = _text(root)
    start = text.find("\nladder = cl.Ladder(")
    if start >= 0:
        text = text[:start]
    (root / "definitions.py").write_text(text + ladder)


def _derive(p: cl.Project, base: int, shift: float) -> int:
    """A version that is ``base`` plus ``shift`` on every score (capped at 1), through its
    calibration map, whose report compares with production as equal in AUC (a monotone
    map keeps every rank) — registered as a new version of its own bundle."""
    version = p.registry.version("fraud", base)
    manifest = dict(version.manifest)
    top = 1.0 - shift
    manifest["calibration"] = {"x": [0.0, top, 1.0], "y": [shift, 1.0, 1.0]}
    report = json.loads(p.artefacts.get(manifest["report"]))
    report["comparison"] = {"against_version": base, "rows": report["rows"],
                            "auc_difference": {"value": 0.0, "low": 0.0, "high": 0.0,
                                               "level": 0.95},
                            "note": f"version {base} plus {shift}: the same ranking"}
    manifest["report"] = p.artefacts.put(json.dumps(report, sort_keys=True).encode())
    manifest["derived_from"] = {"version": base, "shift": shift}
    bundle = p.artefacts.put(json.dumps(manifest, sort_keys=True).encode())
    run = p.registry.training.run(version.run_id)
    run_id = f"{run.id}-shift{shift}"
    p.metadata.start_run(run_id, "fraud", {**run.record, "bundle": bundle})
    p.metadata.end_run(run_id, "finished", {**run.record, "bundle": bundle})
    return p.registry.register(run_id).version


def build_world(root: Path) -> LadderWorld:
    # Many compromised cards, so the matured test split holds enough fraud to tell models
    # apart; two live weeks after the 90 days of history.
    write_fraud_project(root, n_users=800, seed=5, live_days=14, compromised_share=0.25)
    base = _text(root).replace(DEMO_SERVING, SERVING).replace(
        'protected=["country"],', 'protected=["country"], min_slice_size=1000,').replace(
        "import closedloop as cl\n", "import closedloop as cl\nfrom candidates import SliceBlind\n",
        1)
    (root / "candidates.py").write_text(CANDIDATES)
    (root / "definitions.py").write_text(_weak(base))
    write_ladder(root)
    versions: dict[str, int] = {}
    data = root / "data"
    with cl.Project(root) as p:
        p.apply()
        for source, export in EXPORTS.items():
            p.data.ingest(source, data / export, at=DAY0)
        first = p.registry.register(p.training.train("fraud", cutoff=DAY0).id).version
        p.registry.set_alias("fraud", "production", first)
        versions["production"] = first
        p.features.materialize(at=DAY0)
    for name, trainer in (("better", SMALL), ("slice", SLICE_BLIND)):
        (root / "definitions.py").write_text(base.replace(SMALL, trainer))
        write_ladder(root)
        with cl.Project(root) as p:
            run = p.training.train("fraud", cutoff=DAY0, baseline=p.registry.baseline)
            versions[name] = p.registry.register(run.id).version
    (root / "definitions.py").write_text(_weak(base))
    write_ladder(root)
    with cl.Project(root) as p:
        versions["shifted"] = _derive(p, first, 0.1)
        versions["blocker"] = _derive(p, first, 0.5)
        # The live weeks' labels, as they will have settled by the time the ladder looks.
        p.data.ingest("chargebacks", data / LIVE / "chargebacks.parquet", at=LATER)
    text = (root / "closedloop.toml").read_text()
    (root / "closedloop.toml").write_text(text + f'\n[clock]\nat = "{LATER.isoformat()}"\n'
                                          'replay = true\nfield = "event_time"\n')
    return LadderWorld(root, versions)


#: The live two weeks as requests (``closedloop.sim.traffic.Replay``), from DAY0 on.
def Traffic(project: cl.Project) -> Replay:
    return Replay(project, since=DAY0)


@pytest.fixture(scope="session")
def ladder_world(tmp_path_factory: pytest.TempPathFactory) -> LadderWorld:
    return build_world(tmp_path_factory.mktemp("ladder") / "proj")


@pytest.fixture
def laddered(ladder_world: LadderWorld, tmp_path: Path) -> Iterator[LadderWorld]:
    root = tmp_path / "proj"
    shutil.copytree(ladder_world.root, root)
    return LadderWorld(root, ladder_world.versions)
