"""The label store's two questions: which rows may a training set take, and how late are labels.

**Maturity.** A row (a subject at its timestamp) may enter a training set with cutoff ``c``
only once its label window has closed — ``timestamp + max_delay ≤ c`` — so a transaction from
last week with no chargeback yet is never taken as a negative. Its label is the one known at
``c``: among the labels of that subject and timestamp, those settled by ``c``, the latest
settled (ties: the greater value); none → the source's ``default`` (``None``: the row is
left out, unlabelled). A label settled after ``c`` is never seen, whatever its value.

**Delay.** The delay of a label is ``settled_at − timestamp``. The report gives its
distribution, the labels that came later than the declared ``max_delay``, the share of a
population still maturing at an instant, and the first instant a model can be trained on a
feature that only starts today: when the first rows that carry it have matured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.instants import DAY, instant_micros, to_micros
from closedloop.data.sources import LabelSource
from closedloop.errors import DataError

#: The column beside each matured row's label: when that label settled (null: the default).
SETTLED = "label_settled_at"
_STAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class MaturityReport:
    """How a set of rows fared at ``cutoff``: ``matured`` rows (window closed) of ``rows``,
    ``maturing`` ones (left out: window still open), and of the matured, ``labelled`` ones,
    ``defaulted`` ones (no label by the cutoff: the default) and ``unlabelled`` ones (no label
    and no default: left out); ``ignored_labels`` settled after the cutoff."""

    source: str
    cutoff: datetime
    rows: int
    matured: int
    maturing: int
    labelled: int
    defaulted: int
    unlabelled: int
    ignored_labels: int

    @property
    def taken(self) -> int:
        return self.labelled + self.defaulted


class LabelReader(Protocol):
    """What reading a label source needs: the offline store's ``read``."""

    def read(self, source: LabelSource, columns: Sequence[str] | None = None) -> pa.Table: ...


def held_labels(store: LabelReader, source: LabelSource) -> pa.Table:
    """Every label a source holds, as the label functions here read them: its subject, event
    time, label and settled instant — the one way every stage reads labels."""
    return store.read(source, [source.subject, source.timestamp, source.label,
                               source.settled_at])


def known_labels(labels: pa.Table, source: LabelSource, cutoff: int) -> pa.Table | None:
    """Per (subject, timestamp), the label known at ``cutoff``: the latest settled by then
    (None when no label is known)."""
    if labels.num_rows == 0:
        return None
    settled = to_micros(labels[source.settled_at], f"column {source.settled_at!r} of labels")
    known = labels.filter(pc.less_equal(settled, cutoff))
    if known.num_rows == 0:
        return None
    table = pa.table({
        "__s": known[source.subject],
        "__t": to_micros(known[source.timestamp], f"column {source.timestamp!r} of labels"),
        "__label": known[source.label],
        "__settled": to_micros(known[source.settled_at], "settled_at"),
    }).sort_by([("__settled", "ascending"), ("__label", "ascending")])
    # The last in (settled, value) order per subject and time: that is the label known then.
    return table.group_by(["__s", "__t"], use_threads=False).aggregate(
        [("__label", "last"), ("__settled", "last")]).rename_columns(
        ["__s", "__t", "__label", "__settled"])


def mature(rows: pa.Table, labels: pa.Table, source: LabelSource, cutoff: datetime, *,
           subject: str | None = None, timestamp: str | None = None,
           ) -> tuple[pa.Table, MaturityReport]:
    """The rows a training set with ``cutoff`` may take, each with its label (named as the
    source's label column) and ``label_settled_at``; row order is kept. ``subject`` and
    ``timestamp`` name the rows' columns (default: the label source's own names)."""
    subject = subject or source.subject
    timestamp = timestamp or source.timestamp
    for col in (subject, timestamp):
        if col not in rows.column_names:
            raise DataError(f"the rows have no column {col!r} to match labels of "
                            f"{source.name!r} on", fix=f"their columns are {rows.column_names}; "
                            "pass subject= and timestamp= to name them")
    if source.label in rows.column_names and source.label not in (subject, timestamp):
        rows = rows.drop_columns([source.label])          # the label comes from the store
    c = instant_micros(cutoff, "cutoff")
    ts = to_micros(rows[timestamp], f"timestamp column {timestamp!r} of the rows").to_numpy()
    closed = ts + source.max_delay_micros <= c
    known = known_labels(labels, source, c)
    ignored = 0 if labels.num_rows == 0 else labels.num_rows - int(pc.sum(pc.less_equal(
        to_micros(labels[source.settled_at], "settled_at"), c)).as_py() or 0)
    matured = rows if bool(closed.all()) else rows.filter(pa.array(closed))
    keyed = pa.table({"__s": matured[subject],
                      "__t": pa.array(ts if matured is rows else ts[closed], pa.int64()),
                      "__row": pa.array(np.arange(matured.num_rows, dtype=np.int64))})
    if known is None:
        label_type = labels[source.label].type if labels.num_rows else (
            pa.scalar(source.default).type if source.default is not None else pa.null())
        label = pa.chunked_array([pa.nulls(matured.num_rows, label_type)])
        settled = pa.chunked_array([pa.nulls(matured.num_rows, pa.int64())])
    else:
        if keyed["__s"].type != known["__s"].type:
            raise DataError(f"subject {subject!r} is {keyed['__s'].type} in the rows but "
                            f"{known['__s'].type} in the labels",
                            fix="cast one to the other's type")
        joined = keyed.join(known, keys=["__s", "__t"], join_type="left outer",
                            use_threads=False)
        # Back to row order by the row numbers: a take of the two columns needed, rather
        # than sorting the whole joined table.
        where = np.empty(joined.num_rows, dtype=np.int64)
        where[joined["__row"].to_numpy()] = np.arange(joined.num_rows, dtype=np.int64)
        order = pa.array(where)
        label, settled = joined["__label"].take(order), joined["__settled"].take(order)
    has = pc.is_valid(label)
    labelled = int(pc.sum(has).as_py() or 0)
    if source.default is None:
        keep = has
        out = matured.filter(keep)
        label, settled = label.filter(keep), settled.filter(keep)
        defaulted, unlabelled = 0, matured.num_rows - labelled
    else:
        out = matured
        if pa.types.is_null(label.type):
            label = label.cast(pa.scalar(source.default).type)
        label = pc.fill_null(label, pa.scalar(source.default, label.type))
        defaulted, unlabelled = matured.num_rows - labelled, 0
    out = out.append_column(source.label, label).append_column(
        SETTLED, pc.cast(settled, pa.int64()).cast(_STAMP))
    return out, MaturityReport(source.name, cutoff, rows.num_rows, matured.num_rows,
                               rows.num_rows - matured.num_rows, labelled, defaulted,
                               unlabelled, ignored)


