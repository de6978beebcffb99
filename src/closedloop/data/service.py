"""``project.data``: the data stage's service — ingestion, the quarantine, the label store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from closedloop.backends.base import OfflineEngine
from closedloop.data import ingest as _ingest
from closedloop.data.ingest import FileFormat, IngestReport, Progress, QuarantineStore
from closedloop.data.instants import instant_micros, now_micros
from closedloop.data.sources import AnySource
from closedloop.errors import DefinitionError


class DataService:
    """Stage 1 of a project: ``ingest`` files into its sources, read what was quarantined."""

    def __init__(self, sources: Mapping[str, AnySource], engine: OfflineEngine,
                 quarantine: QuarantineStore,
                 keys: Mapping[str, Sequence[str]] | None = None) -> None:
        self.sources = sources
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

    def ingest(self, source: str, files: str | Path | Sequence[str | Path], *,
               at: datetime | None = None, format: FileFormat | None = None,
               progress: Progress | None = None) -> IngestReport:
        """Ingest Parquet, CSV or JSON-lines files into a source as one batch: validated,
        stamped with ``at`` (default: now) as their arrival, deduplicated, bad rows
        quarantined; all or nothing."""
        paths = [files] if isinstance(files, str | Path) else list(files)
        src = self.source(source)
        now = instant_micros(at, "at") if at is not None else now_micros()
        return _ingest.ingest(src, paths, self.engine, self.quarantine_store, now=now,
                              not_null=self.keys.get(source, ()), file_format_=format,
                              progress=progress)

    def quarantine(self, source: str | None = None) -> pa.Table:
        """The quarantined rows of a source (or of all): file, row, reason, original payload."""
        if source is not None:
            self.source(source)
        return self.quarantine_store.read(source)

    def read(self, source: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row a source holds: its files and what was ingested or pushed into it."""
        return self.engine.read(self.source(source), columns)
