"""Weak supervision on generated data with known truth: the Dawid–Skene label model recovers
each labeling function's accuracy and beats majority vote; summaries and bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.data.labeling import (
    ABSTAIN,
    DawidSkeneModel,
    MajorityVote,
    apply_functions,
    summarize,
)
from closedloop.errors import DataError


def _world(seed: int, n: int = 4000, accuracies: tuple[float, ...] = (
        0.92, 0.88, 0.6, 0.58, 0.56, 0.55, 0.55), coverage: float = 0.7,
           balance: float = 0.3) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Binary truth, and functions that vote with the given accuracies on a random share of
    rows (independently given the truth: the Dawid–Skene assumption)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < balance).astype(np.int64)
    votes = np.full((n, len(accuracies)), ABSTAIN, dtype=np.int64)
    for j, acc in enumerate(accuracies):
        on = rng.random(n) < coverage
        right = rng.random(n) < acc
        votes[on, j] = np.where(right[on], truth[on], 1 - truth[on])
    return votes, truth


def _accuracy(pred: np.ndarray[Any, Any], truth: np.ndarray[Any, Any]) -> float:
    labelled = pred != ABSTAIN
    return float((pred[labelled] == truth[labelled]).mean())


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_label_model_beats_majority_vote_where_accuracies_differ(seed: int) -> None:
    votes, truth = _world(seed)
    model = DawidSkeneModel(n_classes=2)
    model.fit(votes)
    ours = _accuracy(model.predict(votes), truth)
    vote = _accuracy(MajorityVote(n_classes=2).predict(votes), truth)
    assert ours > vote + 0.02, (ours, vote)


def test_it_recovers_each_functions_accuracy_and_the_class_balance() -> None:
    accuracies = (0.92, 0.88, 0.6, 0.58, 0.56, 0.55, 0.55)
    votes, _ = _world(3, n=20_000, accuracies=accuracies)
    model = DawidSkeneModel(n_classes=2)
    model.fit(votes)
    assert np.allclose(model.accuracies_, accuracies, atol=0.03), model.accuracies_
    assert model.class_balance_[1] == pytest.approx(0.3, abs=0.02)
    assert model.n_iter_ < model.max_iter


def test_three_classes_and_rows_without_votes() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, size=3000)
    votes = np.full((3000, 5), ABSTAIN)
    for j, acc in enumerate((0.9, 0.8, 0.5, 0.45, 0.45)):
        on = rng.random(3000) < 0.8
        wrong = (truth + rng.integers(1, 3, size=3000)) % 3
        votes[on, j] = np.where(rng.random(3000) < acc, truth, wrong)[on]
    votes[:50] = ABSTAIN
    model = DawidSkeneModel(n_classes=3)
    model.fit(votes)
    pred = model.predict(votes)
    assert (pred[:50] == ABSTAIN).all()
    assert np.allclose(model.predict_proba(votes)[:50], model.class_balance_)
    assert _accuracy(pred, truth) > _accuracy(MajorityVote(3).predict(votes), truth)


def test_functions_summaries_count_coverage_overlap_and_conflict() -> None:
    rows = [{"amount": a} for a in (5, 50, 500, 5000)]
    big = lambda r: 1 if r["amount"] > 100 else None  # noqa: E731
    small = lambda r: 0 if r["amount"] < 1000 else None  # noqa: E731
    never = lambda r: None  # noqa: E731
    votes = apply_functions([big, small, never], rows, n_classes=2)
    assert votes.tolist() == [[-1, 0, -1], [-1, 0, -1], [1, 0, -1], [1, -1, -1]]
    got = {s.function: s for s in summarize(votes, ["big", "small", "never"])}
    assert (got["big"].coverage, got["big"].overlap, got["big"].conflict) == (0.5, 0.25, 0.25)
    assert (got["small"].coverage, got["small"].overlap) == (0.75, 0.25)
    assert got["never"].coverage == 0.0


def test_bad_votes_and_bad_matrices_are_clear_errors() -> None:
    with pytest.raises(DataError, match="voted 2"):
        apply_functions([lambda r: 2], [{}], n_classes=2)
    with pytest.raises(DataError, match="raised KeyError"):
        apply_functions([lambda r: r["missing"]], [{}], n_classes=2)
    with pytest.raises(DataError, match="vote 5"):
        MajorityVote(2).predict(np.array([[5]]))
    with pytest.raises(DataError, match="2-D integers"):
        DawidSkeneModel().fit(np.array([0.5, 1.0]))
    with pytest.raises(DataError, match="not fitted"):
        DawidSkeneModel().predict(np.array([[1]]))
    model = DawidSkeneModel()
    model.fit(np.array([[1, 0], [0, 0]]))
    with pytest.raises(DataError, match="3 functions"):
        model.predict(np.array([[1, 0, 1]]))


def test_human_labels_majority_with_trust_breaking_ties() -> None:
    import pyarrow as pa

    from closedloop.data.labeling import resolve_human_labels

    rows = pa.table({"item": ["x", "x", "x", "y", "y", "z", "w", "w"],
                     "label": [1, 1, 0, 0, 1, 1, 0, 0],
                     "annotator": ["ann", "bo", "cy", "ann", "bo", "cy", "ann", "cy"]})
    plain = resolve_human_labels(rows)
    assert plain.labels["label"].to_pylist() == [1, 0, 1, 0]         # y's tie: the lower label
    assert plain.labels["agreement"].to_pylist() == [2 / 3, 0.5, 1.0, 1.0]
    assert plain.labels["annotators"].to_pylist() == [3, 2, 1, 2]
    # Items with 2+ annotators: x (split), y (split), w (unanimous).
    assert plain.agreement_rate == pytest.approx(1 / 3)
    assert plain.pairwise_agreement == pytest.approx((1 + 0 + 1) / (3 + 1 + 1))
    assert plain.conflicts == 2
    trusted = resolve_human_labels(rows, trust={"bo": 0.9, "ann": 0.5})
    assert trusted.labels["label"].to_pylist() == [1, 1, 1, 0]       # y's tie goes to bo


def test_human_labels_most_trusted_and_bad_input() -> None:
    import pyarrow as pa

    from closedloop.data.labeling import resolve_human_labels

    rows = pa.table({"doc": [1, 1, 1], "y": ["spam", "spam", "ham"], "who": ["a", "b", "c"]})
    got = resolve_human_labels(rows, item="doc", label="y", annotator="who",
                               rule="most_trusted", trust={"c": 1.0, "a": 0.2})
    assert got.labels["label"].to_pylist() == ["ham"]
    assert got.labels["rule"].to_pylist() == ["most_trusted"]
    with pytest.raises(DataError, match="needs the annotators' trust"):
        resolve_human_labels(rows, item="doc", label="y", annotator="who", rule="most_trusted")
    with pytest.raises(DataError, match=r"no column\(s\) \['item'"):
        resolve_human_labels(rows)
    with pytest.raises(DataError, match="unknown"):
        resolve_human_labels(rows, item="doc", label="y", annotator="who", rule="vote")
    twice = pa.table({"item": [1, 1], "label": [0, 1], "annotator": ["a", "a"]})
    with pytest.raises(DataError, match="more than once"):
        resolve_human_labels(twice)
    nulls = pa.table({"item": [1, None], "label": [0, 1], "annotator": ["a", "b"]})
    with pytest.raises(DataError, match="nulls"):
        resolve_human_labels(nulls)


def test_implicit_labels_from_later_events_in_the_attribution_window() -> None:
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from closedloop.data.labeling import implicit_labels

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    stamp = pa.timestamp("us", tz="UTC")

    def at(minutes: float) -> datetime:
        return t0 + timedelta(minutes=minutes)

    shown = pa.table({"user": ["a", "a", "b", "c", "a"],
                      "ts": pa.array([at(0), at(10), at(0), at(0), at(100)], stamp)})
    clicks = pa.table({"user": ["a", "a", "b", "b", "c"],
                       "ts": pa.array([at(5), at(12), at(0), at(31), at(1)], stamp),
                       "dwell": [40.0, 3.0, 60.0, 50.0, 45.0]})
    got = implicit_labels(shown, clicks, key="user", window=timedelta(minutes=30),
                          qualifies=lambda c: c["dwell"] >= 30)
    # a@0: the click at 5 (dwell 40); a@10: only a short dwell at 12; b@0: the click at the
    # same instant is not after it, the one at 31 is past the window; c@0: the click at 1;
    # a@100: nothing later.
    assert got["label"].to_pylist() == [1, 0, 0, 1, 0]
    assert got["event_at"].to_pylist() == [at(5), None, None, at(1), None]
    assert got["settled_at"].to_pylist() == [at(30), at(40), at(30), at(30), at(130)]
    assert got.column_names[:2] == ["user", "ts"]
    everything = implicit_labels(shown, clicks, key="user", window=timedelta(minutes=30))
    assert everything["label"].to_pylist() == [1, 1, 0, 1, 0]


def test_implicit_labels_bad_input() -> None:
    from datetime import UTC, datetime, timedelta

    import pyarrow as pa

    from closedloop.data.labeling import implicit_labels

    t = pa.array([datetime(2026, 3, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))
    shown = pa.table({"user": ["a"], "ts": t})
    with pytest.raises(DataError, match="positive timedelta"):
        implicit_labels(shown, shown, key="user", window=timedelta(0))
    with pytest.raises(DataError, match=r"no column\(s\) \['uid'\]"):
        implicit_labels(shown, shown, key="uid", window=timedelta(minutes=1))
    naive = pa.table({"user": ["a"], "ts": pa.array([datetime(2026, 3, 1)], pa.timestamp("us"))})
    with pytest.raises(DataError, match="naive timestamps"):
        implicit_labels(shown, naive, key="user", window=timedelta(minutes=1))
    ints = pa.table({"user": [1], "ts": t})
    with pytest.raises(DataError, match="cast one"):
        implicit_labels(shown, ints, key="user", window=timedelta(minutes=1))
    with pytest.raises(DataError, match="one bool per event"):
        implicit_labels(shown, shown, key="user", window=timedelta(minutes=1),
                        qualifies=lambda c: [True, False])
