"""Online serving through the project: defaults for unknown keys, clear errors, the log and
the consistency report, materialization from the CLI, and a materialization killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.errors import BackendUnavailable, SchemaMismatch, UnknownFeatureError
from closedloop.features.materialize import watermark

T0 = datetime(2026, 2, 1, tzinfo=UTC)
DEFS = '''
import numpy as np
import closedloop as cl
user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="data/txns.parquet", timestamp="ts", arrival="arr",
                      schema={"user_id": str, "amount": float})
user_txn = cl.FeatureView("user_txn", entity=user, source=txns,
                          aggregations=[cl.Agg("amount", "sum", windows=["1h", "1d"]),
                                        cl.Agg("amount", "max", windows=["1d"], default=-1.0)])
last_txn = cl.FeatureView("last_txn", entity=user, source=txns, features=["amount"], ttl="1d")

@cl.transform(inputs=["request.amount", "user_txn.amount_sum_1h"])
def share(c):
    return c["request.amount"] / (c["request.amount"] + c["user_txn.amount_sum_1h"])
'''
FEATURES = ["user_txn.amount_sum_1h", "user_txn.amount_max_1d", "last_txn.amount", "share"]


def _write(root: Path, n_users: int = 50, per_user: int = 20) -> None:
    users, ts, amounts = [], [], []
    for u in range(n_users):
        for k in range(per_user):
            users.append(f"u{u}")
            ts.append(T0 + timedelta(minutes=17 * k + u))
            amounts.append(float(u + k))
    arr = pa.array(ts, pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": users, "ts": arr, "arr": arr, "amount": amounts}),
                   root / "data" / "txns.parquet")


def test_unknown_keys_get_defaults_and_say_so(online_project) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(hours=3)
    online_project.features.materialize(at=at)
    known, unknown = online_project.features.online(
        [{"user_id": "u1", "amount": 5.0}, {"user_id": "nobody", "amount": 5.0}], FEATURES,
        at=at)
    assert known.missing == ()
    assert known.values["user_txn.amount_max_1d"] == 11.0
    assert unknown.missing == ("user_txn@1", "last_txn@1")
    assert unknown.values == {"user_txn.amount_sum_1h": 0.0, "user_txn.amount_max_1d": -1.0,
                              "last_txn.amount": None, "share": 1.0}


def test_bad_requests_are_clear_errors(online_project) -> None:  # type: ignore[no-untyped-def]
    online_project.features.materialize(at=T0)
    with pytest.raises(SchemaMismatch, match="user_id"):
        online_project.features.online({"user_id": 7, "amount": 1.0}, FEATURES)
    with pytest.raises(SchemaMismatch, match="user_id"):
        online_project.features.online({"uid": "u1"}, FEATURES)
    with pytest.raises(UnknownFeatureError, match="amount_sum_5h"):
        online_project.features.online({"user_id": "u1"}, ["user_txn.amount_sum_5h"])
    with pytest.raises(SchemaMismatch, match=r"request\.amount"):
        online_project.features.online({"user_id": "u1"}, ["share"])


def test_consistency_report_is_all_matches(online_project) -> None:  # type: ignore[no-untyped-def]
    at = T0 + timedelta(hours=5, minutes=3)
    online_project.features.materialize(at=at)
    for u in range(50):
        online_project.features.online({"user_id": f"u{u}", "amount": 10.0}, FEATURES, at=at)
    report = online_project.features.consistency()
    assert {r.feature for r in report} == set(FEATURES)
    for r in report:
        assert (r.rows, r.match_rate, r.missing, r.extra) == (50, 1.0, 0, 0), r


def test_consistency_catches_a_stale_store(online_project) -> None:  # type: ignore[no-untyped-def]
    online_project.features.materialize(at=T0 + timedelta(hours=1))
    late = T0 + timedelta(hours=5)          # served long after the store was last refreshed
    for u in range(10):
        online_project.features.online({"user_id": f"u{u}", "amount": 1.0}, FEATURES, at=late)
    report = {r.feature: r for r in online_project.features.consistency()}
    assert report["user_txn.amount_max_1d"].match_rate < 1.0


@pytest.mark.redis
def test_redis_down_is_backend_unavailable(make_project) -> None:  # type: ignore[no-untyped-def]
    p = make_project(DEFS)
    (p.root / "closedloop.toml").write_text('[online]\nstore = "redis"\n'
                                            'url = "redis://127.0.0.1:1/0"\n')
    p.close()
    with cl.Project(p.root) as q, pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1"):
        q.features.online({"user_id": "u1", "amount": 1.0}, FEATURES)


def _cli(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "closedloop", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _dump(root: Path) -> dict[tuple[str, str], bytes]:
    import sqlite3

    with sqlite3.connect(root / ".closedloop" / "online.db") as con:
        return dict(con.execute("SELECT k, value FROM cl_online"))


def test_a_killed_materialization_reruns_to_the_clean_state(tmp_path: Path) -> None:
    roots = []
    for name in ("killed", "clean"):
        root = cl.init_project(tmp_path / name, definitions=DEFS)
        _write(root, n_users=2000, per_user=10)
        (root / "closedloop.toml").write_text("[online]\nbatch_size = 5\n")
        roots.append(root)
    killed, clean = roots
    at = (T0 + timedelta(days=1)).isoformat()
    proc = _cli("materialize", "--at", at, cwd=killed)
    db = killed / ".closedloop" / "online.db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:      # kill as soon as the first batches are in
        try:
            if len(_dump(killed)) > 50:
                break
        except Exception:                   # the file or table is not there yet
            pass
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = _dump(killed)
    assert 0 < len(partial) < 2 * 2000, "killed before or after the writes: retune the test"
    assert db.exists()
    for root in (killed, clean):
        done = subprocess.run([sys.executable, "-m", "closedloop", "materialize", "--at", at],
                              cwd=root, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    a, b = _marks(_dump(killed)), _marks(_dump(clean))
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    assert not diff, (len(diff), diff[:3], [(a.get(k), b.get(k)) for k in diff[:2]])
    assert len(b) > len(partial)


def _marks(dump: dict[str, Any]) -> dict[str, Any]:
    """A store's records with its watermarks' instants and formats, but not the wall-clock
    instant each run began (two runs never share it)."""
    return {k: watermark(v)[:2] if "watermark:" in k else v for k, v in dump.items()}


def test_instants_are_served_as_training_sees_them(make_project) -> None:  # type: ignore[no-untyped-def]
    defs = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
prof = cl.TableSource("prof", path="data/p.parquet", timestamp="ts",
                      schema={"user_id": str, "signup": "timestamp"})
p = cl.FeatureView("p", entity=user, source=prof, features=["signup"])
seen = cl.EventSource("seen", path="data/s.parquet", timestamp="ts",
                      schema={"user_id": str, "at": "timestamp"})
s = cl.FeatureView("s", entity=user, source=seen,
                   aggregations=[cl.Agg("at", fn, windows=["1d"]) for fn in ("max", "last")])
'''
    p = make_project(defs)
    stamp = pa.timestamp("us", tz="UTC")
    pq.write_table(pa.table({"user_id": ["a", "b"], "ts": pa.array([T0, T0], stamp),
                             "signup": pa.array([T0 - timedelta(days=3), None], stamp)}),
                   p.root / "data" / "p.parquet")
    pq.write_table(pa.table({"user_id": ["a", "a"],
                             "ts": pa.array([T0, T0 + timedelta(hours=1)], stamp),
                             "at": pa.array([T0 + timedelta(minutes=5), T0], stamp)}),
                   p.root / "data" / "s.parquet")
    (p.root / "closedloop.toml").write_text("[online]\nlog_sample = 1.0\n")
    p.close()
    refs = ["p.signup", "s.at_max_1d", "s.at_last_1d"]
    at = T0 + timedelta(hours=2)
    with cl.Project(p.root) as q:
        q.features.materialize(at=at)
        got = q.features.online([{"user_id": "a"}, {"user_id": "b"}], refs, at=at)
        assert got[0].values == {"p.signup": T0 - timedelta(days=3),
                                 "s.at_max_1d": T0 + timedelta(minutes=5), "s.at_last_1d": T0}
        assert got[1].values == {"p.signup": None, "s.at_max_1d": None, "s.at_last_1d": None}
        rows = pa.table({"user_id": ["a", "b"], "t": pa.array([at, at], stamp)})
        train = q.features.training_set(rows, refs)
        for i, vector in enumerate(got):
            assert vector.values == {r: train[r][i].as_py() for r in refs}
        assert all(r.match_rate == 1.0 for r in q.features.consistency())


def test_materializing_before_the_last_run_rebuilds_as_of_that_instant(  # type: ignore[no-untyped-def]
        online_project) -> None:
    """An --at the watermark has passed is never silently nothing: the view is rebuilt as of
    it (an entity with no row yet then has no record), and the same instant again says it is
    current. The CLI prints instants as ISO UTC."""
    later, earlier = T0 + timedelta(hours=5), T0 + timedelta(minutes=20)
    first = online_project.features.materialize(at=later)
    assert {r.mode for r in first} == {"full"}
    rewound = online_project.features.materialize(at=earlier)
    assert {r.mode for r in rewound} == {"rewound"}
    assert all(r.entities > 0 for r in rewound)
    rows = [{"user_id": f"u{u}", "amount": 1.0} for u in range(50)]
    served = online_project.features.online(rows, FEATURES, at=earlier)
    want = online_project.features.training_set(
        pa.table({"user_id": [r["user_id"] for r in rows], "amount": [1.0] * 50,
                  "t": pa.array([earlier] * 50, pa.timestamp("us", tz="UTC"))}), FEATURES)
    for i, vector in enumerate(served):
        for f in FEATURES:
            assert vector.values[f] == want[f][i].as_py(), (i, f)
    assert served[30].missing == ("user_txn@1", "last_txn@1")   # u30's first row is later
    again = online_project.features.materialize(at=earlier)
    assert {(r.mode, r.entities) for r in again} == {("current", 0)}
    assert "already materialized as of 2026-02-01T00:20:00Z" in again[0].summary()
    online_project.close()
    cli = subprocess.run([sys.executable, "-m", "closedloop", "materialize", "--at",
                          later.isoformat(), "-p", str(online_project.root)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr
    assert "as of 2026-02-01T05:00:00Z (changed since 2026-02-01T00:20:00Z)" in cli.stdout
