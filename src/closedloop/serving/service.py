"""``project.serving``: a model's online path — route, fetch, transform, infer, decide — and
the prediction log behind it.

A ``Predictor`` holds one model's loaded versions (production and every alias its
``Serving`` declaration routes to) and serves a batch of instances:

1. **route** each instance by its unit (``closedloop.serving.router``);
2. **fetch** the view features of every instance in one online-store round trip — the
   features of every loaded version at once, each version at the definition versions it
   was trained on (pinned; a model whose pins the project no longer defines is refused);
3. **transform**: the same transform functions as training, over the batch;
4. **infer**: one matrix per version, converted exactly as training converts (booleans as
   0/1, instants as µs, a missing value as NaN);
5. **post**: the decision from the declared rules and thresholds; a holdout instance gets
   the holdout decision, its production score kept as the counterfactual.

Each stage is timed on every request. When the online store is down or times out, the
declared fallback scores the instances and the predictions say so. The shadow version (if
declared and aliased) scores the same vectors after the response, off the request path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import EventStream
from closedloop.data.clock import parse_instant
from closedloop.data.instants import now_micros
from closedloop.data.labels import known_labels
from closedloop.data.sources import ARROW_TYPES, EventSource, LabelSource
from closedloop.data.tables import as_table
from closedloop.errors import (
    BackendError,
    DataError,
    PointInTimeError,
    RequestError,
    ServingError,
    did_you_mean,
)
from closedloop.features.catalog import Catalog
from closedloop.features.online import EPOCH
from closedloop.features.service import FeatureService, OnlineFetch
from closedloop.registry.service import LoadedModel, RegistryService
from closedloop.serving import batch, stream
from closedloop.serving import cost as costing
from closedloop.serving.log import PredictionLog
from closedloop.serving.router import Router
from closedloop.serving.spec import STAGES, Serving
from closedloop.training.model import Model

_JSON_TYPES = {"string": "string", "int64": "integer", "float64": "number", "bool": "boolean"}


@dataclass(frozen=True, slots=True)
class Prediction:
    """One served prediction, as the response carries it."""

    id: str
    score: float
    decision: str
    version: int
    route: str
    fallback: bool = False
    missing: dict[str, str] | None = None      # feature -> why (no_record, no_value)
    fallback_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "decision": self.decision,
                "version": self.version, "route": self.route, "fallback": self.fallback,
                "fallback_reason": self.fallback_reason, "missing": self.missing or {}}


@dataclass
class Served:
    """What a batch produced: its predictions, the stage latencies (ms), the log records
    and, if a shadow version scores, the work to run after the response."""

    predictions: list[Prediction]
    latency_ms: dict[str, float]
    records: list[dict[str, Any]]
    fallback_reason: str | None = None
    after: Callable[[], list[dict[str, Any]]] | None = None


@dataclass
class _Version:
    loaded: LoadedModel
    columns: list[str]               # the version's features as the online vector keys them

    @property
    def number(self) -> int:
        return self.loaded.version.version


def _number(value: Any) -> float:
    """A served value as training's feature matrix holds it."""
    if value is None:
        return np.nan
    if type(value) is float or type(value) is int:
        return float(value)
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    if isinstance(value, datetime):
        return float((value - EPOCH) // _MICRO)
    raise DataError(f"feature value {value!r} is not a number", fix="serve numbers")


_MICRO = timedelta(microseconds=1)


@dataclass
class Predictor:
    """One model's loaded versions by alias, ready to serve (see module)."""

    serving: Serving
    versions: dict[str, _Version]
    features: FeatureService
    fetch_columns: list[str]
    fields: frozenset[str]
    required: tuple[str, ...]
    types: dict[str, str]                # field -> its JSON type, where it is declared
    nullable: frozenset[str] = frozenset()   # required fields that may be null: entity keys
    replay: str | None = None        # a replay clock: the field carrying each instance's instant
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.router = Router(self.serving)

    @property
    def model(self) -> str:
        return self.serving.model

    @property
    def aliases(self) -> dict[str, int]:
        return {alias: v.number for alias, v in self.versions.items()}

    # -- the request path --------------------------------------------------------------------
    def check(self, instances: Any) -> list[dict[str, Any]]:
        """The instances of a request, or a ``RequestError`` naming the bad field."""
        if not isinstance(instances, list) or not instances:
            raise RequestError("'instances' must be a non-empty list of objects",
                               field="instances", fix='send {"instances": [{...}]}')
        if len(instances) > self.serving.max_instances:
            raise RequestError(f"{len(instances)} instances is more than this model takes "
                               f"({self.serving.max_instances})", field="instances",
                               fix="split the batch")
        for i, row in enumerate(instances):
            if type(row) is not dict:
                raise RequestError(f"instance {i} is {type(row).__name__}, not an object",
                                   field=f"instances[{i}]", fix="send each instance as {...}")
            for name in self.required:
                if row.get(name) is None and (name not in row or name not in self.nullable):
                    raise RequestError(f"instance {i} has no {name!r}" if name not in row else
                                       f"instance {i}: {name!r} is null",
                                       field=f"instances[{i}].{name}", fix=f"send {name!r}")
            for name, value in row.items():
                if name not in self.fields:
                    raise RequestError(f"instance {i} has a field {name!r} this model does "
                                       f"not read", field=f"instances[{i}].{name}",
                                       fix=f"send only {sorted(self.fields)}")
                if value is None or name == self.replay:    # the instant: parsed in _begin
                    continue
                kind = type(value)
                want = self.types.get(name)
                if kind not in (str, int, float, bool) or (want is not None and not (
                        (want == "string" and kind is str)
                        or (want == "integer" and kind is int)
                        or (want == "number" and kind in (int, float))
                        or (want == "boolean" and kind is bool))):
                    raise RequestError(f"instance {i}: {name!r} is {value!r} "
                                       f"({kind.__name__}); it must be "
                                       f"{want or 'a string, number or boolean'}",
                                       field=f"instances[{i}].{name}",
                                       fix=f"send {name!r} as {want or 'a scalar'}")
        return instances

    def predict(self, instances: Any, at: datetime | None = None) -> Served:
        """Serve a batch (see module) with the features as of now (or ``at``); raises
        ``RequestError`` for a bad request."""
        rows, routes, aliases, t0, times = self._begin(instances)
        try:
            fetched = self.features.fetch(rows, self.fetch_columns, at=at, times=times)
        except BackendError as exc:
            return self._finish(rows, routes, aliases, t0, None, exc, times)
        except DataError as exc:                  # a key of the wrong type
            raise RequestError(exc.message, fix=exc.fix) from exc
        return self._finish(rows, routes, aliases, t0, fetched, None, times)

    async def predict_async(self, instances: Any, *, checked: bool = False,
                            deadline: float | None = None) -> Served:
        """``predict`` awaiting the online store on the running event loop (the server's):
        other requests run while the store's reply is on its way. ``checked``: the
        instances already passed ``check`` (the server merges checked requests).
        ``deadline`` (``time.perf_counter()`` seconds): the fetch gives up then — at once if
        it has passed — and the fallback answers; the server sets it ``fetch_timeout_ms``
        after the request's arrival, so time spent queued counts against it."""
        rows, routes, aliases, t0, times = self._begin(instances, checked)
        try:
            fetch = self.features.fetch_async(rows, self.fetch_columns, times=times)
            if deadline is None:
                fetched = await fetch
            else:
                left = deadline - time.perf_counter()
                if left <= 0:
                    fetch.close()
                    raise TimeoutError
                async with asyncio.timeout(left):       # no task, unlike wait_for
                    fetched = await fetch
        except TimeoutError:
            late = BackendError("no answer within fetch_timeout_ms of the request's arrival "
                                "(queue wait included)", fix="see closedloop budget")
            return self._finish(rows, routes, aliases, t0, None, late, times)
        except BackendError as exc:
            return self._finish(rows, routes, aliases, t0, None, exc, times)
        except DataError as exc:
            raise RequestError(exc.message, fix=exc.fix) from exc
        return self._finish(rows, routes, aliases, t0, fetched, None, times)

    def _short(self, rows: list[dict[str, Any]], aliases: list[str],
               missing: list[dict[str, str]]) -> dict[int, str]:
        """Instances with more than ``max_missing`` of their features missing, and why, when
        the declaration does not score them (``on_missing``); a reject raises."""
        serving = self.serving
        if serving.on_missing == "score":
            return {}
        short: dict[int, str] = {}
        for i, alias in enumerate(aliases):
            n = len(self.versions[alias].columns)
            if n and len(missing[i]) / n > serving.max_missing:
                short[i] = (f"{len(missing[i])} of {n} features missing: "
                            + ", ".join(f"{c} ({w})" for c, w in missing[i].items()))
        if short and serving.on_missing == "reject":
            i, why = next(iter(short.items()))
            raise RequestError(f"instance {i}: {why}", field=f"instances[{i}]",
                               fix="send an entity the online store knows, or declare "
                                   "on_missing='fallback' to answer with the fallback")
        return short

    def _begin(self, instances: Any, checked: bool = False,
               ) -> tuple[list[dict[str, Any]], list[str], list[str], float, list[int] | None]:
        rows = instances if checked else self.check(instances)
        t0 = time.perf_counter()
        times = None if self.replay is None else self._instants(rows, self.replay)
        routes = [self.router.route(r) for r in rows]
        aliases = [r if r in self.versions else "production" for r in routes]
        routes = [r if r in self.versions or r == "holdout" else "production" for r in routes]
        return rows, routes, aliases, t0, times

    @staticmethod
    def _instants(rows: list[dict[str, Any]], name: str) -> list[int]:
        """A replay: each instance's own instant, from its field ``name``."""
        times = []
        for i, row in enumerate(rows):
            try:
                times.append(parse_instant(row[name], f"instance {i}: {name!r}"))
            except PointInTimeError as exc:
                raise RequestError(exc.message, field=f"instances[{i}].{name}",
                                   fix=f"send {name!r} as an ISO 8601 instant with its zone, "
                                       "e.g. 2026-03-01T12:00:00Z (the server replays "
                                       "history: [clock] replay)") from None
        return times

    def _finish(self, rows: list[dict[str, Any]], routes: list[str], aliases: list[str],
                t0: float, fetched: OnlineFetch | None, down: BackendError | None,
                times: list[int] | None = None) -> Served:
        reason = None if down is None else f"online store: {down.message}"
        vectors: list[dict[str, Any]] = []
        t1 = time.perf_counter()
        if fetched is not None:
            try:
                vectors = [v.values for v in self.features.finish(rows, fetched)]
            except DataError as exc:              # a transform input of the wrong kind
                raise RequestError(exc.message, fix=exc.fix) from exc
        t2 = time.perf_counter()
        scores = np.empty(len(rows), dtype=np.float64)
        missing = ([_missing(fetched, i, vectors[i], self.versions[a].columns)
                    for i, a in enumerate(aliases)] if fetched is not None
                   else [{} for _ in rows])
        short = self._short(rows, aliases, missing) if reason is None else {}
        if reason is None:
            groups: dict[str, list[int]] = {}
            for i, alias in enumerate(aliases):
                if i in short:
                    scores[i] = self.serving.fallback_score(rows[i])
                    continue
                groups.setdefault(alias, []).append(i)
            for alias, idx in groups.items():
                version = self.versions[alias]
                X = np.array([[_number(vectors[i][c]) for c in version.columns] for i in idx],
                             dtype=np.float64)
                scores[idx] = version.loaded.score(X)
        else:
            for i, row in enumerate(rows):
                scores[i] = self.serving.fallback_score(row)
        t3 = time.perf_counter()
        serving = self.serving
        holdout = serving.holdout_decision or serving.default_decision
        predictions = []
        for i, row in enumerate(rows):
            score = float(scores[i])
            decision = holdout if routes[i] == "holdout" else serving.decide(score, row)
            why = reason or short.get(i)
            predictions.append(Prediction(uuid.uuid4().hex, score, decision,
                                          self.versions[aliases[i]].number, routes[i],
                                          why is not None, missing[i], why))
        t4 = time.perf_counter()
        latency = {"fetch": (t1 - t0) * 1e3, "transform": (t2 - t1) * 1e3,
                   "inference": (t3 - t2) * 1e3, "post": (t4 - t3) * 1e3}
        clock = self.features.clock           # a prediction's time is on the project's clock
        now = clock.now()
        records = []
        for i, (row, p) in enumerate(zip(rows, predictions, strict=True)):
            version = self.versions[aliases[i]]
            records.append({
                "kind": "prediction", "id": p.id, "model": self.model,
                "time": now if times is None else times[i],
                "version": p.version, "route": p.route,
                "unit": None if serving.unit is None else _text(row.get(serving.unit)),
                "subject": None if serving.subject is None else _text(row.get(serving.subject)),
                "request": row,
                "features": (None if reason else
                             {c: vectors[i][c] for c in version.columns}),
                "score": p.score, "decision": p.decision, "fallback": p.fallback,
                "fallback_reason": p.fallback_reason, "missing": p.missing or {},
                "latency_ms": latency})
        after = None
        shadow = self.versions.get("shadow")
        if shadow is not None and reason is None and serving.shadow:
            after = _ShadowJob(shadow, vectors, predictions, self.model)
        return Served(predictions, latency, records, reason, after)


def _missing(fetched: OnlineFetch, i: int, vector: dict[str, Any],
             columns: Sequence[str]) -> dict[str, str]:
    """Row ``i``'s features of ``columns`` that were missing, and why."""
    out: dict[str, str] = {}
    gone = fetched.missing[i]
    if gone:
        for reader in fetched.plan[1]:
            if reader.namespace in gone:
                for key in reader.written:
                    out[key] = "no_record"
    for c in columns:
        if c not in out and vector.get(c) is None:
            out[c] = "no_value"
    return {c: out[c] for c in columns if c in out}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class _ShadowJob:
    """The shadow version scoring a batch's vectors after the response: its log records."""

    version: _Version
    vectors: list[dict[str, Any]]
    predictions: list[Prediction]
    model: str

    def __call__(self) -> list[dict[str, Any]]:
        start = time.perf_counter()
        X = np.array([[_number(v[c]) for c in self.version.columns] for v in self.vectors],
                     dtype=np.float64)
        scores = self.version.loaded.score(X)
        ms = (time.perf_counter() - start) * 1e3
        now = int(time.time() * 1_000_000)
        return [{"kind": "shadow", "id": p.id, "time": now, "model": self.model,
                 "version": self.version.number, "production_version": p.version,
                 "score": float(s), "production_score": p.score, "latency_ms": ms}
                for p, s in zip(self.predictions, scores.tolist(), strict=True)]


class ServingService:
    """Predictors for the project's models, and their prediction logs: ``project.serving``."""

    def __init__(self, servings: Mapping[str, Serving], models: Mapping[str, Model],
                 registry: RegistryService, features: FeatureService, catalog: Catalog,
                 log: PredictionLog, scoring: Path | None = None,
                 events: EventStream | None = None) -> None:
        self.servings = dict(servings)
        self.models = dict(models)
        self.registry = registry
        self.features = features
        self.catalog = catalog
        self.log = log
        self.scoring = scoring or log.root.parent / "scoring"
        self.events = events
        unknown = sorted(set(self.servings) - set(self.models))
        if unknown:
            raise ServingError(f"serving declarations name models that are not declared: "
                               f"{unknown}{did_you_mean(unknown[0], self.models)}",
                               fix=f"the models are {sorted(self.models)}")

    def serving(self, model: str) -> Serving:
        if model not in self.models:
            raise ServingError(f"there is no model {model!r}",
                               fix=f"the models are {sorted(self.models)}")
        return self.servings.get(model) or Serving(model)

    def aliases(self, model: str) -> dict[str, int]:
        """The aliases a predictor of ``model`` would load, as the registry has them now."""
        wanted = self.serving(model).aliases
        return {a: v for a, v in self.registry.aliases(model).items() if a in wanted}

    def predictor(self, model: str) -> Predictor:
        """Load every version the model's routes name; refuse a model with no production
        version or whose pinned definitions the project no longer defines."""
        serving = self.serving(model)
        aliases = self.aliases(model)
        if "production" not in aliases:
            raise ServingError(f"model {model!r} has no production version",
                               fix=f"closedloop models alias {model} production VERSION")
        versions: dict[str, _Version] = {}
        loaded_by_number: dict[int, _Version] = {}
        for alias, number in aliases.items():
            if number not in loaded_by_number:
                loaded = self.registry.load(model, number)
                loaded_by_number[number] = _Version(loaded, self._pinned(loaded))
            versions[alias] = loaded_by_number[number]
        columns = list(dict.fromkeys(c for v in versions.values() for c in v.columns))
        resolution = self.catalog.resolve(columns)
        # Request fields are typed as training reads them: columns of the model's rows
        # source; entity keys as their entity declares.
        rows = self.catalog.sources.get(self.models[model].rows)
        declared = rows.logical_schema if rows is not None else {}
        types = {c: _JSON_TYPES[t] for c, t in declared.items() if t in _JSON_TYPES}
        keys = {view.entity.key: ("string" if view.entity.spec()["dtype"] == "string"
                                  else "integer") for view, _ in resolution.by_view()}
        required = tuple(dict.fromkeys([*keys, *resolution.request_inputs,
                                        *([serving.unit] if serving.unit else [])]))
        fields = frozenset([*required, *([serving.subject] if serving.subject else [])])
        types = {f: keys.get(f) or types[f] for f in fields if f in keys or f in types}
        # A null entity key is no error, as offline: its views' defaults, named as missing.
        # The routing unit and the transforms' request inputs must have values.
        nullable = frozenset(keys) - {serving.unit, *resolution.request_inputs}
        replay = None
        clock = self.features.clock
        if clock.replay:        # each instance carries its instant: required, an ISO string
            replay = clock.field or (rows.timestamp if rows is not None else None)
            if replay is None:
                raise ServingError(f"the replay clock needs a field for the instant of each "
                                   f"instance of {model!r}, whose rows source is not a source",
                                   fix="set [clock] field")
            required = (*required, replay)
            fields = frozenset([*fields, replay])
            types[replay] = "string"
        return Predictor(serving, versions, self.features, columns, fields, required, types,
                         nullable, replay)

    def _pinned(self, loaded: LoadedModel) -> list[str]:
        """The version's features as online keys, at the definition versions it pins."""
        pins = loaded.version.manifest["definitions"]
        number = loaded.version.version
        for key, digest in pins.get("views", {}).items():
            name, version = key.split("@")
            view = self.catalog.views.get((name, int(version)))
            if view is None or view.hash != digest:
                raise ServingError(
                    f"version {number} of {loaded.version.model!r} was trained on feature "
                    f"view {key}, which this project {'changed' if view else 'no longer has'}",
                    fix="restore that view version, or train and promote a new version")
        for key, digest in pins.get("transforms", {}).items():
            name, _ = key.split("@")
            t = self.catalog.transforms.get(name)
            if t is None or f"{t.name}@{t.version}" != key or t.hash != digest:
                raise ServingError(
                    f"version {number} of {loaded.version.model!r} was trained with transform "
                    f"{key}, which this project {'changed' if t else 'no longer has'}",
                    fix="restore that transform, or train and promote a new version")
        return [f["column"] for f in pins["features"]]

    # -- batch inference ---------------------------------------------------------------------
    def score(self, model: str, *, at: datetime | None = None, keys: Sequence[Any] | None = None,
              restart: bool = False, progress: batch.Progress | None = None,
              chunk: int = 100_000) -> batch.ScoreReport:
        """Score every entity of the model (or ``keys``) with the production version from
        point-in-time features as of ``at`` (default: now), into the online store, resuming
        an unfinished run of the same version and instant (``closedloop.serving.batch``);
        ``chunk`` entities are written per atomic write and checkpoint."""
        self.serving(model)
        loaded = self.registry.load(model, "production")
        columns = self._pinned(loaded)
        resolution = self.catalog.resolve(columns)
        if resolution.request_inputs:
            raise ServingError(f"model {model!r} reads request fields "
                               f"{list(resolution.request_inputs)}, which batch scoring has no "
                               "request to take from", fix="score it online instead")
        views = [view for view, _ in resolution.by_view()]
        entities = {view.entity.key: view.entity for view in views}
        if len(entities) != 1:
            raise ServingError(f"model {model!r} reads the entities {sorted(entities)}; batch "
                               "scoring scores one entity's keys", fix="score it online")
        (key, entity), = entities.items()
        key_type = ARROW_TYPES[entity.spec()["dtype"]]
        wanted = (batch.entity_keys(self.features, views, key, key_type) if keys is None
                  else list(keys))
        t = self.features.clock.instant(at)
        cpu0 = time.process_time()
        report = batch.score_entities(model, loaded, columns, key, key_type, wanted,
                                      self.features, t, self.scoring / f"{model}.json",
                                      restart=restart, progress=progress, chunk=chunk)
        self.usage(model, "batch", time.process_time() - cpu0, report.scored)
        return report

    def stored_score(self, model: str, key: str) -> batch.StoredScore | None:
        """The batch score of one entity key, as ``score`` wrote it, or None."""
        return batch.lookup(self.features, model, key)

    # -- streaming inference -----------------------------------------------------------------
    def _events(self) -> EventStream:
        if self.events is None:
            raise ServingError("no event stream is configured",
                               fix="open the project with closedloop.Project")
        return self.events

    def _event_source(self, name: str) -> EventSource:
        return self.catalog.source_of(name, EventSource)

    def publish(self, source: str, rows: Any) -> int:
        """Put events of ``source`` (a table or DataFrame) on its stream for the scorers;
        how many."""
        records = stream.encode_events(self._event_source(source), as_table(rows, "events"))
        self._events().publish(stream.events_stream(source), records)
        return len(records)

    def scorer(self, model: str, *, source: str | None = None, group: str = "closedloop",
               consumer: str = "scorer-1") -> stream.StreamScorer:
        """A consumer of ``group`` scoring ``model`` on the events of ``source`` (default:
        the model's rows source) — see ``closedloop.serving.stream``."""
        self.serving(model)
        name = source or self.models[model].rows
        predictor = self.predictor(model)
        return stream.StreamScorer(model, predictor, self.features, self._events(),
                                   self._event_source(name), self.log, group=group,
                                   consumer=consumer, usage=self.usage)

    # -- cost ----------------------------------------------------------------------------------
    def usage(self, model: str, mode: str, cpu_s: float, predictions: int) -> None:
        """Log CPU seconds spent on ``predictions`` predictions in ``mode`` (online, batch,
        stream) — what ``cost`` measures from."""
        if predictions:
            self.log.append(model, [costing.usage_record(model, mode, cpu_s, predictions,
                                                      now_micros())]).result()

    def cost(self, model: str, prices: Mapping[str, Any] | None = None) -> costing.CostReport:
        """The model's measured training, serving and data costs (``serving/cost.py``),
        priced by ``prices`` (``cpu_hour``, ``gb_month``, ``currency``) when given."""
        self.serving(model)
        runs = [r.record.get("cpu_seconds", 0.0) for r in self.registry.training.runs_store
                .runs(model) if r.status == "finished"]
        size = self.log.size(model)
        return costing.cost_report(model, self.log.records(model), size, runs, prices or {})

    # -- the log -----------------------------------------------------------------------------
    def predictions(self, model: str, *, labels: bool = True, at: datetime | None = None,
                    ) -> pa.Table:
        """The model's served predictions as a table — id, time, version, route, unit,
        subject, score, decision, fallback, and the shadow's version and score where one
        scored — joined by subject to the label known now (or at ``at``) with when it
        settled; a subject whose label window has closed with none takes the source's
        default; null while its label may still come (the outcome lag)."""
        self.serving(model)
        rows: list[dict[str, Any]] = []
        shadows: dict[str, dict[str, Any]] = {}
        for r in self.log.records(model):               # one pass over the log
            if r.get("kind") == "prediction":
                rows.append(r)
            elif r.get("kind") == "shadow":
                shadows[r["id"]] = r
        table = pa.table({
            "id": pa.array([r["id"] for r in rows], pa.string()),
            "time": pa.array([r["time"] for r in rows], pa.int64()).cast(
                pa.timestamp("us", tz="UTC")),
            "version": pa.array([r["version"] for r in rows], pa.int64()),
            "route": pa.array([r["route"] for r in rows], pa.string()),
            "unit": pa.array([r["unit"] for r in rows], pa.string()),
            "subject": pa.array([r["subject"] for r in rows], pa.string()),
            "score": pa.array([r["score"] for r in rows], pa.float64()),
            "decision": pa.array([r["decision"] for r in rows], pa.string()),
            "fallback": pa.array([r["fallback"] for r in rows], pa.bool_()),
            "shadow_version": pa.array([shadows[r["id"]]["version"] if r["id"] in shadows
                                        else None for r in rows], pa.int64()),
            "shadow_score": pa.array([shadows[r["id"]]["score"] if r["id"] in shadows
                                      else None for r in rows], pa.float64()),
        })
        declared = self.models[model]
        source = self.catalog.sources.get(declared.label)
        if not labels or not isinstance(source, LabelSource):
            return table
        held = self.features.engine.read(source, [source.subject, source.timestamp,
                                                  source.label, source.settled_at])
        t = self.features.clock.instant(at)
        known = known_labels(held, source, t)
        if known is None:
            return table.append_column("label", pa.nulls(table.num_rows)).append_column(
                "label_settled_at", pa.nulls(table.num_rows, pa.timestamp("us", tz="UTC")))
        latest = known.sort_by([("__t", "ascending")]).group_by(
            "__s", use_threads=False).aggregate([("__label", "last"), ("__settled", "last")])
        latest = pa.table({"subject": pc.cast(latest["__s"], pa.string()),
                           "label": latest["__label_last"],
                           "label_settled_at": pc.cast(latest["__settled_last"], pa.int64())
                           .cast(pa.timestamp("us", tz="UTC"))})
        joined = table.append_column("__order", pa.array(range(table.num_rows), pa.int64())
                                     ).join(latest, "subject", join_type="left outer")
        joined = joined.sort_by("__order").drop_columns(["__order"])
        if source.default is not None:          # a closed window with no label: the default
            closed = pc.less_equal(pc.add(pc.cast(joined["time"], pa.int64()),
                                          source.max_delay_micros), t)
            label = pc.if_else(pc.and_(pc.is_null(joined["label"]), closed),
                               pa.scalar(source.default, joined["label"].type),
                               joined["label"])
            joined = joined.set_column(joined.column_names.index("label"), "label", label)
        return joined

    def budget(self, model: str, last: int = 10_000) -> dict[str, Any]:
        """The measured latency decomposition of the last ``last`` logged predictions
        against the model's budget: per stage p50 and p99 (ms) and its budget; the ``queue``
        (a served request's wait before its batch began: behind the batch ahead); the
        ``total`` — a served request's whole time on the server, arrival to the log, where
        the server measured it, else the stages added up (an in-process predict) — against
        ``p99_ms``; and which of them are over."""
        serving = self.serving(model)
        records = [r for r in self.log.records(model) if r.get("kind") == "prediction"]
        records = records[-last:]
        budget = serving.budget.stages()

        def row(values: list[float], budget_ms: float | None) -> dict[str, Any]:
            return {"p50_ms": float(np.percentile(values, 50)) if values else None,
                    "p99_ms": float(np.percentile(values, 99)) if values else None,
                    "budget_ms": budget_ms}

        stages = {s: row([r["latency_ms"][s] for r in records], budget.get(s)) for s in STAGES}
        queue = row([r["latency_ms"]["queue"] for r in records if "queue" in r["latency_ms"]],
                    None)
        total = row([r["latency_ms"].get("request", sum(r["latency_ms"][s] for s in STAGES))
                     for r in records], float(serving.budget.p99_ms))
        over = [s for s, v in [*stages.items(), ("total", total)] if v["p99_ms"] is not None
                and v["budget_ms"] is not None and v["p99_ms"] > v["budget_ms"]]
        fallbacks = sum(1 for r in records if r.get("fallback"))
        return {"model": model, "predictions": len(records), "stages": stages, "queue": queue,
                "total": total, "over": over, "fallbacks": fallbacks,
                "served": sum(1 for r in records if "request" in r["latency_ms"])}