@dataclass(frozen=True)
class DelayReport:
    """The label-delay report of one label source at ``at`` (see the module's docstring).
    Delays are in days."""

    source: str
    at: datetime
    max_delay_days: float
    labels: int
    quantiles: tuple[tuple[float, float], ...]     # (q, delay in days)
    histogram: tuple[tuple[str, int], ...]         # (bucket, labels)
    late: int                                      # settled after the declared max delay
    population: int = 0
    maturing: int = 0

    @property
    def maturing_share(self) -> float:
        return self.maturing / self.population if self.population else 0.0

    @property
    def first_training_forward_only(self) -> datetime:
        """When a model can first train on a feature that has no history before ``at``: the
        first rows carrying it mature ``max_delay`` later."""
        return self.at + timedelta(days=self.max_delay_days)

    def delay(self, q: float) -> float | None:
        return dict(self.quantiles).get(q)

    def lines(self) -> list[str]:
        """The report as text, one fact per line."""
        out = [f"labels {self.source}: {self.labels:,} labels, declared max delay "
               f"{self.max_delay_days:g} days"]
        if self.labels:
            qs = ", ".join(f"p{round(q * 100)} {d:.1f}d" for q, d in self.quantiles)
            out.append(f"  delay (settled - event): {qs}")
            hist = ", ".join(f"{b}: {n:,}" for b, n in self.histogram)
            out.append(f"  by delay: {hist}")
            out.append(f"  settled after the declared max delay: {self.late:,}"
                       + (" (raise max_delay)" if self.late else ""))
        if self.population:
            out.append(f"  still maturing at {self.at:%Y-%m-%d %H:%M}: {self.maturing:,} of "
                       f"{self.population:,} rows ({self.maturing_share:.1%}) - not yet "
                       "usable for training")
        p90 = self.delay(0.9)
        out.append(f"  a feature added today with no history: first trainable "
                   f"{self.first_training_forward_only:%Y-%m-%d}" + (
                       f" (90% of its labels in by {self.at + timedelta(days=p90):%Y-%m-%d})"
                       if p90 is not None else ""))
        return out


_BUCKETS = ((0.0, "same day"), (1.0, "1-7d"), (7.0, "7-30d"), (30.0, "30-60d"),
            (60.0, "60-90d"), (90.0, ">90d"))


def delay_report(labels: pa.Table, source: LabelSource, at: datetime,
                 population: Any = None) -> DelayReport:
    """The label-delay report at ``at``: labels settled by then, and, given a ``population``
    (an array of its rows' timestamps), how much of it is still maturing."""
    a = instant_micros(at, "at")
    if labels.num_rows:
        settled = to_micros(labels[source.settled_at], "settled_at").to_numpy()
        event = to_micros(labels[source.timestamp], "timestamp").to_numpy()
        seen = settled <= a
        delays = (settled[seen] - event[seen]) / DAY
    else:
        delays = np.zeros(0)
    quantiles = tuple((q, float(np.quantile(delays, q))) for q in (0.5, 0.9, 0.99, 1.0)
                      ) if delays.size else ()
    edges = [b for b, _ in _BUCKETS]
    histogram = []
    for i, (low, name) in enumerate(_BUCKETS):
        high = edges[i + 1] if i + 1 < len(edges) else np.inf
        n = int(((delays >= low) & (delays < high)).sum())
        if n:
            histogram.append((name, n))
    max_days = source.max_delay_micros / DAY
    late = int((delays > max_days).sum())
    maturing = total = 0
    if population is not None:
        times = np.asarray(population, dtype=np.int64)
        times = times[times <= a]
        total = int(times.size)
        maturing = int((times + source.max_delay_micros > a).sum())
    return DelayReport(source.name, at, max_days, int(delays.size), quantiles,
                       tuple(histogram), late, total, maturing)
