"""The prediction log: every served prediction, appended durably, readable as a table.

Embedded, the log is files in the project: ``.closedloop/predictions/<model>/<segment>.jsonl``,
one JSON object per line, each process writing its own segments (so workers never
interleave), a new segment every ``segment_bytes``.

**The guarantee.** In the default ``durable`` mode a record is acknowledged — the future
``append`` returns resolves, and the server only then sends its response — after its bytes
are written and ``fsync``-ed. Records are committed in groups: a writer thread takes every
record waiting, writes them in one ``write`` and one ``fsync``, and acknowledges them all,
so under load one ``fsync`` serves many requests. A crash (SIGKILL, power loss) therefore
never loses an acknowledged prediction; it may leave the last line of a segment torn, and a
torn line was never acknowledged — readers skip it. In the opt-in ``buffered`` mode
``append`` acknowledges at once and the writer commits every ``flush_ms``: a crash loses at
most the records acknowledged in the last ``flush_ms`` plus one ``fsync``.

**A failed write** fails only the records of its commit (their waiters hear why; in
``buffered`` mode the loss is logged) and the log stays open: the next append tries again, so
a log whose disk or Redis comes back serves again without a restart. Meanwhile ``healthy`` is
False (the server's ``/readyz`` answers 503) and the writer probes the backend every
``probe_s``; the first commit or probe that succeeds makes it healthy again. A file log starts
a new segment after a failed write, so a torn line is only ever a segment's last.

Records are whatever the serving stage appends — its ``PredictionRecord`` and
``ShadowRecord`` dataclasses and ``usage`` dicts, one JSON object per line — and read back as
dicts (``closedloop.serving.records.served`` types them). Both logs satisfy
``closedloop.backends.base.PredictionLog`` and pass ``closedloop.testing.check_prediction_log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.json as pj

from closedloop.backends.base import EventStream
from closedloop.errors import BackendError, ConfigError

Mode = Literal["durable", "buffered"]
log = logging.getLogger("closedloop.log")


class FilePredictionLog:
    """Append-only, group-committed files of prediction records (see module)."""

    def __init__(self, root: str | Path, *, mode: Mode = "durable", flush_ms: float = 5.0,
                 segment_bytes: int = 64 << 20, probe_s: float = 1.0) -> None:
        if mode not in ("durable", "buffered"):
            raise ConfigError(f"prediction log mode {mode!r} is unknown",
                              fix="use 'durable' (the default) or 'buffered'")
        self.root = Path(root)
        self.mode = mode
        self.flush_ms = flush_ms
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[tuple[str, bytes, Future[None] | None]] = []
        self._files: dict[str, tuple[Any, int]] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self._failed: BaseException | None = None     # the last write's error, until one works
        self._seq = 0
        self.probe_s = probe_s

    @property
    def healthy(self) -> bool:
        """False from a failed write until a write or a probe of the backend succeeds."""
        return self._failed is None

    def _fix(self) -> str:
        return f"check the disk under {self.root}; the log retries with every write"

    # -- writing -----------------------------------------------------------------------------
    def append(self, model: str, records: Sequence[Any]) -> Future[None]:
        """Queue records of one model; the future resolves once they are durable (in
        ``buffered`` mode: at once)."""
        data = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                        for r in records)
        done: Future[None] = Future()
        with self._lock:
            if self._closing:
                raise BackendError("the prediction log is closed", fix="open a new one")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="closedloop-log",
                                                daemon=True)
                self._thread.start()
            self._queue.append((model, data, done if self.mode == "durable" else None))
            self._wake.notify()
        if self.mode == "buffered":
            done.set_result(None)
        return done

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    if self._failed is None:
                        self._wake.wait()
                    elif not self._wake.wait(self.probe_s):
                        break                   # unhealthy and idle: probe the backend
                if not self._queue and self._closing:
                    return
                batch, self._queue = self._queue, []
            if not batch:
                with contextlib.suppress(Exception):          # still down: probe again later
                    self._probe()
                    self._failed = None
                continue
            try:
                self._commit(batch)
            except Exception as exc:    # the disk or Redis failed: this commit's waiters hear
                self._failed = exc      # of it; the next append tries again
                self._abandon()
                lost = 0
                for _, _, done in batch:
                    if done is None:
                        lost += 1
                    elif not done.done():
                        done.set_exception(BackendError(
                            f"the prediction log could not write: {exc}", fix=self._fix()))
                if lost:
                    log.error("the prediction log lost %d buffered appends: %s", lost, exc)
                continue
            self._failed = None
            for _, _, done in batch:
                if done is not None:
                    done.set_result(None)
            if self.mode == "buffered" and not self._closing:
                time.sleep(self.flush_ms / 1000)

    def _commit(self, batch: list[tuple[str, bytes, Future[None] | None]]) -> None:
        by_model: dict[str, list[bytes]] = {}
        for model, data, _ in batch:
            if model:                                  # "" is a flush marker
                by_model.setdefault(model, []).append(data)
        for model, parts in by_model.items():
            fd, size = self._segment(model)
            data = b"".join(parts)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            self._files[model] = (fd, size + len(data))

    def _abandon(self) -> None:
        """After a failed write: the next write starts new segments (a torn line stays the
        last of its segment, where readers skip it)."""
        for fd, _ in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()

    def _probe(self) -> None:
        """Raise unless the backend can be written to: a byte is written to a probe file and
        fsync-ed (a full disk still lets a folder be made and a file be opened), then the
        file is removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".probe-{os.getpid()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if os.write(fd, b"\n") != 1:
                raise BackendError(f"{self.root} took no byte", fix=self._fix())
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()

    def _segment(self, model: str) -> tuple[int, int]:
        current = self._files.get(model)
        if current is not None and current[1] < self.segment_bytes:
            return current
        if current is not None:
            os.close(current[0])
        folder = self.root / model
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq}.jsonl"
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        dir_fd = os.open(folder, os.O_RDONLY)      # the new file's name is durable too
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._files[model] = (fd, 0)
        return fd, 0

    def flush(self) -> None:
        """Wait until everything appended so far is written."""
        self.append_marker().result()

    def append_marker(self) -> Future[None]:
        done: Future[None] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                done.set_result(None)
                return done
            self._queue.append(("", b"", done))
            self._wake.notify()
        return done

    def close(self) -> None:
        """Commit what is queued and stop the writer."""
        with self._lock:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        for fd, _ in self._files.values():
            os.close(fd)
        self._files.clear()

    # -- reading -----------------------------------------------------------------------------
    def segments(self, model: str) -> list[Path]:
        folder = self.root / model
        return sorted(folder.glob("*.jsonl")) if folder.is_dir() else []

    def size(self, model: str) -> int:
        """Bytes the model's log holds."""
        return sum(p.stat().st_size for p in self.segments(model))

    def records(self, model: str) -> Iterator[dict[str, Any]]:
        """Every whole record of a model, segment by segment (a torn last line skipped)."""
        for path in self.segments(model):
            data = path.read_bytes()
            for line in data[:data.rfind(b"\n") + 1].splitlines():
                if line:
                    yield orjson.loads(line)

    def read(self, model: str, columns: Mapping[str, pa.DataType] | None = None,
             kinds: Sequence[str] | None = None) -> pa.Table:
        """A model's records as an Arrow table (columns as the records' fields; empty when
        nothing was logged). With ``columns``, only those fields, typed as given: DuckDB
        reads the segments in parallel and converts only those (a torn last line skipped),
        several times faster than parsing every field of every record; with ``kinds``, only
        the records of those kinds (filtered as they are read)."""
        if columns is not None:
            return self._read_columns(model, columns, kinds)
        return _of_kinds(self._read_all(model), kinds)

    def _read_all(self, model: str) -> pa.Table:
        parts = []
        for path in self.segments(model):
            data = path.read_bytes()
            data = data[:data.rfind(b"\n") + 1]           # a torn last line never counted
            if data:
                parts.append(data)
        if not parts:
            return pa.table({})
        return pj.read_json(pa.BufferReader(b"".join(parts)),
                            parse_options=pj.ParseOptions(newlines_in_values=False))


    def _read_columns(self, model: str, columns: Mapping[str, pa.DataType],
                      kinds: Sequence[str] | None) -> pa.Table:
        with tempfile.TemporaryDirectory(prefix="cl-log-") as folder:
            paths = _whole_lines(self.segments(model), Path(folder))
            if not paths:
                return pa.table({n: pa.array([], t) for n, t in columns.items()})
            return self._query_columns(model, paths, columns, kinds)

    def _query_columns(self, model: str, paths: Sequence[Path],
                       columns: Mapping[str, pa.DataType],
                       kinds: Sequence[str] | None) -> pa.Table:
        import duckdb

        fields = dict(columns)
        if kinds is not None:
            fields.setdefault("kind", pa.string())
        declared = ", ".join(f"{_sql_name(n)}: '{_SQL_TYPES[t]}'" for n, t in fields.items())
        files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
        where = "" if kinds is None else " WHERE kind IN (" + ", ".join(
            "'" + k.replace("'", "''") + "'" for k in kinds) + ")"
        con = duckdb.connect()

        def query(lenient: str) -> pa.Table:
            return con.sql(f"SELECT {', '.join(_sql_name(n) for n in columns)} FROM read_json("
                           f"[{files}], format = 'newline_delimited', ignore_errors = {lenient},"
                           f" columns = {{{declared}}}){where}").to_arrow_table()
        try:
            if any(pa.types.is_map(t) for t in fields.values()):
                table = query("true")   # other kinds log a number where a map is read
            else:
                try:    # strict first (faster); a value that does not fit: leniently
                    table = query("false")
                except duckdb.Error:
                    table = query("true")
        except duckdb.Error as exc:
            raise BackendError(f"the prediction log of {model!r} could not be read: {exc}",
                               fix=f"check {self.root / model}") from exc
        finally:
            con.close()
        return table.cast(pa.schema([(n, t) for n, t in columns.items()]))


