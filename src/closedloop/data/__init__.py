"""Stage 1 — data and labels: entities and the sources that feed every later stage, and the
labeling strategies that turn raw signal into labels."""

from closedloop.data.labeling import (
    ABSTAIN,
    DawidSkeneModel,
    FunctionSummary,
    HumanLabels,
    MajorityVote,
    apply_functions,
    implicit_labels,
    resolve_human_labels,
    summarize,
)
from closedloop.data.sources import Entity, EventSource, Source, TableSource

__all__ = ["ABSTAIN", "DawidSkeneModel", "Entity", "EventSource", "FunctionSummary",
           "HumanLabels", "MajorityVote", "Source", "TableSource", "apply_functions",
           "implicit_labels", "resolve_human_labels", "summarize"]
