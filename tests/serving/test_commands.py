"""The serving commands as a user runs them: `closedloop score` (with a resumable progress
bar) and `closedloop budget` (the decomposition against the budget, naming a stage over)."""

from __future__ import annotations

import subprocess
import sys

import closedloop as cl
from tests.serving.world import END


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "closedloop", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_score_and_budget_commands(served: cl.Project) -> None:
    root = str(served.root)
    done = run("score", "risk", "-p", root, "--at", END.isoformat())
    assert done.returncode == 0, done.stderr
    assert "risk version 1: scored" in done.stdout
    user = served.data.read("transactions", ["user_id"])["user_id"][0].as_py()
    assert served.serving.stored_score("risk", user) is not None
    refused = run("score", "fraud", "-p", root)
    assert refused.returncode == 2
    assert "request fields" in refused.stderr
    empty = run("budget", "fraud", "-p", root)
    assert empty.returncode == 0, empty.stderr
    assert "0 predictions" in empty.stdout
    predictor = served.serving.predictor("fraud")
    out = predictor.predict([{"user_id": "u1", "amount": 3.0, "country": "US"}], at=END)
    for record in out.records:                    # a fetch far over its 15 ms budget
        record["latency_ms"] = {**record["latency_ms"], "fetch": 40.0}
    served.prediction_log.append("fraud", out.records).result()
    over = run("budget", "fraud", "-p", root)
    assert over.returncode == 0, over.stderr
    assert "over budget: fetch" in over.stdout
    assert run("budget", "nope", "-p", root).returncode == 2


def test_the_cost_command_prices_what_was_measured(served: cl.Project) -> None:
    root = str(served.root)
    served.serving.score("risk", at=END)
    plain = run("cost", "risk", "-p", root)
    assert plain.returncode == 0, plain.stderr
    assert "set [cost]" in plain.stdout
    config = served.root / "closedloop.toml"
    config.write_text(config.read_text() + "\n[cost]\ncpu_hour = 0.05\ngb_month = 0.02\n")
    priced = run("cost", "-p", root)
    assert priced.returncode == 0, priced.stderr
    assert "USD" in priced.stdout
    assert "day " in priced.stdout                 # risk: batch serving overtakes training
