"""The online read path: a feature list's plan (resolved once), the store keys of a batch, the
records decoded at each row's instant (``fetch``'s half), then the transforms (``finish``)."""

from __future__ import annotations

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

    def at(self, i: int) -> int:
        """The instant row ``i`` was read at."""
        return self.t if self.times is None else self.times[i]


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



def fetch_keys(plans: dict[tuple[str, ...], OnlinePlan], catalog: Catalog,
               clock: Clock, batch: Sequence[Mapping[str, Any]], features: Sequence[str],
                at: datetime | None, times: Sequence[int] | None,
                ) -> tuple[OnlinePlan, int, list[tuple[str, str | None]], bool]:
    """The plan, the instant, the store keys — one per row and view (None: a null entity
    key, not read), then, for a read at an instant not the wall clock's, each view's
    watermark — and whether those marks are there."""
    plan = plans.get(tuple(features))
    if plan is None:
        plan = plans[tuple(features)] = online_plan(catalog, features)
    if times is not None and len(times) != len(batch):
        raise DataError(f"{len(times)} instants for {len(batch)} rows",
                        fix="pass one instant per row")
    t = min(times) if times else clock.instant(at)
    keys: list[tuple[str, str | None]] = [(r.namespace, r.key(row)) for row in batch
                                          for r in plan[1]]
    marks = at is not None or times is not None or clock.fixed
    if marks:
        keys += [watermark_key(r.view) for r in plan[1]]
    return plan, t, keys, marks


def decode(batch: Sequence[Mapping[str, Any]], plan: OnlinePlan, t: int,
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


def finish(batch: Sequence[Mapping[str, Any]], fetched: OnlineFetch,
           log: FeatureLog | None) -> list[OnlineVector]:
    """The second half of ``online``: the transforms over the fetched features."""
    (resolution, _, types), vectors = fetched.plan, fetched.vectors
    for tr in resolution.transforms:
        inputs = transforms.served_inputs(tr, batch, vectors, resolution.keys, types)
        out = transforms.apply(tr, inputs, len(batch))
        for v, value in zip(vectors, out.to_pylist(), strict=True):
            v[tr.name] = value
    if resolution.transforms:      # drop the transforms' inputs that were not asked for
        vectors = [{ref: v[ref] for ref in resolution.requested} for v in vectors]
    result = [OnlineVector(v, m, fetched.at(i))
              for i, (v, m) in enumerate(zip(vectors, fetched.missing, strict=True))]
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


