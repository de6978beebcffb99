"""``project.serving``: the serving stage's service — the models as served
(``closedloop.serving.online.OnlineModel``: predict, log, shadow), batch and streaming
inference, the prediction log's readers (predictions with their labels, the latency budget,
the cost).

The predictor a model is served by is ``closedloop.serving.predictor.Predictor``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import (
    EventStream,
    LadderRecord,
    LadderStore,
    OfflineEngine,
    PredictionLog,
    SwitchStore,
)
from closedloop.data.instants import now_micros
from closedloop.data.labels import held_labels, known_labels
from closedloop.data.sources import ARROW_TYPES, EventSource, LabelSource
from closedloop.data.tables import as_table
from closedloop.errors import (
    ClosedLoopError,
    ServingError,
    did_you_mean,
)
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.registry.ladder import Ladder
from closedloop.registry.service import LoadedModel, RegistryService
from closedloop.serving import batch, stream
from closedloop.serving import cost as costing
from closedloop.serving.budget import BudgetReport, budget_report
from closedloop.serving.online import OnlineModel, ShadowQueue
from closedloop.serving.predictor import LoadedVersion, Prediction, Predictor
from closedloop.serving.records import PredictionRecord, prediction_table, served
from closedloop.serving.router import LadderSplit
from closedloop.serving.spec import Serving
from closedloop.training.model import Model

_JSON_TYPES = {"string": "string", "int64": "integer", "float64": "number", "bool": "boolean"}


#: What ``ServingService.predictions`` also reads of the log to join labels and age them.
LABELLED_BY = ("subject", "time")


def join_labels(table: pa.Table, labels: pa.Table, on: str = "subject",
                engine: OfflineEngine | None = None) -> pa.Table:
    """``table`` (rows in their order) with every other column of ``labels`` — one row per
    ``subject`` — appended: each row's label by its ``on`` column, null where there is none.
    A lookup, not a join: no row is moved, nothing is sorted back; the offline ``engine``
    finds the rows where one is given (in parallel), Arrow's ``index_in`` otherwise."""
    keys, values = pc.cast(table[on], pa.string()), pc.cast(labels["subject"], pa.string())
    index = (pc.index_in(keys, value_set=values) if engine is None
             else engine.lookup(keys, values))
    for name in labels.column_names:
        if name != "subject":
            table = table.append_column(name, labels[name].take(index))
    return table


def split_of(record: LadderRecord) -> LadderSplit:
    """The traffic split of a running ladder's record."""
    return LadderSplit.of(record.model, record.candidate, record.step, record.share,
                          step_label(record), int(record.spec.get("attempt", 1)))


def step_label(record: LadderRecord) -> str:
    """The label a ladder's step puts on its predictions' records (``step``): the attempt,
    the step and, on the ramp, its index — e.g. ``L2:ramp:1``."""
    attempt = int(record.spec.get("attempt", 1))
    suffix = f":{record.ramp_index}" if record.step == "ramp" else ""
    return f"L{attempt}:{record.step}{suffix}"


