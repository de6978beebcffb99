"""One clock: a project on historical data served as of its own history.

A day of the fraud world's history is replayed through the real HTTP server (``closedloop
serve --replay``) in event-time order, each source's rows pushed in arrival order beside the
requests; every served vector — in the prediction log and in the feature log — equals the
training set's features at the requests' instants (the skew check on real traffic)."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import closedloop as cl
from closedloop.data.instants import format_instant, instant_micros, to_micros
from closedloop.errors import ConfigError, PointInTimeError
from closedloop.sim.fraud import FraudWorld
from closedloop.sim.fraud_project import FEATURES, write_fraud_project
from tests.server.test_app import Server, start_server, stop_server
from tests.serving.world import FAST, SMALL

WORLD = FraudWorld(n_users=500, seed=11)
DAY0 = WORLD.end - timedelta(days=1)            # history up to here; the replayed day after
DAY1 = WORLD.end
FIELDS = ["user_id", "txn_id", "amount", "country", "event_time"]


def _until(table: pa.Table, column: str, t: int) -> pa.Table:
    return table.filter(pc.less_equal(to_micros(table[column], column), t))


def _within(table: pa.Table, column: str, lo: int, hi: int) -> pa.Table:
    micros = to_micros(table[column], column)
    return table.filter(pc.and_(pc.greater(micros, lo), pc.less_equal(micros, hi)))


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's history up to DAY0 ingested, a model trained on it and promoted, and the
    online store materialized as of DAY0; the day after is left out, to be replayed."""
    root = write_fraud_project(tmp_path_factory.mktemp("replay") / "proj", n_users=500,
                               seed=11)
    defs = root / "definitions.py"
    defs.write_text(defs.read_text().replace(SMALL, FAST))
    d0 = instant_micros(DAY0)
    data = root / "data"
    with cl.Project(root) as p:
        p.apply()
        p.data.ingest("transactions", _until(pq.read_table(data / "transactions.parquet"),
                                             "ingested_at", d0), at=DAY0)
        p.data.ingest("profiles", _until(pq.read_table(data / "profiles.parquet"),
                                         "created_at", d0), at=DAY0)
        p.data.ingest("chargebacks", _until(pq.read_table(data / "chargebacks.parquet"),
                                            "settled_at", d0), at=DAY0)
        run = p.training.train("fraud", cutoff=DAY0)
        p.registry.set_alias("fraud", "production", p.registry.register(run.id).version)
        (report,) = p.features.materialize(["user_txn"], at=DAY0)
        assert report.entities > 400                  # a real history, not an empty one
        p.features.materialize(["user_profile"], at=DAY0)
    return root


