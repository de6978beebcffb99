"""Workload `windows`: sum/count/mean/max of the amount over 1h, 1d and 30d windows, at 100k
label rows, on a ~1M-row event table with arrival times (the fraud world's transactions).

Systems: closedloop, and floor (a hand-written DuckDB range join with the same semantics:
sawtooth windows and the arrival rule). Feast's offline stores have no windowed aggregation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset  # imported up front (it imports pandas) so no system pays it in its timing
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks.data import windows_data

FNS = ["sum", "count", "mean", "max"]
WINDOWS = {"1h": (3_600_000_000, 300_000_000), "1d": (86_400_000_000, 3_600_000_000),
           "30d": (30 * 86_400_000_000, 86_400_000_000)}           # length, hop (µs)
OUTPUTS = [f"amount_{fn}_{w}" for w in WINDOWS for fn in FNS]
DATA = windows_data

DEFINITIONS = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
ev = cl.EventSource("ev", path={path!r}, timestamp="event_time", arrival="ingested_at",
                    schema={{"user_id": str, "amount": float}})
w = cl.FeatureView("w", entity=user, source=ev,
                   aggregations=[cl.Agg("amount", fn, windows={windows!r}) for fn in {fns!r}])
'''


def closedloop(data: Path) -> pa.Table:
    root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    cl.init_project(root, definitions=DEFINITIONS.format(
        path=str(data / "events.parquet"), windows=list(WINDOWS), fns=FNS))
    with cl.Project(root) as project:
        labels = pq.read_table(data / "labels.parquet")
        refs = [f"w.{o}" for o in OUTPUTS]
        out = project.features.training_set(labels, refs, timestamp="event_timestamp")
    return out.select(["label_id", *refs]).rename_columns(["label_id", *OUTPUTS])


def floor(data: Path) -> pa.Table:
    starts = ", ".join(f"(t // {hop}) * {hop} - {length} AS s_{w}"
                       for w, (length, hop) in WINDOWS.items())
    aggs = []
    for w in WINDOWS:
        inside = f"FILTER (WHERE e.et >= q.s_{w})"
        aggs += [f"coalesce(sum(e.amount) {inside}, 0)::DOUBLE AS amount_sum_{w}",
                 f"count(e.amount) {inside} AS amount_count_{w}",
                 f"avg(e.amount) {inside} AS amount_mean_{w}",
                 f"max(e.amount) {inside} AS amount_max_{w}"]
    sql = f"""
    WITH q AS (SELECT label_id, user_id, t, {starts}
               FROM (SELECT label_id, user_id, epoch_us(event_timestamp) AS t
                     FROM read_parquet('{data / "labels.parquet"}'))),
         e AS (SELECT user_id, epoch_us(event_time) AS et,
                      greatest(epoch_us(event_time), epoch_us(ingested_at)) AS v, amount
               FROM read_parquet('{data / "events.parquet"}'))
    SELECT q.label_id, {", ".join(aggs)}
    FROM q LEFT JOIN e ON e.user_id = q.user_id AND e.et >= q.s_30d AND e.v <= q.t
    GROUP BY q.label_id ORDER BY q.label_id"""
    con = duckdb.connect(config={"preserve_insertion_order": False})
    return con.sql(sql).to_arrow_table()


SYSTEMS = {"closedloop": closedloop, "floor": floor}
SETUP: set[str] = set()
ANCHOR = None
