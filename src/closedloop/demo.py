"""The demo: the main job on the embedded defaults, no server to install.

It writes a fraud project (a simulated world of ``n_users`` users over 90 days), registers its
definitions, ingests the world's exports (transactions, nightly profiles, chargebacks that
settle up to 60 days late) into the offline store, reports the labels' delay, and builds a
point-in-time training set for every transaction whose label window has closed: the features
as they were known at the transaction's own time, the label as known at the cutoff. It trains
and registers the model, materializes the online store, serves vectors in process and checks
them against the offline path, then serves the model over HTTP (``closedloop serve`` on a
free local port), drives simulated traffic at it, and measures the latency decomposition
against the budget and the cost.

Then the loop closes: the world runs two weeks past its history, and those weeks are the
live traffic. The first model reads only the slow features (a month's spending, the
profile); the demo trains two more versions and promotes each up the declared ladder
(``cl.Ladder`` in the definitions): one that reads the profile alone is stopped at the
offline gate and rolled back; the full feature set passes the gate, then climbs — shadow,
canary, A/B test on the business's metrics, ramp — over the live weeks replayed through the
serving path (``closedloop.sim.traffic.Replay``; their chargebacks fast-forwarded, as if the
60 days had passed), and becomes production. Each transition is printed with its evidence,
and the ladder report is written beside the evaluation report.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.data.clock import Clock
from closedloop.data.ingest import IngestReport
from closedloop.data.labels import DelayReport, MaturityReport
from closedloop.errors import ServingError
from closedloop.features.consistency import FeatureConsistency
from closedloop.features.materialize import Progress
from closedloop.features.registration import Plan
from closedloop.project import Project
from closedloop.serving.budget import BudgetReport
from closedloop.serving.evidence import summarize
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import (
    EXPORTS,
    FEATURES,
    LIVE,
    SLOW_FEATURES,
    with_features,
    write_fraud_project,
)
from closedloop.sim.traffic import Replay

#: The demo's world: many compromised cards, so two weeks hold enough fraud to decide on.
COMPROMISED = 0.25
LIVE_DAYS = 18
#: The candidate stopped at the gate: it reads the profile alone.
PROFILE_ONLY = ["user_profile.lifetime_spend", "user_profile.account_age_days"]


@dataclass(frozen=True)
class LadderDemo:
    """The ladder part of the demo: the worse candidate and why it stopped, the better one
    and every transition it made (with its evidence), the live requests served, the report."""

    worse: int
    worse_step: str
    worse_reasons: tuple[str, ...]
    better: int
    transitions: tuple[tuple[str, str], ...]        # (the move, its evidence)
    served: int
    production: int
    previous: int | None
    report: Path
    seconds: float
    run_id: str = ""                                 # the better candidate's run
    served_until: Any = None                         # the last live request served's time


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
    http_requests: int = 0
    http_failed: int = 0
    http_per_s: float = 0.0
    budget: BudgetReport | None = None
    cost: Any = None
    ladder: LadderDemo | None = None
    monitoring: MonitorDemo | None = None

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
    write_fraud_project(root, n_users=n_users, seed=seed, live_days=LIVE_DAYS,
                        compromised_share=COMPROMISED, ladder=True)
    definitions = root / "definitions.py"           # the first model: the slow features
    full = definitions.read_text()
    definitions.write_text(with_features(full, SLOW_FEATURES))
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
        say(f"serving over HTTP: {HTTP_REQUESTS:,} requests from {HTTP_CLIENTS} clients")
        sent, failed, per_s = drive_http(root, _requests(txns, HTTP_REQUESTS))
        budget = project.serving.budget("fraud")
        cost = project.serving.cost("fraud", PRICES)
    ladder = climb_ladder(root, full, end, say)
    monitoring = watch_for_drift(root, end, ladder.served_until, say)
    return DemoReport(root, plan, table.num_rows, t1 - t0, t3 - t2, table, output,
                      sum(r.entities for r in materialized), len(last),
                      statistics.median(timings) if timings else 0.0, tuple(report),
                      tuple(ingests), delay, maturity, run.id, run.record["metrics"],
                      run.record["seconds"], version.version, reports / "report.html",
                      sent, failed, per_s, budget, cost, ladder, monitoring)


def climb_ladder(root: Path, full: str, end: Any, say: Any) -> LadderDemo:
    """The demo's ladder (see module): a worse candidate stopped at the gate, then the full
    feature set driven up the ladder over the live weeks."""
    start = time.perf_counter()
    definitions = root / "definitions.py"
    say("the ladder: training a candidate on the profile alone")
    definitions.write_text(with_features(full, PROFILE_ONLY))
    with Project(root) as project:
        run = project.training.train("fraud", cutoff=end, baseline=project.registry.baseline)
        worse = project.registry.register(run.id).version
        stopped = project.ladder.promote("fraud", worse, actor="demo")
        reasons = tuple(project.ladder.history("fraud")[-1].evidence.get("reasons", []))
    say("the ladder: training a candidate on the full feature set")
    definitions.write_text(full)
    later = end + timedelta(days=LIVE_DAYS + 61)
    clock = Clock.of(later, replay=True, field="event_time")
    transitions: list[tuple[str, str]] = []
    with Project(root, clock=clock) as project:
        run = project.training.train("fraud", cutoff=end, baseline=project.registry.baseline)
        better = project.registry.register(run.id).version
        better_run = run.id
        # The live weeks' chargebacks, as they will have settled 60 days on.
        project.data.ingest("chargebacks", root / "data" / LIVE / "chargebacks.parquet",
                            at=later)
        project.ladder.promote("fraud", better, actor="demo")
        for event in project.ladder.history("fraud")[-2:]:
            if event.candidate == better and event.action == "advance":
                transitions.append((f"fraud v{better}: gate -> {event.to_step}",
                                    summarize("gate", event.evidence.get("figures", {}))))
        replay = Replay(project, since=end)
        while replay.left:
            record = project.ladder.status("fraud")
            if record is None or record.status != "running":
                break
            say(f"the ladder: v{better} at {record.step}, {replay.sent:,} live requests served")
            replay.serve(500)
            for moved in project.ladder.tick():
                if moved.moved:
                    transitions.append((moved.describe(), moved.evidence_line()))
        aliases = project.registry.aliases("fraud")
        page = project.ladder.report("fraud")
    target = root / ".closedloop" / "reports" / "ladder-fraud.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page)
    return LadderDemo(worse, f"{stopped.step}, {stopped.status}", reasons, better,
                      tuple(transitions), replay.sent, aliases["production"],
                      aliases.get("previous"), target, time.perf_counter() - start,
                      better_run, None if not replay.sent else
                      replay.requests["event_time"][replay.sent - 1].as_py())


@dataclass(frozen=True)
class MonitorDemo:
    """The monitoring part of the demo: the live days served after the ladder, the day the
    upstream bug began, each day's monitor run (its alerts and actions), the report."""

    days: tuple[tuple[str, int, tuple[str, ...], tuple[str, ...]], ...]  # day, requests,
    bug_from: str | None                                                 # alerts, actions
    report: Path | None
    fallback_served: int = 0          # predictions the fallback answered after the playbook
    note: str = ""


