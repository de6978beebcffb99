"""Leakage at training time: a feature value the row could not have had when it was scored.

The point-in-time engine enforces every availability time it is told of (an event source's
``arrival``). What it is not told of, it cannot enforce: a table source's ``created`` column
records when each snapshot row was written, but the table semantics order rows by it and do not
wait for it. A nightly snapshot *as of* midnight, written at 00:25, is used by a training row
at 00:10 — a value production could not have had. ``created_after_row`` finds such rows: per
training row, the snapshot row that supplied the view's value (the latest at or before the
row's time, by (timestamp, created), within the TTL) and whether it was created after the row's
time. Any is an error: the fix is in the definitions (``timestamp=`` the creation time).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.instants import to_micros
from closedloop.data.sources import TableSource
from closedloop.features.definitions import FeatureView


@dataclass(frozen=True)
class LeakFinding:
    """A view whose values came from rows created after the training row's time."""

    view: str
    column: str
    rows: int
    of: int
    worst_micros: int

    def describe(self) -> str:
        return (f"{self.view}: {self.rows:,} of {self.of:,} training rows take a value from a "
                f"row whose {self.column!r} is after the training row's time (by up to "
                f"{self.worst_micros / 3.6e9:.2f} h): production could not have had it")


def created_after_row(view: FeatureView, source_rows: pa.Table, keys: pa.ChunkedArray,
                      times: np.ndarray[Any, Any]) -> LeakFinding | None:
    """Check one snapshot view over a table source with ``created``; see the module."""
    source = view.source
    if not isinstance(source, TableSource) or source.created is None or view.aggregations:
        return None
    key = view.entity.key
    src = source_rows.filter(pc.and_(pc.is_valid(source_rows[key]),
                                     pc.is_valid(source_rows[source.timestamp])))
    if src.num_rows == 0:
        return None
    ts = to_micros(src[source.timestamp], "timestamp").to_numpy()
    created = pc.fill_null(pc.cast(pc.cast(src[source.created], pa.timestamp(
        "us", tz="UTC")), pa.int64()), np.iinfo(np.int64).min).to_numpy()
    src_keys = np.asarray(src[key].to_pylist(), dtype=object)
    order = np.lexsort((created, ts, src_keys.astype(str)))
    src_keys, ts, created = src_keys[order], ts[order], created[order]
    starts: dict[Any, tuple[int, int]] = {}
    bounds = np.flatnonzero(np.r_[True, src_keys[1:] != src_keys[:-1], True])
    for lo, hi in itertools.pairwise(bounds):
        starts[src_keys[lo]] = (int(lo), int(hi))
    ttl = view.ttl_micros
    leaked = 0
    worst = 0
    row_keys = keys.to_pylist()
    for i, k in enumerate(row_keys):
        span = starts.get(k)
        if span is None:
            continue
        a, b = span
        t = int(times[i])
        j = a + int(np.searchsorted(ts[a:b], t, side="right")) - 1
        if j < a or (ttl is not None and t - ts[j] > ttl):
            continue
        if created[j] > t:
            leaked += 1
            worst = max(worst, int(created[j] - t))
    if not leaked:
        return None
    return LeakFinding(view.key, source.created, leaked, len(row_keys),
                       worst)
