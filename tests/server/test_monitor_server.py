"""The monitor inside a running server: the alert fires on its schedule, its fallback playbook
reaches the serving workers, the metrics and the audit show it, and a release brings the
model back (the constraints checked on every request: tests/server/test_app.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import closedloop as cl
from tests.monitoring.world import DAY0
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
