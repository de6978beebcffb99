"""Streaming freshness: ``push`` appends events durably to the source's event log, then folds
them into the online records of every view over that source, in one atomic read-modify-write
per call — a read a millisecond later sees them.

The fold is the same arithmetic as materialization (tiles of partial aggregates; the latest row
by the tie order), so a pushed record equals the record a materialization would write.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import OfflineEngine, OnlineStore
from closedloop.data.instants import INSTANT, as_instants, now_micros
from closedloop.data.sources import ARROW_TYPES, INGESTED_AT, AnySource, LabelSource, TableSource
from closedloop.errors import ClosedLoopError, DataError, PointInTimeError, SchemaMismatch
from closedloop.features.definitions import FeatureView
from closedloop.features.online import (
    decode,
    encode,
    namespace,
    record_values,
    snapshot_order,
)
from closedloop.features.tiles import TileLayout

#: A pushed row as folded: (event time, tie, values, visible from).
Event = tuple[int, Any, list[Any], int]


@dataclass(frozen=True)
class PushReport:
    """What a push did: ``rows`` appended to the event log; ``entities`` whose online records
    changed; ``pending`` rows not yet visible at the push's instant (event or arrival time
    after it, e.g. clock skew): logged and held in the online records, served from the moment
    they become visible; ``duplicates``: rows whose id the source held already (or that
    repeated one earlier in the push), neither logged nor folded again."""

    source: str
    rows: int
    entities: int
    views: tuple[str, ...]
    pending: int = 0
    duplicates: int = 0


def prepare(source: AnySource, views: Sequence[FeatureView], rows: pa.Table,
            now: int) -> pa.Table:
    """Check pushed rows against the source and its views and stamp them as ingestion does:
    every timestamp column as UTC instants in µs (naive or sub-microsecond ones refused), a
    missing or null arrival (event source) or created (table source) stamped with ``now``,
    and every row's ``_ingested_at`` with the wall clock (as ingestion does)."""
    if rows.num_rows == 0:
        raise DataError(f"nothing to push to {source.name!r}", fix="push at least one row")
    needed = {source.timestamp, *(v.entity.key for v in views),
              *(a.column for v in views for a in v.aggregations),
              *(f for v in views for f in v.features), *([source.id] if source.id else [])}
    missing = sorted(needed - set(rows.column_names))
    if missing:
        raise SchemaMismatch(f"rows pushed to {source.name!r} lack {missing}",
                             fix=f"send {sorted(needed)}")
    out = rows.drop_columns([INGESTED_AT]) if INGESTED_AT in rows.column_names else rows
    for i, col in enumerate(out.column_names):          # one conversion of every instant
        if pa.types.is_timestamp(out.schema.field(i).type):
            out = out.set_column(i, col, as_instants(
                out[col], f"column {col!r} pushed to {source.name!r}"))
    for col in (source.timestamp, *([source.id] if source.id else [])):
        if out[col].null_count:
            raise DataError(f"column {col!r} pushed to {source.name!r} has nulls",
                            fix="every event needs its time" if col == source.timestamp
                            else "every event needs its id")
    if not pa.types.is_timestamp(out[source.timestamp].type):
        raise PointInTimeError(f"column {source.timestamp!r} pushed to {source.name!r} is "
                               f"{out[source.timestamp].type}, not a UTC instant",
                               fix="send timezone-aware timestamps")
    for col, logical in source.logical_schema.items():
        if col in out.column_names and out[col].type != ARROW_TYPES[logical]:
            try:
                out = out.set_column(out.column_names.index(col), col,
                                     pc.cast(out[col], ARROW_TYPES[logical]))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatch(f"column {col!r} pushed to {source.name!r} is "
                                     f"{out[col].type}, declared {logical}",
                                     fix=f"send {logical} values") from exc
    stamp = pa.array(np.full(out.num_rows, now, dtype=np.int64)).cast(INSTANT)
    tie = source.tie_column                    # arrival or created: stamped as ingest does
    if tie is not None and not isinstance(source, LabelSource):
        if tie not in out.column_names:
            out = out.append_column(tie, stamp)
        elif out[tie].null_count:
            out = out.set_column(out.column_names.index(tie), tie,
                                 pc.coalesce(out[tie], stamp))
    flag = source.deleted if isinstance(source, TableSource) else None
    if flag:                               # rows without the flag are upserts
        present = flag in out.column_names
        column = pc.fill_null(out[flag], False) if present else pa.array(
            [False] * out.num_rows)
        out = (out.set_column(out.column_names.index(flag), flag, column) if present
               else out.append_column(flag, column))
    written = pa.array(np.full(out.num_rows, now_micros(), dtype=np.int64)).cast(INSTANT)
    return out.append_column(INGESTED_AT, written)          # the wall clock's: see ingest


