"""The label store: maturity at a training cutoff, the delay report, strategies writing into it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.data.labels import SETTLED, delay_report, mature
from closedloop.data.sources import LabelSource
from closedloop.errors import DataError

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STAMP = pa.timestamp("us", tz="UTC")


def _source(max_days: int, default: Any) -> LabelSource:
    return LabelSource("cb", path="cb", subject="txn", timestamp="ts", label="fraud",
                       settled_at="settled", max_delay=f"{max_days}d" if max_days else "0s",
                       default=default)


def _reference(rows: list[dict[str, Any]], labels: list[dict[str, Any]], max_delay: timedelta,
               cutoff: datetime, default: Any) -> list[tuple[Any, ...]]:
    """The maturity rule restated in plain Python, one row at a time."""
    out = []
    for row in rows:
        if row["ts"] + max_delay > cutoff:
            continue                                   # the window is still open
        known = [lab for lab in labels if lab["txn"] == row["txn"] and lab["ts"] == row["ts"]
                 and lab["settled"] <= cutoff]
        if known:
            best = max(known, key=lambda lab: (lab["settled"], lab["fraud"]))
            out.append((row["txn"], row["ts"], best["fraud"], best["settled"]))
        elif default is not None:
            out.append((row["txn"], row["ts"], default, None))
    return out


@st.composite
def histories(draw: Any) -> tuple[Any, ...]:
    n = draw(st.integers(1, 25))
    rows = [{"txn": f"t{draw(st.integers(0, 12))}", "ts": T0 + draw(st.integers(0, 40)) * DAY,
             "amount": float(i)} for i in range(n)]
    labels = []
    for _ in range(draw(st.integers(0, 30))):
        base = draw(st.sampled_from(rows)) if draw(st.booleans()) else {
            "txn": f"t{draw(st.integers(0, 12))}", "ts": T0 + draw(st.integers(0, 40)) * DAY}
        labels.append({"txn": base["txn"], "ts": base["ts"],
                       "settled": base["ts"] + draw(st.integers(0, 40)) * DAY
                       + timedelta(hours=draw(st.integers(0, 23))),
                       "fraud": draw(st.booleans())})
    max_days = draw(st.sampled_from([0, 1, 7, 30]))
    cutoff = T0 + draw(st.integers(0, 80)) * DAY + timedelta(hours=draw(st.integers(0, 23)))
    default = draw(st.sampled_from([None, False]))
    return rows, labels, max_days, cutoff, default


def _tables(rows: list[dict[str, Any]], labels: list[dict[str, Any]]) -> tuple[pa.Table, ...]:
    row_table = pa.table({"txn": [r["txn"] for r in rows],
                          "ts": pa.array([r["ts"] for r in rows], STAMP),
                          "amount": [r["amount"] for r in rows]})
    label_table = pa.table({"txn": pa.array([x["txn"] for x in labels], pa.string()),
                            "ts": pa.array([x["ts"] for x in labels], STAMP),
                            "settled": pa.array([x["settled"] for x in labels], STAMP),
                            "fraud": pa.array([x["fraud"] for x in labels], pa.bool_())})
    return row_table, label_table


@settings(max_examples=300, deadline=None)
@given(histories())
def test_no_training_row_uses_a_label_settled_after_its_cutoff_or_an_open_window(
        case: tuple[Any, ...]) -> None:
    rows, labels, max_days, cutoff, default = case
    source = _source(max_days, default)
    row_table, label_table = _tables(rows, labels)
    got, report = mature(row_table, label_table, source, cutoff)
    # The invariants themselves, row by row...
    for r in got.to_pylist():
        assert r["ts"] + timedelta(days=max_days) <= cutoff
        assert r[SETTLED] is None or r[SETTLED] <= cutoff
    # ...and the whole answer against the rule restated in plain Python, in row order.
    want = _reference(rows, labels, timedelta(days=max_days), cutoff, default)
    have = [(r["txn"], r["ts"], r["fraud"], r[SETTLED]) for r in got.to_pylist()]
    assert have == want
    assert report.matured + report.maturing == len(rows)
    assert report.taken == got.num_rows
    assert report.ignored_labels == sum(x["settled"] > cutoff for x in labels)


def test_a_label_settled_after_the_cutoff_is_never_seen() -> None:
    source = _source(60, False)
    rows, labels = _tables(
        [{"txn": "a", "ts": T0, "amount": 1.0}],
        [{"txn": "a", "ts": T0, "settled": T0 + 20 * DAY, "fraud": True}])
    early, _ = mature(rows, labels, source, T0 + 61 * DAY)
    assert early["fraud"].to_pylist() == [True]
    before, report = mature(rows, labels, source, T0 + 10 * DAY)
    assert before.num_rows == 0                    # window open: not a negative, not taken
    assert report.maturing == 1


def test_delay_report_figures(tmp_path: Any) -> None:
    source = _source(30, False)
    rng = np.random.default_rng(0)
    event = T0 + np.arange(200) * DAY / 4
    delays = rng.integers(0, 40 * 24, size=200)           # hours, some beyond 30 days
    labels = pa.table({"ts": pa.array(list(event), STAMP),
                       "settled": pa.array([e + timedelta(hours=int(h))
                                            for e, h in zip(event, delays, strict=True)],
                                           STAMP)})
    at = T0 + 100 * DAY
    population = (np.array([int((T0 + i * DAY).timestamp()) for i in range(100)]) * 1_000_000)
    report = delay_report(labels, source, at, population)
    seen = np.array([e + timedelta(hours=int(h)) <= at for e, h in zip(event, delays,
                                                                      strict=True)])
    days = delays[seen] / 24
    assert report.labels == seen.sum()
    assert report.delay(0.5) == pytest.approx(np.quantile(days, 0.5))
    assert report.late == int((days > 30).sum())
    assert report.population == 100
    assert report.maturing == 29                   # days 71..99: their windows close after day 100
    assert report.first_training_forward_only == at + 30 * DAY
    assert sum(n for _, n in report.histogram) == report.labels
    assert any("still maturing" in line for line in report.lines())


DEFINITIONS = '''import closedloop as cl

user = cl.Entity("user", key="user_id")
txns = cl.EventSource("txns", path="landing/txns", timestamp="ts", id="txn",
                      schema={"txn": str, "user_id": str, "amount": float})
cb = cl.LabelSource("cb", path="landing/cb", subject="txn", timestamp="ts", label="fraud",
                    settled_at="settled", max_delay="30d", default=False,
                    schema={"txn": str, "fraud": bool})
clicks = cl.LabelSource("clicks", path="landing/clicks", subject="shown", timestamp="ts",
                        label="clicked", settled_at="settled", max_delay="30m")
spend = cl.FeatureView("spend", entity=user, source=txns, version=1,
                       aggregations=[cl.Agg("amount", "sum", windows=["30d"])])
'''


@pytest.fixture
def project(make_project: Any, tmp_path: Any) -> Any:
    p = make_project(DEFINITIONS)
    txns = pa.table({"txn": [f"t{i}" for i in range(60)],
                     "user_id": [f"u{i % 3}" for i in range(60)],
                     "amount": [float(i) for i in range(60)],
                     "ts": pa.array([T0 + i * DAY for i in range(60)], STAMP)})
    pq.write_table(txns, tmp_path / "txns.parquet")
    p.data.ingest("txns", tmp_path / "txns.parquet", at=T0)
    cb = pa.table({"txn": ["t1", "t5", "t40"],
                   "ts": pa.array([T0 + DAY, T0 + 5 * DAY, T0 + 40 * DAY], STAMP),
                   "settled": pa.array([T0 + 10 * DAY, T0 + 50 * DAY, T0 + 45 * DAY], STAMP),
                   "fraud": [True, True, True]})
    pq.write_table(cb, tmp_path / "cb.parquet")
    p.data.ingest("cb", tmp_path / "cb.parquet", at=T0 + 60 * DAY)
    return p


def test_training_sets_take_only_matured_rows_with_labels_known_at_the_cutoff(
        project: Any) -> None:
    rows = project.data.read("txns", ["txn", "user_id", "ts"])
    cutoff = T0 + 40 * DAY
    got = project.features.training_set(rows, ["spend.amount_sum_30d"], labels="cb",
                                        cutoff=cutoff).sort_by("txn")
    taken = got["txn"].to_pylist()
    assert len(taken) == 11                          # t0..t10: windows closed by day 40
    fraud = dict(zip(taken, got["fraud"].to_pylist(), strict=True))
    assert fraud["t1"] is True
    assert fraud["t5"] is False                      # its chargeback settles on day 50
    assert "t40" not in fraud
    assert "spend.amount_sum_30d" in got.column_names


def test_training_with_no_matured_label_is_a_clear_error(project: Any) -> None:
    rows = project.data.read("txns", ["txn", "user_id", "ts"])
    with pytest.raises(DataError, match="no row has a matured label"):
        project.features.training_set(rows, ["spend.amount_sum_30d"], labels="cb",
                                      cutoff=T0 + 10 * DAY)


def test_label_delay_report_over_a_population_source(project: Any) -> None:
    report = project.data.label_delay("cb", population="txns", at=T0 + 60 * DAY)
    assert report.labels == 3
    assert report.population == 60
    assert report.maturing == 29                     # days 31..59 are inside the 30-day window
    assert report.late == 1                          # t5 took 45 days, the max is 30
    assert report.first_training_forward_only == T0 + 90 * DAY


def test_human_labels_go_to_the_store_with_their_rule_and_agreement(project: Any) -> None:
    annotations = pa.table({
        "txn": ["t1", "t1", "t1", "t2", "t2"],
        "ts": pa.array([T0 + DAY] * 3 + [T0 + 2 * DAY] * 2, STAMP),
        "fraud": [True, True, False, False, False],
        "annotator": ["ann", "bob", "cy", "ann", "bob"],
        "annotated_at": pa.array([T0 + 3 * DAY, T0 + 4 * DAY, T0 + 5 * DAY,
                                  T0 + 3 * DAY, T0 + 3 * DAY], STAMP)})
    resolved, written = project.data.label_by_humans("cb", annotations, at=T0 + 60 * DAY)
    assert resolved.agreement_rate == 0.5
    assert written.accepted == 2
    held = [r for r in project.data.labels("cb").to_pylist()
            if r["provenance"] == "human:majority"]
    by = {r["txn"]: r for r in held}
    assert by["t1"]["fraud"] is True
    assert by["t1"]["settled"] == T0 + 5 * DAY       # the last annotation
    assert by["t1"]["confidence"] == pytest.approx(2 / 3)
    again = project.data.label_by_humans("cb", annotations, at=T0 + 61 * DAY)[1]
    assert again.accepted == 0


def test_weak_labels_go_to_the_store_with_the_label_models_confidence(project: Any) -> None:
    rows = project.data.read("txns", ["txn", "ts", "amount"])

    def big(r: dict[str, Any]) -> int:
        return 1 if r["amount"] > 30 else 0

    def odd(r: dict[str, Any]) -> int | None:
        return 1 if r["amount"] % 2 else None

    summary, written = project.data.label_weakly("cb", rows, [big, odd],
                                                 classes=[False, True], at=T0 + 61 * DAY)
    assert [s.function for s in summary] == ["big", "odd"]
    assert summary[0].coverage == 1.0
    assert written.accepted == 60
    weak = [r for r in project.data.labels("cb").to_pylist()
            if r["provenance"] == "weak:dawid-skene"]
    assert len(weak) == 60
    assert all(0.5 <= r["confidence"] <= 1.0 for r in weak)


def test_implicit_labels_settle_when_the_window_closes(project: Any) -> None:
    shown = pa.table({"shown": ["s1", "s2", "s3"], "user_id": ["u1", "u1", "u2"],
                      "ts": pa.array([T0, T0 + DAY, T0 + 2 * DAY], STAMP)})
    clicks = pa.table({"user_id": ["u1", "u2"],
                       "ts": pa.array([T0 + timedelta(minutes=10),
                                       T0 + 2 * DAY + timedelta(hours=2)], STAMP)})
    at = T0 + DAY + timedelta(minutes=10)            # s2's window is still open then
    written = project.data.label_implicitly("clicks", shown, clicks, key="user_id",
                                            window=timedelta(minutes=30), at=at)
    assert written.accepted == 1                     # s1 only: s2 and s3 are not known yet
    held = project.data.labels("clicks").to_pylist()
    assert [(r["shown"], r["clicked"], r["provenance"]) for r in held] == [
        ("s1", 1, "implicit:30m")]
    assert held[0]["settled"] == T0 + timedelta(minutes=30)
