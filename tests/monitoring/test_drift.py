"""Drift statistics against scipy (property tests), mergeable counts, the sketches' error
bounds, bad input, and the decision rule's false-alarm rate and power over many seeds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from closedloop.errors import MonitoringError
from closedloop.monitoring import (
    DriftDetector,
    DriftRule,
    Persistence,
    chi_square,
    compare,
    count,
    fit_reference,
    js_distance,
    kl_divergence,
    ks_statistic,
    psi,
    psi_null_threshold,
    wasserstein_normed,
)
from closedloop.monitoring.cells import Binner, Quantiles
from closedloop.monitoring.reference import Binning, Reference

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=2, max_size=60)   # scipy's asymptotic KS divides by n − 1


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), min_size=2, max_size=12))
def test_chi_square_is_scipys_contingency_test(pairs: list[tuple[int, int]]) -> None:
    ref, cur = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    got = chi_square(ref, cur)
    keep = (ref + cur) > 0
    if ref.sum() == 0 or cur.sum() == 0 or keep.sum() < 2:
        assert (got.statistic, got.p_value) == (0.0, 1.0)
        return
    want = stats.chi2_contingency(np.stack([ref[keep], cur[keep]]), correction=False)
    assert got.dof == want.dof
    assert got.statistic == pytest.approx(want.statistic, rel=1e-9, abs=1e-9)
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-9, abs=1e-12)


@given(samples, samples)
def test_ks_and_wasserstein_are_scipys(a: list[float], b: list[float]) -> None:
    want_d = stats.ks_2samp(a, b, method="asymp").statistic
    assert ks_statistic(a, b) == pytest.approx(want_d, abs=1e-12)
    want = stats.wasserstein_distance(a, b) / max(float(np.std(a)), 0.001)
    assert wasserstein_normed(a, b) == pytest.approx(want, rel=1e-9, abs=1e-9)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=10).filter(lambda p: sum(p) > 0),
       st.lists(st.floats(0, 1), min_size=2, max_size=10).filter(lambda p: sum(p) > 0))
def test_divergences_are_scipys(p: list[float], q: list[float]) -> None:
    n = min(len(p), len(q))
    p_, q_ = np.array(p[:n]), np.array(q[:n])
    if p_.sum() == 0 or q_.sum() == 0:
        return
    from scipy.spatial import distance

    assert js_distance(p_, q_) == pytest.approx(distance.jensenshannon(p_, q_), abs=1e-7)
    floor_p, floor_q = np.maximum(p_, 1e-4), np.maximum(q_, 1e-4)
    assert kl_divergence(p_, q_) == pytest.approx(stats.entropy(floor_p, floor_q), abs=1e-9)
    assert psi(p_, p_) == 0.0
    assert psi(p_, q_) >= 0


def test_statistics_refuse_bad_input() -> None:
    with pytest.raises(MonitoringError, match="bins"):
        psi([0.5, 0.5], [1.0])
    with pytest.raises(MonitoringError, match="negative or non-finite"):
        kl_divergence([0.5, np.nan], [0.5, 0.5])
    with pytest.raises(MonitoringError, match="no values"):
        ks_statistic([np.nan], [1.0])
    with pytest.raises(MonitoringError, match="no PSI threshold"):
        psi_null_threshold(0, 10, 10)


values = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.none())
rows = st.lists(st.tuples(values, st.sampled_from(["a", "b", "c", "new", None])), max_size=40)


@settings(max_examples=60)
@given(rows, rows)
def test_counts_merge_by_addition(first: list[Any], second: list[Any]) -> None:
    rng = np.random.default_rng(1)
    reference = fit_reference(pa.table({"x": rng.normal(size=300),
                                        "c": rng.choice(["a", "b", "c"], 300)}))

    def table(part: list[Any]) -> pa.Table:
        return pa.table({"x": pa.array([r[0] for r in part], pa.float64()),
                         "c": pa.array([r[1] for r in part], pa.string())})
    merged = count(reference, table(first)) + count(reference, table(second))
    whole = count(reference, table(first + second))
    assert merged.rows == whole.rows == len(first) + len(second)
    for name in ("x", "c"):
        a, b = merged.columns[name], whole.columns[name]
        assert a.counts.tolist() == b.counts.tolist()
        assert (a.missing, a.nonfinite, a.out_of_range) == (b.missing, b.nonfinite,
                                                             b.out_of_range)
        assert a.below == pytest.approx(b.below)
        assert a.above == pytest.approx(b.above)
    nan, inf = sum(r[0] is None or r[0] != r[0] for r in first + second), sum(
        r[0] in (float("inf"),) for r in first + second)
    assert (whole.columns["x"].missing, whole.columns["x"].nonfinite) == (nan, inf)
    assert whole.columns["c"].counts[-1] == sum(r[1] == "new" for r in first + second)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.floats(-1, 1), st.floats(0.5, 2), st.integers(20, 3000))
def test_sketches_hold_the_exact_values(seed: int, shift: float, scale: float,
                                        n: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=2000)
    cur = rng.normal(shift, scale, size=n)
    reference = fit_reference(pa.table({"x": ref}), binning=Binning(resolution=64))
    got = compare(reference, count(reference, pa.table({"x": cur}))).columns["x"]
    exact_ks, exact_w = ks_statistic(ref, cur), wasserstein_normed(ref, cur)
    assert got.ks - 1e-12 <= exact_ks <= got.ks + got.ks_error + 1e-12
    assert abs(got.wasserstein - exact_w) <= got.wasserstein_error + 1e-9


def _reference() -> Reference:
    rng = np.random.default_rng(7)
    return fit_reference(pa.table({"x": rng.normal(size=5000),
                                   "c": rng.choice(["a", "b"], 5000),
                                   "empty": pa.nulls(5000, pa.float64())}), model="m",
                         run_id="r1")


def test_bad_windows_have_defined_results() -> None:
    reference = _reference()
    none = compare(reference, count(reference, pa.table({"x": pa.array([], pa.float64())})))
    assert none.rows == 0
    assert not none.drifted
    assert {c.status for c in none.columns.values()} == {"no_values"}
    assert np.isnan(none.columns["x"].psi)                      # NaN, never a silent 0
    nans = compare(reference, count(reference, pa.table({"x": [np.nan] * 10,
                                                         "c": ["zz"] * 10})))
    assert nans.columns["x"].status == "no_values"
    assert nans.columns["x"].missing_share == 1
    assert nans.columns["c"].unseen_share == 1.0                # a category never seen
    assert nans.columns["empty"].status == "absent"             # not in the window at all
    assert reference.columns["empty"].missing == 5000           # all-NaN reference column
    assert compare(reference, count(reference, pa.table({"empty": [1.0] * 200}))
                   ).columns["empty"].status == "no_values"
    with pytest.raises(MonitoringError, match="numeric in the reference"):
        count(reference, pa.table({"x": ["1.0"]}))
    other = fit_reference(pa.table({"x": [1.0, 2.0]}), model="m", run_id="r2")
    with pytest.raises(MonitoringError, match="another reference"):
        compare(other, count(reference, pa.table({"x": [1.0]})))
    with pytest.raises(MonitoringError, match="different references"):
        _ = count(other, pa.table({"x": [1.0]})) + count(reference, pa.table({"x": [1.0]}))


def test_reference_round_trips_through_json() -> None:
    reference = _reference()
    again = Reference.from_json(reference.to_json())
    assert again.to_json() == reference.to_json()
    assert again.hash == reference.hash
    assert again.columns["x"] == reference.columns["x"]


def _alarms(reference: Reference, n: int, shift: float, seeds: int) -> float:
    """The share of windows of ``n`` rows in which any column drifts."""
    rule = DriftRule()
    hits = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        window = pa.table({f"x{j}": rng.normal(shift if j == 0 else 0.0, 1, n)
                           for j in range(4)} | {"c": rng.choice(["a", "b", "c"], n,
                                                                 p=[0.5, 0.3, 0.2])})
        hits += bool(compare(reference, count(reference, window), rule).drifted)
    return hits / seeds


@pytest.fixture(scope="module")
def wide() -> Reference:
    rng = np.random.default_rng(3)
    n = 20_000
    return fit_reference(pa.table({f"x{j}": rng.normal(size=n) for j in range(4)}
                                  | {"c": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])}))


@pytest.mark.parametrize("n", [200, 2_000, 20_000])
def test_false_alarms_stay_under_the_rate(wide: Reference, n: int) -> None:
    """Undrifted windows of every size alarm at most at the configured rate (1%, across the
    five columns), over 300 seeds: at most 3 + the binomial 99.9% margin would be 8; the
    correction is conservative, so we ask for at most 3."""
    assert _alarms(wide, n, 0.0, 300) <= DriftRule().alpha


@pytest.mark.parametrize(("n", "shift"), [(200, 0.5), (2_000, 0.2), (20_000, 0.1)])
def test_real_shifts_are_caught_at_every_size(wide: Reference, n: int, shift: float) -> None:
    assert _alarms(wide, n, shift, 50) >= 0.95


def test_a_detector_merges_workers_and_persistence_needs_k_of_w() -> None:
    reference = _reference()
    rng = np.random.default_rng(5)
    a, b = DriftDetector(reference), DriftDetector(reference)
    a.update(pa.table({"x": rng.normal(1, 1, 500)}))
    b.update(pa.table({"x": rng.normal(1, 1, 500)}))
    a.merge(b.counts_)
    assert a.counts_.columns["x"].n == 1000
    assert a.result.drifted == ("x",)
    persistence = Persistence(k=2, w=3)
    calm = compare(reference, count(reference, pa.table(
        {"x": np.random.default_rng(11).normal(0, 1, 500)})))
    assert calm.drifted == ()
    assert persistence.update(a.result) == ()
    assert persistence.update(calm) == ()
    assert persistence.update(a.result) == ("x",)
    with pytest.raises(MonitoringError, match="impossible"):
        Persistence(k=3, w=2)


awkward = st.one_of(finite, st.sampled_from([0.0, -0.0, 1.0, 1e-300, -1e300, 1e300, 5e-324]))


@given(st.lists(awkward, min_size=1, max_size=300),
       st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_quantiles_by_cells_are_numpys_to_the_bit(data: list[float],
                                                  levels: list[float]) -> None:
    x, q = np.array(data), np.unique(np.array(levels))
    fitted = Quantiles(x)
    got = fitted.quantiles(q)
    assert got.tolist() == np.quantile(x, q).tolist()
    edges = np.unique(got)
    assert fitted.below(edges).tolist() == np.searchsorted(np.sort(x), edges).tolist()


@given(st.lists(awkward, min_size=1, max_size=40), st.lists(awkward, max_size=300))
def test_binner_is_searchsorted(edges: list[float], data: list[float]) -> None:
    e, x = np.unique(np.array(edges)), np.array(data, dtype=np.float64)
    want = np.searchsorted(e, x, side="right")
    assert Binner(e).bins(x).tolist() == want.tolist()


def test_cells_agree_with_numpy_at_scale() -> None:
    """A million values of several shapes: the cells' paths (not the small-input fallbacks)."""
    rng = np.random.default_rng(2)
    levels = np.unique(np.concatenate([np.arange(1, 256) / 256, [0.001, 0.999]]))
    for x in (rng.normal(size=1_000_000), rng.lognormal(0, 2, 1_000_000),
              rng.integers(0, 50, 1_000_000).astype(float), np.repeat([1.0, 2.0], 500_000)):
        fitted = Quantiles(x)
        edges = fitted.quantiles(levels)
        assert edges.tolist() == np.quantile(x, levels).tolist()
        unique = np.unique(edges)
        assert fitted.below(unique).tolist() == np.searchsorted(np.sort(x), unique).tolist()
        assert np.array_equal(Binner(unique).bins(x), np.searchsorted(unique, x, side="right"))


