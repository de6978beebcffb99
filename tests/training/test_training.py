"""Training runs end to end on the fraud world: lineage, reproducibility, leakage, failures
recorded as failed, and the registry's versions and aliases."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import closedloop as cl
from closedloop.errors import (
    ArtefactCorrupted,
    LeakageError,
    RegistryError,
    TrainingError,
    VersionNotFound,
)
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, write_fraud_project

END = FraudWorld().end
SMALL = ("trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, "
         "seed=7)")
FAST = "trainer=cl.LightGBMTrainer(num_boost_round=40, learning_rate=0.1, num_leaves=15, seed=7)"


class Exploding:
    """A trainer that raises inside fit."""

    kind = "exploding"

    def fit(self, X: Any, y: Any, **_: Any) -> None:
        raise RuntimeError("out of cheese")

    def predict_proba(self, X: Any) -> Any:  # pragma: no cover - never fitted
        return np.zeros(len(X))

    def params(self) -> dict[str, Any]:
        return {}

    def to_bytes(self) -> bytes:  # pragma: no cover
        return b""

    def load(self, data: bytes) -> None:  # pragma: no cover
        pass


EXTRA = '''

import tests.training.test_training as helpers

leaky_profiles = cl.TableSource(
    "leaky_profiles", path="landing/leaky", timestamp="snapshot_time", created="created_at",
    schema={"user_id": str, "lifetime_spend": float})
leaky_view = cl.FeatureView("leaky_view", entity=user, source=leaky_profiles,
                            features=["lifetime_spend"], ttl="2d")
leaky = cl.Model("leaky", features=["user_txn.amount_sum_1h", "leaky_view.lifetime_spend"],
                 label="chargebacks", rows="transactions", ''' + FAST + ''')
broken = cl.Model("broken", features=["user_txn.amount_sum_1h"], label="chargebacks",
                  rows="transactions", trainer=helpers.Exploding())
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fraud project with its exports ingested, built once and copied per test."""
    root = write_fraud_project(tmp_path_factory.mktemp("fraud") / "proj", n_users=800,
                               seed=3)
    text = (root / "definitions.py").read_text().replace(SMALL, FAST) + EXTRA
    (root / "definitions.py").write_text(text)
    with cl.Project(root) as p:
        p.apply()
        for source, export in EXPORTS.items():
            p.data.ingest(source, root / "data" / export, at=END)
        p.data.ingest("leaky_profiles", root / "data" / "profiles.parquet", at=END)
    return root


@pytest.fixture
def project(world: Path, tmp_path: Path) -> Iterator[cl.Project]:
    root = tmp_path / "proj"
    shutil.copytree(world, root)
    with cl.Project(root) as p:
        yield p


def test_a_run_records_its_lineage_and_reproduces_bit_for_bit(project: cl.Project) -> None:
    run = project.training.train("fraud", cutoff=END)
    r = run.record
    assert r["lineage"]["label_cutoff"] == END.isoformat()
    assert r["lineage"]["maturity"]["maturing"] > 0
    assert set(r["seconds"]) >= {"rows", "labels", "training set", "fit", "evaluate"}
    assert r["cpu_seconds"] > 0
    assert r["peak_memory_mb"] > 0
    assert r["environment"]["packages"]["lightgbm"]
    assert r["seeds"] == {"seed": 7}
    assert "user_txn@1" in r["definitions"]["views"]
    assert r["metrics"]["auc"] > 0.75
    split = r["lineage"]["split"]
    assert split["train"] > split["test"] > 0
    assert split["validation_from"] < split["test_from"]       # by time, test last
    again = project.training.train("fraud", cutoff=END)
    assert again.record["lineage"]["training_set_hash"] == r["lineage"]["training_set_hash"]
    assert again.record["model_artefact_hash"] == r["model_artefact_hash"]
    reproduced = project.training.reproduce(run.id)
    assert reproduced.identical, reproduced.summary()
    assert "identical" in reproduced.summary()


