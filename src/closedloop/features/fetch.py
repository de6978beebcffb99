"""The online read path: a feature list's plan (resolved once), the store keys of a batch, the
records decoded at each row's instant (``fetch``'s half), then the transforms (``finish``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from closedloop.data.clock import Clock
from closedloop.data.instants import format_instant
from closedloop.data.sources import ARROW_TYPES
from closedloop.errors import DataError, PointInTimeError
from closedloop.features import transforms
from closedloop.features.catalog import Catalog, Resolution
from closedloop.features.consistency import FeatureLog
from closedloop.features.materialize import watermark, watermark_key
from closedloop.features.online import OnlineVector, ViewReader

#: A resolved feature list, its view readers, and the Arrow types of its view features.
OnlinePlan = tuple[Resolution, list[ViewReader], dict[str, pa.DataType]]


@dataclass(frozen=True, slots=True)
class OnlineFetch:
    """Rows' view features as read from the online store at ``t`` (µs) — or each row at its
    own instant, ``times`` (a replay) — before transforms: what ``FeatureService.fetch`` hands
    to ``finish``."""

    plan: OnlinePlan
    t: int
    vectors: list[dict[str, Any]]
    missing: list[tuple[str, ...]]
    times: Sequence[int] | None = None


def online_plan(catalog: Catalog, features: Sequence[str]) -> OnlinePlan:
    """Resolve once per feature list: each view feature is written straight under the
    reference it was asked by (and under its resolved key when a transform reads it)."""
    resolution = catalog.resolve(list(features))
    asked: dict[str, list[str]] = {}
    for ref, key in resolution.columns.items():
        asked.setdefault(key, []).append(ref)
    read_by_transforms = {resolution.keys[i] for t in resolution.transforms
                          for i in t.inputs if not i.startswith("request.")}
    readers = []
    for view, names in resolution.by_view():
        outputs = []
        for name in names:
            key = f"{view.key}.{name}"
            outputs.append(asked.get(key, []) + ([key] if key in read_by_transforms else []))
        readers.append(ViewReader(view, names, outputs))
    # Arrow types of view features, so a transform sees NaN for a missing float online
    # as it does in training (a transform's own output is left to Arrow to infer).
    types = {str(ref): ARROW_TYPES[ref.view.output_type(ref.feature)]
             for ref in resolution.features}
    return resolution, readers, types



class Marks:
    """Each view's materialization instant (its watermark), as reads at a given instant
    check it, kept in the process so such a read costs no more store keys than a read at
    "now": a mark is read with the records when this process does not know it, knew it more
    than ``ttl_s`` ago, or knows one after the read's instant (a refusal is always made on a
    mark just read). This process's own materializations drop theirs at once; another
    process's are seen within ``ttl_s``."""

    def __init__(self, ttl_s: float = 1.0) -> None:
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[int | None, float]] = {}

    def to_read(self, readers: Sequence[ViewReader], t: int) -> tuple[ViewReader, ...]:
        """The readers whose marks must be read with a read at ``t``; every other reader's
        mark is known, fresh, and not after ``t`` (so the read passes for it)."""
        now = time.monotonic()
        known = self._known
        out: tuple[ViewReader, ...] = ()
        for r in readers:
            mark = known.get(r.namespace)
            if mark is None or now - mark[1] > self.ttl_s or (mark[0] is not None
                                                              and mark[0] > t):
                out = (*out, r)
        return out

    def read(self, readers: Sequence[ViewReader], raw: Sequence[bytes | None]) -> None:
        """Keep the marks just read for ``readers`` (None: never materialized)."""
        now = time.monotonic()
        for r, data in zip(readers, raw, strict=True):
            self._known[r.namespace] = (None if data is None else watermark(data)[0], now)

    def mark(self, namespace: str) -> int | None:
        known = self._known.get(namespace)
        return None if known is None else known[0]

    def forget(self, namespace: str) -> None:
        """A materialization of ``namespace`` ran here: read its mark afresh."""
        self._known.pop(namespace, None)


#: What ``fetch_keys`` plans: the feature list's plan, the instant, the store keys (one per
#: row and view — None: a null entity key, not read — then the marks to read), and the
#: readers whose marks those are (a read not at "now" checks them in ``decode``).
KeyPlan = tuple[OnlinePlan, int, list[tuple[str, str | None]], tuple[ViewReader, ...]]


