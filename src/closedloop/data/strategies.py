"""Labeling strategies into the label store: each turns its input into label rows shaped for
one ``LabelSource`` — subject, timestamp, label, ``settled_at`` — with ``confidence`` (how
sure the strategy was) and, when written, their ``provenance``.

* **human**: annotations (subject, timestamp, label, annotator, annotated-at), resolved by a
  declared rule; a label is settled when its last annotation was made; confidence is the
  share of annotators who gave it.
* **weak**: labeling functions over rows, combined by the Dawid–Skene label model (or
  majority vote); settled at the labeling run's instant; confidence is the label model's
  posterior. Rows on which every function abstains get no label.
* **implicit**: exposures labelled by a qualifying later event within an attribution window;
  settled when the window closes; confidence 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.ingest import CONFIDENCE
from closedloop.data.instants import to_micros
from closedloop.data.labeling import (
    ABSTAIN,
    DawidSkeneModel,
    FunctionSummary,
    HumanLabels,
    LabelingFunction,
    MajorityVote,
    apply_functions,
    implicit_labels,
    resolve_human_labels,
    summarize,
)
from closedloop.data.sources import LabelSource
from closedloop.errors import DataError

_STAMP = pa.timestamp("us", tz="UTC")


def _need(table: pa.Table, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"the {what} have no column(s) {missing}",
                        fix=f"their columns are {table.column_names}")


def human_label_rows(annotations: pa.Table, source: LabelSource, *, rule: str = "majority",
                     trust: Mapping[str, float] | None = None, annotator: str = "annotator",
                     annotated_at: str = "annotated_at") -> tuple[pa.Table, HumanLabels]:
    """Label rows from human annotations, one per (subject, timestamp), by ``rule``."""
    _need(annotations, [source.subject, source.timestamp, source.label, annotator,
                        annotated_at], "annotations")
    t = to_micros(annotations[source.timestamp], f"column {source.timestamp!r}")
    done = to_micros(annotations[annotated_at], f"column {annotated_at!r}")
    # An item is one subject at one time; its label is known once its last annotation is in.
    item = pc.binary_join_element_wise(pc.cast(annotations[source.subject], pa.string()),
                                       pc.cast(t, pa.string()), "\x1f")
    resolved = resolve_human_labels(
        pa.table({"item": item, "label": annotations[source.label],
                  "annotator": annotations[annotator]}), rule=rule, trust=trust)
    keyed = pa.table({"item": item, "__s": annotations[source.subject], "__t": t,
                      "__done": done}).group_by("item", use_threads=False).aggregate(
        [("__s", "first"), ("__t", "first"), ("__done", "max")])
    joined = resolved.labels.join(keyed, keys="item", use_threads=False)
    rows = pa.table({
        source.subject: joined["__s_first"],
        source.timestamp: pc.cast(joined["__t_first"], pa.int64()).cast(_STAMP),
        source.label: joined["label"],
        source.settled_at: pc.cast(joined["__done_max"], pa.int64()).cast(_STAMP),
        CONFIDENCE: joined["agreement"]})
    return rows, resolved


def weak_label_rows(rows: pa.Table, source: LabelSource, functions: Sequence[LabelingFunction],
                    *, at: int, n_classes: int = 2,
                    model: Literal["dawid-skene", "majority"] = "dawid-skene",
                    classes: Sequence[Any] | None = None,
                    ) -> tuple[pa.Table, list[FunctionSummary]]:
    """Label rows from labeling functions combined by a label model; settled at ``at``.
    ``classes`` maps class indices to label values (default: the indices; for two classes
    and a bool label, False/True)."""
    _need(rows, [source.subject, source.timestamp], "rows")
    if not functions:
        raise DataError("no labeling functions", fix="pass at least one function")
    votes = apply_functions(functions, rows.to_pylist(), n_classes)
    summary = summarize(votes, [getattr(f, "__name__", f"lf{j}")
                                for j, f in enumerate(functions)])
    if model == "dawid-skene":
        ds = DawidSkeneModel(n_classes=n_classes)
        ds.fit(votes)
        proba = ds.predict_proba(votes)
        label = ds.predict(votes)
        confidence = proba.max(axis=1)
    elif model == "majority":
        label = MajorityVote(n_classes=n_classes).predict(votes)
        voted = votes != ABSTAIN
        agree = (votes == label[:, None]) & voted
        confidence = agree.sum(axis=1) / np.maximum(voted.sum(axis=1), 1)
    else:
        raise DataError(f"label model {model!r} is unknown",
                        fix="use 'dawid-skene' or 'majority'")
    keep = label != ABSTAIN
    values = list(classes) if classes is not None else list(range(n_classes))
    if len(values) != n_classes:
        raise DataError(f"{len(values)} class values for {n_classes} classes",
                        fix="give one value per class")
    out = pa.table({
        source.subject: rows[source.subject].filter(pa.array(keep)),
        source.timestamp: rows[source.timestamp].filter(pa.array(keep)),
        source.label: pa.array([values[int(c)] for c in label[keep]]),
        source.settled_at: pa.array(np.full(int(keep.sum()), at, dtype=np.int64)).cast(_STAMP),
        CONFIDENCE: pa.array(confidence[keep], pa.float64())})
    return out, summary


def implicit_label_rows(exposures: pa.Table, events: pa.Table, source: LabelSource, *,
                        key: str, window: timedelta, event_time: str | None = None,
                        qualifies: Callable[[Mapping[str, np.ndarray[Any, Any]]], Any]
                        | None = None) -> pa.Table:
    """Label rows from later events: an exposure (subject at timestamp) is positive when a
    qualifying event of the same ``key`` follows within ``window``; settled at the window's
    close."""
    _need(exposures, [source.subject, source.timestamp, key], "exposures")
    got = implicit_labels(exposures, events, key=key, window=window, time=source.timestamp,
                          event_time=event_time, qualifies=qualifies)
    return pa.table({
        source.subject: got[source.subject], source.timestamp: got[source.timestamp],
        source.label: got["label"], source.settled_at: got["settled_at"],
        CONFIDENCE: pa.array(np.ones(got.num_rows), pa.float64())})