def test_reproduce_names_the_data_when_the_sources_changed(project: cl.Project) -> None:
    run = project.training.train("fraud", cutoff=END)
    # A late chargeback for a matured transaction, settled before the run's cutoff.
    txns = project.data.read("transactions", ["txn_id", "event_time"]).sort_by("event_time")
    first = txns.slice(0, 1).to_pylist()[0]
    late = pa.table({"txn_id": [first["txn_id"]], "event_time": pa.array(
        [first["event_time"]], pa.timestamp("us", tz="UTC")),
        "settled_at": pa.array([first["event_time"] + timedelta(days=1)],
                               pa.timestamp("us", tz="UTC")), "is_fraud": [True]})
    project.data.write_labels("chargebacks", late, provenance="human:review", at=END)
    found = project.training.reproduce(run.id)
    assert not found.data_identical
    assert any(d.startswith("data:") for d in found.differences)


def test_a_leaky_feature_is_an_error_and_the_run_is_recorded_failed(project: cl.Project
                                                                     ) -> None:
    with pytest.raises(LeakageError, match=r"leaky_view@1: .* training rows take a value"):
        project.training.train("leaky", cutoff=END)
    runs = project.metadata.runs("leaky")
    assert [r.status for r in runs] == ["failed"]
    assert "CL-601" in (runs[0].error or "")
    assert project.metadata.versions("leaky") == []


def test_a_trainer_that_raises_is_recorded_and_registers_nothing(project: cl.Project) -> None:
    with pytest.raises(TrainingError, match="out of cheese"):
        project.training.train("broken", cutoff=END)
    run = project.metadata.runs("broken")[0]
    assert run.status == "failed"
    with pytest.raises(RegistryError, match="only a finished run"):
        project.registry.register(run.id)
    assert project.metadata.versions("broken") == []


def test_no_matured_labels_is_a_clear_error(project: cl.Project) -> None:
    with pytest.raises(TrainingError, match="no matured labels"):
        project.training.train("fraud", cutoff=FraudWorld().start + timedelta(days=30))
    assert project.metadata.runs("fraud")[-1].status == "failed"


def test_unregistered_definitions_are_refused(project: cl.Project) -> None:
    text = (project.root / "definitions.py").read_text().replace(
        'cl.Agg("amount", "sum", windows=["1h", "1d", "30d"])',
        'cl.Agg("amount", "sum", windows=["1h", "1d", "30d", "7d"])')
    (project.root / "definitions.py").write_text(text)
    with cl.Project(project.root) as changed, pytest.raises(TrainingError,
                                                            match="closedloop apply"):
        changed.training.train("fraud", cutoff=END)


def test_registry_versions_aliases_and_loading(project: cl.Project) -> None:
    first = project.training.train("fraud", cutoff=END)
    v1 = project.registry.register(first.id)
    assert v1.version == 1
    assert project.registry.register(first.id).version == 1        # the same bundle again
    project.registry.set_alias("fraud", "production", 1)
    second = project.training.train("fraud", cutoff=END - timedelta(days=5),
                                    baseline=project.registry.baseline)
    assert second.report.comparison is not None
    assert second.report.comparison["against_version"] == 1
    # Version 1 learned from later rows than this run's test set starts at: said, and counted.
    assert second.report.comparison["overlap_rows"] > 0
    assert any("comparison favours production" in w for w in second.warnings)
    v2 = project.registry.register(second.id)
    moved = project.registry.set_alias("fraud", "production", v2.version)
    assert "production" in moved.aliases
    assert project.registry.aliases("fraud") == {"previous": 1, "production": 2}
    loaded = project.registry.load("fraud", "production")
    test_rows = second.report.rows
    assert test_rows > 0
    diff = project.registry.diff("fraud", 1, 2)
    assert "label_cutoff" in diff.data
    with pytest.raises(VersionNotFound, match="no alias 'canary'"):
        project.registry.load("fraud", "canary")
    with pytest.raises(VersionNotFound):
        project.registry.set_alias("fraud", "canary", 9)
    # The same rows score the same through the loaded version as through the run's model.
    table = project.training._build(project.training.model("fraud"), END - timedelta(days=5),
                                    lambda _: None).table
    assert np.array_equal(loaded.predict(table.slice(0, 50)),
                          project.registry.load("fraud", 2).predict(table.slice(0, 50)))
    # A corrupted binary is refused on load.
    blob = Path(project.artefacts.root) / v2.manifest["artefact"][:2] / v2.manifest["artefact"]
    blob.write_bytes(blob.read_bytes()[:-10] + b"corrupted!")
    with pytest.raises(ArtefactCorrupted, match="does not match its hash"):
        project.registry.load("fraud", 2)