def fetch_keys(plans: dict[tuple[str, ...], OnlinePlan], catalog: Catalog,
               clock: Clock, marks: Marks, batch: Sequence[Mapping[str, Any]],
               features: Sequence[str], at: datetime | None, times: Sequence[int] | None,
               ) -> KeyPlan:
    """The store keys of a read: one per row and view, then, for a read at an instant not
    the wall clock's, the marks ``marks`` does not know well enough."""
    plan = plans.get(tuple(features))
    if plan is None:
        plan = plans[tuple(features)] = online_plan(catalog, features)
    if times is not None and len(times) != len(batch):
        raise DataError(f"{len(times)} instants for {len(batch)} rows",
                        fix="pass one instant per row")
    t = min(times) if times else clock.instant(at)
    keys: list[tuple[str, str | None]] = [(r.namespace, r.key(row)) for row in batch
                                          for r in plan[1]]
    if at is not None or times is not None or clock.fixed:     # not "now": marks checked
        marks_read = marks.to_read(plan[1], t)
        if marks_read:
            keys += [watermark_key(r.view) for r in marks_read]
        return plan, t, keys, marks_read
    return plan, t, keys, ()


def decode(batch: Sequence[Mapping[str, Any]], planned: KeyPlan, marks: Marks,
           raw: list[bytes | None], times: Sequence[int] | None = None) -> OnlineFetch:
    plan, t, _, marks_read = planned
    readers = plan[1]
    if marks_read:                # a read at a given instant, not before a mark just read
        marks.read(marks_read, raw[len(raw) - len(marks_read):])      # (t: the earliest
        _check_marks(marks_read, marks, t)                            # row's)
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


def finish(batch: Sequence[Mapping[str, Any]], fetched: OnlineFetch,
           log: FeatureLog | None) -> list[OnlineVector]:
    """The second half of ``online``: the transforms over the fetched features."""
    (resolution, _, types), vectors, t, times = (fetched.plan, fetched.vectors, fetched.t,
                                                 fetched.times)
    for tr in resolution.transforms:
        inputs = transforms.served_inputs(tr, batch, vectors, resolution.keys, types)
        out = transforms.apply(tr, inputs, len(batch))
        for v, value in zip(vectors, out.to_pylist(), strict=True):
            v[tr.name] = value
    if resolution.transforms:      # drop the transforms' inputs that were not asked for
        vectors = [{ref: v[ref] for ref in resolution.requested} for v in vectors]
    result = ([OnlineVector(v, m, t) for v, m in zip(vectors, fetched.missing, strict=True)]
              if times is None else
              [OnlineVector(v, m, at)
               for v, m, at in zip(vectors, fetched.missing, times, strict=True)])
    if log is not None:
        for row, vector in zip(batch, result, strict=True):
            log.record(vector.at, resolution.requested, dict(row), vector.values)
    return result



def present(keys: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The keys to read: those of rows with an entity key (a null key has no record)."""
    for _, k in keys:
        if k is None:
            return [(ns, k) for ns, k in keys if k is not None]
    return keys  # type: ignore[return-value]  # no None among them


def spread(keys: list[tuple[str, str | None]], wanted: list[tuple[str, str]],
            raw: list[bytes | None]) -> list[bytes | None]:
    """The values read for ``wanted``, back in the places of ``keys`` (None for null keys)."""
    values = iter(raw)
    return [None if k is None else next(values) for _, k in keys]


def _check_marks(readers: Sequence[ViewReader], marks: Marks, t: int) -> None:
    """Refuse a read at ``t`` before a view's materialization instant: its records hold rows
    that became visible after ``t``, so they are not the state at ``t``."""
    for reader in readers:
        mark = marks.mark(reader.namespace)
        if mark is not None and mark > t:
            raise PointInTimeError(
                f"online read at {format_instant(t)} is before view {reader.namespace}'s "
                f"materialization instant {format_instant(mark)}: its online records "
                "already hold rows that became visible after the read's instant",
                fix="read at or after that instant, or compute features as of an earlier "
                    "instant with training_set (the offline path)")


