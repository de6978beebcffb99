"""The benchmark harness at a tiny scale: it runs, prints the promised JSON, and closedloop
agrees with the hand-written floor cell for cell (speed itself is measured, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_json_and_zero_mismatches() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "pit", "windows", "ingest", "batch-score", "ab",
         "--scale", "0.02",
         "--repeat", "1", "--systems", "closedloop", "closedloop-sqlite", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    seen = {(r["workload"], r["system"]) for r in lines}
    assert seen == {("pit", "closedloop"), ("pit", "floor"), ("windows", "closedloop"),
                    ("windows", "floor"), ("ingest", "closedloop"), ("ingest", "floor"),
                    ("batch-score", "closedloop-sqlite"), ("batch-score", "floor"),
                    ("ab", "closedloop"), ("ab", "floor")}
    for r in lines:
        assert {"workload", "system", "seconds", "peak_mb", "mismatches"} <= set(r)
        assert r["mismatches"] == 0, r
        assert r["seconds"] > 0
        assert r["peak_mb"] > 0


def test_the_serve_workload_reports_a_row_per_concurrency() -> None:
    import os
    import shutil

    import pytest

    if shutil.which("wrk") is None:
        pytest.skip("the serve workload drives load with wrk (Debian: apt-get install wrk)")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "serve", "--scale", "0.02", "--repeat", "1",
         "--systems", "closedloop-sqlite", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SERVE_SECONDS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {(r["system"], r["concurrency"]) for r in lines} == {
        ("closedloop-sqlite", 16), ("closedloop-sqlite", 64), ("floor", 16), ("floor", 64)}
    for r in lines:
        assert r["mismatches"] == 0, r
        assert r["errors"] == 0, r
        assert r["per_s"] > 0
        assert r["p99_ms"] >= r["p50_ms"] > 0


def test_the_stream_workload_scores_every_event() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "stream", "--scale", "0.02", "--repeat", "1",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["system"] for r in lines} == {"closedloop-sqlite", "closedloop-redis", "floor"}
    for r in lines:
        assert r["mismatches"] == 0, r
        assert r["per_s"] > 0
        assert r["p99_ms"] >= r["p50_ms"] > 0


def test_the_ladder_workload_rolls_back_without_a_failed_request() -> None:
    import os
    import shutil

    import pytest

    if shutil.which("wrk") is None:
        pytest.skip("the ladder workload drives load with wrk (Debian: apt-get install wrk)")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "ladder", "--scale", "0.02", "--repeat", "1",
         "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "SERVE_SECONDS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {r["system"]: r for r in map(json.loads, (
        line for line in result.stdout.splitlines() if line.startswith("{")))}
    assert set(lines) == {"closedloop", "closedloop-ladder"}
    for r in lines.values():
        assert r["mismatches"] == 0, r            # a ladder changes no score
        assert r["errors"] == 0, r
        assert r["per_s"] > 0
    assert lines["closedloop-ladder"]["rollback_s"] >= 0   # measured (a benchmark figure)


def test_the_drift_workload_reports_cpu_and_catches() -> None:
    """At 2% scale (20,000 rows a side): the promised figures, and every injected drift
    caught with no false alarm (evidently runs only where EVIDENTLY_PYTHON is set)."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "drift", "--scale", "0.02", "--repeat", "1",
         "--systems", "closedloop", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert {r["system"] for r in lines} == {"closedloop", "floor"}
    for r in lines:
        assert {"cpu_s", "peak_mb", "caught", "false_alarms"} <= set(r)
        assert r["cpu_s"] > 0
    ours = next(r for r in lines if r["system"] == "closedloop")
    assert (ours["caught"], ours["false_alarms"]) == (5, 0)
