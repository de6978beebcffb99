"""Ingestion: Parquet, CSV and JSON-lines files into a source's event log in the offline store.

One call is one batch, all or nothing:

1. every file is read and checked against the source's declaration — a file that cannot be
   read (truncated, empty, not the format it claims) or lacks a required column stops the
   whole batch with a clear error, and nothing is written;
2. each row is converted to the declared types; a row that does not convert (a word in a
   number column, a timestamp without a zone or finer than a microsecond, a null id or
   time, a NaN) goes to the **quarantine** with its reason, its file and row number, and
   its original payload — never dropped silently;
3. every accepted row is stamped with the wall-clock instant it was ingested
   (``_ingested_at``: a physical fact, whatever the project's clock — incremental
   materialization finds what it was given since its last run by it) and, when the source
   declares an arrival (or created) column the file leaves empty, with the ingest's instant
   (``at``: the project's clock);
4. rows are deduplicated — within the batch and against everything the source already holds —
   by the source's declared ``id``, or by the whole row where it declares none, so ingesting
   a file again, or a replay of a stream, changes nothing;
5. the quarantined rows are written (named by their content, so a rerun writes the same
   file), then the accepted rows as one part of the event log, atomically.

A kill at any moment leaves the store as it was or with the whole batch; rerunning the batch
then gives exactly the state of a clean run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.files import FileFormat, SourceFile, file_format, read_file, read_table
from closedloop.data.instants import as_instants, now_micros, sub_micro
from closedloop.data.quarantine import QuarantineStore
from closedloop.data.sources import (
    ARROW_TYPES,
    INGESTED_AT,
    AnySource,
    LabelSource,
    LogicalType,
    TableSource,
)
from closedloop.errors import DataError, SchemaMismatch

#: Label rows may carry where they came from (``human:majority``, ``weak:dawid-skene``…) and
#: how sure their strategy was.
PROVENANCE, CONFIDENCE = "provenance", "confidence"

Progress = Callable[[int, int, str], None]

__all__ = ["CONFIDENCE", "PROVENANCE", "FileFormat", "IngestReport", "Progress",
           "QuarantineStore", "SourceStore", "declared_columns", "file_format", "ingest",
           "read_table"]

_CHUNK = 65_536


class SourceStore(Protocol):
    """What the data stage needs of the offline engine (``backends.base.OfflineEngine``,
    which the data stage may not import: it speaks of feature views): append a source's
    rows, read them back."""

    def append(self, source: AnySource, rows: pa.Table,
               unique: Sequence[str] | None = None) -> pa.Table: ...

    def read(self, source: AnySource, columns: Sequence[str] | None = None) -> pa.Table: ...


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``rows`` were read; each was ``accepted`` (appended), a
    ``duplicate`` (already held, or repeated within the batch) or ``quarantined`` (counted per
    reason in ``reasons``). ``ignored_columns`` are columns the files carried that the source
    does not declare."""

    source: str
    files: tuple[str, ...]
    rows: int
    accepted: int
    duplicates: int
    quarantined: int
    reasons: tuple[tuple[str, int], ...] = ()
    ignored_columns: tuple[str, ...] = ()
    seconds: float = 0.0

    def summary(self) -> str:
        """One line: accepted, duplicates, quarantined (with the reasons)."""
        text = (f"{self.source}: {self.rows:,} rows read from {len(self.files)} file(s): "
                f"{self.accepted:,} accepted, {self.duplicates:,} duplicates, "
                f"{self.quarantined:,} quarantined")
        if self.reasons:
            text += " (" + "; ".join(f"{n:,} {r}" for r, n in self.reasons) + ")"
        return text


@dataclass
class _Rejects:
    """Rows rejected so far, by row index: the first reason found for each."""

    n: int
    reason: np.ndarray[Any, Any] = field(init=False)
    texts: list[str] = field(default_factory=lambda: [""])

    def __post_init__(self) -> None:
        self.reason = np.zeros(self.n, dtype=np.int32)

    def add(self, mask: np.ndarray[Any, Any], text: str) -> None:
        fresh = mask & (self.reason == 0)
        if fresh.any():
            if text not in self.texts:
                self.texts.append(text)
            self.reason[fresh] = self.texts.index(text)

    @property
    def mask(self) -> np.ndarray[Any, Any]:
        rejected: np.ndarray[Any, Any] = self.reason != 0
        return rejected