def _whole_lines(paths: Sequence[Path], folder: Path) -> list[Path]:
    """The segments as whole lines: one whose last line is torn (a crash, or a write still
    under way) is read from a copy of its complete lines in ``folder`` — a segment is at
    most ``segment_bytes`` — the others in place."""
    out: list[Path] = []
    for path in paths:
        try:
            f = path.open("rb")
        except FileNotFoundError:          # removed since it was listed
            continue
        with f:
            size = f.seek(0, os.SEEK_END)
            if size == 0 or (f.seek(size - 1), f.read(1))[1] == b"\n":
                out.append(path)
                continue
            f.seek(0)
            data = f.read(size)
        copy = folder / f"{len(out):06d}-{path.name}"
        copy.write_bytes(data[:data.rfind(b"\n") + 1])
        out.append(copy)
    return out


def _of_kinds(table: pa.Table, kinds: Sequence[str] | None) -> pa.Table:
    if kinds is None or table.num_rows == 0:
        return table
    if "kind" not in table.column_names:
        return table.slice(0, 0)
    import pyarrow.compute as pc

    return table.filter(pc.is_in(table["kind"], pa.array(list(kinds), pa.string())))


#: Arrow types as DuckDB declares JSON columns (a string column holds an object's JSON text).
_SQL_TYPES = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT",
              pa.bool_(): "BOOLEAN", pa.map_(pa.string(), pa.float64()): "MAP(VARCHAR, DOUBLE)"}


