"""Materialization: the offline store's state as of a time, written into the online store.

Incremental and idempotent: each view version keeps a watermark (the ``at`` of its last
complete run) in the online store. A run recomputes, from the offline store, the whole record
of every entity with a row that became *visible* (arrival ≤ t) after the watermark — so a late
row lands however old its event time — and writes records in atomic batches, the watermark
with the last one, each batch by an atomic ``update`` that keeps the rows a push left pending
(not visible yet at ``at``). A run killed half-way leaves the watermark where it was; the rerun
rewrites the same records with the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from closedloop.backends.base import OfflineEngine, OnlineStore
from closedloop.features.definitions import FeatureView
from closedloop.features.online import decode, encode, namespace, record_values
from closedloop.features.tiles import TileLayout, WindowRecord

META = "__closedloop"

#: Called as work advances: (steps done, steps in all, what is happening).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MaterializeReport:
    view: str
    since: int | None
    at: int
    entities: int


#: The layout of windowed online records (2: sums kept as the pair s + c). A watermark
#: written under an older layout makes the next run rewrite the view from scratch.
RECORD_FORMAT = 2


def watermark_key(view: FeatureView) -> tuple[str, str]:
    return (META, f"watermark:{namespace(view)}")


def watermark(raw: bytes) -> tuple[int, int]:
    """A stored watermark: (instant in µs, record format) — ``"<µs>;<format>"``, or the bare
    instant an earlier build wrote (format 1)."""
    at, _, fmt = raw.decode().partition(";")
    return int(at), int(fmt or 1)


def snapshot_records(view: FeatureView, engine: OfflineEngine, at: int,
                     since: int | None) -> Iterator[tuple[str, Any]]:
    table = engine.latest(view, at, since).sort_by("key")
    keys, ets, ties = (table[c].to_pylist() for c in ("key", "et", "tie"))
    values = [record_values(table[c]) for c in view.row_columns]
    for i, key in enumerate(keys):
        tie = ties[i]
        yield key, [ets[i], tie is not None, tie or 0, [v[i] for v in values]]


def window_records(view: FeatureView, engine: OfflineEngine, at: int,
                   since: int | None) -> Iterator[tuple[str, Any]]:
    layout = TileLayout.of(view)
    records: dict[str, list[list[list[Any]]]] = {}      # key -> per hop -> tiles
    for h, (hop, span) in enumerate(layout.hops):
        table = engine.tiles(view, hop, span, at, since)
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
    since = None
    if incremental:
        raw = store.read([mark])[0]
        since, fmt = watermark(raw) if raw is not None else (None, RECORD_FORMAT)
        if fmt != RECORD_FORMAT and view.aggregations:     # records of an older layout
            store.clear(ns)
            since = None
        elif since is not None and since >= at:
            return MaterializeReport(ns, since, at, 0)
    stamp = f"{at};{RECORD_FORMAT}".encode()
    make = window_records if view.aggregations else snapshot_records
    records = list(make(view, engine, at, since))
    total = len(records)
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
    return MaterializeReport(ns, since, at, total)


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