def latest(record: Any, events: Sequence[tuple[int, Any, Sequence[Any], int]],
           now: int) -> Any:
    """A snapshot record after pushed ``events`` — (event time, tie, values, visible from) —
    at ``now``: the greatest visible row by the tie order ``(event, tie, values)``, nulls
    lowest; rows not visible yet wait in a fifth element, taken by reads once visible."""
    best = None if record is None or record[0] is None else record[:4]
    waiting = record[4] if record is not None and len(record) > 4 else []
    later = []
    for vis, et, tie, values in [*map(tuple, waiting), *((v, e, t, x) for e, t, x, v in events)]:
        if vis > now:
            later.append([vis, et, tie, list(values)])
            continue
        cand = [et, tie is not None, tie or 0, list(values)]
        if best is None or snapshot_order(cand) > snapshot_order(best):
            best = cand
    if not later:
        return best
    return [*(best or [None, False, 0, None]), sorted(later, key=lambda p: (p[0], p[1]))]


def push(source: AnySource, views: Sequence[FeatureView], rows: pa.Table,
         engine: OfflineEngine, store: OnlineStore, now: int) -> PushReport:
    prepared = prepare(source, views, rows, now)
    # Durable first: the log is the truth. Idempotent on the source's id, as ingestion is:
    # an event the source holds already (pushed, ingested, replayed) is neither logged nor
    # folded again.
    table = engine.append(source, prepared, unique=[source.id] if source.id else None)
    if table.num_rows == 0:
        return PushReport(source.name, 0, 0, tuple(namespace(v) for v in views),
                          duplicates=prepared.num_rows)
    lists: dict[str, list[Any]] = {}

    def column(name: str) -> list[Any]:
        """A column as plain values (instants as int µs), converted once."""
        if name not in lists:
            lists[name] = record_values(table[name])
        return lists[name]

    et: list[int] = column(source.timestamp)       # no nulls: ``prepare`` checked
    tie_col = source.tie_column
    tie: list[int | None] = (column(tie_col) if tie_col and tie_col in table.column_names
                             else [None] * len(et))
    # A row counts online once visible, as offline: event time and arrival both ≤ now.
    arrival = [None] * len(et) if source.visibility_column is None else tie
    visible_from = [e if a is None else max(e, a) for e, a in zip(et, arrival, strict=True)]

    keys: list[tuple[str, str]] = []
    plan: list[tuple[Callable[[Any, list[Event]], Any], list[Event]]] = []
    for view in views:
        fold: Callable[[Any, list[Event]], Any]
        if view.aggregations:
            layout = TileLayout.of(view)
            cols = [column(c.column) for c in layout.columns]
            fold = functools.partial(_fold_window, layout, now)
        else:
            cols = [column(f) for f in view.row_columns]
            fold = functools.partial(_fold_latest, now)
        per_key: dict[str, list[Event]] = {}
        for i, k in enumerate(column(view.entity.key)):
            if k is not None:
                per_key.setdefault(str(k), []).append(
                    (et[i], tie[i], [c[i] for c in cols], visible_from[i]))
        ns = namespace(view)
        for k, events in per_key.items():
            keys.append((ns, k))
            plan.append((fold, events))

    def merge(current: list[bytes | None]) -> list[bytes | None]:
        return [encode(fold(None if raw is None else decode(raw), events))
                for raw, (fold, events) in zip(current, plan, strict=True)]

    store.update(keys, merge)
    return PushReport(source.name, table.num_rows, len({k for _, k in keys}),
                      tuple(namespace(v) for v in views),
                      pending=sum(v > now for v in visible_from),
                      duplicates=prepared.num_rows - table.num_rows)


def _fold_window(layout: TileLayout, now: int, record: Any, events: Sequence[Event]) -> Any:
    return layout.push(record, events, now)


def _fold_latest(now: int, record: Any, events: Sequence[Event]) -> Any:
    return latest(record, events, now)


class BackgroundCompactor:
    """Compacts a source's event log from a thread of its own once ``every`` pushes have added
    parts to it, so a stream that never materializes still keeps its log to a few files; one
    run per source at a time, never in the push's path. It merges only parts under
    ``small_rows`` (pushes' own), so no run rewrites what an earlier one merged;
    materialization merges those in turn."""

    def __init__(self, engine: OfflineEngine, every: int = 64, small_rows: int = 10_000) -> None:
        self.engine = engine
        self.every = every
        self.small_rows = small_rows
        self._counts: dict[str, int] = {}
        self._running: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def pushed(self, source: AnySource) -> None:
        with self._lock:
            count = self._counts.get(source.name, 0) + 1
            if count < self.every or source.name in self._running:
                self._counts[source.name] = count
                return
            self._counts[source.name] = 0
            thread = threading.Thread(target=self._run, args=(source,), daemon=True,
                                      name=f"closedloop-compact-{source.name}")
            self._running[source.name] = thread
        thread.start()

    def _run(self, source: AnySource) -> None:
        try:
            self.engine.compact(source, self.small_rows)
        except ClosedLoopError as exc:         # the log is unchanged; the next run retries
            logging.getLogger("closedloop").warning("compacting %s's event log: %s",
                                                    source.name, exc)
        finally:
            with self._lock:
                self._running.pop(source.name, None)

    def close(self) -> None:
        """Wait for running compactions (a compaction cut short is harmless, but wasted)."""
        with self._lock:
            threads = list(self._running.values())
        for thread in threads:
            thread.join()

