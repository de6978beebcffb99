"""The package's shape: the curated public API, the layering contracts, the error tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import closedloop as cl
from closedloop import errors

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_curated() -> None:
    assert sorted(cl.__all__) == sorted([
        "Agg", "Budget", "Clock", "ClosedLoopError", "Entity", "EventSource", "FeatureView",
        "LabelSource", "LightGBMTrainer", "Model", "Project", "Serving", "SklearnTrainer",
        "TableSource", "TimeSplit",
        "Transform", "XGBoostTrainer", "init_project", "transform",
        # the promotion ladder
        "Ladder", "Gate", "Shadow", "Canary", "ABTest", "Ramp", "Guardrails", "Metric"])
    for name in cl.__all__:
        assert getattr(cl, name) is not None


def test_every_error_has_a_unique_code_and_derives_from_the_root() -> None:
    classes = [getattr(errors, n) for n in errors.__all__]
    assert all(issubclass(c, errors.ClosedLoopError) for c in classes)
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is part of the dev extra"
    result = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
