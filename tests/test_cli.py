"""The command line, run as a user runs it: a real subprocess of the installed console script."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "closedloop", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


def test_help_explains_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("init", "apply", "features", "training-set", "backfill", "materialize",
                    "online", "push", "consistency", "demo", "ingest", "quarantine"):
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


def test_errors_are_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = run("training-set", str(tmp_path / "missing.parquet"), "-f", "v.x", "-o",
                 str(tmp_path / "o.parquet"), "-p", str(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr
    assert "fix:" in result.stderr


def test_demo_runs_on_the_embedded_defaults(tmp_path: Path) -> None:
    result = run("demo", "--users", "150", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "training set" in result.stdout
    table = pq.read_table(tmp_path / "demo" / "training_set.parquet")
    transactions = pq.read_table(tmp_path / "demo" / "data" / "transactions.parquet")
    assert table.num_rows == transactions.num_rows
    assert "user_txn.amount_sum_1h" in table.column_names


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


def test_ingest_prints_the_summary_and_quarantine_shows_the_refused_rows(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    (root / "definitions.py").write_text('''
import closedloop as cl
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