class ServingService:
    """The project's models as served, and their prediction logs: ``project.serving``."""

    def __init__(self, servings: Mapping[str, Serving], models: Mapping[str, Model],
                 registry: RegistryService, features: FeatureService, catalog: Catalog,
                 log: PredictionLog, scoring: Path | None = None,
                 events: EventStream | None = None,
                 ladders: Mapping[str, Ladder] | None = None,
                 ladder_store: LadderStore | None = None,
                 switches: SwitchStore | None = None) -> None:
        self.servings = dict(servings)
        #: The declared promotion ladders, by model, and where their state is kept.
        self.ladders = dict(ladders or {})
        self.ladder_store = ladder_store
        self.switches = switches
        #: Versions loaded once per process, by (model, number): a reload after an alias or
        #: ladder move loads only what it has not loaded, so ``previous`` is always ready.
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self.models = dict(models)
        self.registry = registry
        self.features = features
        self.catalog = catalog
        self.log = log
        self.scoring = scoring or Path(".closedloop") / "scoring"
        self.events = events
        #: The one shadow worker of the process (see ``closedloop.serving.online``).
        self.shadow = ShadowQueue(log)
        unknown = sorted(set(self.servings) - set(self.models))
        if unknown:
            raise ServingError(f"serving declarations name models that are not declared: "
                               f"{unknown}{did_you_mean(unknown[0], self.models)}",
                               fix=f"the models are {sorted(self.models)}")
        for name in self.ladders:
            if name not in self.models:
                raise ServingError(f"a ladder names model {name!r}, which is not declared"
                                   f"{did_you_mean(name, self.models)}",
                                   fix=f"the models are {sorted(self.models)}")
            declared = self.servings.get(name) or Serving(name)
            if declared.canary or declared.arms or declared.shadow:
                raise ServingError(f"model {name!r} has a ladder and also fixed canary, arm or "
                                   "shadow routes; a laddered model's traffic shares are the "
                                   "ladder's state",
                                   fix=f"drop canary=, arms= and shadow= from Serving({name!r})")
            if declared.unit is None:
                raise ServingError(f"model {name!r} has a ladder but its Serving names no unit "
                                   "to split traffic by",
                                   fix=f"declare cl.Serving({name!r}, unit='user_id', ...)")

    def serving(self, model: str) -> Serving:
        if model not in self.models:
            raise ServingError(f"there is no model {model!r}",
                               fix=f"the models are {sorted(self.models)}")
        return self.servings.get(model) or Serving(model)

    def aliases(self, model: str) -> dict[str, int]:
        """The aliases a predictor of ``model`` would load, as the registry has them now:
        its routes', ``previous`` (loaded for an instant rollback) and, while a ladder
        holds traffic, its candidate (``candidate``)."""
        return self.routing(model)[0]

    def routing(self, model: str) -> tuple[dict[str, int], LadderSplit | None]:
        """What a predictor of ``model`` serves now: the versions by alias, and the running
        ladder's split of the traffic (``closedloop.serving.router.LadderSplit``), if any."""
        wanted = [*self.serving(model).aliases, "previous"]
        found = {a: v for a, v in self.registry.aliases(model).items() if a in wanted}
        split = self.split(model)
        if split is not None:
            found["candidate"] = split.candidate
        return found, split

    def ladder(self, model: str) -> LadderRecord | None:
        """The model's current (or last) ladder, as the metadata store has it."""
        if self.ladder_store is None or model not in self.ladders:
            return None
        return self.ladder_store.ladder(model)

    def forced(self, model: str) -> str | None:
        """Why the model's traffic goes to its fallback (a monitoring playbook's switch), or
        None when the model serves."""
        if self.switches is None:
            return None
        found = self.switches.switches(model).get("fallback")
        return None if found is None else str(found.get("reason", "fallback playbook"))

    def split(self, model: str) -> LadderSplit | None:
        """The running ladder's hold on the model's traffic, or None."""
        record = self.ladder(model)
        if record is None or not record.active or record.step not in (
                "shadow", "canary", "ab", "ramp"):
            return None
        return split_of(record)

    def predict(self, model: str, instances: Any, *, at: datetime | None = None,
                ) -> list[Prediction]:
        """Serve ``instances`` in process as the server does: predicted (as of ``at``,
        default now on the project's clock), in the prediction log before this returns, the
        shadow queued. Loads the model's versions on each call: hold ``online(model)`` to
        serve many batches."""
        return self.online(model).serve(instances, at=at).predictions

    def online(self, model: str) -> OnlineModel:
        """The model as served — predict, log, shadow — by every caller (the HTTP server,
        the stream scorer, ``predict``); see ``closedloop.serving.online``."""
        return OnlineModel(self.predictor(model), self.log, self.shadow)

    def close(self) -> None:
        """Stop the shadow worker (its work not begun is dropped, and counted)."""
        self.shadow.close()

    def predictor(self, model: str) -> Predictor:
        """Load every version the model's routes name; refuse a model with no production
        version or whose pinned definitions the project no longer defines."""
        serving = self.serving(model)
        aliases, split = self.routing(model)
        if "production" not in aliases:
            raise ServingError(f"model {model!r} has no production version",
                               fix=f"closedloop models alias {model} production VERSION")
        versions: dict[str, LoadedVersion] = {}
        for alias, number in aliases.items():
            found = self._loaded.get((model, number))
            if found is None:
                try:
                    loaded = self.registry.load(model, number)
                    found = LoadedVersion(loaded, self._pinned(loaded))
                except ClosedLoopError:
                    if alias == "previous":      # it cannot serve: no instant rollback to it
                        continue
                    raise
                self._loaded[(model, number)] = found
            versions[alias] = found
        # "previous" is loaded, never routed to: its columns are not fetched until it serves.
        versions_served = {a: v for a, v in versions.items() if a != "previous"}
        columns = list(dict.fromkeys(c for v in versions_served.values() for c in v.columns))
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
        # A request is a row of the model's rows source: any of its declared columns may be
        # sent (a version that does not read one ignores it, so clients need not change
        # with the versions served); nothing else.
        accepted = fields | frozenset(c for c in declared if c in types)
        types = {f: keys.get(f) or types[f] for f in accepted if f in keys or f in types}
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
            accepted = accepted | {replay}
            types[replay] = "string"
        return Predictor(serving, versions_served, self.features, columns, fields, required,
                         types, nullable, replay, split, forced=self.forced(model),
                         loaded=versions, accepted=accepted)

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
            if t is None or t.key != key or t.hash != digest:
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
        return stream.StreamScorer(self.online(model), self.features, self._events(),
                                   self._event_source(name), group=group,
                                   consumer=consumer, usage=self.usage, forced=self.forced)

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
                    requests: Sequence[str] = (), shadows: bool = True,
                    columns: Sequence[str] | None = None) -> pa.Table:
        """The model's served predictions as a table (``closedloop.serving.records.
        prediction_table``: id, time, version, route, unit, subject, score, decision,
        fallback, the ladder step that routed it, its latency as the caller saw it — queue
        wait included where the server served it — with ``shadows`` the shadow's version,
        score and latency where one scored, and each of ``requests`` as ``request.<field>``;
        or only ``columns`` of the log's, plus subject and time where labels are joined)
        joined by subject to the label known now (or at ``at``) with when it settled; a
        subject whose label window has closed with none takes the source's default; null
        while its label may still come (the outcome lag)."""
        self.serving(model)
        if columns is not None and labels:       # what the labels are joined and aged by
            columns = [*columns, *(c for c in LABELLED_BY if c not in columns)]
        table = prediction_table(self.log, model, requests=requests, shadows=shadows,
                                 columns=columns)
        declared = self.models[model]
        source = self.catalog.sources.get(declared.label)
        if not labels or not isinstance(source, LabelSource):
            return table
        held = held_labels(self.features.engine, source)
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
        joined = join_labels(table, latest, engine=self.features.engine)
        if source.default is not None:          # a closed window with no label: the default
            closed = pc.less_equal(pc.add(pc.cast(joined["time"], pa.int64()),
                                          source.max_delay_micros), t)
            label = pc.if_else(pc.and_(pc.is_null(joined["label"]), closed),
                               pa.scalar(source.default, joined["label"].type),
                               joined["label"])
            joined = joined.set_column(joined.column_names.index("label"), "label", label)
        return joined

    def unmatched_labels(self, model: str, predictions: pa.Table,
                         at: datetime | None = None) -> int:
        """Labels known now (or ``at``) for subjects no prediction of ``predictions`` (a
        ``predictions`` table: subject, time) names, among those whose time is not before its
        first prediction: a label for an unknown prediction id (a key mismatch upstream) is
        counted here, never joined."""
        declared = self.models[model]
        source = self.catalog.sources.get(declared.label)
        if not isinstance(source, LabelSource) or predictions.num_rows == 0:
            return 0
        known = known_labels(held_labels(self.features.engine, source), source,
                             self.features.clock.instant(at))
        if known is None:
            return 0
        first = pc.min(pc.cast(predictions["time"], pa.int64())).as_py()
        recent = known.filter(pc.greater_equal(known["__t"], first))
        subjects = pc.cast(recent["__s"], pa.string())
        seen = pc.is_in(subjects, value_set=pc.unique(pc.drop_null(predictions["subject"])))
        return int(recent.num_rows - (pc.sum(seen).as_py() or 0))

    def budget(self, model: str, last: int = 10_000) -> BudgetReport:
        """The measured latency of the last ``last`` logged predictions against the model's
        budget (``closedloop.serving.budget``)."""
        serving = self.serving(model)
        logged = [r for r in served(self.log, model) if isinstance(r, PredictionRecord)]
        return budget_report(model, serving.budget, logged[-last:])