def _typed(value: Any, kind: pa.DataType) -> Any:
    """A decoded JSON value as a column of ``kind`` holds it, as DuckDB's reader does: null
    where it does not fit, an object's or array's JSON text in a string column."""
    if value is None:
        return None
    if kind == pa.string():
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if kind == pa.bool_():
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == pa.float64():
        return float(value) if isinstance(value, int | float) else None
    if kind == pa.int64():
        return value if isinstance(value, int) else None
    if isinstance(value, dict) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                       for v in value.values()):
        return list(value.items())                   # map<string, double>
    return None


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class StreamPredictionLog(FilePredictionLog):
    """The scale-out prediction log: one Redis Stream per model (``predictions-log:<model>``),
    group-committed as the file log is — a writer thread sends every waiting record in one
    pipelined round trip. **The guarantee:** a record is acknowledged once Redis has replied
    to its XADD, so it survives the server's death; surviving Redis' own restart is Redis'
    persistence (``appendonly yes`` with ``appendfsync always`` for every write)."""

    def __init__(self, stream: EventStream, *, mode: Mode = "durable",
                 flush_ms: float = 5.0, probe_s: float = 1.0) -> None:
        super().__init__(Path("."), mode=mode, flush_ms=flush_ms, probe_s=probe_s)
        self.stream = stream

    def _fix(self) -> str:
        return "check Redis ([stream] url); the log retries with every write"

    def _abandon(self) -> None:
        pass

    def _probe(self) -> None:
        self.stream.read_all(self.name("__probe__"))      # a round trip to an empty key

    @staticmethod
    def name(model: str) -> str:
        return f"predictions-log:{model}"

    def _commit(self, batch: list[tuple[str, bytes, Future[None] | None]]) -> None:
        by_model: dict[str, list[dict[str, bytes]]] = {}
        for model, data, _ in batch:
            if model:
                by_model.setdefault(model, []).extend(
                    {"r": line} for line in data.splitlines() if line)
        for model, records in by_model.items():
            self.stream.publish(self.name(model), records)

    def segments(self, model: str) -> list[Path]:
        return []

    def size(self, model: str) -> int:
        return sum(len(fields["r"]) + 1 for _, fields in self.stream.read_all(self.name(model)))

    def records(self, model: str) -> Iterator[dict[str, Any]]:
        for _, fields in self.stream.read_all(self.name(model)):
            yield orjson.loads(fields["r"])

    def read(self, model: str, columns: Mapping[str, pa.DataType] | None = None,
             kinds: Sequence[str] | None = None) -> pa.Table:
        lines = [fields["r"] for _, fields in self.stream.read_all(self.name(model))]
        if columns is None:
            if not lines:
                return pa.table({})
            return _of_kinds(pj.read_json(pa.BufferReader(b"\n".join(lines) + b"\n"),
                                          parse_options=pj.ParseOptions(
                                              newlines_in_values=False)), kinds)
        records = [orjson.loads(line) for line in lines]
        if kinds is not None:
            wanted = set(kinds)
            records = [r for r in records if r.get("kind") in wanted]
        return pa.table({n: pa.array([_typed(r.get(n), t) for r in records], t)
                         for n, t in columns.items()})

    def close(self) -> None:
        super().close()
        self.stream.close()
