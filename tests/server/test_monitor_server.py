"""The monitor inside a running server: the alert fires on its schedule and each playbook acts —
the fallback reaches the serving workers (and a release brings the model back); the rollback
moves production back and the workers serve the previous version; the webhook is called;
the freeze leaves the windows out of the next training run — and the metrics and the audit
show it. The server's drift counts reach the monitor store, and the monitor merges them.
(The constraints checked on every request: tests/server/test_app.py.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import closedloop as cl
from tests.monitoring.world import DAY0, FAST, LATER, LIVE, webhook
from tests.server.test_app import INSTANCE, Server, start_server, stop_server
from tests.serving.test_stream import _wait_for

AT = DAY0 + timedelta(days=5)


@pytest.fixture
def monitored_server(monitored_world: Path, tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "proj"
    shutil.copytree(monitored_world, root)
    process, port = start_server(root, "--at", AT.isoformat())
    with cl.Project(root) as project:
        yield Server(port, project, process)
    stop_server(process)


def _metrics(server: Server) -> str:
    return server.request("GET", "/metrics")[2].decode()


def test_the_servers_monitor_falls_back_and_a_release_restores(
        monitored_server: Server) -> None:
    instance = {**INSTANCE, "event_time": AT.isoformat()}

    def fallen_back() -> bool:
        status, body = monitored_server.predict([instance])
        assert status == 200, body
        return bool(body["predictions"][0]["fallback"])
    _wait_for(lambda: fallen_back() or None, "the fallback playbook reaching the worker",
              120.0)
    (action,) = [a for a in monitored_server.project.monitoring.audit("fraud")
                 if a.playbook == "fallback"]
    assert action.status == "done"
    assert action.actor.startswith("monitor (serve-")
    assert action.evidence["column"] == "amount_vs_usual"
    text = _metrics(monitored_server)
    firing = next(li for li in text.splitlines()
                  if li.startswith('closedloop_alerts_firing{alert="amount feed",model="fraud"}'))
    assert float(firing.split()[-1]) >= 1              # the subjects it holds on
    assert ('closedloop_monitor_actions_total{model="fraud",playbook="fallback",status="done"} '
            '1.0') in text
    assert 'closedloop_drift_alert{column="amount_vs_usual",model="fraud",version="1"} 1.0' in text
    monitored_server.project.monitoring.release("fraud", action.id)
    _wait_for(lambda: (not fallen_back()) or None, "the release reaching the worker", 120.0)


PLAYBOOKS = """
monitor = cl.Monitor("fraud", window="1d", persistence=(2, 3), alerts=[
    cl.Alert("amount feed: rollback", on="drift", columns=["amount_vs_usual"],
             playbook=cl.Rollback()),
    cl.Alert("amount feed: notify", on="drift", columns=["amount_vs_usual"],
             playbook=cl.Notify("{url}")),
    cl.Alert("amount feed: freeze", on="drift", columns=["amount_vs_usual"],
             playbook=cl.FreezeTraining()),
])
"""


def test_rollback_notify_and_freeze_act_from_the_server(monitored_world: Path,
                                                        tmp_path: Path) -> None:
    root = tmp_path / "proj"
    shutil.copytree(monitored_world, root)
    with cl.Project(root) as project:                 # a second version in production
        assert FAST in (root / "definitions.py").read_text()
        second = project.registry.register(project.training.train("fraud", cutoff=DAY0).id)
        project.registry.set_alias("fraud", "production", second.version)
    with webhook() as (url, got):
        definitions = root / "definitions.py"
        definitions.write_text(definitions.read_text() + PLAYBOOKS.replace("{url}", url))
        process, port = start_server(root, "--at", AT.isoformat())
        try:
            with cl.Project(root) as project:
                server = Server(port, project, process)
                instance = {**INSTANCE, "event_time": AT.isoformat()}

                def version() -> int:
                    status, body = server.predict([instance])
                    assert status == 200, body
                    return int(body["predictions"][0]["version"])
                _wait_for(lambda: version() == 1 or None,
                          "the rollback reaching the worker (v2 back to v1)", 120.0)
                _wait_for(lambda: got or None, "the webhook called", 60.0)
                actions = {a.playbook: a for a in project.monitoring.audit("fraud")}
                assert set(actions) == {"rollback", "notify", "freeze_training"}
                assert all(a.status == "done" for a in actions.values()), actions
                assert all(a.actor.startswith("monitor (serve-") for a in actions.values())
                assert actions["rollback"].outcome.startswith("rolled back: production is "
                                                              "version 1")
                assert project.registry.aliases("fraud")["production"] == 1
                assert got[0]["alert"] == "amount feed: notify"
                assert got[0]["evidence"]["column"] == "amount_vs_usual"
                assert actions["notify"].outcome == f"notified {url}: HTTP 204"
                text = _metrics(server)
                for playbook in ("rollback", "notify", "freeze_training"):
                    assert (f'closedloop_monitor_actions_total{{model="fraud",playbook='
                            f'"{playbook}",status="done"}} 1.0') in text
                # The freeze: the next training run leaves the alert's windows out.
                ((start, end),) = project.monitoring.frozen("fraud")
                project.data.ingest("transactions", root / "data" / LIVE /
                                    "transactions.parquet", at=LATER)
                run = project.training.train("fraud", cutoff=LATER)
                maturity = run.record["lineage"]["maturity"]
                assert maturity["excluded_windows"] == [[start, end]]
                assert maturity["excluded_rows"] > 1000
        finally:
            stop_server(process)


def test_the_server_publishes_its_counts_and_the_monitor_merges_them(
        monitored_world: Path, tmp_path: Path) -> None:
    """What the worker counted on the request path reaches the monitor store, and the
    monitor takes the window it served from those counts ("counts"), agreeing with the log.
    The server serves a day after the replayed ones, so its window holds its rows alone."""
    root = tmp_path / "proj"
    shutil.copytree(monitored_world, root)
    definitions = root / "definitions.py"
    definitions.write_text(definitions.read_text() + (
        '\nmonitor = cl.Monitor("fraud", window="1d", slices=["country"])\n'))
    later = DAY0 + timedelta(days=7)
    day = 86_400_000_000
    start = int(later.timestamp() * 1e6)
    process, port = start_server(root, "--at", later.isoformat())
    try:
        with cl.Project(root) as project:
            server = Server(port, project, process)
            for i, country in enumerate(["FR", "US", "DE"] * 7):
                status, body = server.predict([{**INSTANCE, "txn_id": f"t-count-{i}",
                                                "country": country,
                                                "event_time": later.isoformat()}])
                assert status == 200, body
                assert not body["predictions"][0]["fallback"]

            def published() -> bool | None:
                found = project.monitoring.store.window_states("fraud", 1, [start])
                return sum(d["counts"]["rows"] for d in found.get(start, [])) == 21 or None
            _wait_for(published, "the worker's counts in the monitor store", 120.0)
            report = project.monitoring.check("fraud", at=later + timedelta(days=1))
            last = report.versions[0].windows[-1]
            assert (last.start, last.end, last.source) == (start, start + day, "counts")
            assert last.drift is not None
            assert last.drift.rows == 21
            assert set(last.slices) == {"country=FR", "country=US", "country=DE"}
    finally:
        stop_server(process)
