"""The demo: the main job on the embedded defaults, no server.

It writes a fraud project (a simulated world of ``n_users`` users over 90 days), registers its
definitions, ingests the world's exports (transactions, nightly profiles, chargebacks that
settle up to 60 days late) into the offline store, reports the labels' delay, and builds a
point-in-time training set for every transaction whose label window has closed: the features
as they were known at the transaction's own time, the label as known at the cutoff.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.data.ingest import IngestReport
from closedloop.data.labels import DelayReport, MaturityReport
from closedloop.features.consistency import FeatureConsistency
from closedloop.features.materialize import Progress
from closedloop.features.registration import Plan
from closedloop.project import Project
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, FEATURES, write_fraud_project


@dataclass(frozen=True)
class DemoReport:
    folder: Path
    plan: Plan
    rows: int
    seconds_world: float
    seconds_training_set: float
    training_set: pa.Table
    output: Path
    materialized: int = 0
    served: int = 0
    seconds_online_p50: float = 0.0
    consistency: tuple[FeatureConsistency, ...] = ()
    ingests: tuple[IngestReport, ...] = ()
    delay: DelayReport | None = None
    maturity: MaturityReport | None = None
    run_id: str = ""
    run_metrics: dict[str, Any] | None = None
    run_seconds: dict[str, float] | None = None
    version: int = 0
    report: Path | None = None

    def feature_summary(self) -> list[tuple[str, float, float, float]]:
        """Per feature: share missing, mean on fraud rows, mean on legitimate rows."""
        fraud = self.training_set["is_fraud"]
        out = []
        for name in FEATURES:
            col = pc.cast(self.training_set[name], pa.float64())
            missing = col.null_count / max(len(col), 1)
            on_fraud = pc.mean(pc.filter(col, fraud)).as_py()
            on_legit = pc.mean(pc.filter(col, pc.invert(fraud))).as_py()
            out.append((name, missing, on_fraud or 0.0, on_legit or 0.0))
        return out


def run_demo(folder: str | Path, *, n_users: int = 2000, seed: int = 0,
             progress: Progress | None = None) -> DemoReport:
    """Write the fraud project, apply it, build the training set; report what was done.

    The demo has four steps (world, apply, read, training set); the training set reports its
    own steps through ``progress`` too.
    """
    def say(text: str) -> None:
        if progress:
            progress(0, 1, text)
    root = Path(folder)
    t0 = time.perf_counter()
    say(f"generating the fraud world: {n_users} users, 90 days")
    write_fraud_project(root, n_users=n_users, seed=seed)
    t1 = time.perf_counter()
    end = FraudWorld(n_users=n_users, seed=seed).end
    with Project(root) as project:
        say("registering definitions")
        plan = project.apply()
        ingests = []
        for source, export in EXPORTS.items():
            say(f"ingesting data/{export} into {source}")
            ingests.append(project.data.ingest(source, root / "data" / export, at=end))
        delay = project.data.label_delay("chargebacks", population="transactions", at=end)
        txns = project.data.read("transactions", ["txn_id", "user_id", "event_time", "amount",
                                                  "country"]).sort_by("txn_id")
        rows, maturity = project.data.matured(txns, "chargebacks", cutoff=end)
        say(f"building the training set: {rows.num_rows} rows x {len(FEATURES)} features")
        t2 = time.perf_counter()
        table = project.features.training_set(rows, FEATURES, timestamp="event_time",
                                               progress=progress)
        t3 = time.perf_counter()
        output = root / "training_set.parquet"
        pq.write_table(table, output)
        # Train the declared model on the same matured rows, register it, make it production.
        say("training the fraud model (LightGBM), evaluating on the latest 20% by time")
        run = project.training.train("fraud", cutoff=end, baseline=project.registry.baseline)
        version = project.registry.register(run.id)
        project.registry.set_alias("fraud", "production", version.version)
        reports = root / ".closedloop" / "reports" / run.id
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "report.json").write_text(run.report.to_json())
        (reports / "report.html").write_text(run.report.to_html())
        # Serve: materialize the world as of its last instant, then answer requests for a
        # sample of users (their last transaction's amount and country as the request).
        say(f"materializing the online store as of {end:%Y-%m-%d %H:%M}")
        materialized = project.features.materialize(at=end)
        last = _last_per_user(txns, limit=500)
        say(f"serving {len(last)} online vectors")
        timings = []
        for row in last:
            s = time.perf_counter()
            project.features.online(row, FEATURES, at=end)
            timings.append(time.perf_counter() - s)
        say("replaying the served vectors offline")
        report = project.features.consistency()
    return DemoReport(root, plan, table.num_rows, t1 - t0, t3 - t2, table, output,
                      sum(r.entities for r in materialized), len(last),
                      statistics.median(timings) if timings else 0.0, tuple(report),
                      tuple(ingests), delay, maturity, run.id, run.record["metrics"],
                      run.record["seconds"], version.version, reports / "report.html")


def _last_per_user(txns: pa.Table, limit: int) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for row in txns.select(["user_id", "event_time", "amount", "country"]).to_pylist():
        seen = latest.get(row["user_id"])
        if seen is None or row["event_time"] > seen["event_time"]:
            latest[row["user_id"]] = row
    return [{"user_id": r["user_id"], "amount": r["amount"], "country": r["country"]}
            for r in list(latest.values())[:limit]]
