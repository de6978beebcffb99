"""``project.data``: the data stage's service — ingestion, the quarantine, the label store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data import ingest as _ingest
from closedloop.data import labels as _labels
from closedloop.data import strategies
from closedloop.data.clock import WALL, Clock
from closedloop.data.ingest import (
    PROVENANCE,
    FileFormat,
    IngestReport,
    Progress,
    QuarantineStore,
    SourceStore,
)
from closedloop.data.instants import format_duration, to_micros
from closedloop.data.labeling import FunctionSummary, HumanLabels, LabelingFunction
from closedloop.data.labels import DelayReport, MaturityReport
from closedloop.data.sources import AnySource, LabelSource
from closedloop.data.tables import as_table, is_table
from closedloop.errors import DataError, DefinitionError


class DataService:
    """Stage 1 of a project: ``ingest`` files into its sources, read what was quarantined."""

    def __init__(self, sources: Mapping[str, AnySource], engine: SourceStore,
                 quarantine: QuarantineStore,
                 keys: Mapping[str, Sequence[str]] | None = None, clock: Clock = WALL) -> None:
        self.sources = sources
        self.clock = clock
        self.engine = engine
        self.quarantine_store = quarantine
        self.keys = keys or {}

    def source(self, name: str) -> AnySource:
        """The source called ``name``, or a DefinitionError listing the known ones."""
        try:
            return self.sources[name]
        except KeyError:
            raise DefinitionError(f"there is no source {name!r}",
                                  fix=f"the sources are {sorted(self.sources)}") from None

    def ingest(self, source: str,
               files: str | Path | pa.Table | Sequence[str | Path | pa.Table], *,
               at: datetime | None = None, format: FileFormat | None = None,
               max_quarantined: float | None = None,
               progress: Progress | None = None) -> IngestReport:
        """Ingest Parquet, CSV or JSON-lines files (or Arrow tables) into a source as one
        batch: validated, stamped with ``at`` (default: now) as their arrival, deduplicated,
        bad rows quarantined; all or nothing. A batch with more than ``max_quarantined`` of
        its rows quarantined (a share; default: every row) is refused whole."""
        items = [files] if isinstance(files, str | Path) or is_table(files) else list(files)
        paths = [f if isinstance(f, str | Path) else as_table(f, "rows to ingest")
                 for f in items]
        src = self.source(source)
        now = self.clock.instant(at)
        return _ingest.ingest(src, paths, self.engine, self.quarantine_store, now=now,
                              not_null=self.keys.get(source, ()), file_format_=format,
                              progress=progress, max_quarantined=max_quarantined)

    def quarantine(self, source: str | None = None) -> pa.Table:
        """The quarantined rows of a source (or of all): file, row, reason, original payload."""
        if source is not None:
            self.source(source)
        return self.quarantine_store.read(source)

    def read(self, source: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row a source holds: its files and what was ingested or pushed into it."""
        return self.engine.read(self.source(source), columns)

    # -- labels --------------------------------------------------------------------------
    def label_source(self, name: str) -> LabelSource:
        source = self.source(name)
        if not isinstance(source, LabelSource):
            labels = sorted(n for n, s in self.sources.items() if isinstance(s, LabelSource))
            raise DefinitionError(f"source {name!r} is not a LabelSource",
                                  fix=f"the label sources are {labels}")
        return source

    def labels(self, source: str) -> pa.Table:
        """Every label the label store holds for ``source``."""
        return self.engine.read(self.label_source(source))

    def write_labels(self, source: str, labels: Any, *, provenance: str,
                     at: datetime | None = None) -> IngestReport:
        """Add labels produced by a labeling strategy — human, weak supervision, implicit
        feedback — to the label store, each row tagged with its ``provenance``
        (``"human:majority"``, ``"weak:dawid-skene"``, …); the same labels again change
        nothing."""
        table = as_table(labels, "labels")
        if not provenance:
            raise DataError("labels need a provenance", fix='say where they came from, e.g. '
                            'provenance="human:majority"')
        table = (table.drop_columns([PROVENANCE]) if PROVENANCE in table.column_names
                 else table).append_column(PROVENANCE, pa.array([provenance] * table.num_rows,
                                                                pa.string()))
        self.label_source(source)
        return self.ingest(source, table, at=at)

    def label_by_humans(self, source: str, annotations: str | Path | pa.Table, *,
                        rule: str = "majority", trust: dict[str, float] | None = None,
                        annotator: str = "annotator", annotated_at: str = "annotated_at",
                        at: datetime | None = None) -> tuple[HumanLabels, IngestReport]:
        """Import human annotations (a file or a table: subject, timestamp, label, annotator
        id, annotated-at), resolve disagreements by ``rule`` (``majority``, or
        ``most_trusted`` with ``trust``), and write the labels with provenance
        ``human:<rule>``; returns the resolution (with its agreement rate) and the write."""
        src = self.label_source(source)
        table = annotations if isinstance(annotations, pa.Table) else _ingest.read_table(
            Path(annotations))
        rows, resolved = strategies.human_label_rows(table, src, rule=rule, trust=trust,
                                                     annotator=annotator,
                                                     annotated_at=annotated_at)
        return resolved, self.write_labels(source, rows, provenance=f"human:{rule}", at=at)

    def label_weakly(self, source: str, rows: Any, functions: Sequence[LabelingFunction], *,
                     n_classes: int = 2, model: str = "dawid-skene",
                     classes: Sequence[Any] | None = None, at: datetime | None = None,
                     ) -> tuple[list[FunctionSummary], IngestReport]:
        """Label ``rows`` by labeling functions combined by a label model (``dawid-skene``
        or ``majority``), settled now (or ``at``), with provenance ``weak:<model>``; returns
        each function's coverage, overlap and conflict, and the write."""
        src = self.label_source(source)
        table = as_table(rows, "rows")
        when = self.clock.instant(at)
        out, summary = strategies.weak_label_rows(
            table, src, functions, at=when, n_classes=n_classes,
            model=model,  # type: ignore[arg-type]  # an unknown model is refused there
            classes=classes)
        return summary, self.write_labels(source, out, provenance=f"weak:{model}", at=at)

    def label_implicitly(self, source: str, exposures: Any, events: Any, *, key: str,
                         window: timedelta, event_time: str | None = None,
                         qualifies: Any = None, at: datetime | None = None) -> IngestReport:
        """Label exposures by a qualifying later event of the same ``key`` within the
        attribution ``window`` (settled at the window's close), provenance
        ``implicit:<window>``. Exposures whose window is still open at ``at`` (default:
        now) are not labelled yet: their negatives are not known."""
        src = self.label_source(source)
        left = as_table(exposures, "exposures")
        right = as_table(events, "events")
        rows = strategies.implicit_label_rows(left, right, src, key=key, window=window,
                                              event_time=event_time, qualifies=qualifies)
        now = self.clock.instant(at)
        rows = rows.filter(pc.less_equal(to_micros(rows[src.settled_at], "settled_at"), now))
        span = format_duration(window // timedelta(microseconds=1))
        return self.write_labels(source, rows, provenance=f"implicit:{span}", at=at)

    def matured(self, rows: Any, source: str, *, cutoff: datetime,
                subject: str | None = None, timestamp: str | None = None,
                ) -> tuple[pa.Table, MaturityReport]:
        """The rows a training set with ``cutoff`` may take — label window closed — each with
        the label known at ``cutoff`` (see ``closedloop.data.labels``)."""
        table = as_table(rows, "rows")
        src = self.label_source(source)
        held = _labels.held_labels(self.engine, src)
        return _labels.mature(table, held, src, cutoff, subject=subject, timestamp=timestamp)

    def label_delay(self, source: str, *, population: str | pa.Table | None = None,
                    timestamp: str | None = None, at: datetime | None = None) -> DelayReport:
        """The label-delay report: delays' distribution, labels later than declared, the
        share of ``population`` (a source's name, or rows) still maturing at ``at`` (default:
        now), and when a feature added now can first be trained on."""
        src = self.label_source(source)
        when = self.clock.datetime(at)
        held = self.engine.read(src, [src.timestamp, src.settled_at])
        times = None
        if population is not None:
            if isinstance(population, str):
                pop_src = self.source(population)
                col = timestamp or pop_src.timestamp
                table = self.engine.read(pop_src, [col])
            else:
                table = population
                col = timestamp or src.timestamp
            if col not in table.column_names:
                raise DataError(f"the population has no timestamp column {col!r}",
                                fix="pass timestamp= to name it")
            times = to_micros(table[col], f"column {col!r} of the population").to_numpy()
        return _labels.delay_report(held, src, when, times)
