"""Workload `batch-score`: batch inference of 1M entities.

One snapshot view of 10 floats over 1M users (one row each), a LightGBM model (200 trees)
trained on it by closedloop once per data size.

* ``closedloop-sqlite`` / ``closedloop-redis``: ``project.serving.score`` — the
  point-in-time features of every user as of the scoring instant, the production version's
  predict, the scores written to the online store (SQLite / Redis) with a durable
  checkpoint per 100k.
* ``floor``: LightGBM's own batch predict on the same matrix (read from the Parquet file,
  built outside the timing), two threads.

Figures: ``per_s`` (entities per second) and ``seconds``. Outputs compared: the scores of the
first 2,000 users.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks.data import (
    DATA,
    DAY,
    RECORD_FORMAT,
    T0,
    _ts,
    private_project,
    project_built,
    redis_cleanup,
)

OUTPUTS = ["score"]
FEATURES = [f"f{i}" for i in range(10)]
KEPT = 2000
DEFINITIONS = '''
import closedloop as cl

user = cl.Entity("user", key="user_id")
profiles = cl.TableSource("profiles", path={profiles!r}, timestamp="ts",
                          schema={{"user_id": str, **{{c: float for c in {features!r}}}}})
profile = cl.FeatureView("profile", entity=user, source=profiles, features={features!r})
requests = cl.EventSource("requests", path={requests!r}, timestamp="ts", id="request_id",
                          schema={{"request_id": str, "user_id": str}})
outcome = cl.LabelSource("outcome", path={requests!r}, subject="request_id", timestamp="ts",
                         label="label", settled_at="settled_at", schema={{"request_id": str,
                                                                   "label": bool}})
bench = cl.Model("bench", features={refs!r}, label="outcome", rows="requests",
                 trainer=cl.LightGBMTrainer(num_boost_round=200, num_leaves=31, seed=1))
'''


def _users(n: int) -> np.ndarray:
    return np.char.add("u", np.char.zfill(np.arange(n).astype(str), 7))


def batch_data(scale: float = 1.0, seed: int = 17) -> Path:
    """1M users' profiles (10 floats, one row each, at T0), 100k labelled requests a day
    later (the label depends on two features), and a project with the model registered."""
    folder = DATA / f"batch-{scale:g}"
    if project_built(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = int(1_000_000 * scale)
    users = _users(n)
    values = rng.normal(0, 1, size=(n, len(FEATURES)))
    pq.write_table(pa.table({"user_id": users, "ts": _ts(np.full(n, T0)),
                             **{c: values[:, i] for i, c in enumerate(FEATURES)}}),
                   folder / "profiles.parquet", row_group_size=128_000)
    m = max(1000, int(100_000 * scale))
    who = rng.integers(0, n, size=m)
    logit = values[who, 0] - 0.5 * values[who, 1] + rng.normal(0, 1, size=m)
    when = _ts(T0 + DAY + rng.integers(0, DAY, size=m))
    pq.write_table(pa.table({
        "request_id": np.char.add("r", np.arange(m).astype(str)), "user_id": users[who],
        "ts": when, "settled_at": when, "label": logit > 0}), folder / "requests.parquet")
    root = folder / "project"
    shutil.rmtree(root, ignore_errors=True)
    cl.init_project(root, definitions=DEFINITIONS.format(
        profiles=str(folder / "profiles.parquet"), requests=str(folder / "requests.parquet"),
        features=FEATURES, refs=[f"profile.{c}" for c in FEATURES]))
    with cl.Project(root) as project:
        project.apply()
        cutoff = _ts(np.array([T0 + 3 * DAY]))[0].as_py()
        run = project.training.train("bench", cutoff=cutoff)
        project.registry.set_alias("bench", "production", project.registry.register(run.id).version)
        project.registry.load("bench", "production").trainer.booster_.save_model(
            str(folder / "model.txt"))
    (folder / "done.json").write_text(json.dumps({"scale": scale, "users": n,
                                                  "records": RECORD_FORMAT}))
    return folder


def _at() -> Any:
    return _ts(np.array([T0])).cast(pa.timestamp("us", tz="UTC"))[0].as_py() + timedelta(
        days=3)


def _closedloop(store: str) -> Any:
    def setup(data: Path) -> Any:
        prefix = f"clbench:{uuid.uuid4().hex}:"
        root = private_project(data, "batch", prefix if store == "redis" else None)
        project = cl.Project(root)
        project.features.engine.read(project.catalog.sources["profiles"], ["user_id"])  # warm

        def job() -> Any:
            try:
                report = project.serving.score("bench", at=_at())
                users = _users(KEPT).tolist()
                scores = [project.serving.stored_score("bench", u) for u in users]
                table = pa.table({"label_id": np.arange(KEPT),
                                  "score": [s.score if s is not None else None for s in scores]})
                return table, {"per_s": report.scored / report.seconds,
                               "entities": report.scored}
            finally:
                project.close()
                if store == "redis":
                    redis_cleanup(prefix)
                shutil.rmtree(root.parent, ignore_errors=True)
        return job
    return setup


def _floor(data: Path) -> Any:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(data / "model.txt"))
    table = pq.read_table(data / "profiles.parquet")
    X = np.column_stack([table[c].to_numpy() for c in FEATURES])

    def job() -> Any:
        import time

        start = time.perf_counter()
        scores = booster.predict(X, num_threads=2)
        seconds = time.perf_counter() - start
        return (pa.table({"label_id": np.arange(KEPT), "score": scores[:KEPT]}),
                {"per_s": len(scores) / seconds, "entities": len(scores)})
    return job


class _BatchScore:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite"),
                                         "closedloop-redis": _closedloop("redis"),
                                         "floor": _floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = None
    METRIC = "per_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(batch_data)


batch_score = _BatchScore
