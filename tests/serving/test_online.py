"""One place serves: the in-process API, the HTTP server and the stream scorer all go through
``OnlineModel`` — every prediction is logged before it is returned and shadowed after, and
the same instance at the same instant gets the same record from each of them."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import closedloop as cl
from closedloop.data.instants import format_instant, instant_micros
from closedloop.serving.online import OnlineModel
from tests.server.test_app import start_server, stop_server
from tests.serving.world import END

SAME = ("model", "time", "version", "route", "unit", "subject", "request", "features", "score",
        "decision", "fallback", "fallback_reason", "missing")


def _records(project: cl.Project, kind: str) -> dict[str, dict[str, Any]]:
    project.prediction_log.flush()
    return {r["id"]: r for r in project.prediction_log.records("fraud") if r["kind"] == kind}


def _shadowed(project: cl.Project, ids: set[str]) -> dict[str, dict[str, Any]]:
    """The shadow records of ``ids``, once they are all in (the shadow runs after)."""
    deadline = time.monotonic() + 120
    while True:
        shadows = {i: r for i, r in _records(project, "shadow").items() if i in ids}
        if len(shadows) == len(ids) or time.monotonic() > deadline:
            return shadows
        time.sleep(0.05)


def test_every_caller_serves_through_the_one_online_model(served_world: Path,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "proj"
    shutil.copytree(served_world, root)
    with (root / "closedloop.toml").open("a") as f:      # one instant for all three callers
        f.write(f'\n[clock]\nat = "{format_instant(instant_micros(END))}"\n')
    with cl.Project(root) as p:
        txns = p.data.read("transactions")
        event = txns.slice(txns.num_rows - 1, 1).drop_columns(["_ingested_at"])
        instance = {k: event[k][0].as_py() for k in ("user_id", "txn_id", "amount", "country")}
        assert isinstance(p.serving.online("fraud"), OnlineModel)

        # 1. in process
        (inproc,) = p.serving.predict("fraud", [instance])
        assert inproc.id in _records(p, "prediction")     # logged before it was returned
        p.serving.shadow.join()

        # 2. over HTTP
        process, port = start_server(root)
        try:
            import http.client
            import json

            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/models/fraud:predict",
                         json.dumps({"instances": [instance]}).encode(),
                         {"content-type": "application/json"})
            response = conn.getresponse()
            body = json.loads(response.read())
            conn.close()
            assert response.status == 200, body
            http_id = body["predictions"][0]["id"]
            assert http_id in _records(p, "prediction")
            assert _shadowed(p, {http_id})       # before the server stops (it drops the rest)
        finally:
            stop_server(process)

        # 3. from the stream (scored before its event is folded in: the source has arrival)
        assert p.serving.publish("transactions", event) == 1
        report = p.serving.scorer("fraud").run(max_events=1, idle_s=60)
        assert report.events == 1
        predictions = _records(p, "prediction")
        (stream_id,) = set(predictions) - {inproc.id, http_id}
        p.serving.shadow.join()

    with cl.Project(root) as again:
        ids = {inproc.id, http_id, stream_id}
        records = _records(again, "prediction")
        first = records[inproc.id]
        for other in (http_id, stream_id):
            assert {k: records[other][k] for k in SAME} == {k: first[k] for k in SAME}, other
        assert first["time"] == instant_micros(END)
        assert first["features"]
        assert not first["fallback"]
        shadows = _shadowed(again, ids)
        assert set(shadows) == ids                # every caller's prediction was shadowed
        assert len({s["score"] for s in shadows.values()}) == 1
        assert all(s["production_score"] == first["score"] for s in shadows.values())
