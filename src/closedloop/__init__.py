"""closedloop: the system around the model.

>>> import closedloop as cl
>>> sorted(cl.__all__)[:3]
['ABTest', 'Agg', 'Budget']
"""

from closedloop.data.clock import Clock
from closedloop.data.sources import Entity, EventSource, LabelSource, TableSource
from closedloop.errors import ClosedLoopError
from closedloop.features.definitions import Agg, FeatureView, Transform, transform
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

__all__ = [
    "ABTest",
    "Agg",
    "Budget",
    "Canary",
    "Clock",
    "ClosedLoopError",
    "Entity",
    "EventSource",
    "FeatureView",
    "Gate",
    "Guardrails",
    "LabelSource",
    "Ladder",
    "LightGBMTrainer",
    "Metric",
    "Model",
    "Project",
    "Ramp",
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