def declared_columns(source: AnySource) -> dict[str, LogicalType]:
    """Every column the source declares a type for, its time columns included."""
    types: dict[str, LogicalType] = dict(source.logical_schema)
    for col in source.time_columns:
        types[col] = "timestamp"
    if isinstance(source, TableSource) and source.deleted:
        types[source.deleted] = "bool"
    if isinstance(source, LabelSource):
        types.setdefault(source.subject, "string")
    if source.id is not None:
        types.setdefault(source.id, "string")
    if isinstance(source, LabelSource):
        types.setdefault(PROVENANCE, "string")
        types.setdefault(CONFIDENCE, "float64")
    return types


def _stamped(source: AnySource) -> set[str]:
    """Time columns ingestion fills in (with the ingest instant) when a file leaves them out."""
    tie = source.tie_column
    return {tie} if tie is not None and not isinstance(source, LabelSource) else set()


def _not_null(source: AnySource, not_null: Sequence[str]) -> list[str]:
    """Columns a row cannot go without: its time, its id, the keys of the views reading it."""
    cols = [source.timestamp, *([source.id] if source.id else []), *not_null]
    if isinstance(source, LabelSource):
        cols += [source.subject, source.label, source.settled_at]
    return list(dict.fromkeys(cols))


def _required(source: AnySource, not_null: Sequence[str]) -> list[str]:
    cols = [source.timestamp, *source.logical_schema, *not_null]
    if source.id is not None:
        cols.append(source.id)
    if isinstance(source, LabelSource):
        cols += [source.subject, source.label, source.settled_at]
    return list(dict.fromkeys(c for c in cols if c not in _stamped(source)))


SUB_MICRO = "instant finer than a microsecond (floor it to the microsecond)"


# -- converting -------------------------------------------------------------------------------
def _reason(value: pa.Array, logical: LogicalType) -> str:
    """Why one value does not convert to ``logical``."""
    if logical != "timestamp":
        return f"not a {logical}"
    try:
        pc.cast(value, pa.timestamp("us"))    # parses without a zone: it is naive
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return "unparseable timestamp"
    return "naive timestamp (no zone offset)"


def _cast_values(column: pa.Array, target: pa.DataType, logical: LogicalType,
                 ) -> tuple[pa.Array, list[tuple[int, str]]]:
    """Cast a column chunk; the values that do not cast become null, with their reasons."""
    try:
        return pc.cast(column, target), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    out: list[Any] = []
    bad: list[tuple[int, str]] = []
    for i in range(len(column)):
        value = column[i:i + 1]
        try:
            out.append(pc.cast(value, target)[0].as_py())
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        nanos = _nanos(value) if logical == "timestamp" else None
        if nanos is not None and not sub_micro(nanos)[0]:    # nine digits, the last three 0
            out.append(pc.cast(nanos, target, safe=False)[0].as_py())
            continue
        out.append(None)
        bad.append((i, SUB_MICRO if nanos is not None else _reason(value, logical)))
    return pa.array(out, target), bad


