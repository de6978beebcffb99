"""Backfillability: from the raw sources, and from when — or only forward."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

DEFINITIONS = '''import closedloop as cl
cb = cl.LabelSource("cb", path="data/cb.parquet", subject="txn", timestamp="ts",
                    label="is_fraud", settled_at="settled_at", max_delay="30d", default=False)

user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="landing/txns", timestamp="ts", id="txn",
                      schema={"txn": str, "user_id": str, "amount": float, "device": str,
                              "score": float})
spend = cl.FeatureView("spend", entity=user, source=txns, version=1,
                       aggregations=[cl.Agg("amount", "sum", windows=["1w"])])
device = cl.FeatureView("device", entity=user, source=txns, version=1,
                        aggregations=[cl.Agg("device", "last", windows=["1d"])])
score = cl.FeatureView("score", entity=user, source=txns, version=1, features=["score"])


@cl.transform(inputs=["spend.amount_sum_1w", "request.amount"])
def share_of_week(c):
    return c["request.amount"] / (1 + c["spend.amount_sum_1w"])
'''

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def _rows(start: int, n: int, device: bool) -> pa.Table:
    return pa.table({"txn": [f"t{i}" for i in range(start, start + n)],
                     "user_id": ["u1"] * n, "amount": [1.0] * n,
                     "device": pa.array([f"d{i}" if device else None for i in range(n)],
                                        pa.string()),
                     "score": pa.nulls(n, pa.float64()),          # exported, never filled
                     "ts": pa.array([T0 + timedelta(days=start + i) for i in range(n)], STAMP)})


def test_history_reaches_back_as_far_as_rows_carry_the_columns(make_project: Any) -> None:
    p = make_project(DEFINITIONS)
    p.data.ingest("txns", _rows(0, 10, device=False), at=T0 + timedelta(days=30))
    p.data.ingest("txns", _rows(10, 5, device=True), at=T0 + timedelta(days=30))
    spend = p.features.backfillability("spend.amount_sum_1w")
    assert spend.backfillable
    assert spend.since == T0
    assert spend.complete_from == T0 + timedelta(days=7)
    device = p.features.backfillability("device.device_last_1d")
    assert device.backfillable
    assert device.since == T0 + timedelta(days=10)     # the column arrived on day 10
    score = p.features.backfillability("score.score")
    assert not score.backfillable
    assert score.since is None
    assert "forward only" in score.summary()
    share = p.features.backfillability("share_of_week")
    assert share.backfillable
    assert share.request_inputs == ("amount",)
    assert "needs training rows that carry amount" in share.summary()


def test_a_source_with_no_data_yet_is_forward_only(make_project: Any) -> None:
    p = make_project(DEFINITIONS)
    got = p.features.backfillability("spend.amount_sum_1w")
    assert not got.backfillable
    assert "no history" in got.summary()


def test_a_late_starting_history_says_what_older_rows_get_and_when_a_model_can_train(
        make_project: Any) -> None:
    """A feature whose history begins on day 10 gives older training rows nothing, and with
    a 30-day label delay a model could first train on it at a cutoff of day 11 + 30 (its
    1-day window full on day 11)."""
    p = make_project(DEFINITIONS)
    p.data.ingest("txns", _rows(0, 10, device=False), at=T0 + timedelta(days=30))
    p.data.ingest("txns", _rows(10, 5, device=True), at=T0 + timedelta(days=30))
    device = p.features.backfillability("device.device_last_1d", labels="cb")
    assert device.first_cutoff == T0 + timedelta(days=11 + 30)
    text = device.summary()
    assert "training rows before 2026-01-11T00:00:00Z get nothing of it" in text, text
    assert "a model can first train on it at a cutoff of 2026-02-11T00:00:00Z" in text, text
    score = p.features.backfillability("score.score", labels="cb")
    assert "can train on it only 30d after its rows begin to arrive" in score.summary()