values_or_gaps = st.one_of(st.floats(-50, 50), st.just(float("nan")), st.just(float("inf")),
                           st.none(), st.just("absent"))


def _violated(record: dict[str, Any], score: float, reference: Any) -> set[str]:
    """The constraints one record violates, written out one by one (the oracle)."""
    hits = set()
    for name in ("x", "y"):
        if name not in record:
            hits.add("schema_mismatch")
            continue
        value, ref = record[name], reference.columns[name]
        if value is None or value != value:
            hits.add("missing_input")
        elif value in (float("inf"), float("-inf")):
            hits.add("nonfinite_input")
        elif not ref.low <= value <= ref.high:
            hits.add("out_of_range")
    if "c" not in record:
        hits.add("schema_mismatch")
    elif record["c"] is None:
        hits.add("missing_input")
    elif record["c"] not in reference.columns["c"].categories:
        hits.add("unseen_category")
    if not 0.0 <= score <= 1.0:
        hits.add("score_out_of_range")
    return hits


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7_200), values_or_gaps, values_or_gaps,
                          st.sampled_from(["a", "b", "z", None, "absent"]),
                          st.floats(-0.5, 1.5) | st.just(float("nan"))), max_size=30),
       st.integers(1, 8))
def test_request_path_constraints_are_each_records(rows: list[Any], batch: int) -> None:
    """The constraints the server counts per window (buffered, checked as columns) are those
    each record violates, one by one; and what each flush reports sums to them."""
    from closedloop.monitoring.constraints import CONSTRAINTS
    from closedloop.monitoring.live import LiveCounts

    rng = np.random.default_rng(4)
    reference = fit_reference(pa.table({"x": rng.uniform(-10, 10, 200),
                                        "y": rng.uniform(0, 5, 200),
                                        "c": rng.choice(["a", "b"], 200),
                                        "(score)": rng.uniform(0, 1, 200)}))
    reported: dict[str, int] = {}

    def heard(counts: Any) -> None:
        for name, n in counts.items():
            reported[name] = reported.get(name, 0) + n
    hour = 3_600_000_000
    live = LiveCounts(reference, window_micros=hour, batch=batch, on_violations=heard)
    want: dict[int, dict[str, int]] = {}
    for t, *values, score in rows:
        record = {k: v for k, v in zip("xyc", values, strict=True) if v != "absent"}
        live.observe(t * 1_000_000, record, score)
        tally = want.setdefault(t * 1_000_000 - t * 1_000_000 % hour, {})
        for name in _violated(record, score, reference):
            tally[name] = tally.get(name, 0) + 1
    states = live.states()
    assert {start: state.constraints for start, state in states.items()} == want
    totals = {name: sum(w.get(name, 0) for w in want.values()) for name in CONSTRAINTS}
    assert {k: v for k, v in reported.items() if v} == {k: v for k, v in totals.items() if v}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7_200), values_or_gaps,
                          st.sampled_from(["a", "b", "z", None]), st.floats(0, 1)),
                max_size=40), st.integers(1, 16))
