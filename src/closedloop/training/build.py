"""A model's training set, built: the rows with matured labels, their point-in-time features,
the content hash, the time split and the checks (leakage, the univariate screen)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import OfflineEngine
from closedloop.data.instants import to_micros
from closedloop.data.labels import held_labels, mature
from closedloop.data.sources import LabelSource
from closedloop.errors import DefinitionError, LeakageError, TrainingError
from closedloop.features.catalog import Catalog
from closedloop.features.service import FeatureService
from closedloop.training import evaluation
from closedloop.training.leakage import created_after_row
from closedloop.training.lineage import table_hash
from closedloop.training.matrix import feature_matrix, feature_table
from closedloop.training.model import Model


@dataclass
class Built:
    """A training set and everything derived from it, before the fit."""

    table: pa.Table
    data_hash: str
    times: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]
    X: pa.Table                       # the model's features as float64 columns
    part: np.ndarray[Any, Any]
    cuts: tuple[int, int]
    maturity: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    univariate: dict[str, float] = field(default_factory=dict)

    def rows(self, share: int) -> slice | np.ndarray[Any, Any]:
        """The rows of one split (0 train, 1 validation, 2 test). The rows are in time order,
        so each split is a slice of them: views of ``X``, not copies."""
        part = self.part
        if part.size < 2 or bool((part[1:] >= part[:-1]).all()):
            a, b = np.searchsorted(part, [share, share + 1])
            return slice(int(a), int(b))
        mask: np.ndarray[Any, Any] = part == share
        return mask

    def table_of(self, share: int) -> pa.Table:
        return part_of(self.table, self.rows(share))

    def features_of(self, share: int) -> pa.Table:
        """The features of one split's rows (a zero-copy slice)."""
        return part_of(self.X, self.rows(share))


def part_of(table: pa.Table, where: slice | np.ndarray[Any, Any]) -> pa.Table:
    if isinstance(where, slice):
        return table.slice(where.start, where.stop - where.start)
    return table.filter(pa.array(where))


def label_source(catalog: Catalog, model: Model) -> LabelSource:
    """The model's label source, or a DefinitionError."""
    source = catalog.sources.get(model.label)
    if not isinstance(source, LabelSource):
        raise DefinitionError(f"model {model.name!r}: label {model.label!r} is not a "
                              "LabelSource", fix="name a cl.LabelSource")
    return source



def build(model: Model, cutoff: datetime, step: Callable[[str], None], catalog: Catalog,
          engine: OfflineEngine, features: FeatureService,
          excluded: Sequence[tuple[int, int]] = ()) -> Built:
    """The model's training set as of ``cutoff``: its rows source's rows with matured labels,
    less those whose time falls in an ``excluded`` window ([start, end) µs: data a monitor
    froze as contaminated), their features as of each row's time, hashed, split, checked for
    leakage and screened for features that are the label in disguise."""
    label = label_source(catalog, model)
    source = catalog.sources.get(model.rows)
    if source is None:
        raise DefinitionError(f"model {model.name!r}: there is no rows source "
                              f"{model.rows!r}", fix=f"the sources are "
                              f"{sorted(catalog.sources)}")
    resolution = catalog.resolve(list(model.features))
    view_keys = [v.entity.key for v, _ in resolution.by_view()]
    row_columns = [label.subject, source.timestamp, *view_keys,
                   *resolution.request_inputs,
                   *(c for c in (*model.slices, *model.protected)
                     if c not in resolution.requested)]
    row_columns = list(dict.fromkeys(row_columns))
    step("rows")
    held = engine.columns(source)
    absent = [c for c in row_columns if c not in held]
    if absent:
        raise DefinitionError(f"model {model.name!r}: source {model.rows!r} has no "
                              f"column(s) {absent}", fix=f"its columns are {sorted(held)}")
    rows = _time_ordered(engine.read(source, row_columns), source.timestamp,
                         label.subject)
    left_out = 0
    if excluded and rows.num_rows:
        at = to_micros(rows[source.timestamp], f"column {source.timestamp!r}")
        inside = pa.array(np.zeros(rows.num_rows, dtype=bool))
        for start, end in excluded:
            inside = pc.or_(inside, pc.and_(pc.greater_equal(at, start), pc.less(at, end)))
        left_out = int(pc.sum(inside).as_py() or 0)
        rows = rows.filter(pc.invert(inside))
    step("labels")
    labels = held_labels(engine, label)
    matured, report = mature(rows, labels, label, cutoff, timestamp=source.timestamp)
    if matured.num_rows == 0:
        raise TrainingError(
            f"model {model.name!r} has no matured labels at {cutoff:%Y-%m-%d %H:%M}: "
            f"{report.maturing:,} of {report.rows:,} rows are inside their "
            f"{label.max_delay} label window, {report.unlabelled:,} have no label",
            fix="train with a later cutoff, or ingest older rows and their labels")
    step("training set")
    table = features.training_set(matured, list(model.features),
                                       timestamp=source.timestamp)
    # The content hash runs on a second thread (hashlib releases the GIL) while the
    # features are readied and checked: two cores, the same bytes.
    with ThreadPoolExecutor(1) as pool:
        hashed = pool.submit(table_hash, table)
        times = to_micros(table[source.timestamp], f"column {source.timestamp!r}").to_numpy()
        y = _labels(table[label.label], label)
        X = feature_table(table, model.features)
        part, valid_cut, test_cut = model.split.assign(times)
        for name, share in (("train", 0), ("test", 2)):
            sub = y[part == share]
            if sub.size == 0 or sub.min() == sub.max():
                raise TrainingError(
                    f"model {model.name!r}: the {name} split has {sub.size:,} rows of one "
                    "class only", fix="train on a longer history or a later cutoff")
        step("checks")
        built = Built(table, "", times, y, X, part, (valid_cut, test_cut), {
            "rows": report.rows, "matured": report.matured, "maturing": report.maturing,
            "labelled": report.labelled, "defaulted": report.defaulted,
            "unlabelled": report.unlabelled, "ignored_labels": report.ignored_labels,
            **({"excluded_windows": [list(w) for w in excluded], "excluded_rows": left_out}
               if excluded else {})})
        check_leakage(model, table, times, catalog, engine)
        # The univariate check is a screen: an evenly spaced sample of the training rows
        # is enough (and keeps it a fraction of the fit on a large training set).
        train = np.flatnonzero(part == 0)
        train = train[np.linspace(0, train.size - 1, min(train.size, 100_000))
                      .astype(np.int64)]
        built.univariate = evaluation.univariate_aucs(
            feature_matrix(X.take(pa.array(train)), model.features), y[train],
            list(model.features))
        for name in evaluation.suspicious_features(built.univariate, model.suspicious_auc):
            built.warnings.append(
                f"feature {name} alone reaches AUC {built.univariate[name]:.3f} on the "
                "training rows: check it is not the label in disguise")
        built.data_hash = hashed.result()
    return built

