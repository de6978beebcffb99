"""closedloop: the system around the model.

>>> import closedloop as cl
>>> sorted(cl.__all__)[:3]
['Agg', 'Budget', 'Clock']
"""

from closedloop.data.clock import Clock
from closedloop.data.sources import Entity, EventSource, LabelSource, TableSource
from closedloop.errors import ClosedLoopError
from closedloop.features.definitions import Agg, FeatureView, Transform, transform
from closedloop.project import Project, init_project
from closedloop.serving.spec import Budget, Serving
from closedloop.training.model import Model, TimeSplit
from closedloop.training.trainers import LightGBMTrainer, SklearnTrainer, XGBoostTrainer

__version__ = "0.1.0"

__all__ = [
    "Agg",
    "Budget",
    "Clock",
    "ClosedLoopError",
    "Entity",
    "EventSource",
    "FeatureView",
    "LabelSource",
    "LightGBMTrainer",
    "Model",
    "Project",
    "Serving",
    "SklearnTrainer",
    "TableSource",
    "TimeSplit",
    "Transform",
    "XGBoostTrainer",
    "init_project",
    "transform",
]