@pytest.fixture
def replay_server(history: Path, tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "proj"
    shutil.copytree(history, root)
    process, port = start_server(root, "--replay")
    with cl.Project(root) as project:
        yield Server(port, project, process)
    stop_server(process)


def _plain(column: str) -> str:
    """A served column (``user_txn@1.amount_sum_1h``) as the model names it."""
    return column.split("@")[0] + "." + column.split(".")[-1] if "@" in column else column


def _same(name: str, a: Any, b: Any) -> bool:
    """Equal bits — but a stddev, merged by Chan's formula in float arithmetic in another
    order online than offline, to its last bits (docs/architecture.md)."""
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    if name.endswith(tuple(f"stddev_{w}" for w in ("1h", "1d", "30d"))):
        return math.isclose(a, b, rel_tol=1e-13)
    return bool(a == b)


def test_a_replayed_day_is_served_exactly_as_the_training_set_saw_it(
        replay_server: Server) -> None:
    p = replay_server.project
    data = p.root / "data"
    d0, d1 = instant_micros(DAY0), instant_micros(DAY1)
    txns = pq.read_table(data / "transactions.parquet")
    arriving = {                 # each source's rows of the day, in the order they arrived
        "transactions": _within(txns, "ingested_at", d0, d1).sort_by("ingested_at"),
        "profiles": _within(pq.read_table(data / "profiles.parquet"), "created_at", d0, d1
                            ).sort_by("created_at")}
    arrival = {"transactions": "ingested_at", "profiles": "created_at"}
    pushed = dict.fromkeys(arriving, 0)
    requests = _within(txns, "event_time", d0, d1).sort_by("event_time").select(FIELDS)
    assert requests.num_rows > 400                  # a day of this world's traffic
    times = to_micros(requests["event_time"], "event_time").to_pylist()
    served: dict[str, dict[str, Any]] = {}
    for row, t in zip(requests.to_pylist(), times, strict=True):
        for source, rows in arriving.items():        # what had arrived by t, pushed at t
            micros = to_micros(rows[arrival[source]], "arrival").to_numpy()
            upto = int((micros <= t).sum())
            if upto > pushed[source]:
                p.features.push(source, rows.slice(pushed[source], upto - pushed[source]),
                                at=cl.Clock(t).datetime())
                pushed[source] = upto
        instance = {**row, "event_time": format_instant(t)}
        status, body = replay_server.predict([instance])
        assert status == 200, body
        served[row["txn_id"]] = body["predictions"][0]
    assert sum(pushed.values()) > 400

    logged = {r["subject"]: r for r in p.prediction_log.records("fraud")
              if r["kind"] == "prediction"}
    assert set(logged) == set(served)
    expected = p.features.training_set(requests, FEATURES, timestamp="event_time")
    columns = {name: expected[name].to_pylist() for name in FEATURES}
    compared = 0
    for i, (txn, t) in enumerate(zip(requests["txn_id"].to_pylist(), times, strict=True)):
        record = logged[txn]
        assert record["time"] == t                   # the prediction's own instant
        online = {k.split("@")[0] + "." + k.split(".")[-1] if "@" in k else k: v
                  for k, v in record["features"].items()}
        assert set(online) == set(FEATURES)
        for name in FEATURES:
            assert _same(name, columns[name][i], online[name]), (
                txn, name, columns[name][i], online[name])
            compared += 1
    assert compared == requests.num_rows * len(FEATURES)
    hour = 3_600_000_000           # windows wholly inside the day hold only pushed events
    pushed_only = [v for v, t in zip(columns["user_txn.amount_count_1h"], times, strict=True)
                   if v and t - d0 > hour]
    assert len(pushed_only) > 20

    stop_server(replay_server.process)               # the feature log is flushed on exit
    report = {_plain(c.feature): c for c in p.features.consistency()}
    assert set(report) >= set(FEATURES)
    for name in FEATURES:
        assert report[name].rows >= requests.num_rows
        assert report[name].match_rate == 1.0, report[name]


def test_a_replay_refuses_an_instance_without_its_instant_or_before_the_state(
        replay_server: Server) -> None:
    instance = {"user_id": "u1", "txn_id": "t1", "amount": 3.0, "country": "US"}
    status, body = replay_server.predict([instance])
    assert status == 400, body
    assert body["field"] == "instances[0].event_time"
    status, body = replay_server.predict([{**instance, "event_time": "2026-03-31T10:00:00"}])
    assert status == 400, body
    assert "zone" in body["error"]
    before = format_instant(instant_micros(DAY0) - 1)
    status, body = replay_server.predict([{**instance, "event_time": before}])
    assert status == 400, body
    assert "materialization instant" in body["error"]


def test_a_fixed_clock_is_every_commands_now(history: Path, tmp_path: Path) -> None:
    """[clock] at: an online read, a push's arrival stamp and a prediction take "now" from
    the setting, not the wall clock."""
    root = tmp_path / "proj"
    shutil.copytree(history, root)
    with (root / "closedloop.toml").open("a") as f:
        f.write(f'\n[clock]\nat = "{format_instant(instant_micros(DAY0))}"\n')
    with cl.Project(root) as p:
        assert p.clock == cl.Clock(instant_micros(DAY0))
        user = "u000001"
        fixed = p.features.online({"user_id": user}, ["user_txn.amount_count_30d"])
        assert not isinstance(fixed, list)
        assert fixed.at == instant_micros(DAY0)
        rows = p.features.training_set(
            pa.table({"user_id": [user], "t": pa.array([DAY0], pa.timestamp("us", "UTC"))}),
            ["user_txn.amount_count_30d"], timestamp="t")
        assert fixed.values["user_txn.amount_count_30d"] == rows[
            "user_txn.amount_count_30d"][0].as_py()
        served = p.serving.predictor("fraud").predict(
            [{"user_id": user, "txn_id": "x1", "amount": 5.0, "country": "US"}])
        assert served.records[0].time == instant_micros(DAY0)
    earlier = cl.Clock(instant_micros(DAY0) - 1)                      # an earlier "now"
    with cl.Project(root, clock=earlier) as p, pytest.raises(PointInTimeError,
                                                             match="materialization instant"):
        p.features.online({"user_id": user}, ["user_txn.amount_count_30d"])
    (root / "closedloop.toml").write_text('[clock]\nat = "2026-03-31T00:00"\n')
    with pytest.raises(ConfigError, match=r"clock\.at: .*no time zone"):
        cl.Project(root)