def _nanos(value: pa.Array) -> pa.Array | None:
    """A text instant parsed to the nanosecond (None: it does not parse so)."""
    try:
        return pc.cast(value, pa.timestamp("ns", tz="UTC"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _convert(table: pa.Table, name: str, logical: LogicalType, rejects: _Rejects,
             what: str) -> pa.ChunkedArray:
    col = table[name]
    target = ARROW_TYPES[logical]
    if logical == "timestamp" and pa.types.is_timestamp(col.type):
        return _instants(col, name, rejects, what)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = pc.utf8_trim_whitespace(col)
        if logical != "string":
            col = pc.if_else(pc.equal(col, ""), pa.scalar(None, col.type), col)
        if logical == "bool":
            col = pc.utf8_lower(col)
    elif logical == "string" and not pa.types.is_null(col.type):
        # A number where text is declared: its text, as CSV would give it.
        col = pc.cast(col, pa.string())
    if col.type == target:
        return col
    chunks = []
    offset = 0
    for chunk in col.chunks if isinstance(col, pa.ChunkedArray) else [col]:
        for start in range(0, len(chunk), _CHUNK):
            piece = chunk[start:start + _CHUNK]
            cast, bad = _cast_values(piece, target, logical)
            for i, reason in bad:
                mask = np.zeros(rejects.n, dtype=bool)
                mask[offset + start + i] = True
                rejects.add(mask, f"{name}: {reason}")
            chunks.append(cast)
        offset += len(chunk)
    return pa.chunked_array(chunks, target)


def _instants(col: pa.ChunkedArray, name: str, rejects: _Rejects, what: str,
              ) -> pa.ChunkedArray:
    """A timestamp column as UTC instants in µs (``as_instants``): a naive column stops the
    batch; a value finer than a microsecond sends its row to the quarantine."""
    finer = sub_micro(col)
    if finer.any():
        rejects.add(finer, f"{name}: {SUB_MICRO}")
        col = pc.if_else(pa.array(finer), pa.scalar(None, col.type), col)
    return as_instants(col, f"{what}: column {name!r}")


def _conform(f: SourceFile, source: AnySource, not_null: Sequence[str], now: int,
             ) -> tuple[pa.Table, _Rejects, list[str]]:
    """The file's rows in the declared types, stamped; the rejected rows flagged."""
    table = f.table
    what = f"{str(f.path)!r}"
    declared = declared_columns(source)
    missing = [c for c in _required(source, not_null) if c not in table.column_names]
    if missing:
        raise SchemaMismatch(f"{what} lacks the column(s) {missing} that source "
                             f"{source.name!r} requires",
                             fix=f"its columns are {table.column_names}; nothing was ingested")
    keep = list(declared) if source.schema else list(table.column_names)
    for extra in _required(source, not_null):
        if extra not in keep:
            keep.append(extra)
    ignored = [c for c in table.column_names if c not in keep and c != INGESTED_AT]
    rejects = _Rejects(table.num_rows)
    columns: dict[str, pa.ChunkedArray] = {}
    for name in keep:
        if name not in table.column_names:
            continue                                   # optional, filled in below
        logical = declared.get(name)
        col = (_convert(table, name, logical, rejects, what) if logical is not None
               else _instants(table[name], name, rejects, what)
               if _aware(table[name].type) else table[name])
        columns[name] = col
        if logical == "float64":
            finite = pc.is_finite(col)
            rejects.add(pc.invert(pc.fill_null(finite, True)).to_numpy(zero_copy_only=False),
                        f"{name}: not a finite number")
    for name in _not_null(source, not_null):
        if name in columns:
            rejects.add(pc.is_null(columns[name]).to_numpy(zero_copy_only=False) & ~rejects.mask,
                        f"{name}: null")
    stamp = pa.chunked_array([pa.array(np.full(table.num_rows, now, dtype=np.int64))
                              ]).cast(ARROW_TYPES["timestamp"])
    for name in _stamped(source):
        col = columns.get(name)
        columns[name] = stamp if col is None else pc.coalesce(col, stamp)
    if isinstance(source, TableSource) and source.deleted:
        flag = columns.get(source.deleted)
        columns[source.deleted] = (pa.chunked_array([pa.array(np.zeros(table.num_rows, bool))])
                                   if flag is None else pc.fill_null(flag, False))
    columns[INGESTED_AT] = pa.chunked_array([pa.array(np.full(table.num_rows, now_micros(),
                                                              dtype=np.int64))]
                                            ).cast(ARROW_TYPES["timestamp"])
    return pa.table(columns), rejects, ignored


def _aware(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) and kind.tz is not None


def _payloads(table: pa.Table, rows: np.ndarray[Any, Any]) -> list[str]:
    picked = table.take(pa.array(rows, pa.int64())).to_pylist()
    return [json.dumps(r, default=str, sort_keys=True) for r in picked]


# -- the batch --------------------------------------------------------------------------------
def ingest(source: AnySource, files: Sequence[str | Path | pa.Table], writer: SourceStore,
           quarantine: QuarantineStore, *, now: int, not_null: Sequence[str] = (),
           file_format_: FileFormat | None = None, progress: Progress | None = None,
           max_quarantined: float | None = None) -> IngestReport:
    """Ingest ``files`` into ``source`` as one batch (see the module's docstring). A batch
    whose quarantined share of rows is over ``max_quarantined`` (default: a batch with rows
    of which none was valid) is refused whole: its rejects go to the quarantine, so they
    can be looked at, and nothing is appended."""
    started = time.perf_counter()
    if not files:
        raise DataError(f"nothing to ingest into {source.name!r}", fix="pass at least one file")
    declared = declared_columns(source)
    accepted: list[pa.Table] = []
    bad: list[dict[str, Any]] = []
    ignored: list[str] = []
    read_rows = 0
    names = []
    stamped: set[str] = set()          # time columns some file left out: ingestion's own
    for i, item in enumerate(files):
        if isinstance(item, pa.Table):               # rows already in memory: a table
            f = SourceFile(Path(f"<table {i}>"), item, [])
        else:
            path = Path(item)
            if progress:
                progress(i, len(files) + 1, f"reading {path.name}")
            f = read_file(path, file_format_ or file_format(path), declared)
        path = f.path
        names.append(str(path))
        stamped |= {c for c in _stamped(source) if c not in f.table.column_names}
        read_rows += f.table.num_rows + len(f.ragged)
        for line, text in f.ragged:
            bad.append({"file": str(path), "row": line, "reason": "row does not parse",
                        "payload": text})
        table, rejects, extra = _conform(f, source, not_null, now)
        ignored += [c for c in extra if c not in ignored]
        if rejects.mask.any():
            rows = np.flatnonzero(rejects.mask)
            for row, payload in zip(rows, _payloads(f.table, rows), strict=True):
                bad.append({"file": str(path), "row": f.row_number(int(row)),
                            "reason": rejects.texts[rejects.reason[row]], "payload": payload})
            table = table.filter(pa.array(~rejects.mask))
        accepted.append(table)
    batch = pa.concat_tables(accepted, promote_options="permissive")
    # Without an id, a row is its values — not the instants this ingest stamped on it.
    unique = [source.id] if source.id else [c for c in batch.column_names if c != INGESTED_AT
                                            and c not in stamped]
    if progress:
        progress(len(files), len(files) + 1, f"writing {batch.num_rows:,} rows")
    # Quarantine first: a kill between the two writes leaves the batch to rerun, and the
    # rerun writes the same quarantine file (named by its content) again.
    if bad:
        quarantine.write(source.name, bad, now)
    counts: dict[str, int] = {}
    for b in bad:
        counts[b["reason"]] = counts.get(b["reason"], 0) + 1
    reasons = tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    _check_quarantined(source.name, len(bad), read_rows, max_quarantined, reasons)
    appended = writer.append(source, batch, unique=unique).num_rows if batch.num_rows else 0
    duplicates = batch.num_rows - appended
    if progress:
        progress(len(files) + 1, len(files) + 1, "done")
    return IngestReport(source.name, tuple(names), read_rows, appended, duplicates, len(bad),
                        reasons, tuple(ignored), time.perf_counter() - started)


def _check_quarantined(source: str, bad: int, rows: int, limit: float | None,
                       reasons: tuple[tuple[str, int], ...]) -> None:
    """Refuse a batch with too much quarantined (see ``ingest``)."""
    if limit is not None and not 0.0 <= limit <= 1.0:
        raise DataError(f"max_quarantined {limit!r} is not a share between 0 and 1",
                        fix="pass e.g. 0.05 to refuse a batch with over 5% bad rows")
    over = bad > 0 and (bad == rows if limit is None else bad > limit * rows)
    if over:
        why = "; ".join(f"{n:,} {r}" for r, n in reasons[:3])
        allowed = "none valid" if limit is None else f"more than {limit:.1%}"
        raise DataError(f"{source}: {bad:,} of {rows:,} rows quarantined ({allowed}): {why}; "
                        "the batch was refused, nothing was appended",
                        fix=f"see the rows with `closedloop quarantine {source}`, fix the "
                            "files and ingest them again (or raise --max-quarantined)")
