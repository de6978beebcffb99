"""closedloop: the system around the model.

The public names load on first use (PEP 562), so ``import closedloop.monitoring`` — or any one
stage — does not import every stage with it.

>>> import closedloop as cl
>>> sorted(cl.__all__)[:3]
['ABTest', 'Agg', 'Alert']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from closedloop.data.clock import Clock
    from closedloop.data.sources import Entity, EventSource, LabelSource, TableSource
    from closedloop.errors import ClosedLoopError
    from closedloop.features.definitions import Agg, FeatureView, Transform, transform
    from closedloop.monitoring.spec import (
        Alert,
        Fallback,
        FreezeTraining,
        Monitor,
        Notify,
        Rollback,
    )
    from closedloop.project import Project, init_project
    from closedloop.registry.ladder import (
        ABTest,
        Canary,
        Gate,
        Guardrails,
        Ladder,
        Metric,
        Ramp,
        Shadow,
    )
    from closedloop.serving.spec import Budget, Serving
    from closedloop.training.model import Model, TimeSplit
    from closedloop.training.trainers import LightGBMTrainer, SklearnTrainer, XGBoostTrainer

__version__ = "0.1.0"

#: Each public name and the module it lives in.
_WHERE = {
    "Clock": "closedloop.data.clock",
    "Entity": "closedloop.data.sources", "EventSource": "closedloop.data.sources",
    "LabelSource": "closedloop.data.sources", "TableSource": "closedloop.data.sources",
    "ClosedLoopError": "closedloop.errors",
    "Agg": "closedloop.features.definitions", "FeatureView": "closedloop.features.definitions",
    "Transform": "closedloop.features.definitions",
    "transform": "closedloop.features.definitions",
    "Project": "closedloop.project", "init_project": "closedloop.project",
    **{name: "closedloop.registry.ladder" for name in (
        "ABTest", "Canary", "Gate", "Guardrails", "Ladder", "Metric", "Ramp", "Shadow")},
    "Budget": "closedloop.serving.spec", "Serving": "closedloop.serving.spec",
    **{name: "closedloop.monitoring.spec" for name in (
        "Alert", "Fallback", "FreezeTraining", "Monitor", "Notify", "Rollback")},
    "Model": "closedloop.training.model", "TimeSplit": "closedloop.training.model",
    "LightGBMTrainer": "closedloop.training.trainers",
    "SklearnTrainer": "closedloop.training.trainers",
    "XGBoostTrainer": "closedloop.training.trainers",
}

__all__ = [
    "ABTest",
    "Agg",
    "Alert",
    "Budget",
    "Canary",
    "Clock",
    "ClosedLoopError",
    "Entity",
    "EventSource",
    "Fallback",
    "FeatureView",
    "FreezeTraining",
    "Gate",
    "Guardrails",
    "LabelSource",
    "Ladder",
    "LightGBMTrainer",
    "Metric",
    "Model",
    "Monitor",
    "Notify",
    "Project",
    "Ramp",
    "Rollback",
    "Serving",
    "Shadow",
    "SklearnTrainer",
    "TableSource",
    "TimeSplit",
    "Transform",
    "XGBoostTrainer",
    "init_project",
    "transform",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'closedloop' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)   # __all__ lists _WHERE's names
    globals()[name] = value                    # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
