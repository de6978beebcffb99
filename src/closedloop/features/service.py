"""``project.features``: the feature stage's service — training sets (``training_sets.py``),
materialization (``materialize.py``), online vectors (``fetch.py``, ``transforms.py``), push
(``push.py``), compaction and the consistency report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from closedloop.backends.base import OfflineEngine, OnlineStore
from closedloop.data.clock import WALL, Clock
from closedloop.data.labels import held_labels, mature
from closedloop.data.sources import LabelSource
from closedloop.data.tables import as_table
from closedloop.errors import ConfigError, DataError, SchemaMismatch, UnknownFeatureError
from closedloop.features.catalog import Catalog
from closedloop.features.consistency import FeatureConsistency, FeatureLog, consistency_report
from closedloop.features.fetch import (
    Marks,
    OnlineFetch,
    OnlinePlan,
    decode,
    fetch_keys,
    finish,
    present,
    spread,
)
from closedloop.features.history import Backfillability, backfillability
from closedloop.features.materialize import MaterializeReport, Progress, materialize_view
from closedloop.features.online import OnlineVector, namespace
from closedloop.features.push import BackgroundCompactor, PushReport
from closedloop.features.push import push as push_rows
from closedloop.features.training_sets import compute, timestamp_column


class FeatureService:
    """Training sets, materialization and online vectors: ``project.features``."""

    def __init__(self, catalog: Catalog, engine: OfflineEngine,
                 online_store: OnlineStore | None = None, log: FeatureLog | None = None,
                 batch_size: int = 2000, clock: Clock = WALL) -> None:
        self.catalog = catalog
        self.clock = clock
        self.engine = engine
        self.online_store = online_store
        self.log = log
        self.batch_size = batch_size
        self._plans: dict[tuple[str, ...], OnlinePlan] = {}
        self._marks = Marks()
        self._compactor = BackgroundCompactor(engine)

    def close(self) -> None:
        """Let background compactions finish."""
        self._compactor.close()

    def _store(self) -> OnlineStore:
        if self.online_store is None:
            raise ConfigError("this feature service has no online store",
                              fix="open the project with closedloop.Project, which wires one")
        return self.online_store

    def materialize(self, views: Sequence[str] | None = None, *, at: datetime | None = None,
                    incremental: bool = True, progress: Progress | None = None,
                    ) -> list[MaterializeReport]:
        """Write every view version's state as of ``at`` (default: now) to the online store.

        Incremental (only entities with rows that became visible since the last run), late-data
        aware and idempotent; see ``closedloop.features.materialize``.
        """
        t = self.clock.instant(at)
        chosen = [v for v in self.catalog.views.values()
                  if views is None or v.name in views or v.key in views]
        if views is not None and not chosen:
            names = sorted({v.name for v in self.catalog.views.values()})
            raise UnknownFeatureError(f"no feature view matches {list(views)}",
                                      fix=f"the views are {names}")
        self.compact(sorted({v.source.name for v in chosen}))   # fewer files to read
        reports = []
        for v in chosen:
            self._marks.forget(namespace(v))
            reports.append(materialize_view(v, self.engine, self._store(), t,
                                            incremental=incremental,
                                            batch_size=self.batch_size, progress=progress))
            self._marks.forget(namespace(v))
        return reports

    def online(self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
               features: Sequence[str], *, at: datetime | None = None,
               times: Sequence[int] | None = None) -> OnlineVector | list[OnlineVector]:
        """Feature vectors as served now on the project's clock (or at ``at``; or each row at
        its own instant in µs, ``times``, as a replay serves them): one dict of entity keys
        and request values gives one ``OnlineVector``, a list gives a list. One store round
        trip.

        Unknown entity keys get the declared defaults, and the vector's ``missing`` names the
        views that had no record; a malformed key or an unknown feature is an error.
        """
        single = type(rows) is dict or isinstance(rows, Mapping)   # dict first: the hot path
        batch: Sequence[Mapping[str, Any]] = [rows] if single else rows  # type: ignore[list-item,assignment]  # narrowed by `single`
        result = self.finish(batch, self.fetch(batch, features, at=at, times=times))
        return result[0] if single else result

    def fetch(self, batch: Sequence[Mapping[str, Any]], features: Sequence[str], *,
              at: datetime | None = None, times: Sequence[int] | None = None) -> OnlineFetch:
        """The first half of ``online``: the view features of every row, read in one store
        round trip (``finish`` runs the transforms). Serving times the two apart."""
        planned = fetch_keys(self._plans, self.catalog, self.clock, self._marks, batch,
                             features, at, times)
        keys = planned[2]
        wanted = present(keys)
        raw = self._store().read(wanted)
        if wanted is not keys:                          # null keys were not read
            raw = spread(keys, wanted, raw)
        return decode(batch, planned, self._marks, raw, times)

    async def fetch_async(self, batch: Sequence[Mapping[str, Any]], features: Sequence[str],
                          *, at: datetime | None = None, times: Sequence[int] | None = None,
                          ) -> OnlineFetch:
        """``fetch`` awaiting the store's reply on the running event loop (the server's)."""
        planned = fetch_keys(self._plans, self.catalog, self.clock, self._marks, batch,
                             features, at, times)
        keys = planned[2]
        wanted = present(keys)
        raw = await self._store().read_async(wanted)
        if wanted is not keys:                          # null keys were not read
            raw = spread(keys, wanted, raw)
        return decode(batch, planned, self._marks, raw, times)

    def finish(self, batch: Sequence[Mapping[str, Any]], fetched: OnlineFetch,
               ) -> list[OnlineVector]:
        """The second half of ``online``: the transforms over the fetched features (and the
        served vectors into the feature log, when it samples)."""
        return finish(batch, fetched, self.log)

    def push(self, source: str, rows: Any, *, at: datetime | None = None) -> PushReport:
        """Append events to a source's event log durably, then fold them into the online
        records of every view over it, atomically; a read right after sees them. Rows without
        the source's arrival column are stamped with ``at`` (default: now)."""
        if source not in self.catalog.sources:
            raise UnknownFeatureError(f"no source is named {source!r}",
                                      fix=f"sources: {sorted(self.catalog.sources)}")
        src = self.catalog.sources[source]
        views = [v for v in self.catalog.views.values() if v.source.name == source]
        t = self.clock.instant(at)
        report = push_rows(src, views, as_table(rows, "pushed rows"), self.engine, self._store(), t)
        self._compactor.pushed(src)           # every so many pushes, merge their parts
        return report

    def compact(self, sources: Sequence[str] | None = None) -> dict[str, int]:
        """Merge the small parts that pushes left in each source's event log (all sources by
        default); return how many parts were merged per source. Materialization does this
        first; a stream that never materializes can call it on its own schedule."""
        unknown = sorted(set(sources or ()) - set(self.catalog.sources))
        if unknown:
            raise UnknownFeatureError(f"no source is named {unknown[0]!r}",
                                      fix=f"sources: {sorted(self.catalog.sources)}")
        names = sorted(self.catalog.sources) if sources is None else list(sources)
        return {name: self.engine.compact(self.catalog.sources[name]) for name in names}

    def consistency(self) -> list[FeatureConsistency]:
        """Replay the logged served vectors offline; per feature, how often they agree."""
        if self.log is None:
            raise ConfigError("no feature log is configured", fix="set [online] log_sample")
        self.log.flush()
        return consistency_report(self.training_set, self.log.read())

    def training_set(self, entity_rows: Any, features: Sequence[str], *,
                     timestamp: str | None = None, labels: str | None = None,
                     cutoff: datetime | None = None, subject: str | None = None,
                     progress: Progress | None = None) -> pa.Table:
        """Every requested feature as known at each row's timestamp, beside the row's columns.

        Row order and count are preserved; a missing value is the declared default or null.
        With ``labels`` (a LabelSource's name), only the rows whose label window had closed by
        ``cutoff`` (default: now) are kept, each with the label known at ``cutoff`` — never a
        label settled later, never an open window counted as a negative.
        """
        table = as_table(entity_rows, "entity rows")
        resolution = self.catalog.resolve(list(features))
        if table.num_rows == 0:
            raise DataError("the entity table is empty", fix="pass at least one row")
        if labels is not None:
            timestamp = timestamp_column(table, timestamp)   # before the label's own times
            table = self._matured(table, labels, cutoff, subject, timestamp)
        clash = [r for r in resolution.requested if r in table.column_names]
        if clash:
            raise SchemaMismatch(f"entity rows already have columns named {clash}",
                                 fix="rename those columns or drop them")
        values = compute(self.engine, table, resolution, timestamp, progress)
        out = table
        for ref in resolution.requested:
            out = out.append_column(ref, values[resolution.columns[ref]])
        return out

    def _matured(self, table: pa.Table, labels: str, cutoff: datetime | None,
                 subject: str | None, timestamp: str | None) -> pa.Table:
        source = self.catalog.source_of(labels, LabelSource)
        when = self.clock.datetime(cutoff)
        held = held_labels(self.engine, source)
        rows, report = mature(table, held, source, when, subject=subject, timestamp=timestamp)
        if rows.num_rows == 0:
            raise DataError(
                f"no row has a matured label from {labels!r} at {when:%Y-%m-%d %H:%M}: "
                f"{report.maturing:,} of {report.rows:,} rows are still inside their "
                f"{source.max_delay} label window, {report.unlabelled:,} have no label",
                fix="train on older rows, or with a later cutoff")
        return rows

    def backfillability(self, feature: str, *, labels: str | None = None) -> Backfillability:
        """Whether a feature's history can be computed from the raw sources, and from when;
        or only forward, from when rows carrying its columns arrive. With ``labels`` (a
        LabelSource), also the first cutoff at which a model could train on it."""
        return backfillability(self.catalog, self.engine, feature, labels)

    def backfill(self, training_set: Any, features: Sequence[str], *,
                 timestamp: str | None = None, progress: Progress | None = None) -> pa.Table:
        """Add features to an existing training set, computed as of each row's own time.

        The same code path as ``training_set``: a feature added today gets its history from
        the raw sources.
        """
        table = as_table(training_set, "the training set")
        return self.training_set(table, features, timestamp=timestamp, progress=progress)

