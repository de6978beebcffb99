"""The feature service: point-in-time training sets and backfills over the offline engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS, OfflineEngine, OnlineStore
from closedloop.data.clock import WALL, Clock
from closedloop.data.instants import (
    as_instants,
    format_instant,
    to_micros,
)
from closedloop.data.labels import SETTLED, mature
from closedloop.data.sources import ARROW_TYPES, LabelSource
from closedloop.data.tables import as_table
from closedloop.errors import (
    ConfigError,
    DataError,
    PointInTimeError,
    SchemaMismatch,
    UnknownFeatureError,
)
from closedloop.features.catalog import Catalog, Resolution
from closedloop.features.consistency import FeatureConsistency, FeatureLog, consistency_report
from closedloop.features.definitions import FeatureView, Transform
from closedloop.features.history import Backfillability, backfillability
from closedloop.features.materialize import (
    MaterializeReport,
    Progress,
    materialize_view,
    watermark,
    watermark_key,
)
from closedloop.features.online import OnlineVector, ViewReader
from closedloop.features.push import BackgroundCompactor, PushReport
from closedloop.features.push import push as push_rows


def _timestamp_column(table: pa.Table, timestamp: str | None) -> str:
    if timestamp is not None:
        if timestamp not in table.column_names:
            raise SchemaMismatch(f"entity rows have no timestamp column {timestamp!r}",
                                 fix=f"their columns are {table.column_names}")
        return timestamp
    # A labelled training set's label_settled_at is the label's time, never the row's.
    found = [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.name != SETTLED]
    if len(found) != 1:
        raise SchemaMismatch(
            f"entity rows have {len(found)} timestamp columns {found}; closedloop needs to "
            "know which one is the row's time", fix="pass timestamp='column'")
    return str(found[0])


#: A resolved feature list, its view readers, and the Arrow types of its view features.
_OnlinePlan = tuple[Resolution, list[ViewReader], dict[str, pa.DataType]]


@dataclass(frozen=True, slots=True)
class OnlineFetch:
    """Rows' view features as read from the online store at ``t`` (µs) — or each row at its
    own instant, ``times`` (a replay) — before transforms: what ``FeatureService.fetch`` hands
    to ``finish``."""

    plan: _OnlinePlan
    t: int
    vectors: list[dict[str, Any]]
    missing: list[tuple[str, ...]]
    times: Sequence[int] | None = None

    def at(self, i: int) -> int:
        """The instant row ``i`` was read at."""
        return self.t if self.times is None else self.times[i]


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
        self._plans: dict[tuple[str, ...], _OnlinePlan] = {}
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
                  if views is None or v.name in views or f"{v.name}@{v.version}" in views]
        if views is not None and not chosen:
            names = sorted({v.name for v in self.catalog.views.values()})
            raise UnknownFeatureError(f"no feature view matches {list(views)}",
                                      fix=f"the views are {names}")
        self.compact(sorted({v.source.name for v in chosen}))   # fewer files to read
        return [materialize_view(v, self.engine, self._store(), t, incremental=incremental,
                                 batch_size=self.batch_size, progress=progress) for v in chosen]

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
        plan, t, keys, marks = self._fetch_keys(batch, features, at, times)
        wanted = _present(keys)
        raw = self._store().read(wanted)
        return self._decode(batch, plan, t, _spread(keys, wanted, raw), marks, times)

    async def fetch_async(self, batch: Sequence[Mapping[str, Any]], features: Sequence[str],
                          *, at: datetime | None = None, times: Sequence[int] | None = None,
                          ) -> OnlineFetch:
        """``fetch`` awaiting the store's reply on the running event loop (the server's)."""
        plan, t, keys, marks = self._fetch_keys(batch, features, at, times)
        wanted = _present(keys)
        raw = await self._store().read_async(wanted)
        return self._decode(batch, plan, t, _spread(keys, wanted, raw), marks, times)

    def _fetch_keys(self, batch: Sequence[Mapping[str, Any]], features: Sequence[str],
                    at: datetime | None, times: Sequence[int] | None,
                    ) -> tuple[_OnlinePlan, int, list[tuple[str, str | None]], bool]:
        """The plan, the instant, the store keys — one per row and view (None: a null entity
        key, not read), then, for a read at an instant not the wall clock's, each view's
        watermark — and whether those marks are there."""
        plan = self._plans.get(tuple(features))
        if plan is None:
            plan = self._plans[tuple(features)] = self._online_plan(features)
        if times is not None and len(times) != len(batch):
            raise DataError(f"{len(times)} instants for {len(batch)} rows",
                            fix="pass one instant per row")
        t = min(times) if times else self.clock.instant(at)
        keys: list[tuple[str, str | None]] = [(r.namespace, r.key(row)) for row in batch
                                              for r in plan[1]]
        marks = at is not None or times is not None or self.clock.fixed
        if marks:
            keys += [watermark_key(r.view) for r in plan[1]]
        return plan, t, keys, marks

    @staticmethod
    def _decode(batch: Sequence[Mapping[str, Any]], plan: _OnlinePlan, t: int,
                raw: list[bytes | None], marks: bool,
                times: Sequence[int] | None = None) -> OnlineFetch:
        readers = plan[1]
        if marks:                     # a read at a given instant: not before a mark (t: the
            _check_marks(readers, raw[len(raw) - len(readers):], t)   # earliest row's)
        vectors: list[dict[str, Any]] = []
        missing: list[tuple[str, ...]] = []
        i = 0
        for n, _row in enumerate(batch):
            at = t if times is None else times[n]
            values: dict[str, Any] = {}
            gone: tuple[str, ...] = ()
            for reader in readers:
                data = raw[i]
                i += 1
                if data is None:
                    gone = (*gone, reader.namespace)
                reader.read(data, at, values)
            vectors.append(values)
            missing.append(gone)
        return OnlineFetch(plan, t, vectors, missing, times)

    def finish(self, batch: Sequence[Mapping[str, Any]], fetched: OnlineFetch,
               ) -> list[OnlineVector]:
        """The second half of ``online``: the transforms over the fetched features."""
        (resolution, _, types), vectors = fetched.plan, fetched.vectors
        for tr in resolution.transforms:
            inputs = {}
            for inp in tr.inputs:
                if inp.startswith("request."):
                    column = inp.removeprefix("request.")
                    if any(column not in row for row in batch):
                        raise SchemaMismatch(f"transform {tr.name!r} reads {inp!r}, which the "
                                             "request does not carry", fix=f"send {column!r}")
                    data_in = [row[column] for row in batch]
                    try:
                        inputs[inp] = _column(data_in, None)
                    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                        raise DataError(f"transform {tr.name!r}: the request's {column!r} "
                                        f"values are not all of one kind: {exc}",
                                        fix=f"send {column!r} as one type") from None
                else:
                    key = resolution.keys[inp]
                    inputs[inp] = _column([v[key] for v in vectors], types.get(key))
            out = _transform_output(tr, _call_transform(tr, inputs, len(batch)))
            for v, value in zip(vectors, out.to_pylist(), strict=True):
                v[tr.name] = value
        if resolution.transforms:      # drop the transforms' inputs that were not asked for
            vectors = [{ref: v[ref] for ref in resolution.requested} for v in vectors]
        result = [OnlineVector(v, m, fetched.at(i))
                  for i, (v, m) in enumerate(zip(vectors, fetched.missing, strict=True))]
        if self.log is not None:
            for row, vector in zip(batch, result, strict=True):
                self.log.record(vector.at, resolution.requested, dict(row), vector.values)
        return result

    def _online_plan(self, features: Sequence[str]) -> _OnlinePlan:
        """Resolve once per feature list: each view feature is written straight under the
        reference it was asked by (and under its resolved key when a transform reads it)."""
        resolution = self.catalog.resolve(list(features))
        asked: dict[str, list[str]] = {}
        for ref, key in resolution.columns.items():
            asked.setdefault(key, []).append(ref)
        read_by_transforms = {resolution.keys[i] for t in resolution.transforms
                              for i in t.inputs if not i.startswith("request.")}
        readers = []
        for view, names in resolution.by_view():
            outputs = []
            for name in names:
                key = f"{view.name}@{view.version}.{name}"
                outputs.append(asked.get(key, []) + ([key] if key in read_by_transforms else []))
            readers.append(ViewReader(view, names, outputs))
        # Arrow types of view features, so a transform sees NaN for a missing float online
        # as it does in training (a transform's own output is left to Arrow to infer).
        types = {str(ref): ARROW_TYPES[ref.view.output_type(ref.feature)]
                 for ref in resolution.features}
        return resolution, readers, types

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
        return consistency_report(self, self.log.read())

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
            timestamp = _timestamp_column(table, timestamp)   # before the label's own times
            table = self._matured(table, labels, cutoff, subject, timestamp)
        clash = [r for r in resolution.requested if r in table.column_names]
        if clash:
            raise SchemaMismatch(f"entity rows already have columns named {clash}",
                                 fix="rename those columns or drop them")
        values = self._compute(table, resolution, timestamp, progress)
        out = table
        for ref in resolution.requested:
            out = out.append_column(ref, values[resolution.columns[ref]])
        return out

    def _matured(self, table: pa.Table, labels: str, cutoff: datetime | None,
                 subject: str | None, timestamp: str | None) -> pa.Table:
        source = self.catalog.source_of(labels, LabelSource)
        when = self.clock.datetime(cutoff)
        held = self.engine.read(source, [source.subject, source.timestamp, source.label,
                                         source.settled_at])
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

    def _compute(self, table: pa.Table, resolution: Resolution, timestamp: str | None,
                 progress: Progress | None) -> dict[str, pa.ChunkedArray]:
        ts_col = _timestamp_column(table, timestamp)
        micros = to_micros(table[ts_col], f"timestamp column {ts_col!r} of the entity rows")
        row_ids = pa.array(np.arange(table.num_rows, dtype=np.int64))
        values: dict[str, pa.ChunkedArray] = {}
        groups = resolution.by_view()
        steps = len(groups) + len(resolution.transforms)
        for n, (view, names) in enumerate(groups):
            if progress:
                progress(n, steps, f"{view.name} v{view.version}: {len(names)} features")
            keys = self._keys(table, view)
            rows = pa.table({ROW_ID: row_ids, ROW_KEY: keys, ROW_TS: micros})
            result = self.engine.point_in_time(rows, view, names)
            for name in names:
                values[f"{view.name}@{view.version}.{name}"] = self._finish(
                    result[name], view, name)
        for n, t in enumerate(resolution.transforms, start=len(groups)):
            if progress:
                progress(n, steps, f"transform {t.name}")
            values[t.name] = self._run_transform(t, table, resolution, values)
        if progress:
            progress(steps, steps, "done")
        return values

    @staticmethod
    def _keys(table: pa.Table, view: FeatureView) -> pa.ChunkedArray:
        key = view.entity.key
        if key not in table.column_names:
            raise SchemaMismatch(
                f"entity rows have no column {key!r}, the key of entity {view.entity.name!r} "
                f"(needed by view {view.name!r})", fix=f"their columns are {table.column_names}")
        want = ARROW_TYPES[view.entity.spec()["dtype"]]
        col = table[key]
        ok = (pa.types.is_string(want) and (pa.types.is_string(col.type)
                                            or pa.types.is_large_string(col.type))) or (
            pa.types.is_integer(want) and pa.types.is_integer(col.type))
        if not ok:
            raise SchemaMismatch(
                f"column {key!r} of the entity rows is {col.type}, but entity "
                f"{view.entity.name!r} declares {want}", fix=f"cast the column to {want}")
        return pc.cast(col, want)

    @staticmethod
    def _finish(column: pa.ChunkedArray, view: FeatureView, name: str) -> pa.ChunkedArray:
        want = ARROW_TYPES[view.output_type(name)]
        if pa.types.is_timestamp(column.type):    # instants: the one conversion
            column = as_instants(column, f"feature {view.name}.{name}")
        column = pc.cast(column, want) if column.type != want else column
        default = view.default(name)
        if default is not None and column.null_count:
            column = pc.fill_null(column, pa.scalar(default, type=want))
        return column

    @staticmethod
    def _run_transform(t: Transform, table: pa.Table, resolution: Resolution,
                       values: dict[str, pa.ChunkedArray]) -> pa.ChunkedArray:
        inputs: dict[str, Any] = {}
        for inp in t.inputs:
            if inp.startswith("request."):
                column = inp.removeprefix("request.")
                if column not in table.column_names:
                    raise SchemaMismatch(
                        f"transform {t.name!r} reads {inp!r}, but the entity rows have no "
                        f"column {column!r}", fix=f"add the request column {column!r}")
                data = table[column]
            else:
                data = values[resolution.keys[inp]]
            inputs[inp] = data.to_numpy(zero_copy_only=False)
        return pa.chunked_array([_transform_output(t, _call_transform(t, inputs,
                                                                      table.num_rows))])


def _call_transform(t: Transform, inputs: dict[str, Any], n: int) -> Any:
    """Run a transform the same way for N training rows and for one served row."""
    try:
        out = np.asarray(t(inputs))
    except Exception as exc:
        raise DataError(f"transform {t.name!r} raised {type(exc).__name__}: {exc}",
                        fix="fix the transform; it gets numpy arrays by input name") from exc
    if out.shape != (n,):
        raise DataError(f"transform {t.name!r} returned shape {out.shape} for {n} rows",
                        fix="return one value per row")
    return out


def _present(keys: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The keys to read: those of rows with an entity key (a null key has no record)."""
    for _, k in keys:
        if k is None:
            return [(ns, k) for ns, k in keys if k is not None]
    return keys  # type: ignore[return-value]  # no None among them


