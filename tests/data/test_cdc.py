"""Table sources fed by change data capture: upserts and deletes with their change time, through
ingestion, training sets, materialization and push — one semantics on every path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

DEFINITIONS = '''import closedloop as cl

user = cl.Entity("user", key="user_id")
accounts = cl.TableSource("accounts", path="landing/accounts", timestamp="changed_at",
                          created="lsn_at", deleted="is_deleted", id="lsn",
                          schema={"lsn": int, "user_id": str, "tier": str, "limit": float})
account = cl.FeatureView("account", entity=user, source=accounts, version=1,
                         features=["tier", "limit"], defaults={"tier": "none"})
'''

T0 = datetime(2026, 2, 1, tzinfo=UTC)
H = timedelta(hours=1)
STAMP = pa.timestamp("us", tz="UTC")


def _changes(rows: list[tuple[int, str, datetime, str | None, float | None, bool | None]]
             ) -> pa.Table:
    return pa.table({"lsn": [r[0] for r in rows], "user_id": [r[1] for r in rows],
                     "changed_at": pa.array([r[2] for r in rows], STAMP),
                     "tier": [r[3] for r in rows], "limit": [r[4] for r in rows],
                     "is_deleted": pa.array([r[5] for r in rows], pa.bool_())})


@pytest.fixture
def project(make_project: Any) -> Any:
    p = make_project(DEFINITIONS)
    p.data.ingest("accounts", _changes([
        (1, "u1", T0, "gold", 100.0, False),
        (2, "u2", T0, "silver", 50.0, None),          # a null flag is an upsert
        (3, "u1", T0 + 2 * H, None, None, True),      # u1 closes their account...
        (4, "u1", T0 + 5 * H, "bronze", 10.0, False),  # ...and opens a new one
    ]), at=T0)
    return p


def _train(p: Any, user: str, t: datetime) -> dict[str, Any]:
    rows = pa.table({"user_id": [user], "t": pa.array([t], STAMP)})
    got = p.features.training_set(rows, ["account.tier", "account.limit"]).to_pylist()[0]
    return {"tier": got["account.tier"], "limit": got["account.limit"]}


def _serve(p: Any, user: str, t: datetime) -> dict[str, Any]:
    got = p.features.online({"user_id": user}, ["account.tier", "account.limit"], at=t).values
    return {"tier": got["account.tier"], "limit": got["account.limit"]}


def test_a_delete_ends_the_state_until_the_next_upsert_offline(project: Any) -> None:
    assert _train(project, "u1", T0 + H) == {"tier": "gold", "limit": 100.0}
    assert _train(project, "u1", T0 + 2 * H) == {"tier": "none", "limit": None}
    assert _train(project, "u1", T0 + 5 * H) == {"tier": "bronze", "limit": 10.0}
    assert _train(project, "u2", T0 + H) == {"tier": "silver", "limit": 50.0}


def test_materialized_and_pushed_changes_serve_what_training_sees(project: Any) -> None:
    at = T0 + 3 * H
    project.features.materialize(at=at)
    assert _serve(project, "u1", at) == _train(project, "u1", at) == {"tier": "none",
                                                                      "limit": None}
    # A delete pushed for u2, then a stale upsert (older change time) that must not revive it.
    project.features.push("accounts", _changes([(5, "u2", at, None, None, True)]), at=at)
    assert _serve(project, "u2", at) == {"tier": "none", "limit": None}
    project.features.push("accounts", _changes([(6, "u2", T0 + H, "gold", 1.0, False)]), at=at)
    assert _serve(project, "u2", at) == _train(project, "u2", at) == {"tier": "none",
                                                                      "limit": None}
    later = at + 3 * H
    project.features.materialize(at=later)            # incremental: u1's new account
    assert _serve(project, "u1", later) == _train(project, "u1", later) == {
        "tier": "bronze", "limit": 10.0}
    assert _serve(project, "u2", later) == {"tier": "none", "limit": None}   # still deleted


def test_replayed_changes_change_nothing(project: Any) -> None:
    again = project.data.ingest("accounts", _changes([
        (1, "u1", T0, "gold", 100.0, False), (3, "u1", T0 + 2 * H, None, None, True)]),
        at=T0 + H)
    assert (again.accepted, again.duplicates) == (0, 2)
    assert project.data.read("accounts").num_rows == 4
