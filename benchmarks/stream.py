"""Workload `stream`: streaming inference, sustained.

The fraud project (2,000 users; its LightGBM model trained and registered, the online store
materialized) scores 20,000 new transactions published on its event stream beforehand — a
backlog, so the figure is the sustained rate, not the producer's.

* ``closedloop-sqlite`` / ``closedloop-redis``: one ``closedloop stream`` scorer, on the
  embedded stream and SQLite online store / on Redis Streams and the Redis online store —
  per batch: score (the model's 16 features, transforms included, as served now), fold the
  events into the online windows (event log first), write each prediction to the online
  store, the durable prediction log and the predictions stream, acknowledge.
* ``floor``: a hand-written consumer of the same stream and group semantics: XREADGROUP, one
  LightGBM predict per batch on rows already holding their features, XADD the scores, XACK —
  no features, no log.

Figures: ``per_s`` (events per second over the run) and ``p99_ms``/``p50_ms`` of the lag from
an event's publication to its prediction being written (the events wait in the backlog, so
the lag grows through the run: it is reported, not the target). Outputs compared: how many
events each scored (every one, once).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa

import closedloop as cl
from benchmarks.data import DATA, RECORD_FORMAT, private_project, project_built, redis_cleanup
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, write_fraud_project

OUTPUTS = ["events"]
EVENTS = 20_000


def stream_data(scale: float = 1.0) -> Path:
    """The fraud project, trained, registered and materialized; built once per size."""
    folder = DATA / f"stream-{scale:g}"
    if project_built(folder):
        return folder
    root = folder / "project"
    shutil.rmtree(root, ignore_errors=True)
    users = max(500, int(2000 * scale))
    write_fraud_project(root, n_users=users, seed=5)
    end = FraudWorld(n_users=users, seed=5).end
    with cl.Project(root) as project:
        project.apply()
        for source, export in EXPORTS.items():
            project.data.ingest(source, root / "data" / export, at=end)
        run = project.training.train("fraud", cutoff=end)
        project.registry.set_alias("fraud", "production", project.registry.register(run.id).version)
        project.features.materialize(at=end)
        project.registry.load("fraud", "production").trainer.booster_.save_model(
            str(folder / "model.txt"))
    (folder / "done.json").write_text(json.dumps({"scale": scale, "users": users,
                                                  "records": RECORD_FORMAT}))
    return folder


def _events(root: Path, n: int) -> pa.Table:
    with cl.Project(root) as project:
        users = project.data.read("transactions", ["user_id"])["user_id"].to_pylist()
    rng = np.random.default_rng(9)
    now = datetime.now(UTC)
    return pa.table({
        "txn_id": [f"live-{i}" for i in range(n)],
        "user_id": [users[i] for i in rng.integers(0, len(users), size=n)],
        "merchant_id": ["m1"] * n, "amount": rng.gamma(2.0, 30.0, size=n).round(2),
        "country": ["US"] * n,
        "event_time": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        "ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC"))})


def _closedloop(store: str) -> Any:
    def setup(data: Path) -> Any:
        prefix = f"clbench:{uuid.uuid4().hex}:"
        on_redis = store == "redis"
        root = private_project(data, "stream", prefix if on_redis else None, extra=(
            f'\n[stream]\nurl = "redis://127.0.0.1:6379/0"\nprefix = "{prefix}"\n' if on_redis
            else ""))
        if on_redis:
            with cl.Project(root) as project:
                project.features.materialize()
        n = int(EVENTS * min(1.0, max(0.05, _scale(data))))
        events = _events(root, n)
        project = cl.Project(root)
        scorer = project.serving.scorer("fraud", consumer="bench")
        project.serving.publish("transactions", events)

        def job() -> Any:
            try:
                report = scorer.run(max_events=n, idle_s=10)
                lags = np.array(report.lags_ms)
                return (pa.table({"label_id": [0], "events": [report.events]}),
                        {"per_s": report.per_s, "p50_ms": float(np.percentile(lags, 50)),
                         "p99_ms": float(np.percentile(lags, 99))})
            finally:
                if store == "redis":
                    redis_cleanup(prefix)
                project.close()
                shutil.rmtree(root.parent, ignore_errors=True)
        return job
    return setup


def _floor(data: Path) -> Any:
    import lightgbm as lgb
    import redis

    booster = lgb.Booster(model_file=str(data / "model.txt"))
    prefix = f"clbench:{uuid.uuid4().hex}:"
    client = redis.Redis()
    n = int(EVENTS * min(1.0, max(0.05, _scale(data))))
    rng = np.random.default_rng(9)
    width = booster.num_feature()
    stream, out, group = prefix + "events", prefix + "predictions", "floor"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        row = rng.normal(size=width)
        pipe.xadd(stream, {"e": orjson.dumps({"id": f"live-{i}", "x": row.tolist(),
                                              "t": time.time()})})
    pipe.execute()

    def job() -> Any:
        lags: list[float] = []
        done = 0
        start = time.perf_counter()
        try:
            while done < n:
                reply: Any = client.xreadgroup(group, "floor", {stream: ">"}, count=500,
                                               block=1000)
                if not reply:
                    break
                entries = reply[0][1]
                events = [orjson.loads(fields[b"e"]) for _, fields in entries]
                scores = booster.predict(np.array([e["x"] for e in events]), num_threads=1)
                now = time.time()
                p = client.pipeline(transaction=False)
                for e, s in zip(events, scores.tolist(), strict=True):
                    p.xadd(out, {"p": orjson.dumps({"id": e["id"], "score": s})})
                p.xack(stream, group, *[rid for rid, _ in entries])
                p.execute()
                lags.extend((now - e["t"]) * 1000 for e in events)
                done += len(events)
            seconds = time.perf_counter() - start
            return (pa.table({"label_id": [0], "events": [done]}),
                    {"per_s": done / seconds, "p50_ms": float(np.percentile(lags, 50)),
                     "p99_ms": float(np.percentile(lags, 99))})
        finally:
            client.delete(stream, out)
            client.close()
    return job


def _scale(data: Path) -> float:
    return float(json.loads((data / "done.json").read_text())["scale"])


class _Stream:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite"),
                                         "closedloop-redis": _closedloop("redis"),
                                         "floor": _floor}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = None
    METRIC = "per_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(stream_data)


stream = _Stream
