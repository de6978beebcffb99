"""Workload `train`: a training run on 1M rows × 20 features, by stage, beside LightGBM's fit
alone on the same arrays.

``closedloop`` runs ``project.training.train``: read the rows, mature the labels, build the
point-in-time training set (sum/count/mean/min/max of the amount over 1h, 1d, 1w, 30d), hash
it, check it, split by time, fit LightGBM (200 trees), evaluate (AUC with its interval,
calibration, PR curve, slices), store the artefacts and record the run. The floor fits the same
LightGBM, same parameters, on the same training rows' arrays — the fit alone. ``train_s`` is
each one's wall time; ``fit_s`` the fit inside it; ``overhead_s`` closedloop's time outside
the fit and ``overhead_share`` that over its fit (target ≤ 0.5). Each system runs in a fresh
process with LightGBM already imported (both fits would otherwise include its import).
Outputs compared: the two models' scores on the first 2,000 test rows (same data and seed:
the same model).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

import closedloop as cl
from benchmarks.data import train_data

OUTPUTS = ["score"]
CUTOFF = datetime(2026, 4, 15, tzinfo=UTC)          # every label window (7 days) closed
FNS = ["sum", "count", "mean", "min", "max"]
DEFINITIONS = '''import closedloop as cl

user = cl.Entity("user", key="user_id")
events = cl.EventSource("events", path="landing/events", timestamp="event_time",
                        arrival="ingested_at", id="txn_id",
                        schema={{"txn_id": str, "user_id": str, "amount": float}})
cb = cl.LabelSource("cb", path="landing/cb", subject="txn_id", timestamp="event_time",
                    label="is_fraud", settled_at="settled_at", max_delay="7d", default=False)
spend = cl.FeatureView("spend", entity=user, source=events, version=1, aggregations=[
    cl.Agg("amount", fn, windows=["1h", "1d", "1w", "30d"]) for fn in {fns!r}])
FEATURES = [f"spend.amount_{{fn}}_{{w}}" for fn in {fns!r} for w in ("1h", "1d", "1w", "30d")]
model = cl.Model("bench", features=FEATURES, label="cb", rows="events",
                 trainer=cl.LightGBMTrainer(num_boost_round=200, num_leaves=31, seed=1),
                 slices=["spend.amount_count_1d"], min_slice_size=500)
'''


def _project(data: Path) -> cl.Project:
    import lightgbm  # noqa: F401  (imported in the set-up of both systems: not part of a fit)

    root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    cl.init_project(root, definitions=DEFINITIONS.format(fns=FNS))
    (root / "closedloop.toml").write_text("[offline]\nthreads = 2\n")
    project = cl.Project(root)
    project.apply()
    project.data.ingest("events", data / "events.parquet", at=CUTOFF)
    project.data.ingest("cb", data / "labels.parquet", at=CUTOFF)
    return project


def _scores(project: cl.Project, trainer: Any, table: pa.Table, part: np.ndarray) -> pa.Table:
    test = table.filter(pa.array(part == 2)).slice(0, 2000)
    from closedloop.training.matrix import feature_matrix

    scores = trainer.predict_proba(feature_matrix(test, project.models["bench"].features))
    return pa.table({"label_id": np.arange(len(scores)), "score": scores})


def _closedloop(data: Path) -> Any:
    project = _project(data)

    def job() -> Any:
        start = time.perf_counter()
        run = project.training.train("bench", cutoff=CUTOFF)
        seconds = time.perf_counter() - start
        fit = run.record["seconds"]["fit"]
        loaded = project.registry.load("bench", project.registry.register(run.id).version)
        built = project.training._build(project.training.model("bench"), CUTOFF,
                                        lambda _: None)
        figures = {"train_s": seconds, "fit_s": fit, "overhead_s": seconds - fit,
                   "overhead_share": (seconds - fit) / fit,
                   **{f"{k}_s": v for k, v in run.record["seconds"].items() if k != "fit"}}
        return _scores(project, loaded.trainer, built.table, built.part), figures
    return job


def _floor(data: Path) -> Any:
    project = _project(data)
    model = project.training.model("bench")
    built = project.training._build(model, CUTOFF, lambda _: None)
    train, valid = built.rows(0), built.rows(1)
    X, y = built.features_of(0), built.y[train]
    import copy

    def job() -> Any:
        trainer = copy.deepcopy(model.trainer)
        start = time.perf_counter()
        trainer.fit(X, y, X_valid=built.features_of(1), y_valid=built.y[valid],
                    feature_names=list(model.features))
        seconds = time.perf_counter() - start
        return _scores(project, trainer, built.table, built.part), {"train_s": seconds,
                                                                     "fit_s": seconds}
    return job


class _Train:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop": _closedloop, "floor": _floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = None
    METRIC = "train_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(train_data)


train = _Train
