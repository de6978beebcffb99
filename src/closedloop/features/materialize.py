"""Materialization: the offline store's state as of a time, written into the online store.

Incremental and idempotent: each view version keeps a watermark (the ``at`` of its last
complete run, and the wall-clock instant that run began) in the online store. A run
recomputes, from the offline store, the whole record of every entity with a row that became
*visible* (arrival ≤ t) after the watermark, or that the store was given after the last run
began (its ``_ingested_at``, a wall-clock stamp) — so a late row lands however old its event
time, and rows ingested under a fixed clock at the watermark's own instant land too — and
writes records in atomic batches, the watermark with the last one, each batch by an atomic
``update`` that keeps the rows a push left pending (not visible yet at ``at``). A run killed
half-way leaves the watermark where it was; the rerun rewrites the same records with the same
values.

A run as of an instant *before* the watermark rewinds: the view's records hold rows that were
not visible then, so they are cleared and rebuilt as of that instant (reads of the view find
no record while it runs). A run as of the watermark itself redoes only the entities the store
was given rows of since; with none, it has nothing to do and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from closedloop.backends.base import OfflineEngine, OnlineStore
from closedloop.data.instants import format_instant, now_micros
from closedloop.features.definitions import FeatureView
from closedloop.features.online import decode, encode, namespace, record_values
from closedloop.features.tiles import TileLayout, WindowRecord

META = "__closedloop"

#: Called as work advances: (steps done, steps in all, what is happening).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MaterializeReport:
    """What one view version's run did: ``mode`` is ``full`` (every entity, from nothing),
    ``incremental`` (entities with rows visible since the watermark ``since``), ``rewound``
    (``at`` was before the watermark: the view's records were cleared and rebuilt as of
    ``at``) or ``current`` (the watermark is ``at`` already: nothing to do). Instants are µs."""

    view: str
    since: int | None
    at: int
    entities: int
    mode: str = "full"

    def summary(self) -> str:
        """One line, instants in ISO UTC."""
        at = format_instant(self.at)
        if self.mode == "current":
            return f"{self.view}: already materialized as of {at}; nothing to do"
        if self.mode == "rewound":
            assert self.since is not None
            return (f"{self.view}: {self.entities:,} entities as of {at}, rebuilt: the earlier "
                    f"run was as of {format_instant(self.since)}, a later instant")
        if self.mode == "incremental":
            assert self.since is not None
            return (f"{self.view}: {self.entities:,} entities as of {at} (changed since "
                    f"{format_instant(self.since)})")
        return f"{self.view}: {self.entities:,} entities as of {at} (every entity)"

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "mode": self.mode, "entities": self.entities,
                "at": format_instant(self.at),
                "since": None if self.since is None else format_instant(self.since)}


#: The layout of windowed online records (2: sums kept as the pair s + c). A watermark
#: written under an older layout makes the next run rewrite the view from scratch.
RECORD_FORMAT = 2


def watermark_key(view: FeatureView) -> tuple[str, str]:
    return (META, f"watermark:{namespace(view)}")


def watermark(raw: bytes) -> tuple[int, int, int | None]:
    """A stored watermark: (instant in µs, record format, the wall-clock instant its run
    began) — ``"<µs>;<format>;<wall µs>"``; an earlier build wrote ``"<µs>;<format>"`` or
    the bare instant (format 1), with no wall instant."""
    at, _, rest = raw.decode().partition(";")
    fmt, _, wall = rest.partition(";")
    return int(at), int(fmt or 1), int(wall) if wall else None


def snapshot_records(view: FeatureView, engine: OfflineEngine, at: int,
                     since: int | None, written: int | None = None,
                     ) -> Iterator[tuple[str, Any]]:
    table = engine.latest(view, at, since, written).sort_by("key")
    keys, ets, ties = (table[c].to_pylist() for c in ("key", "et", "tie"))
    values = [record_values(table[c]) for c in view.row_columns]
    for i, key in enumerate(keys):
        tie = ties[i]
        yield key, [ets[i], tie is not None, tie or 0, [v[i] for v in values]]


def window_records(view: FeatureView, engine: OfflineEngine, at: int,
                   since: int | None, written: int | None = None,
                   ) -> Iterator[tuple[str, Any]]:
    layout = TileLayout.of(view)
    records: dict[str, list[list[list[Any]]]] = {}      # key -> per hop -> tiles
    for h, (hop, span) in enumerate(layout.hops):
        table = engine.tiles(view, hop, span, at, since, written)
        keys, buckets = table["key"].to_pylist(), table["b"].to_pylist()
        # Each kept field as a column of the engine's output, in tile order.
        fields: list[list[Any]] = []
        for i, c in enumerate(layout.columns):    # the engine numbers columns in this order
            for slot, name in ((c.n, "n"), (c.s, "s"), (c.c, "c"), (c.m2, "m"), (c.lo, "lo"),
                               (c.hi, "hi"), (c.last, "l")):
                if slot < 0:
                    continue
                values = record_values(table[f"{name}{i}"])
                fields.append([v or 0 for v in values] if name == "c" else
                              [0.0 if v is None else v for v in values]
                              if name in ("s", "m") else values)
            if c.last >= 0:
                orders = table[f"o{i}"].to_pylist()
                fields.append([None if o is None else o["et"] for o in orders])
                fields.append([None if o is None or not o["tp"] else o["tie"] for o in orders])
        for r, key in enumerate(keys):
            record = records.get(key)
            if record is None:
                record = records[key] = [[] for _ in layout.hops]
            record[h].append([buckets[r], *(f[r] for f in fields)])
    for key in sorted(records):          # byte-for-byte the same record on every run
        flat: WindowRecord = []
        for tiles in records[key]:
            tiles.sort(key=lambda tile: tile[0])
            flat.append([x for tile in tiles for x in tile])
        yield key, flat


def materialize_view(view: FeatureView, engine: OfflineEngine, store: OnlineStore, at: int, *,
                     incremental: bool = True, batch_size: int = 2000,
                     progress: Progress | None = None) -> MaterializeReport:
    """Bring one view version's online records up to ``at``."""
    ns = namespace(view)
    mark = watermark_key(view)
    since, mode = None, "full"
    began = now_micros()                  # rows the store is given from now on: the next run's
    raw = store.read([mark])[0]
    earlier, fmt, written = watermark(raw) if raw is not None else (None, RECORD_FORMAT, None)
    if earlier is not None and earlier > at:
        # Records as of a later instant hold rows not visible at `at` (and entities that had
        # none yet): they cannot be brought back, only rebuilt.
        store.clear(ns)
        since, mode = earlier, "rewound"
    elif incremental and fmt != RECORD_FORMAT and view.aggregations:   # an older layout
        store.clear(ns)
    elif incremental and earlier is not None:
        since, mode = earlier, "incremental"
    stamp = f"{at};{RECORD_FORMAT};{began}".encode()
    make = window_records if view.aggregations else snapshot_records
    records = list(make(view, engine, at, since if mode == "incremental" else None, written)
                   if mode == "incremental" else make(view, engine, at, None))
    total = len(records)
    if mode == "incremental" and earlier == at and total == 0:
        # Nothing became visible, and the store was given nothing since the last run.
        return MaterializeReport(ns, earlier, at, 0, "current")
    done = 0
    for batch in _batches(records, batch_size):
        done += len(batch)
        last = done == total
        keys = [(ns, key) for key, _ in batch] + ([mark] if last else [])

        def merge(old: list[bytes | None], batch: Sequence[tuple[str, Any]] = batch,
                  last: bool = last) -> list[bytes | None]:
            out: list[bytes | None] = [encode(_keep_pending(view, rec, raw, at))
                                       for (_, rec), raw in zip(batch, old, strict=False)]
            return [*out, stamp] if last else out

        store.update(keys, merge)      # atomic per batch, the watermark with the last one
        if progress:
            progress(done, total, f"{ns}: {done}/{total} entities")
    if total == 0:
        store.write([(*mark, stamp)])
    return MaterializeReport(ns, since, at, total, mode)


def _keep_pending(view: FeatureView, record: Any, raw: bytes | None, at: int) -> Any:
    """``record`` (as of ``at``) with the rows a push left pending that are still not visible
    at ``at`` — the offline store counts the others already."""
    if raw is None:
        return record
    old = decode(raw)
    base = len(TileLayout.of(view).hops) if view.aggregations else 4
    if type(old) is not list or len(old) <= base:     # nothing pending (or an old layout)
        return record
    keep = [p for p in old[base] if p[0] > at]
    return [*record, keep] if keep else record


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