def _spread(keys: list[tuple[str, str | None]], wanted: list[tuple[str, str]],
            raw: list[bytes | None]) -> list[bytes | None]:
    """The values read for ``wanted``, back in the places of ``keys`` (None for null keys)."""
    if len(wanted) == len(keys):
        return raw
    values = iter(raw)
    return [None if k is None else next(values) for _, k in keys]


def _check_marks(readers: Sequence[ViewReader], marks: Sequence[bytes | None], t: int) -> None:
    """Refuse a read at ``t`` before a view's materialization instant: its records hold rows
    that became visible after ``t``, so they are not the state at ``t``."""
    for reader, raw in zip(readers, marks, strict=True):
        mark = None if raw is None else watermark(raw)[0]
        if mark is not None and mark > t:
            raise PointInTimeError(
                f"online read at {format_instant(t)} is before view {reader.namespace}'s "
                f"materialization instant {format_instant(mark)}: its online records "
                "already hold rows that became visible after the read's instant",
                fix="read at or after that instant, or compute features as of an earlier "
                    "instant with training_set (the offline path)")


def _transform_output(t: Transform, out: Any) -> pa.Array:
    """A transform's values as a column, by the one rule of both paths: a null or a NaN is no
    value — null, or the transform's ``default`` when it declares one."""
    result = pa.array(out, from_pandas=True)          # NaN (and NaT) as null
    if t.default is not None and result.null_count:
        result = pc.fill_null(result, t.default)
    return result


def _column(values: list[Any], arrow_type: pa.DataType | None) -> Any:
    """Served values as the numpy array training would have given the transform (typed, so
    that a missing float is NaN there as here). The common cases of a served batch — floats
    (None as NaN) for a float feature, all floats or all strings for a request input — are
    built directly, as Arrow would build them; the rest go through Arrow."""
    if arrow_type is None or pa.types.is_float64(arrow_type):
        kinds = {type(v) for v in values}
        if kinds <= ({float, type(None)} if arrow_type is not None else {float}):
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        if arrow_type is None and kinds == {str}:
            return np.array(values, dtype=object)
    return pa.array(values, type=arrow_type, from_pandas=True).to_numpy(zero_copy_only=False)
