"""Backfillability: can a new feature's history be computed from the raw sources, and from when?

A feature is computed from source columns (a view's aggregated or snapshot columns, through
any transforms) and from request values. Its history reaches back as far as the raw rows that
carry every column it reads — the latest of those first instants, per source — and a windowed
value is complete (its window full of history) one window later. A column no raw row carries
yet (added to the definitions before the data) has no history: the feature can only be
computed **forward**, from when rows carrying it start to arrive. A request input exists only
in requests: the history can be computed only where the training rows carry that column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc

from closedloop.backends.base import OfflineEngine
from closedloop.data.instants import format_duration, format_instant, instant_micros, to_micros
from closedloop.data.sources import LabelSource
from closedloop.errors import DataError
from closedloop.features.catalog import Catalog

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Backfillability:
    """Whether ``feature``'s history can be computed from the raw sources: from ``since``
    (the first instant every column it reads has rows), complete from ``complete_from`` (its
    longest window filled); otherwise only forward. ``request_inputs`` are columns the
    training rows themselves must carry; ``reasons`` says why, one line per input."""

    feature: str
    backfillable: bool
    since: datetime | None
    complete_from: datetime | None
    request_inputs: tuple[str, ...]
    reasons: tuple[str, ...]
    labels: str | None = None            # a label source, for when a model could first train
    label_delay: timedelta | None = None

    @property
    def first_cutoff(self) -> datetime | None:
        """With a label source: the earliest training cutoff at which a row that has the
        feature (from ``since``) also has a matured label — ``since`` + the label's max delay
        (for a forward-only feature, counted from when its rows begin to arrive)."""
        if self.labels is None or self.label_delay is None:
            return None
        start = self.complete_from or self.since
        return None if start is None else start + self.label_delay

    def summary(self) -> str:
        if not self.backfillable:
            text = (f"{self.feature}: forward only - " + "; ".join(
                r for r in self.reasons if "no history" in r))
            if self.labels is not None and self.label_delay is not None:
                text += (f"; a model labelled by {self.labels!r} can train on it only "
                         f"{format_duration(self.label_delay // timedelta(microseconds=1))} "
                         "after its rows begin to arrive (the label's max delay)")
            return text
        text = f"{self.feature}: backfillable from the raw sources"
        if self.since is not None:
            text += f" from {_iso(self.since)}"
            if self.complete_from is not None and self.complete_from != self.since:
                text += f" (windows complete from {_iso(self.complete_from)})"
            text += (f"; training rows before {_iso(self.since)} get nothing of it "
                     "(its default, or null)")
        if self.first_cutoff is not None:
            text += (f"; with labels from {self.labels!r} (max delay "
                     f"{format_duration(self.label_delay // timedelta(microseconds=1))}), "  # type: ignore[operator]
                     f"a model can first train on it at a cutoff of "
                     f"{_iso(self.first_cutoff)}")
        if self.request_inputs:
            text += (f"; needs training rows that carry {', '.join(self.request_inputs)}")
        return text


def _iso(when: datetime) -> str:
    return format_instant(instant_micros(when))


def _instant(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def backfillability(catalog: Catalog, engine: OfflineEngine, ref: str,
                    labels: str | None = None) -> Backfillability:
    """Say whether the feature ``ref`` (a view feature or a transform) can be backfilled;
    with ``labels`` (a LabelSource), from which cutoff a model labelled by it could train."""
    resolution = catalog.resolve([ref])
    delay = None
    if labels is not None:
        delay = timedelta(microseconds=catalog.source_of(labels, LabelSource).max_delay_micros)
    reasons: list[str] = []
    starts: list[int] = []
    longest = 0
    ok = True
    for view, names in resolution.by_view():
        source = view.source
        if view.aggregations:
            by_name = {w.name: w for w in view.windowed}
            columns = sorted({by_name[n].column for n in names})
            longest = max([longest, *(by_name[n].window for n in names)])
        else:
            columns = sorted(set(names))
        try:
            held = engine.columns(source)
        except DataError:
            held = {}                            # no raw data at all yet
        for column in columns:
            what = f"{source.name}.{column}"
            if column not in held:
                ok = False
                reasons.append(f"{what}: no history - no raw row of {source.name!r} carries "
                               f"it yet, so it starts when rows carrying it arrive")
                continue
            rows = engine.read(source, [source.timestamp, column])
            carried = rows.filter(pc.is_valid(rows[column]))
            if carried.num_rows == 0:
                ok = False
                reasons.append(f"{what}: no history - the column is null in every raw row")
                continue
            first = pc.min(to_micros(carried[source.timestamp],
                                     f"column {source.timestamp!r} of {source.name!r}")).as_py()
            starts.append(first)
            reasons.append(f"{what}: {carried.num_rows:,} raw rows from "
                           f"{_instant(first):%Y-%m-%d %H:%M}")
    for column in resolution.request_inputs:
        reasons.append(f"request.{column}: a request value - only where training rows carry "
                       f"{column!r}")
    since = _instant(max(starts)) if ok and starts else None
    complete = (since + timedelta(microseconds=longest)) if since is not None else None
    if longest and since is not None:
        reasons.append(f"its longest window ({format_duration(longest)}) is full from "
                       f"{complete:%Y-%m-%d %H:%M}")
    return Backfillability(ref, ok, since, complete, resolution.request_inputs, tuple(reasons),
                           labels, delay)
