"""Fixtures of the feature tests: a project over a small card-transaction history."""

from __future__ import annotations

import pytest

import closedloop as cl
from closedloop.backends.duckdb import DuckDBEngine
from tests.features.test_online import DEFS, _write


@pytest.fixture
def online_project(make_project):  # type: ignore[no-untyped-def]
    """The project of ``test_online.DEFS`` over 50 users' transactions, logging every served
    vector, opened afresh after the data is written."""
    p = make_project(DEFS + "\n")
    _write(p.root)
    (p.root / "closedloop.toml").write_text("[online]\nlog_sample = 1.0\n")
    p.close()
    opened = cl.Project(p.root)
    yield opened
    opened.close()


@pytest.fixture(scope="module", params=["tiles", "events", "ranges", "ranges-listed",
                                        "ranges-refused"])
def engine(request):  # type: ignore[no-untyped-def]
    """Every window plan of the DuckDB engine: SQL over per-hop tiles, SQL over events as
    their own tiles, and ranges over sorted events — scanning for late arrivals (rows in
    chunks of 3), listing every row's events (no scan), and refusing to list (back to SQL)."""
    plan = request.param
    made = DuckDBEngine(tile_min_compression=0.0 if plan == "tiles" else float("inf"),
                        window_plan="ranges" if plan.startswith("ranges") else "sql")
    if plan == "ranges":                        # rows in chunks of 3: many chunks per query
        made._range_chunk = 3
    if plan == "ranges-listed":                 # rows scan one step, then list their events
        made._range_depth = 1
    if plan == "ranges-refused":
        made._range_depth, made._range_limit = 0, 0
    yield made
    made.close()