def watch_for_drift(root: Path, end: Any, after: Any, say: Any) -> MonitorDemo:
    """The live days the ladder left, one by one through the serving path: the first as it
    happened, then with the amount sent in cents (an upstream unit change). The monitor runs
    at each day's end (``project.monitoring.run``); its drift alert's playbook switches the
    model to its fallback, and the report is written as a page."""
    later = end + timedelta(days=LIVE_DAYS + 61)
    days: list[tuple[str, int, tuple[str, ...], tuple[str, ...]]] = []
    with Project(root, clock=Clock.of(later, replay=True, field="event_time")) as project:
        if after is None:
            return MonitorDemo((), None, None, note="the ladder served no live traffic")
        replay = Replay(project, since=after + timedelta(microseconds=1))
        times = replay.requests["event_time"]
        if replay.left == 0:
            return MonitorDemo((), None, None, note="the ladder used every live day")
        first = times[0].as_py()
        start = first.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        bug = start + timedelta(days=1)          # one whole day as it happened, then the bug
        cents = pc.greater_equal(times, pa.scalar(bug, times.type))
        i = replay.requests.column_names.index("amount")
        replay.requests = replay.requests.set_column(i, "amount", pc.if_else(
            cents, pc.multiply(replay.requests["amount"], 100.0), replay.requests["amount"]))
        report = None
        day = start
        fallback = 0
        while replay.left:
            upto = pc.sum(pc.less(times, pa.scalar(day, times.type))).as_py() - replay.sent
            say(f"monitoring: serving the live day to {day:%Y-%m-%d}"
                + (" (amounts in cents)" if day > bug else ""))
            if upto > 0:
                replay.serve(upto, batch=50)
            report = project.monitoring.run("fraud", at=day)
            days.append((f"{day - timedelta(days=1):%Y-%m-%d}", upto,
                         tuple(f"{f.alert.name} on {f.subject}" for f in report.firing),
                         tuple(f"{a.playbook} {a.status}: {a.outcome}"
                               for a in report.actions)))
            if any(a.playbook == "fallback" and a.status == "done" for a in report.actions):
                left = min(replay.left, 200)      # a little traffic after: the fallback's
                replay.serve(left, batch=50)
                served = project.serving.predictions("fraud", labels=False, shadows=False,
                                                     columns=["fallback_reason"])
                fallback = sum(1 for r in served["fallback_reason"].to_pylist()
                               if r and r.startswith("forced:"))
                break
            day += timedelta(days=1)
        target = root / ".closedloop" / "reports" / "monitor-fraud.html"
        if report is not None:
            from closedloop.monitoring.report import to_html

            target.write_text(to_html(report))
    return MonitorDemo(tuple(days), f"{bug:%Y-%m-%d}", target if report else None, fallback)


