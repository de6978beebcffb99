"""Evaluation: metrics against scikit-learn, and intervals that cover the truth at roughly
their nominal rate on simulated data."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from closedloop.training.evaluation import (
    _groups,
    comparison,
    delong,
    delong_difference,
    fairness,
    metrics,
    slice_metrics,
    univariate_aucs,
)


def _world(rng: np.random.Generator, n: int, beta: float = 1.2) -> tuple[np.ndarray, ...]:
    """A score x and a label drawn from a logistic model of it; the slice a is a shift."""
    a = rng.random(n) < 0.4
    x = rng.normal(size=n) + 0.3 * a
    y = (rng.random(n) < 1 / (1 + np.exp(-(beta * x - 1.5)))).astype(np.int64)
    return x, y, a


def test_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    x, y, _ = _world(rng, 5000)
    p = 1 / (1 + np.exp(-(x - 1)))
    m = metrics(y, p)
    assert m.auc is not None
    assert m.auc.value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m.log_loss.value == pytest.approx(sk_log_loss(y, p), abs=1e-12)
    assert m.brier.value == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m.average_precision == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert 0 <= m.ece <= 1
    assert sum(b["rows"] for b in m.reliability) == 5000


def test_delong_intervals_cover_the_population_auc_at_their_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    big_x, big_y, _ = _world(rng, 2_000_000)
    truth = roc_auc_score(big_y, big_x)
    trials = 400
    covered = sum(delong(*reversed(_world(rng, 1500)[:2])).covers(truth)
                  for _ in range(trials))
    assert 0.92 <= covered / trials <= 0.98, covered / trials


def test_slice_intervals_cover_each_slices_truth() -> None:
    rng = np.random.default_rng(11)
    big_x, big_y, big_a = _world(rng, 2_000_000)
    truths = {"True": roc_auc_score(big_y[big_a], big_x[big_a]),
              "False": roc_auc_score(big_y[~big_a], big_x[~big_a])}
    hits = {"True": 0, "False": 0}
    trials = 200
    for _ in range(trials):
        x, y, a = _world(rng, 3000)
        for s in slice_metrics(y, x, a.tolist(), min_size=100):
            lo, hi = s["auc"]["low"], s["auc"]["high"]
            hits[s["slice"]] += lo <= truths[s["slice"]] <= hi
    for name, hit in hits.items():
        assert 0.91 <= hit / trials <= 0.99, (name, hit / trials)


def test_paired_difference_is_zero_for_the_same_scores_and_detects_a_better_model() -> None:
    rng = np.random.default_rng(3)
    x, y, _ = _world(rng, 4000)
    same = delong_difference(y, x, x)
    assert same.value == 0.0
    noisy = x + rng.normal(scale=2.0, size=x.size)
    better = delong_difference(y, x, noisy)
    assert better.low > 0
    assert better.value == pytest.approx(roc_auc_score(y, x) - roc_auc_score(y, noisy))
    cmp = comparison(y, 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(-noisy)))
    assert cmp["auc_difference"]["low"] > 0


def test_small_slices_are_named_not_scored_and_floats_are_cut_at_quartiles() -> None:
    rng = np.random.default_rng(5)
    x, y, _ = _world(rng, 2000)
    values = ["big"] * 1950 + ["tiny"] * 50
    got = {s["slice"]: s for s in slice_metrics(y, x, values, min_size=100)}
    assert got["big"]["scored"] is True
    assert got["tiny"]["scored"] is False
    assert "too small" in got["tiny"]["reason"]
    quartiles = slice_metrics(y, x, x.tolist(), min_size=100)
    assert len(quartiles) == 4
    assert sum(s["rows"] for s in quartiles) == 2000


def test_fairness_differences() -> None:
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.2, 0.1, 0.1])
    group = ["a"] * 4 + ["b"] * 4
    got = fairness(y, p, group, threshold=0.5)
    assert got["demographic_parity_difference"] == pytest.approx(0.75 - 0.25)
    assert got["equal_opportunity_difference"] == pytest.approx(1.0 - 0.5)


def test_univariate_auc_finds_a_feature_that_is_the_label() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 1000)
    X = np.column_stack([rng.normal(size=1000), y + rng.normal(scale=0.01, size=1000)])
    X[::10, 0] = np.nan
    got = univariate_aucs(X, y, ["noise", "leak"])
    assert got["leak"] > 0.99
    assert got["noise"] < 0.6


def test_table_hash_is_of_the_values_not_the_buffers() -> None:
    import pyarrow as pa

    from closedloop.training.lineage import table_hash

    t = pa.table({"x": [1.0, None, 3.0], "s": ["a", None, "ccc"],
                  "t": pa.array([1, 2, None], pa.timestamp("us", tz="UTC"))})
    rechunked = pa.concat_tables([t.slice(0, 1), t.slice(1)])
    assert table_hash(t) == table_hash(rechunked)
    assert table_hash(t) != table_hash(t.set_column(0, "x", pa.array([1.0, None, 3.5])))
    assert table_hash(t) != table_hash(t.set_column(1, "s", pa.array(["a", "", "ccc"])))
    assert table_hash(t) != table_hash(t.rename_columns(["y", "s", "t"]))


_cells = st.one_of(
    st.lists(st.none() | st.floats(-5, 5) | st.sampled_from([0.5, 1.5, math.nan]),
             min_size=1, max_size=60).map(lambda v: pa.array(v, pa.float64())),
    st.lists(st.none() | st.integers(-3, 12), min_size=1, max_size=60).map(
        lambda v: pa.array(v, pa.int64())),
    st.lists(st.none() | st.sampled_from(["x", "y", "missing", "é"]), min_size=1,
             max_size=60).map(lambda v: pa.array(v, pa.string())),
    st.lists(st.none() | st.booleans(), min_size=1, max_size=60).map(
        lambda v: pa.array(v, pa.bool_())),
)


@settings(max_examples=200, deadline=None)
@given(column=_cells)
def test_arrow_groups_equal_python_groups(column: pa.Array) -> None:
    """Slices of an Arrow column are the slices of its Python values, row for row."""
    names, index = _groups(pa.chunked_array([column[:3], column[3:]]))
    want_names, want_index = _groups(column.to_pylist())
    assert names == want_names
    assert index.tolist() == np.asarray(want_index).tolist()


_feature_columns = st.lists(st.one_of(
    st.lists(st.none() | st.floats(-1e6, 1e6), min_size=9, max_size=9).map(
        lambda v: pa.array(v, pa.float64())),
    st.lists(st.none() | st.integers(-(2**40), 2**40), min_size=9, max_size=9).map(
        lambda v: pa.array(v, pa.int64())),
    st.lists(st.none() | st.booleans(), min_size=9, max_size=9).map(
        lambda v: pa.array(v, pa.bool_())),
    st.lists(st.none() | st.integers(0, 2**50), min_size=9, max_size=9).map(
        lambda v: pa.array(v, pa.int64()).cast(pa.timestamp("us", tz="UTC"))),
), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(columns=_feature_columns, cut=st.integers(0, 9), offset=st.integers(0, 3))
def test_feature_matrix_is_each_value_as_a_float_nulls_nan(columns, cut, offset) -> None:  # type: ignore[no-untyped-def]
    """Whatever the chunking and slicing of the columns (views of their buffers are read)."""
    from closedloop.training import matrix as service

    names = [f"f{i}" for i in range(len(columns))]
    table = pa.table({n: pa.chunked_array([c[:cut], c[cut:]], c.type)
                      for n, c in zip(names, columns, strict=True)}).slice(offset)
    got = service.feature_matrix(table, names)
    assert got.flags["C_CONTIGUOUS"]
    for j, n in enumerate(names):
        column = table[n]
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        for i, v in enumerate(column.to_pylist()):
            want = math.nan if v is None else float(v)
            assert got[i, j] == want or (math.isnan(got[i, j]) and math.isnan(want)), (n, i)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", "c"])),
                     max_size=12), presort=st.booleans())
def test_rows_in_time_order_are_the_sorted_rows(rows, presort) -> None:  # type: ignore[no-untyped-def]
    """Rows already in (time, subject) order are kept as they are; any others are sorted."""
    from closedloop.training.build import _time_ordered

    if presort:
        rows = sorted(rows)
    table = pa.table({"t": pa.array([t for t, _ in rows], pa.int64()).cast(
        pa.timestamp("us", tz="UTC")), "s": pa.array([s for _, s in rows], pa.string())})
    want = table.sort_by([("t", "ascending"), ("s", "ascending")])
    assert _time_ordered(table, "t", "s").equals(want)


def _reference_hash(table: pa.Table) -> str:
    """table_hash written plainly: per column, whole, nulls filled, its bytes digested; then
    the names, types, lengths and column digests digested."""
    import hashlib

    import pyarrow.compute as pc

    top = hashlib.sha256()
    for name, column in zip(table.column_names, table.columns, strict=True):
        top.update(f"{name}\x1f{column.type}\x1f{len(column)}\x1e".encode())
        digest = hashlib.sha256()
        digest.update(np.packbits(pc.is_null(column).to_numpy(zero_copy_only=False)).tobytes())
        kind = column.type
        if pa.types.is_timestamp(kind):
            column, kind = pc.cast(column, pa.int64()), pa.int64()
        zero = False if pa.types.is_boolean(kind) else pa.scalar(0, kind)
        digest.update(pc.fill_null(column, zero).to_numpy(zero_copy_only=False).tobytes())
        top.update(digest.digest())
    return top.hexdigest()


@settings(max_examples=150, deadline=None)
@given(cells=st.lists(st.tuples(st.floats(-1e9, 1e9), st.integers(-(2**40), 2**40),
                                st.booleans(), st.booleans()), min_size=1, max_size=20),
       cut=st.integers(0, 20))
def test_table_hash_ignores_bytes_under_nulls_and_chunks(cells, cut) -> None:  # type: ignore[no-untyped-def]
    from closedloop.training.lineage import table_hash

    null = np.array([c[3] for c in cells])
    columns = {
        "f": pa.array(np.array([c[0] for c in cells]), mask=null),
        "i": pa.array(np.array([c[1] for c in cells], np.int64), mask=null),
        "b": pa.array(np.array([c[2] for c in cells]), mask=null),
        "t": pa.array(np.array([c[1] for c in cells], np.int64), mask=null).cast(
            pa.timestamp("us", tz="UTC")),
    }
    table = pa.table(columns)
    rechunked = pa.concat_tables([table.slice(0, cut), table.slice(cut)])
    assert table_hash(rechunked) == table_hash(table) == _reference_hash(table)
    # The same content with other bytes under the nulls hashes the same.
    other = pa.table({k: pa.array(np.where(null, 7, np.array(
        [c[1] for c in cells])).astype(v.type.to_pandas_dtype() if not pa.types.is_timestamp(
            v.type) else np.int64), mask=null).cast(v.type) if k in ("i", "t") else v
        for k, v in columns.items()})
    assert table_hash(other) == table_hash(table)


def test_an_isotonic_map_calibrates_overconfident_scores() -> None:
    from closedloop.errors import DefinitionError
    from closedloop.training.evaluation import calibrate, isotonic_map, reliability
    from closedloop.training.model import Model
    from closedloop.training.trainers import LightGBMTrainer

    rng = np.random.default_rng(4)
    truth = rng.uniform(0.05, 0.6, size=20_000)
    y = (rng.uniform(size=truth.size) < truth).astype(np.int64)
    scores = np.clip(truth * 1.6, 0, 1)                       # overconfident
    mapping = isotonic_map(y, scores)
    fixed = calibrate(scores, mapping)
    assert reliability(y, fixed)[0] < reliability(y, scores)[0] / 3
    assert np.all(np.diff(fixed[np.argsort(scores)]) >= 0)    # order kept: AUC unchanged
    assert calibrate(scores, None) is scores
    with pytest.raises(DefinitionError, match="calibration"):
        Model("m", features=["v.f"], label="l", rows="r", trainer=LightGBMTrainer(),
              calibration="platt")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=2, max_size=80))
def test_roc_curve_auc_and_confusion_agree_with_scikit_learn(pairs: list[tuple[int, int]]) -> None:
    from sklearn.metrics import confusion_matrix
    from sklearn.metrics import roc_curve as sk_roc_curve

    from closedloop.training.evaluation import auc, confusion, roc_curve

    y = np.array([a for a, _ in pairs])
    p = np.array([b / 20 for _, b in pairs])
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = sk_roc_curve(y, p, drop_intermediate=False)
        ours = roc_curve(y, p, points=10_000)
        want = list(zip(fpr, tpr, strict=True))
        assert [(c["fpr"], c["tpr"]) for c in ours] == pytest.approx(want)
        assert auc(y, p) == pytest.approx(roc_auc_score(y, p))
    for c in confusion(y, p, [0.5, 0.25]):
        tn, fp, fn, tp = confusion_matrix(y, p >= c["threshold"], labels=[0, 1]).ravel()
        assert (c["tn"], c["fp"], c["fn"], c["tp"]) == (tn, fp, fn, tp)


def test_permutation_importance_is_zero_for_a_feature_the_model_ignores() -> None:
    from closedloop.training.evaluation import permutation_importance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=3000), rng.normal(size=3000)
    y = (a + rng.normal(scale=0.5, size=3000) > 0).astype(int)
    X = pa.table({"a": a, "b": b})

    def score(table: pa.Table) -> np.ndarray:             # reads only a
        return 1 / (1 + np.exp(-table["a"].to_numpy()))

    got = permutation_importance(score, X, y, seed=3, max_rows=2000)
    assert got["b"] == 0.0
    assert got["a"] > 0.3
