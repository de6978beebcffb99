"""Reading the files ingestion takes — Parquet, CSV and JSON lines — as they are, with where
each row came from (its line, or its position) and the rows that did not parse."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from closedloop.data.sources import LogicalType
from closedloop.errors import DataError

FileFormat = Literal["parquet", "csv", "jsonl"]


def file_format(path: Path) -> FileFormat:
    """The format a file's name says: ``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``."""
    name = path.name.lower()
    for suffixes, fmt in (((".parquet", ".pq"), "parquet"), ((".csv", ".csv.gz"), "csv"),
                          ((".jsonl", ".ndjson", ".json"), "jsonl")):
        if name.endswith(suffixes):
            return fmt  # type: ignore[return-value]  # one of the three literals
    raise DataError(f"{str(path)!r}: cannot tell its format from its name",
                    fix="name it .parquet, .csv or .jsonl, or pass format=")


@dataclass
class SourceFile:
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


def read_file(path: Path, fmt: FileFormat, declared: dict[str, LogicalType]) -> SourceFile:
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist or is not a file",
                        fix="pass the path of a Parquet, CSV or JSON-lines file")
    if path.stat().st_size == 0:
        raise DataError(f"{str(path)!r} is empty (0 bytes)",
                        fix="check the export that wrote it; nothing was ingested")
    try:
        if fmt == "parquet":
            return SourceFile(path, pq.read_table(path), [])
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
    f = read_file(path, fmt or file_format(path), {})
    if f.ragged:
        line, text = f.ragged[0]
        raise DataError(f"{str(path)!r} line {line} does not parse: {text[:80]!r}",
                        fix="fix or drop the line")
    return f.table


def _read_csv(path: Path, declared: dict[str, LogicalType]) -> SourceFile:
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
    return SourceFile(path, table, ragged, header=1)


def _read_jsonl(path: Path, declared: dict[str, LogicalType]) -> SourceFile:
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
    return SourceFile(path, pa.table(columns) if columns else pa.table({}), ragged, lines=lines)


def _python_column(values: list[Any]) -> pa.Array:
    """JSON values as one Arrow column: their own type when they agree, else JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([v if v is None or isinstance(v, str) else json.dumps(v)
                         for v in values], pa.string())


#: The quarantine reason of an instant finer than a microsecond (never rounded).
