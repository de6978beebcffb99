"""The prediction log's records: one schema, versioned, written and read through these
classes (the fields are documented in docs/architecture.md, "The prediction record").

A line of the log is one JSON object with a ``kind``:

* ``prediction`` — ``PredictionRecord``: one served prediction;
* ``shadow`` — ``ShadowRecord``: the shadow version's score for a prediction id, written
  after the response;
* ``usage`` — CPU seconds and predictions (``closedloop.serving.cost``), read there.

``schema`` is the record layout's version: 1 here; a record without it was written before the
schema was versioned (the same fields, less the room below) and reads as schema 0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from closedloop.backends.base import PredictionLog

#: The layout written now.
SCHEMA = 1


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One served prediction as the log keeps it."""

    id: str                              # the prediction's id (the response carries it)
    model: str
    time: int                            # µs: the instant its features were read at
    version: int                         # the registry version that scored it
    route: str                           # production, canary, ab:<arm>, holdout, ...
    score: float
    decision: str
    unit: str | None = None              # the routing unit's value
    subject: str | None = None           # what the label will be about (a txn id)
    request: Mapping[str, Any] | None = None          # the instance as sent
    features: Mapping[str, Any] | None = None         # as served; None when the fallback
    fallback: bool = False                                # answered without features
    fallback_reason: str | None = None
    missing: Mapping[str, str] = field(default_factory=dict)   # feature -> no_record/no_value
    latency_ms: Mapping[str, float] = field(default_factory=dict)  # stages; queue, request
    # Room for what comes next (null until the ladder and the feedback tools fill it).
    step: str | None = None              # the promotion ladder's step that routed it
    propensity: float | None = None      # the probability of the action taken
    actions: Mapping[str, float] | None = None      # every action's probability, when few
    request_id: str | None = None        # the caller's request id
    kind: str = "prediction"
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictionRecord:
        """A logged line (any schema so far) as a record."""
        return cls(**{k: data[k] for k in _PREDICTION_FIELDS if k in data},
                   schema=int(data.get("schema", 0)))


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """The shadow version's score for prediction ``id``, beside production's."""

    id: str
    model: str
    time: int                            # µs, on the wall clock: when the shadow scored
    version: int
    production_version: int
    score: float
    production_score: float
    latency_ms: float
    kind: str = "shadow"
    schema: int = SCHEMA

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShadowRecord:
        return cls(**{k: data[k] for k in _SHADOW_FIELDS if k in data},
                   schema=int(data.get("schema", 0)))


_PREDICTION_FIELDS = tuple(f for f in PredictionRecord.__dataclass_fields__ if f != "schema")
_SHADOW_FIELDS = tuple(f for f in ShadowRecord.__dataclass_fields__ if f != "schema")


def served(log: PredictionLog, model: str) -> Iterator[PredictionRecord | ShadowRecord]:
    """Every prediction and shadow record of a model's log, typed (any schema so far)."""
    for r in log.records(model):
        kind = r.get("kind")
        if kind == "prediction":
            yield PredictionRecord.from_dict(r)
        elif kind == "shadow":
            yield ShadowRecord.from_dict(r)
