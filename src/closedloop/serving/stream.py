"""Streaming inference: consume a source's events from a stream shared by a consumer group,
fold them into the online features, score them, and publish the predictions.

Events travel on the stream ``events:<source>`` (``ServingService.publish``), one JSON object
per record with instants as int µs. A ``StreamScorer`` of a group reads batches; several
scorers (processes, machines) in one group share the stream, and each event goes to one of
them. Per batch:

1. **score** each event as an instance of the model (its entity keys, request fields, unit,
   subject) with the features as served now. Training scored a row with what was visible at
   its own time, and an event arriving after its event time was not yet visible then — so
   when the source declares ``arrival`` the batch is scored *before* its events are folded
   in; without ``arrival`` an event is visible at its own time, and the batch is folded in
   first;
2. **fold** the events into the online records (``features.push``: the event log first,
   durably, then the records);
3. **write** each prediction to the online store (namespace ``stream:<model>``, by subject)
   and the prediction log (durably), and **publish** it on ``predictions:<model>``, with its
   lag — event time to prediction written;
4. **acknowledge** the batch. A scorer that dies before this leaves its batch pending in the
   group; a live scorer of the group claims records pending longer than ``claim_idle_s``
   (at its start, and every ``claim_idle_s / 2`` after) and scores them. Delivery is at
   least once; its effect is once: the fold is idempotent on the source's ``id`` (``push``
   skips an event the source holds already), and the other writes are keyed, so a
   redelivered event overwrites its own prediction. (The prediction log and the predictions
   stream may carry a redelivered event's prediction twice, under the same subject.) A source
   without an ``id`` cannot be deduplicated: there, a redelivered event is folded twice.

The stream is the embedded one (``[stream] store = "embedded"``: an append-only SQLite log
beside the offline store, shared by processes on one machine) or Redis Streams
(``[stream] url``: scorers on many machines). Each batch's lags go to ``observe`` as well
(``closedloop stream --metrics-port`` exports them to Prometheus).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import EventStream
from closedloop.data.instants import as_instants, format_instant, now_micros
from closedloop.data.sources import ARROW_TYPES, EventSource
from closedloop.errors import ServingError
from closedloop.features.service import FeatureService
from closedloop.serving.online import OnlineModel

Progress = Callable[[int, int, str], None]


def events_stream(source: str) -> str:
    return f"events:{source}"


def predictions_stream(model: str) -> str:
    return f"predictions:{model}"


def encode_events(source: EventSource, rows: pa.Table) -> list[dict[str, bytes]]:
    """Stream records of a table of events: instants as int µs."""
    instants = {c for c, t in source.logical_schema.items() if t == "timestamp"}
    instants |= {c for c in source.time_columns if c in rows.column_names}
    columns = {}
    for name in rows.column_names:
        column = rows[name]
        if name in instants or pa.types.is_timestamp(column.type):
            column = pc.cast(as_instants(column, f"column {name!r} of the events"), pa.int64())
        columns[name] = column.to_pylist()
    names = list(columns)
    return [{"e": orjson.dumps(dict(zip(names, values, strict=True)))}
            for values in zip(*columns.values(), strict=True)]


def decode_events(source: EventSource, records: Sequence[Mapping[str, bytes]]) -> pa.Table:
    """The events of stream records as a table typed as the source declares."""
    rows = [orjson.loads(r["e"]) for r in records]
    names = list(dict.fromkeys(k for r in rows for k in r))
    declared = source.logical_schema
    instants = set(source.time_columns) | {c for c, t in declared.items() if t == "timestamp"}
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if name in instants:
            columns[name] = pa.array(values, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        elif name in declared:
            columns[name] = pa.array(values, ARROW_TYPES[declared[name]])
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


@dataclass
class StreamReport:
    """What a scorer did: events scored, batches, seconds, and the lag (event time to
    prediction written) p50 and p99 in milliseconds."""

    model: str
    consumer: str
    events: int = 0
    batches: int = 0
    seconds: float = 0.0
    lags_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def lag(self, q: float) -> float | None:
        return float(np.percentile(self.lags_ms, q)) if self.lags_ms else None


class StreamScorer:
    """One consumer of a group scoring a model's events (see module)."""

    def __init__(self, online: OnlineModel, features: FeatureService,
                 stream: EventStream, source: EventSource,
                 group: str = "closedloop", consumer: str = "scorer-1",
                 usage: Callable[[str, str, float, int], None] | None = None,
                 observe: Callable[[list[float]], None] | None = None,
                 forced: Callable[[str], str | None] | None = None,
                 refresh_s: float = 1.0) -> None:
        self.online = online
        self.model = online.model
        self.predictor = online.predictor
        self.features = features
        self.stream = stream
        self.source = source
        self.group = group
        self.consumer = consumer
        self.usage = usage
        self.observe = observe
        #: Whether a monitoring playbook forces the model to its fallback (read every
        #: ``refresh_s`` seconds, as the server's workers do every ``reload_s``).
        self.forced = forced
        self.refresh_s = refresh_s

    def run(self, *, max_events: int | None = None, idle_s: float | None = None,
            batch: int = 500, block_ms: int = 200, stop: threading.Event | None = None,
            progress: Progress | None = None, claim_idle_s: float = 60.0) -> StreamReport:
        """Consume until ``stop`` is set, ``max_events`` are scored, or nothing arrives for
        ``idle_s`` seconds; records pending longer than ``claim_idle_s`` (their scorer died)
        are claimed and scored too."""
        name = events_stream(self.source.name)
        self.stream.ensure_group(name, self.group)
        report = StreamReport(self.model, self.consumer)
        start, cpu0 = time.perf_counter(), time.process_time()
        quiet_since = next_claim = next_refresh = time.monotonic()
        while stop is None or not stop.is_set():
            if self.forced is not None and time.monotonic() >= next_refresh:
                self.predictor.forced = self.forced(self.model)
                next_refresh = time.monotonic() + self.refresh_s
            if max_events is not None and report.events >= max_events:
                break
            want = batch if max_events is None else min(batch, max_events - report.events)
            records = []
            if time.monotonic() >= next_claim:
                records = self.stream.claim(name, self.group, self.consumer, claim_idle_s,
                                            want)
                if not records:                  # none left: look again in a while
                    next_claim = time.monotonic() + claim_idle_s / 2
            if not records:
                records = self.stream.read_group(name, self.group, self.consumer, want,
                                                 block_ms)
            if not records:
                if idle_s is not None and time.monotonic() - quiet_since >= idle_s:
                    break
                continue
            quiet_since = time.monotonic()
            self._batch(records, report)
            if progress:
                progress(report.events, max_events or 0, f"{report.events:,} events scored")
        report.seconds = time.perf_counter() - start
        if self.usage is not None:
            self.usage(self.model, "stream", time.process_time() - cpu0, report.events)
        return report

    def _batch(self, records: list[tuple[str, dict[str, bytes]]], report: StreamReport) -> None:
        events = decode_events(self.source, [r for _, r in records])
        fields = self.predictor.fields
        rows = events.to_pylist()
        instances = [{k: v for k, v in row.items() if k in fields} for row in rows]
        fold_first = self.source.arrival is None
        if fold_first:
            self.features.push(self.source.name, events)
        served = self.online.serve(instances)             # predicted, logged, shadowed
        if not fold_first:
            self.features.push(self.source.name, events)
        subject = self.predictor.serving.subject or self.source.id
        event_times = pc.cast(pc.cast(events[self.source.timestamp],
                                      pa.timestamp("us", tz="UTC")), pa.int64()).to_pylist()
        store = self.features.online_store
        if store is None:
            raise ServingError("streaming writes to the online store, and there is none",
                               fix="open the project with closedloop.Project")
        written = now_micros()
        outs = []
        for (rid, _), row, p, et in zip(records, rows, served.predictions, event_times,
                                        strict=True):
            key = str(row.get(subject) if subject else rid)
            outs.append({"event": rid, "key": key, "id": p.id, "score": p.score,
                         "decision": p.decision, "version": p.version, "route": p.route,
                         "fallback": p.fallback, "event_time": format_instant(et),
                         "written": format_instant(written),
                         "lag_ms": (written - et) / 1000, "consumer": self.consumer})
        store.write([(f"stream:{self.model}", o["key"], orjson.dumps(o)) for o in outs])
        self.stream.publish(predictions_stream(self.model), [{"p": orjson.dumps(o)}
                                                             for o in outs])
        self.stream.ack(events_stream(self.source.name), self.group, [r for r, _ in records])
        report.events += len(outs)
        report.batches += 1
        lags = [o["lag_ms"] for o in outs]
        report.lags_ms.extend(lags)
        if self.observe is not None:
            self.observe(lags)
