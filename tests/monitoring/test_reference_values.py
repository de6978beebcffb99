"""The drift statistics reproduce the shared reference (``../shared/reference/drift``) to
1e-6: its generator makes the data (1M rows each, the first 100,000 read), its definitions
bin them the way Evidently does, and every value of ``values_100k.json`` is recomputed here
by closedloop — PSI on our own reference bins (deciles, with and without the guard bins),
the null threshold, KS and the normalised Wasserstein distance on the samples, and PSI, KL
and JS on Evidently's bins."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from tests.shared_reference import require

from closedloop.monitoring import (
    Binning,
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

ROWS = 100_000
TOLERANCE = 1e-6


def _module(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"shared_drift_{name}", folder / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The generator's files (1M rows each, as the values were made) and the definitions."""
    folder = require("drift/values_100k.json") / "drift"
    generator, definitions = _module(folder, "gen_data"), _module(folder, "definitions")
    out = tmp_path_factory.mktemp("drift")
    generator.make(1_000_000, np.random.default_rng(20240101), current=False).to_parquet(
        out / "reference.parquet", index=False)
    generator.make(1_000_000, np.random.default_rng(20240202), current=True).to_parquet(
        out / "current.parquet", index=False)
    values = json.loads((folder / "values_100k.json").read_text())
    assert values["n_rows_each"] == ROWS
    return {"ref": definitions.read_head(out / "reference.parquet", ROWS),
            "cur": definitions.read_head(out / "current.parquet", ROWS),
            "definitions": definitions, "values": values["columns"]}


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize(("tail", "key", "threshold"),
                         [(None, "psi_q10", "psi_null_thr_q10"),
                          (0.001, "psi_q10_tails", "psi_null_thr_tails")])
def test_psi_on_reference_bins(shared: dict[str, Any], tail: float | None, key: str,
                               threshold: str) -> None:
    ref, cur = pa.Table.from_pandas(shared["ref"]), pa.Table.from_pandas(shared["cur"])
    reference = fit_reference(ref, binning=Binning(tail=tail))
    window = count(reference, cur)
    result = compare(reference, window)
    for column, want in shared["values"].items():
        got = result.columns[column]
        assert _close(got.psi, want[key]), (column, got.psi, want[key])
        fitted = reference.columns[column]
        if fitted.kind == "numeric":
            bins = len(fitted.coarse) - 1
        else:                          # the reference's definition: levels in ref ∪ cur
            bins = int(((np.asarray(fitted.counts) + window.columns[column].counts) > 0).sum())
        assert _close(psi_null_threshold(len(ref), len(cur), bins), want[threshold]), column


@pytest.mark.slow
def test_exact_sample_statistics(shared: dict[str, Any]) -> None:
    for column, want in shared["values"].items():
        if not column.startswith("num_"):
            continue
        r, c = shared["ref"][column].to_numpy(), shared["cur"][column].to_numpy()
        assert _close(ks_statistic(r, c), want["ks_D"]), column
        assert _close(wasserstein_normed(r, c), want["ev_wass"]), column


def _evidently_fill(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``definitions.ev_binned``'s zero fill, on a copy (its in-place ``np.place`` fails on
    the read-only arrays pandas ≥ 3 hands out)."""
    p = np.array(p, dtype=float)
    smallest = p[p != 0].min()
    p[p == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return p


@pytest.mark.slow
def test_psi_kl_js_on_evidently_bins(shared: dict[str, Any]) -> None:
    ev_binned = shared["definitions"].ev_binned
    for column, want in shared["values"].items():
        r, c = shared["ref"][column], shared["cur"][column]
        rp, cp = ev_binned(r, c, column.startswith("num_"), False)
        assert len(rp) == want["n_bins_ev"]
        assert _close(js_distance(rp, cp), want["ev_js"]), column
        rp, cp = _evidently_fill(rp), _evidently_fill(cp)
        # Evidently's fill leaves no empty bin, so no floor applies (eps below every share).
        assert _close(psi(rp, cp, eps=1e-300), want["ev_psi"]), column
        assert _close(kl_divergence(rp, cp, eps=1e-300), want["ev_kl"]), column


@pytest.mark.slow
def test_sketches_bound_the_exact_values(shared: dict[str, Any]) -> None:
    """The monitor's KS and Wasserstein (from counts) hold the exact values within their
    stated error, on the real reference data."""
    ref, cur = pa.Table.from_pandas(shared["ref"]), pa.Table.from_pandas(shared["cur"])
    reference = fit_reference(ref)
    result = compare(reference, count(reference, cur))
    for column, want in shared["values"].items():
        if not column.startswith("num_"):
            continue
        got = result.columns[column]
        assert got.ks <= want["ks_D"] + 1e-12 <= got.ks + got.ks_error + 1e-12, column
        assert abs(got.wasserstein - want["ev_wass"]) <= got.wasserstein_error, column