def test_request_path_counts_are_the_batch_counts(rows: list[Any], batch: int) -> None:
    """What the server counts per prediction (buffered, per window) equals counting the
    same rows in one table, window by window."""
    from closedloop.monitoring.live import LiveCounts

    rng = np.random.default_rng(5)
    reference = fit_reference(pa.table({"x": rng.normal(size=300),
                                        "c": rng.choice(["a", "b"], 300),
                                        "(score)": rng.uniform(0, 1, 300)}))
    hour = 3_600_000_000
    live = LiveCounts(reference, window_micros=hour, batch=batch)
    records = []
    for t, x, c, score in rows:
        features = {k: v for k, v in (("x", x), ("c", c)) if v != "absent"}
        records.append((t * 1_000_000, features, score))
        live.observe(t * 1_000_000, features, score)
    live.flush()
    for start in sorted({r[0] - r[0] % hour for r in records}):
        mine = [r for r in records if r[0] - r[0] % hour == start]
        table = pa.table({"x": pa.array([r[1].get("x") for r in mine], pa.float64()),
                          "c": pa.array([r[1].get("c") for r in mine], pa.string()),
                          "(score)": pa.array([r[2] for r in mine], pa.float64())})
        want, got = count(reference, table), live.windows_[start]
        for name in ("x", "c", "(score)"):
            a, b = got.columns[name].to_dict(), want.columns[name].to_dict()
            for tail in ("below", "above"):        # sums added in another order
                assert a.pop(tail) == pytest.approx(b.pop(tail), rel=1e-9, abs=1e-12)
            assert a == b, name
