"""Ingestion: validation, arrival stamps, dedup, quarantine, all-or-nothing batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.data.ingest import INGESTED_AT
from closedloop.errors import DataError, DefinitionError, PointInTimeError, SchemaMismatch

DEFINITIONS = '''import closedloop as cl

user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="landing/txns", timestamp="event_time",
                      arrival="arrived_at", id="txn_id",
                      schema={"txn_id": str, "user_id": str, "amount": float, "n": int,
                              "flag": bool})
clicks = cl.EventSource("clicks", path="landing/clicks", timestamp="event_time",
                        schema={"user_id": str, "page": str})
spend = cl.FeatureView("spend", entity=user, source=txns, version=1,
                       aggregations=[cl.Agg("amount", "sum", windows=["1d"])])
'''

T0 = datetime(2026, 3, 1, tzinfo=UTC)
AT = datetime(2026, 3, 2, tzinfo=UTC)


def _txns(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ts = pa.array([T0 + timedelta(seconds=int(s)) for s in rng.integers(0, 86_000, n)],
                  pa.timestamp("us", tz="UTC"))
    return pa.table({"txn_id": [f"t{i}" for i in range(start, start + n)],
                     "user_id": [f"u{i % 7}" for i in range(n)],
                     "amount": np.round(rng.random(n) * 100, 2), "n": np.arange(n),
                     "flag": rng.random(n) < 0.5, "event_time": ts,
                     "extra": ["x"] * n})


def _held(project: cl.Project, source: str = "txns") -> list[dict[str, Any]]:
    rows = project.data.read(source).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True))


def _parts(project: cl.Project, source: str = "txns") -> list[Path]:
    return sorted((project.root / ".closedloop" / "log" / source).glob("part-*.parquet"))


@pytest.fixture
def project(make_project: Any) -> cl.Project:
    p: cl.Project = make_project(DEFINITIONS)
    return p


def test_parquet_rows_are_stamped_deduplicated_and_kept_to_the_declared_columns(
        project: cl.Project, tmp_path: Path) -> None:
    pq.write_table(_txns(100), tmp_path / "a.parquet")
    before = datetime.now(UTC)
    report = project.data.ingest("txns", tmp_path / "a.parquet", at=AT)
    assert (report.rows, report.accepted, report.duplicates, report.quarantined) == (
        100, 100, 0, 0)
    assert report.ignored_columns == ("extra",)
    held = project.data.read("txns")
    assert "extra" not in held.column_names
    stamp = AT.replace(tzinfo=UTC)
    (given,) = set(held[INGESTED_AT].to_pylist())  # when the store was given them: the wall
    assert given >= before                          # clock's, not the ingest's ``at``
    assert set(held["arrived_at"].to_pylist()) == {stamp}   # the file had no arrival: at
    assert "100 accepted, 0 duplicates, 0 quarantined" in report.summary()


def test_ingesting_the_same_file_again_changes_nothing(project: cl.Project,
                                                       tmp_path: Path) -> None:
    pq.write_table(_txns(500), tmp_path / "a.parquet")
    project.data.ingest("txns", tmp_path / "a.parquet", at=AT)
    before, parts = _held(project), _parts(project)
    again = project.data.ingest("txns", tmp_path / "a.parquet", at=AT + timedelta(hours=1))
    assert (again.accepted, again.duplicates) == (0, 500)
    assert _held(project) == before
    assert _parts(project) == parts                          # not even an empty part


def test_a_replay_that_overlaps_adds_only_the_new_ids(project: cl.Project,
                                                      tmp_path: Path) -> None:
    pq.write_table(_txns(300), tmp_path / "a.parquet")
    pq.write_table(_txns(300, start=200, seed=1), tmp_path / "b.parquet")
    project.data.ingest("txns", tmp_path / "a.parquet", at=AT)
    report = project.data.ingest("txns", tmp_path / "b.parquet", at=AT)
    assert (report.accepted, report.duplicates) == (200, 100)
    ids = project.data.read("txns", ["txn_id"])["txn_id"].to_pylist()
    assert sorted(ids) == sorted(f"t{i}" for i in range(500))


def test_duplicate_ids_inside_one_file_keep_the_first(project: cl.Project,
                                                      tmp_path: Path) -> None:
    rows = _txns(10)
    doubled = pa.concat_tables([rows, rows.slice(0, 3)])
    doubled = doubled.set_column(2, "amount", pa.array([*rows["amount"].to_pylist(),
                                                        -1.0, -1.0, -1.0]))
    pq.write_table(doubled, tmp_path / "d.parquet")
    report = project.data.ingest("txns", tmp_path / "d.parquet", at=AT)
    assert (report.accepted, report.duplicates) == (10, 3)
    assert -1.0 not in project.data.read("txns")["amount"].to_pylist()


def test_bad_csv_rows_go_to_the_quarantine_with_reason_and_payload(
        project: cl.Project, tmp_path: Path) -> None:
    lines = [
        "txn_id,user_id,amount,n,flag,event_time",
        "t1,u1,10.5,1,true,2026-03-01T10:00:00Z",
        "t2,u1,abc,2,false,2026-03-01T10:00:00Z",             # not a number
        "t3,u1,1.0,3,false,2026-03-01 10:00:00",               # naive
        "t4,u1,1.0,4,false,yesterday",                         # unparseable
        "t5,u1,1.0,4.5,false,2026-03-01T10:00:00+01:00",       # not an int
        ",u1,1.0,5,false,2026-03-01T10:00:00Z",                # no id
        "t7,,1.0,5,false,2026-03-01T10:00:00Z",                # no key of a view
        "t8,u1,inf,5,false,2026-03-01T10:00:00Z",              # not finite
        "t9,u1,2.0,6,maybe,2026-03-01T10:00:00Z",              # not a bool
        "t10,u1,2.0",                                          # ragged
        "t11,u2,3.0,7,FALSE,2026-03-01T10:00:00+01:00",
    ]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    report = project.data.ingest("txns", tmp_path / "x.csv", at=AT)
    assert (report.rows, report.accepted, report.quarantined) == (11, 2, 9)
    reasons = dict(report.reasons)
    assert reasons["event_time: naive timestamp (no zone offset)"] == 1
    assert reasons["event_time: unparseable timestamp"] == 1
    assert reasons["amount: not a float64"] == 1
    assert reasons["n: not a int64"] == 1
    assert reasons["txn_id: null"] == 1
    assert reasons["user_id: null"] == 1
    assert reasons["amount: not a finite number"] == 1
    assert reasons["flag: not a bool"] == 1
    assert reasons["row does not parse"] == 1
    q = project.data.quarantine("txns")
    assert q.num_rows == 9
    by_reason = {r["reason"]: r for r in q.to_pylist()}
    payload = json.loads(by_reason["amount: not a float64"]["payload"])
    assert payload["txn_id"] == "t2"
    assert payload["amount"] == "abc"
    assert by_reason["row does not parse"]["payload"] == "t10,u1,2.0"
    assert by_reason["row does not parse"]["row"] == 11                  # its line
    assert by_reason["flag: not a bool"]["row"] == 10
    assert by_reason["amount: not a float64"]["row"] == 3
    held = project.data.read("txns").sort_by("txn_id").to_pylist()
    assert [r["txn_id"] for r in held] == ["t1", "t11"]
    assert held[1]["event_time"] == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert held[1]["flag"] is False
    assert held[1]["n"] == 7
    # Again: nothing more held, nothing quarantined twice.
    again = project.data.ingest("txns", tmp_path / "x.csv", at=AT)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 2, 9)
    assert project.data.quarantine("txns").num_rows == 9


def test_json_lines_are_ingested_and_bad_lines_quarantined(project: cl.Project,
                                                           tmp_path: Path) -> None:
    good = {"txn_id": "j1", "user_id": "u1", "amount": 3, "n": 1, "flag": True,
            "event_time": "2026-03-01T10:00:00Z", "arrived_at": "2026-03-01T10:00:05Z"}
    text = [json.dumps(good), json.dumps({**good, "txn_id": "j2", "amount": "lots"}),
            "{not json", json.dumps([1, 2]), ""]
    (tmp_path / "x.jsonl").write_text("\n".join(text) + "\n")
    report = project.data.ingest("txns", tmp_path / "x.jsonl", at=AT)
    assert (report.accepted, report.quarantined) == (1, 3)
    q = {r["reason"]: r["row"] for r in project.data.quarantine("txns").to_pylist()}
    assert q["amount: not a float64"] == 2
    row = project.data.read("txns").to_pylist()[0]
    assert row["amount"] == 3.0
    assert row["flag"] is True
    assert row["arrived_at"] == datetime(2026, 3, 1, 10, 0, 5, tzinfo=UTC)   # kept, not stamped


@pytest.mark.parametrize("case", ["missing", "truncated", "empty", "naive", "not-a-file"])
def test_a_bad_file_stops_the_whole_batch_with_nothing_written(
        project: cl.Project, tmp_path: Path, case: str) -> None:
    good = tmp_path / "good.parquet"
    pq.write_table(_txns(50), good)
    bad = tmp_path / "bad.parquet"
    if case == "missing":
        pq.write_table(_txns(5).drop_columns(["amount"]), bad)
        error: type[Exception] = SchemaMismatch
    elif case == "truncated":
        pq.write_table(_txns(5000), bad)
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        error = DataError
    elif case == "empty":
        bad.write_bytes(b"")
        error = DataError
    elif case == "naive":
        t = _txns(5)
        pq.write_table(t.set_column(t.column_names.index("event_time"), "event_time",
                                    t["event_time"].cast(pa.timestamp("us"))), bad)
        error = PointInTimeError
    else:
        bad = tmp_path / "nothing-here.parquet"
        error = DataError
    with pytest.raises(error) as caught:
        project.data.ingest("txns", [good, bad], at=AT)
    assert "nothing was ingested" in str(caught.value) or case in ("naive", "not-a-file")
    assert _parts(project) == []
    assert project.data.quarantine("txns").num_rows == 0


def test_unknown_source_and_unknown_format_are_clear_errors(project: cl.Project,
                                                            tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="there is no source 'nope'"):
        project.data.ingest("nope", tmp_path / "a.parquet")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(DataError, match="cannot tell its format"):
        project.data.ingest("txns", tmp_path / "a.xlsx")


def test_without_an_id_rows_are_deduplicated_whole(project: cl.Project,
                                                   tmp_path: Path) -> None:
    clicks = pa.table({"user_id": ["u1", "u1", "u2"], "page": ["a", "a", "b"],
                       "event_time": pa.array([T0, T0, T0], pa.timestamp("us", tz="UTC"))})
    pq.write_table(clicks, tmp_path / "c.parquet")
    first = project.data.ingest("clicks", tmp_path / "c.parquet", at=AT)
    second = project.data.ingest("clicks", tmp_path / "c.parquet", at=AT + timedelta(days=1))
    assert (first.accepted, first.duplicates) == (2, 1)
    assert (second.accepted, second.duplicates) == (0, 3)


def test_ingested_rows_feed_the_features(project: cl.Project, tmp_path: Path) -> None:
    rows = _txns(200)
    pq.write_table(rows, tmp_path / "a.parquet")
    project.data.ingest("txns", tmp_path / "a.parquet", at=T0)      # arrived before the events
    q = pa.table({"user_id": ["u0"], "ts": pa.array([T0 + timedelta(days=1)],
                                                     pa.timestamp("us", tz="UTC"))})
    got = project.features.training_set(q, ["spend.amount_sum_1d"])["spend.amount_sum_1d"]
    want = sum(a for u, a in zip(rows["user_id"].to_pylist(), rows["amount"].to_pylist(),
                                 strict=True) if u == "u0")
    assert got[0].as_py() == pytest.approx(want)


_KILLED = '''
import sys
from datetime import datetime, UTC
import closedloop as cl
with cl.Project(sys.argv[1]) as p:
    print("ready", flush=True)
    p.data.ingest("txns", sys.argv[2:], at=datetime(2026, 3, 2, tzinfo=UTC))
'''


def test_an_ingest_killed_mid_batch_reruns_to_the_clean_state(make_project: Any,
                                                              tmp_path: Path) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}.parquet")
        pq.write_table(_txns(150_000, start=i * 100_000, seed=i), files[-1])  # overlapping
    clean = make_project(DEFINITIONS, name="clean")
    started = time.perf_counter()
    clean.data.ingest("txns", files, at=AT)
    took = time.perf_counter() - started
    want = clean.data.read("txns").sort_by("txn_id")
    assert want.num_rows == 350_000
    # Kills spread over the ingest's own duration (and just past it).
    for trial, share in enumerate([0.0, 0.2, 0.4, 0.6, 0.8, 1.2, 3.0]):
        victim = make_project(DEFINITIONS, name=f"victim{trial}")
        proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(victim.root),
                                 *map(str, files)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(share * took)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        held = victim.data.read("txns").num_rows if _parts(victim) else 0
        assert held in (0, 350_000)                   # the batch whole, or not at all
        victim.data.ingest("txns", files, at=AT)
        held_after = victim.data.read("txns").sort_by("txn_id")   # but for the wall clock's
        assert held_after.drop_columns([INGESTED_AT]).equals(          # stamp of each ingest
            want.drop_columns([INGESTED_AT])), f"trial {trial} (killed after {share * took:.2f}s)"


def test_rows_that_differ_only_in_a_time_column_they_carry_are_different_rows(
        make_project: Any) -> None:
    p = make_project('''import closedloop as cl
snap = cl.TableSource("snap", path="landing/snap", timestamp="ts", created="created",
                      schema={"user_id": str, "spend": float})
''')
    rerun = pa.table({"user_id": ["u1", "u1"], "spend": [5.0, 5.0],
                      "ts": pa.array([T0, T0], pa.timestamp("us", tz="UTC")),
                      "created": pa.array([T0, T0 + timedelta(hours=1)],
                                          pa.timestamp("us", tz="UTC"))})
    assert p.data.ingest("snap", rerun, at=AT).accepted == 2          # a nightly job's rerun
    assert p.data.ingest("snap", rerun, at=AT).duplicates == 2
    # Without the created column, ingestion stamps it: re-ingesting still changes nothing.
    plain = rerun.drop_columns(["created"]).slice(0, 1).set_column(1, "spend", pa.array([6.0]))
    first = p.data.ingest("snap", plain, at=AT)
    again = p.data.ingest("snap", plain, at=AT + timedelta(hours=2))
    assert (first.accepted, again.accepted, again.duplicates) == (1, 0, 1)


def test_a_file_with_a_header_and_no_rows_ingests_nothing(project: cl.Project,
                                                          tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("txn_id,user_id,amount,n,flag,event_time\n")
    report = project.data.ingest("txns", tmp_path / "h.csv", at=AT)
    assert (report.rows, report.accepted, report.quarantined) == (0, 0, 0)
    assert _parts(project) == []


_RACER = '''
import sys
from datetime import datetime, UTC
import closedloop as cl
with cl.Project(sys.argv[1]) as p:
    print(p.data.ingest("txns", sys.argv[2], at=datetime(2026, 3, 2, tzinfo=UTC)).accepted)
'''


def test_two_processes_ingesting_the_same_file_at_once_store_it_once(
        project: cl.Project, tmp_path: Path) -> None:
    pq.write_table(_txns(100_000), tmp_path / "a.parquet")
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(project.root),
                               str(tmp_path / "a.parquet")], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    accepted = sorted(int(p.communicate(timeout=120)[0].strip()) for p in procs)
    assert accepted == [0, 100_000]                   # one wrote it, the other found it held
    assert project.data.read("txns", ["txn_id"]).num_rows == 100_000


def test_a_batch_with_too_much_quarantined_is_refused_whole(project: cl.Project,
                                                           tmp_path: Path) -> None:
    """Nothing valid (the default) or over --max-quarantined: refused, exit 2 from the CLI,
    nothing appended, the rejects in the quarantine to look at."""
    head = "txn_id,user_id,amount,n,flag,event_time\n"
    bad = "".join(f"b{i},u1,abc,1,true,2026-03-01T10:00:00Z\n" for i in range(4))
    good = "".join(f"g{i},u1,1.0,1,true,2026-03-01T10:00:00Z\n" for i in range(6))
    (tmp_path / "all_bad.csv").write_text(head + bad)
    (tmp_path / "some_bad.csv").write_text(head + bad + good)
    with pytest.raises(DataError, match="4 of 4 rows quarantined"):
        project.data.ingest("txns", tmp_path / "all_bad.csv", at=AT)
    assert project.data.quarantine("txns").num_rows == 4
    with pytest.raises(DataError, match=r"more than 30\.0%"):
        project.data.ingest("txns", tmp_path / "some_bad.csv", at=AT, max_quarantined=0.3)
    assert "g0" not in project.data.read("txns", ["txn_id"])["txn_id"].to_pylist()
    with pytest.raises(DataError, match="between 0 and 1"):
        project.data.ingest("txns", tmp_path / "some_bad.csv", at=AT, max_quarantined=30)
    report = project.data.ingest("txns", tmp_path / "some_bad.csv", at=AT, max_quarantined=0.5)
    assert (report.accepted, report.quarantined) == (6, 4)
    again = project.data.ingest("txns", tmp_path / "some_bad.csv", at=AT)   # duplicates: fine
    assert (again.accepted, again.duplicates) == (0, 6)
    project.close()
    cli = subprocess.run([sys.executable, "-m", "closedloop", "ingest", "txns",
                          str(tmp_path / "all_bad.csv"), "-p", str(project.root)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 2, cli.stdout
    assert "4 of 4 rows quarantined" in cli.stderr
