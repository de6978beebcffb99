"""A fraud world for the promotion ladder's tests: production (version 1) and candidates of
known quality, all trained against production so their reports compare with it, and
simulated traffic whose labels are the world's ground truth.

* ``better`` — a larger LightGBM: truly better;
* ``slice`` — trained, then blind on the youngest accounts (a constant score there): truly
  worse on one slice of ``user_profile.account_age_days``;
* ``shifted`` — production's own model plus 0.1 on every score (through its calibration
  map): equal ranking, equal AUC, worse calibration;
* ``blocker`` — production plus 0.5: it blocks nearly everyone (a guardrail's business metric).

The world's history up to ``DAY0`` (two weeks before its end) is ingested, the models
trained on it and the online store materialized as of ``DAY0``; the last two weeks are the
traffic: each transaction is served at its own instant (the replay clock), the events that
had arrived by then pushed beside it, so the candidates are judged out of time, on
transactions they never saw. Their labels are the world's chargebacks, ingested at the end;
the project's clock stands 61 days after the world's end, so every label window has
closed: the controller sees every prediction matured.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import SERVING as DEMO_SERVING
from closedloop.sim.fraud_project import write_fraud_project

WORLD = FraudWorld(n_users=800, seed=5, compromised_share=0.25, days=110)
END = WORLD.end
DAY0 = END - timedelta(days=14)
LATER = END + timedelta(days=61)
FIELDS = ["user_id", "txn_id", "amount", "country", "event_time"]
SMALL = ("trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, "
         "seed=7)")
WEAK = "trainer=cl.LightGBMTrainer(num_boost_round=8, learning_rate=0.1, num_leaves=4, seed=7)"
SLICE_BLIND = "trainer=cl.SklearnTrainer(SliceBlind(column=13, quantile=0.1))"

SERVING = '''
serving = cl.Serving("fraud", unit="txn_id", subject="txn_id", holdout=0.05,
                     decisions=[("block", 0.5), ("review", 0.1)], default_decision="allow",
                     fallback=0.01)
'''

#: The ladder the tests declare (each test may replace it: ``write_ladder``).
LADDER = '''
# The business's own metrics, per prediction: fraud let through, and a good customer blocked.
missed_fraud = cl.Metric("missed_fraud", lambda c: (c["label"] == 1) & (c["decision"] == "allow"),
                         higher_is_better=False)
false_block = cl.Metric("false_block", lambda c: (c["label"] == 0) & (c["decision"] == "block"),
                        higher_is_better=False)

ladder = cl.Ladder(
    "fraud",
    gate=cl.Gate(metric="auc", margin=0.04),
    shadow=cl.Shadow(min_predictions=400),
    canary=cl.Canary(share=0.1, guardrails=cl.Guardrails(
        min_predictions=150, metrics={"decision:block": 0.05})),
    ab=cl.ABTest(share=0.5, primary="false_block", guardrails=["missed_fraud", "brier"],
                 min_units=500, mde=0.3),
    ramp=cl.Ramp(steps=(0.5, 1.0), guardrails=cl.Guardrails(min_predictions=150)),
    metrics=[missed_fraud, false_block],
)
'''


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


def _until(table: pa.Table, column: str, t: datetime) -> pa.Table:
    return table.filter(pc.less_equal(table[column], pa.scalar(t, table[column].type)))


def build_world(root: Path) -> LadderWorld:
    write_fraud_project(root, n_users=800, seed=5)
    # Many compromised cards, so the matured test split holds enough fraud to tell models apart.
    data = root / "data"
    WORLD.write(data)
    # Slices of at least 1,000 test rows are gated (a smaller one's interval is too wide).
    base = _text(root).replace(DEMO_SERVING, SERVING).replace(
        'protected=["country"],', 'protected=["country"], min_slice_size=1000,').replace(
        "import closedloop as cl\n", "import closedloop as cl\nfrom candidates import SliceBlind\n",
        1)
    (root / "candidates.py").write_text(CANDIDATES)
    (root / "definitions.py").write_text(base.replace(SMALL, WEAK))
    write_ladder(root)
    versions: dict[str, int] = {}
    with cl.Project(root) as p:
        p.apply()
        p.data.ingest("transactions", _until(pq.read_table(data / "transactions.parquet"),
                                             "ingested_at", DAY0), at=DAY0)
        p.data.ingest("profiles", _until(pq.read_table(data / "profiles.parquet"),
                                         "created_at", DAY0), at=DAY0)
        p.data.ingest("chargebacks", _until(pq.read_table(data / "chargebacks.parquet"),
                                            "settled_at", DAY0), at=DAY0)
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
    (root / "definitions.py").write_text(base.replace(SMALL, WEAK))
    write_ladder(root)
    with cl.Project(root) as p:
        versions["shifted"] = _derive(p, first, 0.1)
        versions["blocker"] = _derive(p, first, 0.5)
        # Every label of the world, as it will have settled by the time the ladder looks.
        p.data.ingest("chargebacks", pq.read_table(data / "chargebacks.parquet"), at=END)
    text = (root / "closedloop.toml").read_text()
    (root / "closedloop.toml").write_text(text + f'\n[clock]\nat = "{LATER.isoformat()}"\n'
                                          'replay = true\nfield = "event_time"\n')
    return LadderWorld(root, versions)


class Traffic:
    """The world's last two weeks as requests, in event-time order: each served at its own
    instant, with every event that had arrived by then pushed first (see module)."""

    def __init__(self, project: cl.Project) -> None:
        data = project.root / "data"
        txns = pq.read_table(data / "transactions.parquet")
        after = pa.scalar(DAY0, txns["event_time"].type)
        self.requests = txns.filter(pc.greater(txns["event_time"], after)).sort_by(
            "event_time").select(FIELDS)
        self.arriving = {
            "transactions": txns.filter(pc.greater(txns["ingested_at"], after)).sort_by(
                "ingested_at"),
            "profiles": (lambda t: t.filter(pc.greater(t["created_at"], after)).sort_by(
                "created_at"))(pq.read_table(data / "profiles.parquet"))}
        self.arrival = {"transactions": "ingested_at", "profiles": "created_at"}
        self.pushed = dict.fromkeys(self.arriving, 0)
        self.project = project
        self.sent = 0

    @property
    def left(self) -> int:
        return self.requests.num_rows - self.sent

    def serve(self, n: int, batch: int = 50) -> int:
        """Serve the next ``n`` requests (fewer at the end), in batches; how many."""
        online = self.project.serving.online("fraud")
        done = 0
        while done < n and self.left:
            k = min(batch, n - done, self.left)
            rows = self.requests.slice(self.sent, k)
            last = rows["event_time"][k - 1]
            for source, table in self.arriving.items():   # arrived by the batch's last instant
                column = table[self.arrival[source]]
                upto = int(pc.sum(pc.cast(pc.less_equal(column, pa.scalar(
                    last.as_py(), column.type)), pa.int64())).as_py() or 0)
                if upto > self.pushed[source]:
                    self.project.features.push(
                        source, table.slice(self.pushed[source], upto - self.pushed[source]),
                        at=last.as_py())
                    self.pushed[source] = upto
            instances = [{**r, "event_time": r["event_time"].isoformat()}
                         for r in rows.to_pylist()]
            online.serve(instances)
            self.sent += k
            done += k
        self.project.serving.shadow.join()
        return done


@pytest.fixture(scope="session")
def ladder_world(tmp_path_factory: pytest.TempPathFactory) -> LadderWorld:
    return build_world(tmp_path_factory.mktemp("ladder") / "proj")


@pytest.fixture
def laddered(ladder_world: LadderWorld, tmp_path: Path) -> Iterator[LadderWorld]:
    root = tmp_path / "proj"
    shutil.copytree(ladder_world.root, root)
    return LadderWorld(root, ladder_world.versions)