def check_leakage(model: Model, table: pa.Table, times: np.ndarray[Any, Any],
                  catalog: Catalog, engine: OfflineEngine) -> None:
    """Refuse a training set with snapshot values created after their row's time."""
    resolution = catalog.resolve(list(model.features))
    findings = []
    for view, _ in resolution.by_view():
        if view.aggregations or not getattr(view.source, "created", None):
            continue
        source = view.source
        cols = [view.entity.key, source.timestamp, str(source.tie_column)]
        found = created_after_row(view, engine.read(source, cols),
                                  table[view.entity.key], times)
        if found is not None:
            findings.append(found.describe())
    if findings:
        raise LeakageError(
            f"model {model.name!r} would train on values not available at prediction "
            "time: " + "; ".join(findings),
            fix="declare the table source's timestamp= as the time its rows were written "
                "(e.g. timestamp='created_at'), so the point-in-time join waits for it")



def _time_ordered(rows: pa.Table, timestamp: str, subject: str) -> pa.Table:
    """The rows in (time, subject) order: as they are when they already are (a source read
    in time order — checked, ties included), else sorted."""
    ts = pc.cast(rows[timestamp], pa.int64()).to_numpy(zero_copy_only=False)
    steps = np.diff(ts)
    if rows.num_rows and rows[timestamp].null_count == 0 and (steps >= 0).all():
        ties = np.flatnonzero(steps == 0)
        if ties.size == 0:
            return rows
        names = rows[subject]
        if names.null_count == 0 and pc.all(pc.less_equal(
                names.take(pa.array(ties)), names.take(pa.array(ties + 1)))).as_py():
            return rows
    return rows.sort_by([(timestamp, "ascending"), (subject, "ascending")])


def _labels(column: pa.ChunkedArray, label: LabelSource) -> np.ndarray[Any, Any]:
    if pa.types.is_boolean(column.type) or pa.types.is_integer(column.type):
        values = pc.cast(column, pa.int64())
        bad = pc.and_(pc.not_equal(values, 0), pc.not_equal(values, 1))
        if column.null_count == 0 and not pc.any(bad).as_py():
            out: np.ndarray[Any, Any] = values.to_numpy()
            return out
    odd = next(v for v in column.to_pylist() if v not in (0, 1) or v is None)
    raise TrainingError(f"label {label.label!r} has the value {odd!r}; a binary model needs "
                        "0/1 or False/True", fix="map the label to 0/1")



