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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from closedloop.data.clock import parse_instant
from closedloop.errors import (
    BackendError,
    DataError,
    PointInTimeError,
    RequestError,
)
from closedloop.features.fetch import OnlineFetch
from closedloop.features.online import EPOCH
from closedloop.features.service import FeatureService
from closedloop.registry.service import LoadedModel
from closedloop.serving.records import PredictionRecord, ShadowRecord
from closedloop.serving.router import LadderSplit, Router
from closedloop.serving.spec import Serving

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
    records: list[PredictionRecord]
    fallback_reason: str | None = None
    after: Callable[[], list[ShadowRecord]] | None = None


@dataclass
class LoadedVersion:
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
    versions: dict[str, LoadedVersion]
    features: FeatureService
    fetch_columns: list[str]
    fields: frozenset[str]
    required: tuple[str, ...]
    types: dict[str, str]                # field -> its JSON type, where it is declared
    nullable: frozenset[str] = frozenset()   # required fields that may be null: entity keys
    replay: str | None = None        # a replay clock: the field carrying each instance's instant
    #: A running ladder's hold on the traffic (its candidate is loaded as ``candidate``);
    #: the server swaps it whole when the ladder moves.
    split: LadderSplit | None = None
    #: Why every prediction goes to the fallback (a monitoring playbook switched it so), or
    #: None; the server refreshes it with the ladder.
    forced: str | None = None
    #: Every version loaded for this model, ``previous`` included (never routed to).
    loaded: dict[str, LoadedVersion] = field(default_factory=dict)
    #: The fields a request may carry: ``fields`` (what the versions read) and the rest of
    #: the rows source's columns (ignored).
    accepted: frozenset[str] = frozenset()
    router: Router = field(init=False)

    def __post_init__(self) -> None:
        self.router = Router(self.serving)

    @property
    def model(self) -> str:
        return self.serving.model

    @property
    def aliases(self) -> dict[str, int]:
        """The versions loaded, by alias (``previous`` and ``candidate`` included)."""
        return {alias: v.number for alias, v in (self.loaded or self.versions).items()}

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
            allowed = self.accepted or self.fields
            for name, value in row.items():
                if name not in allowed:
                    raise RequestError(f"instance {i} has a field {name!r} this model does "
                                       f"not read", field=f"instances[{i}].{name}",
                                       fix=f"send only {sorted(allowed)}")
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
        read_at = None if at is None else self.features.clock.instant(at)   # records' time
        if self.forced is not None:
            return self._finish(rows, routes, aliases, t0, None, None, times, read_at)
        try:
            fetched = self.features.fetch(rows, self.fetch_columns, at=at, times=times)
        except BackendError as exc:
            return self._finish(rows, routes, aliases, t0, None, exc, times, read_at)
        except DataError as exc:                  # a key of the wrong type
            raise RequestError(exc.message, fix=exc.fix) from exc
        return self._finish(rows, routes, aliases, t0, fetched, None, times, read_at)

    async def predict_async(self, instances: Any, *, checked: bool = False,
                            deadline: float | None = None) -> Served:
        """``predict`` awaiting the online store on the running event loop (the server's):
        other requests run while the store's reply is on its way. ``checked``: the
        instances already passed ``check`` (the server merges checked requests).
        ``deadline`` (``time.perf_counter()`` seconds): the fetch gives up then — at once if
        it has passed — and the fallback answers; the server sets it ``fetch_timeout_ms``
        after the request's arrival, so time spent queued counts against it."""
        rows, routes, aliases, t0, times = self._begin(instances, checked)
        if self.forced is not None:
            return self._finish(rows, routes, aliases, t0, None, None, times)
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
        split = self.split
        if split is not None and "candidate" not in self.versions:
            split = None
        route = self.router.route
        routes = [route(r, split) for r in rows]
        ladder = None if split is None or split.share <= 0 else split.step
        aliases = ["candidate" if r == ladder else r if r in self.versions else "production"
                   for r in routes]
        routes = [r if r in self.versions or r == "holdout" or r == ladder else "production"
                  for r in routes]
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
                times: list[int] | None = None, read_at: int | None = None) -> Served:
        reason = (f"forced: {self.forced}" if self.forced is not None
                  else None if down is None else f"online store: {down.message}")
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
        now = clock.now() if read_at is None else read_at
        split = self.split
        step = None if split is None else split.label
        records = []
        for i, (row, p) in enumerate(zip(rows, predictions, strict=True)):
            version = self.versions[aliases[i]]
            records.append(PredictionRecord(
                p.id, self.model, now if times is None else times[i], p.version, p.route,
                p.score, p.decision,
                None if serving.unit is None else _text(row.get(serving.unit)),
                None if serving.subject is None else _text(row.get(serving.subject)),
                row, None if reason else {c: vectors[i][c] for c in version.columns},
                p.fallback, p.fallback_reason, p.missing or {}, latency, step))
        after = None
        shadow = (self.versions.get("candidate") if split is not None and split.step == "shadow"
                  else self.versions.get("shadow") if serving.shadow else None)
        if shadow is not None and reason is None:
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

    version: LoadedVersion
    vectors: list[dict[str, Any]]
    predictions: list[Prediction]
    model: str

    def __call__(self) -> list[ShadowRecord]:
        start = time.perf_counter()
        X = np.array([[_number(v[c]) for c in self.version.columns] for v in self.vectors],
                     dtype=np.float64)
        scores = self.version.loaded.score(X)
        ms = (time.perf_counter() - start) * 1e3
        now = int(time.time() * 1_000_000)
        return [ShadowRecord(p.id, self.model, now, self.version.number, p.version, float(s),
                             p.score, ms)
                for p, s in zip(self.predictions, scores.tolist(), strict=True)]


