"""The serving commands as a user runs them: `closedloop score` (with a resumable progress
bar) and `closedloop budget` (the decomposition against the budget, naming a stage over)."""

from __future__ import annotations

import dataclasses
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
    slow = [dataclasses.replace(r, latency_ms={**r.latency_ms, "fetch": 40.0})
            for r in out.records]                 # a fetch far over its 15 ms budget
    served.prediction_log.append("fraud", slow).result()
    definitions = served.root / "definitions.py"
    text = definitions.read_text()
    declared = 'fallback=0.01, budget=cl.Budget(p99_ms=50, fetch_ms=15))'
    definitions.write_text(text.replace("fallback=0.01)", declared))
    over = run("budget", "fraud", "-p", root)
    assert over.returncode == 0, over.stderr
    assert "over budget: fetch" in over.stdout
    # Only a declared stage budget can be over: without one, the stage is reported, not
    # judged, and the whole request's p99 is named when it is over.
    definitions.write_text(text.replace("fallback=0.01)", "fallback=0.01, "
                                        "budget=cl.Budget(p99_ms=20))"))
    undeclared = run("budget", "fraud", "-p", root)
    assert undeclared.returncode == 0, undeclared.stderr
    assert "over budget: total" in undeclared.stdout
    assert "fetch" not in undeclared.stdout.split("over budget:")[1]
    assert "not declared" in undeclared.stdout
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


def _bad_inputs(root: str, rows: str) -> list[list[str]]:
    """Every command, each with a bad instant, a bad path or a bad name where it takes one."""
    bad_instant = [["ingest", "transactions", rows, "--at", "yesterday"],
                   ["labels", "delay", "chargebacks", "--at", "yesterday"],
                   ["train", "fraud", "--cutoff", "yesterday"],
                   ["materialize", "--at", "yesterday"],
                   ["materialize", "--at", "2026-01-01T00:00"],             # no zone
                   ["score", "risk", "--at", "yesterday"],
                   ["online", "user_id=u1", "-f", "user_txn.amount_sum_1h", "--at", "noon"],
                   ["push", "transactions", rows, "--at", "2026-01-01T00:00"],
                   ["serve", "--at", "yesterday"]]
    nowhere = "/nonexistent/closedloop/x.parquet"
    bad_path = [["training-set", nowhere, "-f", "user_txn.amount_sum_1h", "-o", rows + ".o"],
                ["backfill", nowhere, "-f", "user_txn.amount_sum_1h", "-o", rows + ".o"],
                ["ingest", "transactions", nowhere], ["push", "transactions", nowhere],
                ["score", "risk", "--keys", nowhere],
                ["labels", "import", "chargebacks", nowhere],
                ["training-set", root, "-f", "user_txn.amount_sum_1h", "-o", rows + ".o"]]
    bad_name = [["training-set", rows, "-f", "user_txn.nope", "-o", rows + ".o"],
                ["backfill", rows, "-f", "nope.x", "-o", rows + ".o"],
                ["ingest", "nope", rows], ["quarantine", "nope"], ["backfillable", "nope.x"],
                ["train", "nope"], ["reproduce", "nope"], ["materialize", "nope"],
                ["push", "nope", rows], ["online", "user_id=u1", "-f", "nope.x"],
                ["online", "user_id", "-f", "user_txn.amount_sum_1h"],
                ["compact", "nope"], ["budget", "nope"], ["score", "nope"],
                ["stream", "nope"], ["cost", "nope"], ["labels", "delay", "nope"],
                ["labels", "import", "nope", rows], ["runs", "list", "nope"],
                ["runs", "show", "nope"], ["runs", "compare", "nope", "nope2"],
                ["models", "show", "nope"], ["models", "diff", "nope", "1", "2"],
                ["models", "alias", "nope", "production", "1"],
                ["models", "alias", "fraud", "production"], ["serve", "--model", "nope"],
                ["ingest", "transactions", rows, "--format", "xls"]]
    cases = [[*c, "-p", root] for c in bad_instant + bad_path + bad_name]
    # A project folder that is not there, for every command that opens one.
    for command in ("apply", "features", "consistency", "models list", "runs list", "cost",
                    "materialize", "quarantine", "compact"):
        cases.append([*command.split(), "-p", "/nonexistent/closedloop/project"])
    return cases


def test_every_command_refuses_bad_input_with_one_line_and_exit_2(
        served: cl.Project, capsys: object, tmp_path: object) -> None:
    """One handler for every command: a bad instant, path or name ends in the one-line error
    and its fix, exit 2, never a traceback (the commands run in this process, as the console
    script runs them)."""
    import pyarrow.parquet as pq
    import pytest

    from closedloop.cli import app

    rows = str(tmp_path) + "/rows.parquet"                    # type: ignore[operator]
    pq.write_table(served.data.read("transactions").slice(0, 5), rows)
    served.close()
    for args in _bad_inputs(str(served.root), rows):
        with pytest.raises(SystemExit) as exited:
            app(args, prog_name="closedloop")
        out, err = capsys.readouterr()                        # type: ignore[attr-defined]
        assert exited.value.code == 2, (args, out, err)
        assert "Traceback" not in err, (args, err)
        assert "Traceback" not in out, (args, out)
        first = err.strip().splitlines()[0] if err.strip() else ""
        assert first.startswith("error"), (args, err)
    # An error's text is printed as written: no word in brackets is taken for markup.
    with pytest.raises(SystemExit):
        app(["consistency", "-p", str(served.root)], prog_name="closedloop")
    assert "[online] log_sample" in capsys.readouterr()[1]     # type: ignore[attr-defined]
