"""A monitored fraud project: 90 days of history (trained on, materialized), then six live
days replayed through the serving path — three as they happened, three with an upstream bug
in the requests (amounts sent in cents: a unit change) — built once per session and copied
per test."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import closedloop as cl
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import EXPORTS, LIVE, write_fraud_project
from closedloop.sim.fraud_project import SERVING as DEMO_SERVING
from closedloop.sim.traffic import Replay

DAY0 = FraudWorld().end                   # the history's end: the live days follow
DAYS = 6
BATCH = 10                                # requests per push-then-serve step
LATER = DAY0 + timedelta(days=DAYS + 61)  # every live chargeback settled
SMALL = ("trainer=cl.LightGBMTrainer(num_boost_round=150, learning_rate=0.05, num_leaves=15, "
         "seed=7)")
FAST = "trainer=cl.LightGBMTrainer(num_boost_round=40, learning_rate=0.1, num_leaves=15, seed=7)"
MONITOR = '''

serving = cl.Serving("fraud", unit="user_id", subject="txn_id",
                     decisions=[("block", 0.5), ("review", 0.1)], default_decision="allow",
                     fallback=0.01)
monitor = cl.Monitor("fraud", window="1d", persistence=(2, 3), slices=["country"],
                     min_slice_size=100, alerts=[
                         cl.Alert("amount feed", on="drift", columns=["amount_vs_usual"],
                                  playbook=cl.Fallback()),
                         cl.Alert("amount feed: freeze", on="drift",
                                  columns=["amount_vs_usual"],
                                  playbook=cl.FreezeTraining(approval=True)),
                     ])
'''


def in_cents(rows: pa.Table) -> pa.Table:
    """The upstream bug: the amount sent in cents."""
    i = rows.column_names.index("amount")
    return rows.set_column(i, "amount", pc.multiply(rows["amount"], 100.0))


def serve_days(project: cl.Project, days: int, *, since: int = 0, bug: bool = False) -> int:
    """Replay live days ``since`` .. ``since + days`` (the requests of those days only)."""
    replay = Replay(project, since=DAY0 + timedelta(days=since))
    stop = pa.scalar(DAY0 + timedelta(days=since + days), replay.requests["event_time"].type)
    replay.requests = replay.requests.filter(pc.less(replay.requests["event_time"], stop))
    if bug:
        replay.requests = in_cents(replay.requests)
    return replay.serve(replay.left, batch=BATCH)


@pytest.fixture(scope="session")
def monitored_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_fraud_project(tmp_path_factory.mktemp("monitoring") / "proj", n_users=600,
                               seed=4, live_days=DAYS, compromised_share=0.25)
    # Profiles change rarely: served without a TTL, so live traffic is served as trained.
    text = (root / "definitions.py").read_text().replace(SMALL, FAST).replace(
        DEMO_SERVING, "").replace(', ttl="2d"', "") + MONITOR
    (root / "definitions.py").write_text(text)
    with cl.Project(root) as p:
        p.apply()
        for source, export in EXPORTS.items():
            p.data.ingest(source, root / "data" / export, at=DAY0)
        run = p.training.train("fraud", cutoff=DAY0)
        p.registry.set_alias("fraud", "production", p.registry.register(run.id).version)
        p.features.materialize(at=DAY0)
        p.data.ingest("chargebacks", root / "data" / LIVE / "chargebacks.parquet", at=LATER)
    config = (root / "closedloop.toml").read_text()
    (root / "closedloop.toml").write_text(config + f'\n[clock]\nat = "{LATER.isoformat()}"\n'
                                          'replay = true\nfield = "event_time"\n')
    with cl.Project(root) as p:
        serve_days(p, 3)
        serve_days(p, 3, since=3, bug=True)
    return root


@pytest.fixture
def monitored(monitored_world: Path, tmp_path: Path) -> Iterator[cl.Project]:
    root = tmp_path / "proj"
    shutil.copytree(monitored_world, root)
    with cl.Project(root) as p:
        yield p


@contextmanager
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP webhook on loopback: its URL, and the JSON bodies POSTed to it."""
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()
