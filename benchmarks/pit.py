"""Workload `pit`: point-in-time join of two snapshot tables (ties, a TTL) onto 100k label rows.

Systems: closedloop (DuckDB engine through the public API), feast-duckdb (Feast's DuckDB
offline store, `get_historical_features`), floor (a hand-written DuckDB ASOF JOIN with the
same semantics).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset  # imported up front (it imports pandas) so no system pays it in its timing
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks.data import FEATURES_A, FEATURES_B, pit_data

OUTPUTS = FEATURES_A + FEATURES_B
DATA = pit_data
TTL_B = 2 * 86_400_000_000

DEFINITIONS = '''
import closedloop as cl
user = cl.Entity("user", key="user_id")
a = cl.TableSource("a", path={a!r}, timestamp="event_timestamp", created="created",
                   schema={{"user_id": str, **{{c: float for c in {fa!r}}}}})
b = cl.TableSource("b", path={b!r}, timestamp="event_timestamp",
                   schema={{"user_id": str, **{{c: float for c in {fb!r}}}}})
fa = cl.FeatureView("fa", entity=user, source=a, features={fa!r})
fb = cl.FeatureView("fb", entity=user, source=b, features={fb!r}, ttl="2d")
'''


def closedloop(data: Path) -> pa.Table:
    root = Path(tempfile.mkdtemp(prefix="cl-bench-"))
    cl.init_project(root, definitions=DEFINITIONS.format(
        a=str(data / "a.parquet"), b=str(data / "b.parquet"), fa=FEATURES_A, fb=FEATURES_B))
    with cl.Project(root) as project:
        labels = pq.read_table(data / "labels.parquet")
        refs = [f"fa.{c}" for c in FEATURES_A] + [f"fb.{c}" for c in FEATURES_B]
        out = project.features.training_set(labels, refs, timestamp="event_timestamp")
    return out.select(["label_id", *refs]).rename_columns(["label_id", *OUTPUTS])


def floor(data: Path) -> pa.Table:
    def low(c: str) -> str:
        return f"({c} IS NOT NULL) DESC, {c} DESC"

    order_a = ", ".join([low("created"), *(low(c) for c in FEATURES_A)])
    order_b = ", ".join(low(c) for c in FEATURES_B)
    sql = f"""
    WITH a AS (SELECT * FROM read_parquet('{data / "a.parquet"}')
               QUALIFY row_number() OVER (PARTITION BY user_id, event_timestamp
                                          ORDER BY {order_a}) = 1),
         b AS (SELECT * FROM read_parquet('{data / "b.parquet"}')
               QUALIFY row_number() OVER (PARTITION BY user_id, event_timestamp
                                          ORDER BY {order_b}) = 1),
         l AS (SELECT label_id, user_id, event_timestamp AS t
               FROM read_parquet('{data / "labels.parquet"}'))
    SELECT l.label_id, {", ".join(f"a.{c}" for c in FEATURES_A)},
           {", ".join(f"CASE WHEN epoch_us(l.t) - epoch_us(b.event_timestamp) <= {TTL_B} "
                      f"THEN b.{c} END AS {c}" for c in FEATURES_B)}
    FROM l ASOF LEFT JOIN a ON l.user_id = a.user_id AND l.t >= a.event_timestamp
           ASOF LEFT JOIN b ON l.user_id = b.user_id AND l.t >= b.event_timestamp
    ORDER BY l.label_id"""
    con = duckdb.connect(config={"preserve_insertion_order": False})
    con.execute("SET TimeZone = 'UTC'")
    return con.sql(sql).to_arrow_table()


def feast_store(data: Path) -> Any:
    """A Feast repository over the pit files: DuckDB offline store, SQLite online store."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Float64

    repo = Path(tempfile.mkdtemp(prefix="feast-bench-"))
    config = RepoConfig(project="bench", registry=str(repo / "registry.db"), provider="local",
                        offline_store=DuckDBOfflineStoreConfig(),
                        online_store=SqliteOnlineStoreConfig(path=str(repo / "online.db")),
                        entity_key_serialization_version=3, repo_path=str(repo))
    store = FeatureStore(config=config)
    user = Entity(name="user", join_keys=["user_id"])
    views = []
    for name, cols, ttl, created in (("fa", FEATURES_A, timedelta(0), "created"),
                                     ("fb", FEATURES_B, timedelta(days=2), None)):
        source = FileSource(path=str(data / f"{name[1]}.parquet"),
                            timestamp_field="event_timestamp",
                            created_timestamp_column=created or "")
        views.append(FeatureView(name=name, entities=[user], ttl=ttl, source=source,
                                 schema=[Field(name=c, dtype=Float64) for c in cols]))
    store.apply([user, *views])
    return store


def feast_duckdb(data: Path) -> Callable[[], pa.Table]:
    """Returns the timed job as a closure so that the repository set-up is not timed."""
    store = feast_store(data)

    def job() -> pa.Table:
        labels = pq.read_table(data / "labels.parquet").to_pandas()
        refs = [f"fa:{c}" for c in FEATURES_A] + [f"fb:{c}" for c in FEATURES_B]
        out = store.get_historical_features(entity_df=labels, features=refs).to_arrow()
        return out.select(["label_id", *OUTPUTS]).sort_by("label_id")

    return job


SYSTEMS = {"closedloop": closedloop, "feast-duckdb": feast_duckdb, "floor": floor}
SETUP = {"feast-duckdb"}    # systems that return a job after an untimed set-up
ANCHOR = "feast-duckdb"
