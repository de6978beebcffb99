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

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from closedloop.data.durable import write_durably
from closedloop.data.instants import as_instants, now_micros, sub_micro
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

FileFormat = Literal["parquet", "csv", "jsonl"]
Progress = Callable[[int, int, str], None]

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


def file_format(path: Path) -> FileFormat:
    """The format a file's name says: ``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``."""
    name = path.name.lower()
    for suffixes, fmt in (((".parquet", ".pq"), "parquet"), ((".csv", ".csv.gz"), "csv"),
                          ((".jsonl", ".ndjson", ".json"), "jsonl")):
        if name.endswith(suffixes):
            return fmt  # type: ignore[return-value]  # one of the three literals
    raise DataError(f"{str(path)!r}: cannot tell its format from its name",
                    fix="name it .parquet, .csv or .jsonl, or pass format=")


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


# -- reading ----------------------------------------------------------------------------------
@dataclass
class _File:
    path: Path
    table: pa.Table                          # as read: CSV columns as strings
    ragged: list[tuple[int, str]]            # rows that did not parse: (line, text)
    lines: list[int] | None = None           # JSON lines: each row's line in the file
    header: int = 0                          # CSV: lines before the first row

    def row_number(self, index: int) -> int:
        """Where the row at ``index`` is in the file, as people count: its line for CSV and
        JSON lines, its 1-based position for Parquet."""
        if self.lines is not None:
            return self.lines[index]
        if not self.header:
            return index + 1
        line = index + self.header + 1
        for skipped, _ in sorted(self.ragged):      # every unparsed line before it shifts it
            if skipped <= line:
                line += 1
        return line


def _read(path: Path, fmt: FileFormat, declared: dict[str, LogicalType]) -> _File:
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist or is not a file",
                        fix="pass the path of a Parquet, CSV or JSON-lines file")
    if path.stat().st_size == 0:
        raise DataError(f"{str(path)!r} is empty (0 bytes)",
                        fix="check the export that wrote it; nothing was ingested")
    try:
        if fmt == "parquet":
            return _File(path, pq.read_table(path), [])
        if fmt == "csv":
            return _read_csv(path, declared)
        return _read_jsonl(path, declared)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        what = {"parquet": "a readable Parquet file (truncated, or not Parquet?)",
                "csv": "readable CSV", "jsonl": "readable JSON lines"}[fmt]
        raise DataError(f"{str(path)!r} is not {what}: {exc}",
                        fix="check the file; nothing was ingested") from exc


def read_table(path: Path, fmt: FileFormat | None = None) -> pa.Table:
    """A Parquet, CSV or JSON-lines file as an Arrow table, types as the file gives them."""
    f = _read(path, fmt or file_format(path), {})
    if f.ragged:
        line, text = f.ragged[0]
        raise DataError(f"{str(path)!r} line {line} does not parse: {text[:80]!r}",
                        fix="fix or drop the line")
    return f.table


def _read_csv(path: Path, declared: dict[str, LogicalType]) -> _File:
    ragged: list[tuple[int, str]] = []

    def bad_row(row: Any) -> str:
        ragged.append((int(row.number or 0), str(row.text)))
        return "skip"

    # Every declared column as text: converting it is ours to do, row by row.
    # One thread, so that a row that does not parse is reported with its line number.
    table = pacsv.read_csv(
        path, read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=bad_row),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in declared}, strings_can_be_null=True))
    return _File(path, table, ragged, header=1)


def _read_jsonl(path: Path, declared: dict[str, LogicalType]) -> _File:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    ragged: list[tuple[int, str]] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                ragged.append((number, line.rstrip("\n")))
                continue
            if not isinstance(value, dict):
                ragged.append((number, line.rstrip("\n")))
                continue
            rows.append(value)
            lines.append(number)
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns: dict[str, pa.Array] = {}
    for name in names:
        values = [r.get(name) for r in rows]
        want = declared.get(name)
        if want in ("timestamp", "bool") or want is None:
            # Times (and flags) arrive as text in JSON; undeclared columns are kept as text.
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
            columns[name] = pa.array(values, pa.string())
        else:
            columns[name] = _python_column(values)
    return _File(path, pa.table(columns) if columns else pa.table({}), ragged, lines=lines)


def _python_column(values: list[Any]) -> pa.Array:
    """JSON values as one Arrow column: their own type when they agree, else JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v)
                         for v in values], pa.string())


#: The quarantine reason of an instant finer than a microsecond (never rounded).
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


def _conform(f: _File, source: AnySource, not_null: Sequence[str], now: int,
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
            f = _File(Path(f"<table {i}>"), item, [])
        else:
            path = Path(item)
            if progress:
                progress(i, len(files) + 1, f"reading {path.name}")
            f = _read(path, file_format_ or file_format(path), declared)
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


# -- the quarantine ---------------------------------------------------------------------------
_QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()), ("file", pa.string()), ("row", pa.int64()),
    ("reason", pa.string()), ("payload", pa.string()),
    ("quarantined_at", pa.timestamp("us", tz="UTC"))])


class QuarantineStore:
    """Rows that failed validation, kept as Parquet under ``folder/<source>/``: the source, the
    file and row they came from (the line for CSV and JSON lines, the 1-based position for
    Parquet), the reason, and the original payload (JSON, or the raw text of
    a row that did not parse). Each batch's rejects are one file named by their content, so
    ingesting a file again does not quarantine its bad rows twice.

    >>> import tempfile
    >>> q = QuarantineStore(tempfile.mkdtemp())
    >>> bad = [{"file": "a.csv", "row": 3, "reason": "amount: not a float64", "payload": "{}"}]
    >>> q.write("txns", bad, now=0); q.write("txns", bad, now=5)
    >>> q.read("txns").num_rows
    1
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def write(self, source: str, rows: Sequence[dict[str, Any]], now: int) -> None:
        digest = hashlib.sha256(json.dumps(
            [[r["file"], r["row"], r["reason"], r["payload"]] for r in rows]).encode())
        path = self.folder / source / f"q-{digest.hexdigest()[:24]}.parquet"
        if path.exists():
            return
        table = pa.table({
            "source": [source] * len(rows), "file": [r["file"] for r in rows],
            "row": [r["row"] for r in rows], "reason": [r["reason"] for r in rows],
            "payload": [r["payload"] for r in rows],
            "quarantined_at": pa.array([now] * len(rows), pa.int64()).cast(
                _QUARANTINE_SCHEMA.field("quarantined_at").type)}, schema=_QUARANTINE_SCHEMA)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_durably(path, table)

    def read(self, source: str | None = None) -> pa.Table:
        """The quarantined rows of one source (or all), oldest first."""
        folders = [self.folder / source] if source else sorted(
            p for p in self.folder.glob("*") if p.is_dir())
        parts = [pq.read_table(p) for folder in folders for p in sorted(folder.glob("q-*.parquet"))]
        if not parts:
            return _QUARANTINE_SCHEMA.empty_table()
        table = pa.concat_tables(parts)
        return table.sort_by([("quarantined_at", "ascending"), ("file", "ascending"),
                              ("row", "ascending")])