HTTP_REQUESTS, HTTP_CLIENTS = 3000, 8
#: An illustrative price sheet for the demo's cost report (a cloud vCPU-hour, object storage).
PRICES = {"cpu_hour": 0.04, "gb_month": 0.023, "currency": "USD"}


def _requests(txns: pa.Table, n: int) -> list[bytes]:
    """Simulated traffic: transactions of the world replayed as prediction requests."""
    rows = txns.slice(0, n).to_pylist()
    return [json.dumps({"instances": [{"user_id": r["user_id"], "txn_id": f"live-{r['txn_id']}",
                                       "amount": r["amount"], "country": r["country"]}]}).encode()
            for r in rows]


def drive_http(root: Path, bodies: list[bytes], clients: int = HTTP_CLIENTS,
               ) -> tuple[int, int, float]:
    """Start ``closedloop serve`` on a free port, send ``bodies`` from ``clients`` keep-alive
    connections, stop the server; (requests, failed, requests per second)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    server = subprocess.Popen([sys.executable, "-m", "closedloop", "serve", "-p", str(root),
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, server)
        failed = [0] * clients

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                for body in bodies[k::clients]:
                    conn.request("POST", "/v1/models/fraud:predict", body=body,
                                 headers={"content-type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    failed[k] += response.status != 200
            finally:
                conn.close()

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    finally:
        server.send_signal(signal.SIGTERM)         # the server logs its usage as it stops
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return len(bodies), sum(failed), len(bodies) / seconds


def _wait_ready(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServingError(f"the demo server exited with {server.returncode}",
                               fix="run `closedloop serve` in the demo folder to see why")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise ServingError("the demo server did not become ready within 60 s",
                       fix="run `closedloop serve` in the demo folder to see why")


def _last_per_user(txns: pa.Table, limit: int) -> list[dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for row in txns.select(["user_id", "event_time", "amount", "country"]).to_pylist():
        seen = latest.get(row["user_id"])
        if seen is None or row["event_time"] > seen["event_time"]:
            latest[row["user_id"]] = row
    return [{"user_id": r["user_id"], "amount": r["amount"], "country": r["country"]}
            for r in list(latest.values())[:limit]]
