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

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from closedloop.backends.base import PredictionLog
from closedloop.errors import ServingError

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


#: The prediction records' fields ``prediction_table`` reads, as the log types them.
_TABLE_FIELDS = {"id": pa.string(), "time": pa.int64(), "version": pa.int64(),
                 "route": pa.string(), "unit": pa.string(), "subject": pa.string(),
                 "score": pa.float64(), "decision": pa.string(), "fallback": pa.bool_(),
                 "fallback_reason": pa.string(), "step": pa.string(),
                 "latency_ms": pa.map_(pa.string(), pa.float64()),
                 "features": pa.map_(pa.string(), pa.float64())}
_SHADOW_TABLE = {"id": pa.string(), "version": pa.int64(), "score": pa.float64(),
                 "latency_ms": pa.float64()}


def prediction_table(log: PredictionLog, model: str, *, requests: Sequence[str] = (),
                     shadows: bool = True, columns: Sequence[str] | None = None) -> pa.Table:
    """A model's served predictions as a table, read column by column (the log's reader
    converts only these fields, in parallel where it can): id, time, version, route, unit,
    subject, score, decision, fallback, fallback_reason, step, ``latency_ms`` as the caller
    saw it (the ``request`` timing, from arrival at the server, queue wait included, where
    the server served it; the stages' sum otherwise) — or only ``columns`` of them; with
    ``shadows``, the shadow version, score and latency where one scored (``shadow_version``,
    ``shadow_score``, ``shadow_latency_ms``); and each of ``requests`` as
    ``request.<field>``. ``features`` (as served, a map; null where the fallback answered)
    is read only when ``columns`` names it."""
    wanted = ([f for f in _TABLE_FIELDS if f != "features"] if columns is None
              else list(columns))                      # features: only when asked for
    unknown = [c for c in wanted if c not in _TABLE_FIELDS]
    if unknown:
        raise ServingError(f"the prediction log has no column {unknown[0]!r}",
                           fix=f"read some of {', '.join(_TABLE_FIELDS)}")
    if shadows and "id" not in wanted:
        wanted.append("id")
    fields = {name: _TABLE_FIELDS[name] for name in wanted}
    if requests:
        fields["request"] = pa.string()                 # its JSON text
    rows = log.read(model, fields, kinds=["prediction"])
    table = rows.select(wanted)
    if "time" in wanted:
        table = table.set_column(wanted.index("time"), "time",
                                 pc.cast(table["time"], pa.timestamp("us", tz="UTC")))
    if "latency_ms" in wanted:
        table = table.set_column(wanted.index("latency_ms"), "latency_ms", pa.array(
            _seen_ms(table["latency_ms"].combine_chunks()), pa.float64()))
    if shadows:
        scored = log.read(model, _SHADOW_TABLE, kinds=["shadow"])
        at = pc.index_in(table["id"], value_set=scored["id"])
        for name, column in (("shadow_version", "version"), ("shadow_score", "score"),
                             ("shadow_latency_ms", "latency_ms")):
            table = table.append_column(name, scored[column].take(at))
    for name, values in _request_fields(rows["request"] if requests else None,
                                        requests).items():
        table = table.append_column(f"request.{name}", values)
    return table


def _seen_ms(timing: pa.MapArray) -> np.ndarray[Any, Any]:
    """Each prediction's latency as its caller saw it: its ``request`` timing where it has
    one, else the sum of its stages (every timing but ``queue``)."""
    request = pc.map_lookup(timing, pa.scalar("request"), "first")
    offsets = timing.offsets.to_numpy()
    first, size = int(offsets[0]), int(offsets[-1] - offsets[0])   # children are unsliced
    keys = timing.keys.slice(first, size).to_numpy(zero_copy_only=False)
    ms = pc.fill_null(timing.items.slice(first, size), 0.0).to_numpy(zero_copy_only=False)
    parents = np.repeat(np.arange(len(timing)), np.diff(offsets))
    stage = (keys != "queue") & (keys != "request")
    summed = np.bincount(parents[stage], weights=ms[stage], minlength=len(timing))
    return np.where(pc.is_valid(request).to_numpy(zero_copy_only=False),
                    pc.fill_null(request, 0.0).to_numpy(zero_copy_only=False), summed)


def _request_fields(texts: pa.ChunkedArray | None, names: Sequence[str],
                    ) -> dict[str, pa.Array]:
    """``names`` out of each record's request (its JSON text; null when none was kept): one
    array per field, null where a request lacks it."""
    if texts is None or not names:
        return {}
    n = len(texts)
    if n:
        lines = pc.fill_null(texts, "{}").to_pylist()
        try:
            parsed: pa.Table | None = pj.read_json(
                pa.BufferReader("\n".join(lines).encode() + b"\n"),
                parse_options=pj.ParseOptions(newlines_in_values=False))
        except pa.ArrowInvalid:                # a field whose type changes between rows
            parsed = None
    out = {}
    for name in names:
        if n and parsed is not None and name in parsed.column_names:
            values = parsed[name].combine_chunks()
        elif n and parsed is None:
            values = pa.array([json.loads(t).get(name) for t in lines])
        else:
            values = pa.nulls(n, pa.string())
        if pa.types.is_null(values.type):      # nothing sent yet: typed, for joins
            values = pa.nulls(n, pa.string())
        out[name] = values
    return out
