"""The command line, run as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import closedloop as cl


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "closedloop", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_help_explains_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("init", "apply", "features", "training-set", "backfill", "materialize",
                    "online", "push", "consistency", "demo", "ingest", "quarantine", "train",
                    "reproduce", "runs", "models", "labels", "backfillable"):
        assert command in result.stdout


def test_init_apply_training_set_backfill(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    assert (root / "closedloop.toml").exists()
    assert run("init", str(root)).returncode == 2          # refuses to overwrite
    (root / "definitions.py").write_text('''
import closedloop as cl
user = cl.Entity("user", key="user_id")
src = cl.EventSource("ev", path="data/ev.parquet", timestamp="ts", schema={"x": float})
v = cl.FeatureView("v", entity=user, source=src,
                   aggregations=[cl.Agg("x", "sum", windows=["1h"]),
                                 cl.Agg("x", "count", windows=["1d"])])
''')
    t = datetime(2026, 1, 1, tzinfo=UTC)
    ts = pa.array([t, t], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": ["a", "a"], "ts": ts, "x": [1.0, 2.0]}),
                   root / "data" / "ev.parquet")
    pq.write_table(pa.table({"user_id": ["a", "b"], "t": ts}), tmp_path / "rows.parquet")
    dry = run("apply", "--dry-run", "-p", str(root))
    assert dry.returncode == 0, dry.stderr
    assert "would register 3" in dry.stdout
    applied = run("apply", "-p", str(root))
    assert "registered 3" in applied.stdout
    assert "v" in run("features", "-p", str(root)).stdout
    out = tmp_path / "out.parquet"
    built = run("training-set", str(tmp_path / "rows.parquet"), "-f", "v.x_sum_1h",
                "-o", str(out), "-p", str(root))
    assert built.returncode == 0, built.stderr
    assert pq.read_table(out)["v.x_sum_1h"].to_pylist() == [3.0, 0.0]
    filled = tmp_path / "filled.parquet"
    result = run("backfill", str(out), "-f", "v.x_count_1d", "-o", str(filled), "-p", str(root))
    assert result.returncode == 0, result.stderr
    assert pq.read_table(filled)["v.x_count_1d"].to_pylist() == [2, 0]
    # A changed definition under the same version: the plan shows the conflict and fails.
    text = (root / "definitions.py").read_text()
    (root / "definitions.py").write_text(text.replace('windows=["1h"]', 'windows=["2h"]'))
    conflicted = run("apply", "--dry-run", "-p", str(root))
    assert conflicted.returncode == 2, conflicted.stdout
    assert "conflict" in conflicted.stdout
    assert "apply would refuse it" in conflicted.stderr


def test_errors_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = run("training-set", str(tmp_path / "missing.parquet"), "-f", "v.x", "-o",
                 str(tmp_path / "o.parquet"), "-p", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr
    assert "fix:" in result.stderr


def test_demo_runs_on_the_embedded_defaults(tmp_path: Path) -> None:
    result = run("demo", "--users", "600", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "training set" in result.stdout
    table = pq.read_table(tmp_path / "demo" / "training_set.parquet")
    transactions = pq.read_table(tmp_path / "demo" / "data" / "transactions.parquet")
    # Every transaction ingested once; only those whose 60-day label window closed by the
    # world's end (2026-04-01) are trained on, labelled by their chargebacks.
    assert f"transactions: {transactions.num_rows:,} rows read from 1 file(s): " \
        f"{transactions.num_rows:,} accepted" in result.stdout
    assert "labels chargebacks:" in result.stdout
    assert "still maturing at 2026-04-01 00:00" in result.stdout
    closed = [t for t in transactions["event_time"].to_pylist()
              if t + timedelta(days=60) <= datetime(2026, 4, 1, tzinfo=UTC)]
    assert table.num_rows == len(closed)
    assert "user_txn.amount_sum_1h" in table.column_names
    charged = pq.read_table(tmp_path / "demo" / "data" / "chargebacks.parquet")
    settled = {r["txn_id"] for r in charged.to_pylist()
               if r["settled_at"] <= datetime(2026, 4, 1, tzinfo=UTC) and r["is_fraud"]}
    frauds = {r["txn_id"] for r in table.select(["txn_id", "is_fraud"]).to_pylist()
              if r["is_fraud"]}
    assert frauds == settled & set(table["txn_id"].to_pylist())
    # The model was trained, registered as production, and its run reproduces bit for bit.
    assert "registered as fraud version 1 (production)" in result.stdout
    assert "ladder" in result.stdout
    # A candidate on the profile alone is stopped at the gate; the full feature set climbs
    # the ladder over the live weeks to production, every transition with its evidence.
    assert "version 2, on the profile alone, stopped at gate, rolled_back" in result.stdout
    for move in ("gate -> shadow", "shadow -> canary", "canary -> ab", "ab -> ramp",
                 "ramp -> done promoted"):
        assert f"fraud v3: {move}" in result.stdout
    assert "missed_fraud" in result.stdout                  # the A/B test's evidence
    assert "production is version 3 (previous: 1)" in result.stdout
    assert (tmp_path / "demo" / ".closedloop" / "reports" / "ladder-fraud.html").exists()
    # Then an upstream bug (amounts in cents): quiet before, the alert after two buggy days
    # of three, its fallback playbook run, and the report written.
    watched = result.stdout.split("monitoring (cl.Monitor")[1].split("the project stays")[0]
    days = [line for line in watched.splitlines() if line.startswith("  20")]
    clean = [d for d in days if "(in cents)" not in d]
    buggy = [d for d in days if "(in cents)" in d]
    assert clean
    assert all("alerts: none" in d for d in clean)
    assert "alerts: none" in buggy[0]
    assert "amount feed on v3:amount_vs_usual" in buggy[-1]
    assert "fallback done: traffic to the fallback until released" in watched
    assert "predictions answered by the fallback" in watched
    assert (tmp_path / "demo" / ".closedloop" / "reports" / "monitor-fraud.html").exists()
    # The project stays, and every next command the demo suggests runs in it.
    assert f"the project stays in {tmp_path / 'demo'}" in result.stdout
    suggested = [line.split("#")[0].split() for line in
                 result.stdout.split("next, try:")[1].strip().splitlines()]
    assert ["closedloop", "budget", "fraud"] in suggested
    for command in suggested:
        if command[1] in ("serve", "reproduce") or command[0] == "cd":
            continue                             # a server; reproduce is checked below
        tried = run(*command[1:], cwd=tmp_path / "demo")
        assert tried.returncode == 0, (command, tried.stderr)
    run_id = result.stdout.split("trained run ")[1].split(":")[0]
    (production_run,) = [c[2] for c in suggested if c[1] == "reproduce"]
    again = run("reproduce", production_run, "-p", str(tmp_path / "demo"))
    assert again.returncode == 0, again.stderr
    assert "identical" in again.stdout
    listed = run("runs", "list", "-p", str(tmp_path / "demo"))
    assert run_id in listed.stdout
    shown = run("models", "show", "fraud", "previous", "-p", str(tmp_path / "demo"))
    assert '"version": 1' in shown.stdout
    assert '"training_set_hash"' in shown.stdout
    assert (tmp_path / "demo" / ".closedloop" / "reports" / run_id / "report.html").exists()
    # It served the model over HTTP under simulated traffic, every request answered, and
    # reported the latency against the budget and the cost.
    assert "served over HTTP: 3,000 requests (0 failed)" in result.stdout
    assert "latency budget of fraud: 3,000 predictions" in result.stdout
    assert "serving overtakes" in result.stdout
    demo = str(tmp_path / "demo")
    with cl.Project(tmp_path / "demo") as served:
        assert served.serving.cost("fraud").cpu_s_per_1000["online"] > 0
        logged = [r for r in served.prediction_log.records("fraud")
                  if r["kind"] == "prediction"]
        # The HTTP traffic, then the live weeks the ladder was climbed on (each marked with
        # the ladder's step that routed it), then the live days the monitor watched (replayed:
        # each request carries its own instant).
        http = [r for r in logged if r.get("step") is None
                and "event_time" not in (r.get("request") or {})]
        assert len(http) == 3000
        assert all(r["step"].startswith("L2:") for r in logged if r.get("step"))
    moved = run("models", "alias", "fraud", "canary", "1", "-p", demo)
    assert moved.returncode == 0, moved.stderr
    assert "canary=1" in moved.stdout
    assert "canary" in run("models", "list", "-p", demo).stdout
    missing = run("models", "alias", "fraud", "shadow", "7", "-p", demo)
    assert missing.returncode == 2
    assert "no version 7" in missing.stderr
    same = run("runs", "compare", run_id, run_id, "--all", "-p", demo)
    assert same.returncode == 0, same.stderr
    assert "training_set_hash" in same.stdout


def test_push_then_serve(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    (root / "definitions.py").write_text('''
import closedloop as cl
user = cl.Entity("user", key="user_id")
src = cl.EventSource("ev", path="data/ev.parquet", timestamp="ts", arrival="arr",
                     schema={"user_id": str, "x": float})
v = cl.FeatureView("v", entity=user, source=src, aggregations=[cl.Agg("x", "sum", windows=["30d"])])
''')
    now = datetime.now(UTC)
    stamp = pa.timestamp("us", tz="UTC")
    pq.write_table(pa.table({"user_id": ["a"], "ts": pa.array([now], stamp),
                             "arr": pa.array([now], stamp), "x": [1.0]}),
                   root / "data" / "ev.parquet")
    assert run("materialize", "-p", str(root)).returncode == 0
    events = tmp_path / "events.parquet"
    pq.write_table(pa.table({"user_id": ["a", "a", "b"], "ts": pa.array([now] * 3, stamp),
                             "x": [2.0, 3.0, 5.0]}), events)
    pushed = run("push", "ev", str(events), "--batch", "2", "-p", str(root))
    assert pushed.returncode == 0, pushed.stderr
    assert "pushed 3 events into v@1" in pushed.stdout
    served = run("online", "user_id=a", "-f", "v.x_sum_30d", "-p", str(root))
    assert served.returncode == 0, served.stderr
    assert '"v.x_sum_30d": 6.0' in served.stdout
    bad = run("push", "nope", str(events), "-p", str(root))
    assert bad.returncode == 2
    assert "nope" in bad.stderr


def _project(tmp_path: Path, definitions: str) -> Path:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    (root / "definitions.py").write_text("import closedloop as cl\n" + definitions)
    return root


def test_ingest_prints_the_summary_and_quarantine_shows_the_refused_rows(tmp_path: Path) -> None:
    root = _project(tmp_path, '''
ev = cl.EventSource("ev", path="landing/ev", timestamp="ts", id="id", schema={"x": float})
''')
    (tmp_path / "ev.csv").write_text("id,x,ts\na,1.5,2026-01-01T00:00:00Z\nb,oops,"
                                     "2026-01-01T00:00:00Z\n")
    first = run("ingest", "ev", str(tmp_path / "ev.csv"), "-p", str(root))
    assert first.returncode == 0, first.stderr
    assert "1 accepted, 0 duplicates, 1 quarantined (1 x: not a float64)" in first.stdout
    again = run("ingest", "ev", str(tmp_path / "ev.csv"), "-p", str(root))
    assert "0 accepted, 1 duplicates, 1 quarantined" in again.stdout
    shown = run("quarantine", "ev", "-p", str(root))
    assert shown.returncode == 0
    assert "x: not a float64" in shown.stdout
    assert "oops" in shown.stdout
    bad = run("ingest", "ev", str(tmp_path / "missing.parquet"), "-p", str(root))
    assert bad.returncode == 2
    assert "does not exist" in bad.stderr


def test_labels_and_backfillable_commands(tmp_path: Path) -> None:
    root = _project(tmp_path, '''
user = cl.Entity("user", key="user_id")
ev = cl.EventSource("ev", path="landing/ev", timestamp="ts", id="id",
                    schema={"id": str, "user_id": str, "x": float})
cb = cl.LabelSource("cb", path="landing/cb", subject="id", timestamp="ts", label="bad",
                    settled_at="settled", max_delay="10d", default=False)
v = cl.FeatureView("v", entity=user, source=ev, aggregations=[cl.Agg("x", "sum", windows=["1d"])])
''')
    (tmp_path / "ev.csv").write_text("id,user_id,x,ts\na,u1,1.5,2026-01-01T00:00:00Z\n"
                                     "b,u1,2.5,2026-01-20T00:00:00Z\n")
    assert run("ingest", "ev", str(tmp_path / "ev.csv"), "-p", str(root)).returncode == 0
    (tmp_path / "ann.csv").write_text(
        "id,ts,bad,annotator,annotated_at\n"
        "a,2026-01-01T00:00:00Z,true,ann,2026-01-03T00:00:00Z\n"
        "a,2026-01-01T00:00:00Z,false,bob,2026-01-04T00:00:00Z\n"
        "a,2026-01-01T00:00:00Z,true,cy,2026-01-05T00:00:00Z\n")
    imported = run("labels", "import", "cb", str(tmp_path / "ann.csv"), "--trust", "ann=0.9",
                   "-p", str(root))
    assert imported.returncode == 0, imported.stderr
    assert "1 items resolved by majority" in imported.stdout
    assert "1 accepted" in imported.stdout
    delay = run("labels", "delay", "cb", "--population", "ev", "--at", "2026-01-25T00:00:00Z",
                "-p", str(root))
    assert delay.returncode == 0, delay.stderr
    assert "p50 4.0d" in delay.stdout
    assert "still maturing at 2026-01-25 00:00: 1 of 2 rows" in delay.stdout
    assert "first trainable 2026-02-04" in delay.stdout
    back = run("backfillable", "v.x_sum_1d", "-p", str(root))
    assert back.returncode == 0, back.stderr
    assert "backfillable from the raw sources from 2026-01-01T00:00:00Z" in back.stdout
    bad = run("labels", "import", "cb", str(tmp_path / "ann.csv"), "--trust", "ann", "-p",
              str(root))
    assert bad.returncode == 2


def test_the_demo_folder_is_the_next_free_name(tmp_path: Path) -> None:
    from closedloop.cli.features import _free_folder

    base = tmp_path / "closedloop-demo"
    assert _free_folder(base) == base
    base.mkdir()
    (tmp_path / "closedloop-demo-2").mkdir()
    assert _free_folder(base) == tmp_path / "closedloop-demo-3"


def test_terminal_output_wraps_tables_prices_money_and_keeps_brackets() -> None:
    """Tables fold long cells instead of cutting them; money is never in e-notation; help
    text keeps words in brackets; table cells are not read as markup."""
    from rich.console import Console

    from closedloop.cli import Table
    from closedloop.cli.serving import _money
    from closedloop.cli.training import _cell

    assert _money(6.83e-05, "USD") == "0.0000683 USD"
    assert _money(0.5, "USD") == "0.500 USD"
    assert _money(1234.5, "EUR") == "1,234.50 EUR"
    assert _money(0.0, "USD") == "0.00 USD"
    assert _money(None, "USD") == "-"
    payload = '{"amount": "abc", "note": "' + "x" * 90 + '", "tags": [1, 2]}'
    console = Console(width=60, record=True, color_system=None)
    view = Table("row", "payload")
    view.add_row("3", _cell(payload))
    console.print(view)
    lines = console.export_text().splitlines()
    folded = "".join(line.replace("│", "").replace("┃", "").strip().removeprefix("3").strip()
                     for line in lines[3:] if line.strip() and not line.startswith("└"))
    assert "".join(payload.split()) in "".join(folded.split()), folded     # whole, wrapped
    helped = run("cost", "--help")
    assert "[cost] cpu_hour" in " ".join(helped.stdout.split())
