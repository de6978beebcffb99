"""The package's shape: the curated public API, the layering contracts, the error tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
        "Ladder", "Gate", "Shadow", "Canary", "ABTest", "Ramp", "Guardrails", "Metric",
        # monitoring: monitors, alerts and their playbooks
        "Monitor", "Alert", "Rollback", "FreezeTraining", "Fallback", "Notify"])
    for name in cl.__all__:
        assert getattr(cl, name) is not None


def test_a_stage_imports_without_the_rest() -> None:
    """The public names load on first use: importing the monitoring statistics does not pull
    in the project, the trainers or scipy.stats (the server's and CLI's start-up too)."""
    code = ("import sys, closedloop.monitoring, closedloop as cl; "
            "assert 'closedloop.project' not in sys.modules; "
            "assert 'scipy.stats' not in sys.modules; "
            "assert cl.Project.__name__ == 'Project'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.stdout.strip() == "ok", result.stderr


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
