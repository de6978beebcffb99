"""Workload `ladder`: serving at concurrency 16 (``closedloop serve``, SQLite online store, as
the `serve` workload) while a promotion ladder holds the traffic, then a rollback under load.

The `serve` workload's project and model, with a second version of the model registered
(the same trees under a new version number: what is measured is the ladder, not the model).

* ``closedloop``: the server with no ladder: wrk at c16 for ``SERVE_SECONDS`` (20).
* ``closedloop-ladder``: the same server, the model declared with a ladder and the candidate
  promoted into it (no gate or shadow: its canary holds half the units): every request
  is routed by the ladder's own hash, half are served by the candidate, each record carries
  the step; the worker polls the ladder every ``[serving] reload_s``. wrk at c16 for
  ``SERVE_SECONDS``; then a second wrk run during which the ladder is rolled back:
  ``rollback_s`` is the time from the command to the last request answered by the candidate
  (from the prediction log), and ``errors`` counts every failed request of both runs.
The baseline the ratio is taken against is ``closedloop`` (``FLOOR``): ``closedloop-ladder``
/ ``closedloop`` is the throughput kept with a ladder active (the target: at least 0.95).

Figures: ``per_s``, ``p50_ms``, ``p99_ms``, ``errors``; ``rollback_s`` on the ladder row.
Outputs compared: the scores of 200 users, requested one by one after the load (the
candidate scores as production does, so a ladder changes no score).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import closedloop as cl
from benchmarks.data import private_project
from benchmarks.serve import (
    OUTPUTS,
    ROOT,
    _free_port,
    _scores,
    _stop,
    _wait_ready,
    _wrk,
    serve_data,
)

PATH = "/v1/models/bench:predict"
LADDER = '''
ladder = cl.Ladder("bench", gate=None, shadow=None, ab=None,
                   canary=cl.Canary(share=0.5), ramp=cl.Ramp(steps=(1.0,)))
'''
ROLLBACK_AFTER_S = 3.0


def _candidate(root: Path) -> int:
    """A second version of the model: production's bundle under a new version number."""
    with cl.Project(root) as p:
        version = p.registry.version("bench", "production")
        manifest = dict(version.manifest)
        manifest["copied_from"] = version.version          # a new bundle, the same trees
        bundle = p.artefacts.put(json.dumps(manifest, sort_keys=True).encode())
        run = p.registry.training.run(version.run_id)
        run_id = f"{run.id}-candidate"
        p.metadata.start_run(run_id, "bench", {**run.record, "bundle": bundle})
        p.metadata.end_run(run_id, "finished", {**run.record, "bundle": bundle})
        number = p.registry.register(run_id).version
        p.features.materialize()
    return number


def _server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "closedloop", "serve", "-p", str(root), "--port", str(port),
         "--workers", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(port, process, "/readyz")
    return process, port


def _plain(data: Path) -> Any:
    root = private_project(data, "ladder")
    _candidate(root)
    process, port = _server(root)
    users = json.loads((data / "done.json").read_text())["users"]

    def job() -> Any:
        try:
            run = _wrk(port, PATH, users, 16)
            return _scores(port, PATH), {"runs": [run]}
        finally:
            _stop(process)
            shutil.rmtree(root.parent, ignore_errors=True)
    return job


def _laddered(data: Path) -> Any:
    root = private_project(data, "ladder")
    config = root / "closedloop.toml"            # the benchmark moves the ladder itself
    text = config.read_text()
    config.write_text(text.replace('controller = "serve"', 'controller = "separate"')
                      if 'controller = "serve"' in text
                      else text + '\n[ladder]\ncontroller = "separate"\n')
    candidate = _candidate(root)
    definitions = root / "definitions.py"
    definitions.write_text(definitions.read_text() + LADDER)
    with cl.Project(root) as p:
        p.ladder.promote("bench", candidate, actor="benchmark")
        record = p.ladder.status("bench")
        if record is None or record.step != "canary":
            raise RuntimeError(f"the ladder did not start at its canary: {record}")
    process, port = _server(root)
    users = json.loads((data / "done.json").read_text())["users"]

    def job() -> Any:
        try:
            run = _wrk(port, PATH, users, 16)
            # Under load again, roll the ladder back; time to the candidate's last answer.
            commanded: list[float] = []

            def roll() -> None:
                time.sleep(ROLLBACK_AFTER_S)      # mid-run: the load is steady by then
                with cl.Project(root) as p:
                    commanded.append(time.time())
                    p.ladder.rollback("bench", actor="benchmark", reason="benchmark")
            thread = threading.Thread(target=roll)
            thread.start()
            after = _wrk(port, PATH, users, 16)
            thread.join()
            scores = _scores(port, PATH)
            with cl.Project(root) as p:
                p.prediction_log.flush()
                last = max((r["time"] for r in p.prediction_log.records("bench")
                            if r.get("kind") == "prediction" and r["version"] == candidate),
                           default=0)
            rollback_s = max(0.0, last / 1e6 - commanded[0])
            figures = {**run, "errors": run["errors"] + after["errors"],
                       "rollback_s": rollback_s}
            return scores, {"runs": [figures]}
        finally:
            _stop(process)
            shutil.rmtree(root.parent, ignore_errors=True)
    return job


class _Ladder:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop": _plain, "closedloop-ladder": _laddered}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    FLOOR = "closedloop"
    ANCHOR = None
    METRIC = "per_s"
    HIGHER_IS_BETTER = True
    OUTPUTS = OUTPUTS
    DATA = staticmethod(serve_data)


ladder = _Ladder