def test_a_version_carries_the_reference_its_run_fitted(project: cl.Project) -> None:
    """The run fits the monitor's reference on its test rows — every feature, the calibrated
    score and the label (by value) — and the registered version hands it out."""
    run = project.training.train("fraud", cutoff=END)
    version = project.registry.register(run.id)
    reference = project.registry.reference("fraud", version.version)
    assert (reference.model, reference.run_id) == ("fraud", run.id)
    assert list(reference.columns) == [*version.features, "(score)", "(label)"]
    assert reference.rows == run.report.rows
    label = reference.columns["(label)"]
    assert label.kind == "categorical"
    assert set(label.categories) <= {"0", "1"}
    positives = label.counts[label.categories.index("1")] if "1" in label.categories else 0
    assert positives == run.report.test["positives"]
    score = reference.columns["(score)"]
    assert score.kind == "numeric"
    assert 0 <= score.low <= score.high <= 1
    assert sum(score.counts) == run.report.rows


def test_runs_compare_side_by_side(project: cl.Project) -> None:
    a = project.training.train("fraud", cutoff=END)
    b = project.training.train("fraud", cutoff=END - timedelta(days=3))
    got = project.training.compare(a.id, b.id)
    assert got.sections["data"]["label_cutoff"][0] != got.sections["data"]["label_cutoff"][1]
    assert got.sections["params"]["seed"] == (7, 7)
    assert "auc" in got.sections["metrics"]
    assert "label_cutoff" in got.differences()["data"]
    assert "seed" not in got.differences()["params"]


def test_the_report_writes_json_and_html(project: cl.Project, tmp_path: Path) -> None:
    run = project.training.train("fraud", cutoff=END)
    again = type(run.report).from_json(run.report.to_json())
    assert again == run.report
    page = run.report.to_html()
    assert "<svg" in page
    assert "Slices by country" in page
    assert "Fairness by country" in page
    assert run.report.test["auc"]["low"] < run.report.test["auc"]["value"]
    # What MLflow and Evidently users look for first: the ROC curve, the confusion matrix at
    # the model's threshold and its serving's decision thresholds, feature importance.
    roc = run.report.test["roc_curve"]
    assert roc[0] == {"fpr": 0.0, "tpr": 0.0}
    assert roc[-1] == {"fpr": 1.0, "tpr": 1.0}
    decisions = [t for _, t in project.serving.serving("fraud").decisions]
    assert decisions
    assert [c["threshold"] for c in run.report.confusion] == sorted(
        {project.models["fraud"].threshold, *decisions})
    assert all(c["tp"] + c["fp"] + c["fn"] + c["tn"] == run.report.rows
               for c in run.report.confusion)
    features = set(project.models["fraud"].features)
    assert set(run.report.importance["gain"]) == features
    assert set(run.report.importance["permutation"]) == features
    assert max(run.report.importance["permutation"].values()) > 0
    for title in ("ROC", "Confusion matrix", "Feature importance"):
        assert title in page


def test_reproduce_names_the_code_when_the_model_changed(project: cl.Project) -> None:
    run = project.training.train("fraud", cutoff=END)
    text = (project.root / "definitions.py").read_text().replace("num_boost_round=40",
                                                                 "num_boost_round=41")
    (project.root / "definitions.py").write_text(text)
    with cl.Project(project.root) as changed:
        found = changed.training.reproduce(run.id)
    assert found.data_identical
    assert not found.model_identical
    assert any("model's declaration changed" in d for d in found.differences)
