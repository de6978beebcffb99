"""Workload `drift`: 1M reference rows against 1M current rows, 20 numeric and 5 categorical
columns, drift injected into 5 of them — the shared generator
(``../shared/reference/drift/gen_data.py``), loaded from there.

* ``closedloop``: the monitor's path. The reference fitted column by column
  (``closedloop.monitoring.reference``: quantile bins with guard bins, categories), the current
  file counted column by column into mergeable counts (``DriftDetector.merge``), then
  every statistic and the verdicts (χ² at the window's size with Holm's correction, the PSI
  floor).
* ``evidently`` (the anchor): Evidently's ``DataDriftPreset`` on the two files read with
  pandas (its defaults: normed Wasserstein for numeric columns, Jensen–Shannon for
  categorical ones at this size, threshold 0.1). It needs a Python with evidently (and
  pandas < 3): ``EVIDENTLY_PYTHON``, or evidently importable here.
* ``floor``: plain numpy PSI on fixed edges (10 equal-width bins over the reference's range,
  the categories' value counts), a column drifting when its PSI passes the null threshold at
  α = 0.01/25 and 0.005.

Figures: ``cpu_s`` (the process's CPU seconds, every thread, reading the files included),
``peak_mb``, ``caught`` (of the 5 drifted columns) and ``false_alarms`` (of the 20 others).
Outputs compared: each column's verdict.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.data import DATA

N = 1_000_000
OUTPUTS = ["drifted"]


def _shared() -> Path:
    for candidate in (os.environ.get("CLOSEDLOOP_REFERENCE"),
                      Path(__file__).resolve().parents[2] / "shared" / "reference",
                      "/work/shared/reference"):
        if candidate and (Path(candidate) / "drift" / "gen_data.py").is_file():
            return Path(candidate) / "drift"
    raise RuntimeError("the drift workload needs ../shared/reference/drift/gen_data.py "
                       "(set CLOSEDLOOP_REFERENCE to the reference folder)")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("shared_drift_gen", _shared() / "gen_data.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drift_data(scale: float = 1.0) -> Path:
    """The two files and the ground truth, generated once per size."""
    folder = DATA / f"drift-{scale:g}"
    if (folder / "done.json").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    generator = _generator()
    n = max(int(N * scale), 1000)
    generator.make(n, np.random.default_rng(20240101), current=False).to_parquet(
        folder / "reference.parquet", index=False)
    generator.make(n, np.random.default_rng(20240202), current=True).to_parquet(
        folder / "current.parquet", index=False)
    (folder / "done.json").write_text(json.dumps({"rows": n, "drifted": generator.DRIFTED}))
    return folder


def _verdicts(data: Path, drifted: dict[str, bool], cpu0: float) -> Any:
    truth = set(json.loads((data / "done.json").read_text())["drifted"])
    names = pq.ParquetFile(data / "reference.parquet").schema_arrow.names
    table = pa.table({"label_id": np.arange(len(names)),
                      "drifted": [bool(drifted[n]) for n in names]})
    return table, {"cpu_s": time.process_time() - cpu0,
                   "caught": float(sum(drifted[n] for n in truth)),
                   "false_alarms": float(sum(drifted[n] for n in names if n not in truth))}


def _closedloop(data: Path) -> Any:
    from closedloop.monitoring import DriftDetector, Reference, WindowCounts
    from closedloop.monitoring.counts import count_categorical, count_numeric
    from closedloop.monitoring.reference import (
        Binning,
        fit_categorical,
        fit_numeric,
        is_numeric,
        numeric_values,
    )

    cpu0 = time.process_time()
    schema = pq.read_schema(data / "reference.parquet")
    categorical = [f.name for f in schema if not is_numeric(f.type)]
    reference_file = pq.ParquetFile(data / "reference.parquet", read_dictionary=categorical)
    binning, columns = Binning(), {}
    for name in schema.names:                        # one column in memory at a time
        column = reference_file.read(columns=[name], use_threads=False)[name]
        columns[name] = (fit_categorical(name, column, binning) if name in categorical
                         else fit_numeric(name, numeric_values(column), binning))
    reference = Reference("bench", "bench", columns, reference_file.metadata.num_rows, binning)
    current = pq.ParquetFile(data / "current.parquet", read_dictionary=categorical)
    counted = {}
    for name in schema.names:                        # counts are per column: read so
        column = current.read(columns=[name], use_threads=False)[name]
        fitted = reference.columns[name]
        counted[name] = (count_categorical(fitted, column) if name in categorical
                         else count_numeric(fitted, numeric_values(column)))
    detector = DriftDetector(reference)
    detector.merge(WindowCounts(reference.hash, current.metadata.num_rows, counted))
    result = detector.result
    return _verdicts(data, {n: c.drifted for n, c in result.columns.items()}, cpu0)


def _floor(data: Path) -> Any:
    from scipy import stats

    cpu0 = time.process_time()
    ref_file, cur_file = pq.ParquetFile(data / "reference.parquet"), pq.ParquetFile(
        data / "current.parquet")
    names = ref_file.schema_arrow.names
    n_ref, n_cur = ref_file.metadata.num_rows, cur_file.metadata.num_rows
    drifted = {}
    for name in names:
        ref = ref_file.read(columns=[name], use_threads=False)[name]
        cur = cur_file.read(columns=[name], use_threads=False)[name]
        if pa.types.is_floating(ref.type):
            r, c = ref.to_numpy(), cur.to_numpy()
            edges = np.linspace(r.min(), r.max(), 11)[1:-1]
            rp = np.bincount(np.searchsorted(edges, r, side="right"), minlength=10) / r.size
            cp = np.bincount(np.searchsorted(edges, c, side="right"), minlength=10) / c.size
        else:
            rv = ref.combine_chunks().value_counts()
            cv = cur.combine_chunks().value_counts()
            levels = sorted(set(rv.field("values").to_pylist())
                            | set(cv.field("values").to_pylist()))
            index = {v: i for i, v in enumerate(levels)}
            rp, cp = np.zeros(len(levels)), np.zeros(len(levels))
            for counts, out, n in ((rv, rp, n_ref), (cv, cp, n_cur)):
                for v, k in zip(counts.field("values").to_pylist(),
                                counts.field("counts").to_pylist(), strict=True):
                    out[index[v]] = k / n
        r_, c_ = np.maximum(rp, 1e-4), np.maximum(cp, 1e-4)
        psi = float(np.sum((c_ - r_) * np.log(c_ / r_)))
        bins = int(((rp + cp) > 0).sum())
        threshold = (1 / n_ref + 1 / n_cur) * stats.chi2.ppf(1 - 0.01 / len(names), bins - 1)
        drifted[name] = psi >= max(threshold, 0.005)
    return _verdicts(data, drifted, cpu0)


EVIDENTLY = r"""
import json, sys, time
cpu0 = time.process_time()
import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset
ref = pd.read_parquet(sys.argv[1])
cur = pd.read_parquet(sys.argv[2])
snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
drifted = {}
for test in snapshot.dict()["tests"]:
    name = test["name"]
    if name.startswith("Value Drift for column "):
        drifted[name.removeprefix("Value Drift for column ")] = str(test["status"]).endswith("FAIL")
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"cpu_s": time.process_time() - cpu0, "peak_mb": peak, "drifted": drifted}))
"""


def _evidently_python() -> str | None:
    return os.environ.get("EVIDENTLY_PYTHON") or (
        sys.executable if importlib.util.find_spec("evidently") else None)


def _evidently(data: Path) -> Any:
    python = _evidently_python()
    if python is None:
        raise RuntimeError("the evidently system needs a Python with evidently: set "
                           "EVIDENTLY_PYTHON")
    out = subprocess.run([python, "-c", EVIDENTLY, str(data / "reference.parquet"),
                          str(data / "current.parquet")], check=True, capture_output=True,
                         text=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    table, figures = _verdicts(data, found["drifted"], time.process_time())
    figures.update(cpu_s=found["cpu_s"], peak_mb=found["peak_mb"])
    return table, figures


class _Drift:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop": _closedloop, "evidently": _evidently,
                                         "floor": _floor}
    SETUP: ClassVar[set[str]] = set()
    ANCHOR = "evidently"
    METRIC = "cpu_s"
    OUTPUTS = OUTPUTS
    DATA = staticmethod(drift_data)

    @staticmethod
    def unavailable() -> dict[str, str]:
        return {} if _evidently_python() else {
            "evidently": "set EVIDENTLY_PYTHON to a Python with evidently 0.7 (and pandas < 3: "
                         "python -m venv .venv-evidently && .venv-evidently/bin/pip install "
                         "evidently 'pandas<3')"}


drift = _Drift
