"""A source's event log in the offline store: a folder of Parquet parts, appended whole and
compacted without ever showing a row twice or losing one.

* ``append`` writes a part to a temporary file, fsyncs it, renames it into place and fsyncs
  the folder: after a crash the part is there whole or not at all.
* ``compact`` merges the small parts into one. It writes the merged part under a temporary
  name, then a journal naming the merged part and the parts it replaces, then renames the
  merged part into place. From that rename on, readers skip the replaced parts (``parts``
  reads the journals); a crash anywhere leaves either the old parts or the merged one live,
  never both. Replaced parts are deleted by a later compaction once ``grace`` seconds have
  passed, so a query that listed them just before keeps its files.

Only one compaction runs at a time (an advisory lock on the folder); appends never wait for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.data.durable import fsync_dir, write_durably
from closedloop.errors import BackendError

_JOURNAL = ".compact-*.json"


class EventLog:
    """The event log of one source, in ``folder``.

    >>> import tempfile, pyarrow as pa
    >>> log = EventLog(tempfile.mkdtemp())
    >>> log.append(pa.table({"x": [1]})); log.append(pa.table({"x": [2]}))
    >>> len(log.parts()), log.compact(), len(log.parts())
    (2, 2, 1)
    """

    def __init__(self, folder: str | os.PathLike[str], small_rows: int = 1_000_000,
                 grace: float = 600.0) -> None:
        self.folder = Path(folder)
        self.small_rows = small_rows
        self.grace = grace

    def append(self, rows: pa.Table) -> None:
        """Add a part holding ``rows``, durably and whole."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            write_durably(self.folder / name, rows)
        except OSError as exc:
            raise BackendError(f"could not append to the event log at {self.folder}: {exc}",
                               fix=f"check {self.folder}") from exc

    def _journals(self) -> list[tuple[Path, dict[str, object]]]:
        out = []
        for path in sorted(self.folder.glob(_JOURNAL)):
            try:
                out.append((path, json.loads(path.read_text())))
            except (OSError, ValueError):
                continue                   # being written: not committed, so not in force
        return out

    def parts(self) -> list[Path]:
        """The live parts, in the order they were written: every part listed, less those
        replaced by a compaction whose merged part is in the same listing (so one listing
        decides: the old parts or the merged one, never both, never neither)."""
        if not self.folder.exists():
            return []
        listed = {p.name: p for p in self.folder.glob("part-*.parquet")}
        replaces = {str(j["output"]): [str(n) for n in j["replaces"]]  # type: ignore[attr-defined]
                    for _, j in self._journals()}           # read after the listing: see _tidy
        # A listed merged part hides what it replaced, and what those replaced, and so on.
        hidden: set[str] = set()
        todo = [name for name in replaces if name in listed]
        while todo:
            for name in replaces.get(todo.pop(), ()):
                if name not in hidden:
                    hidden.add(name)
                    todo.append(name)
        return [listed[n] for n in sorted(listed) if n not in hidden]

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the folder's writer lock (blocking): for a read-then-append, such as a
        deduplicating ingest, that no other such writer may interleave with."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".write.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """Hold the folder's compaction lock, if no one else does."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".compact.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _tidy(self) -> None:
        """Finish or undo what earlier compactions left (under the compaction lock). Parts
        replaced more than ``grace`` seconds ago are deleted, their journal ``grace`` later,
        so a reader that listed a part just before it went still finds the journal that
        excludes it; a journal whose merged part never made it into place is void, and any
        staged file is an interrupted compaction's."""
        now = time.time()
        journals = self._journals()
        # Decided for all before anything is deleted: a compaction committed if its merged
        # part is in place, or was itself merged away by a later one.
        merged_away = {str(n) for _, j in journals for n in j["replaces"]}  # type: ignore[attr-defined]
        for path, journal in journals:
            output = str(journal["output"])
            age = now - path.stat().st_mtime
            if (self.folder / output).exists() or output in merged_away:
                if age > self.grace:
                    for name in journal["replaces"]:  # type: ignore[attr-defined]
                        (self.folder / str(name)).unlink(missing_ok=True)
                if age > 2 * self.grace:
                    path.unlink(missing_ok=True)
            else:
                path.unlink(missing_ok=True)
        for staged in self.folder.glob(".staged-*"):
            staged.unlink(missing_ok=True)
        for tmp in self.folder.glob(".part-*.tmp"):      # an append that died half-way
            if now - tmp.stat().st_mtime > self.grace:
                tmp.unlink(missing_ok=True)
        fsync_dir(self.folder)

    def compact(self, small_rows: int | None = None) -> int:
        """Merge the live parts smaller than ``small_rows`` (default: the log's) into one;
        return how many parts were merged (0 when there were fewer than two, or another
        compaction is running)."""
        limit = self.small_rows if small_rows is None else small_rows
        if not self.folder.exists():
            return 0
        try:
            with self._exclusive() as mine:
                if not mine:
                    return 0
                self._tidy()
                with ExitStack() as files:          # each part opened once, then closed
                    opened = [(p, files.enter_context(pq.ParquetFile(p))) for p in self.parts()]
                    small = [(p, f) for p, f in opened if f.metadata.num_rows < limit]
                    if len(small) < 2:
                        return 0
                    merged = pa.concat_tables([f.read() for _, f in small],
                                              promote_options="default")
                # Named after the newest part it holds, so the order of parts stays the order
                # of writing.
                stem = small[-1][0].name.removesuffix(".parquet")
                output = self.folder / f"{stem}-c{uuid.uuid4().hex[:6]}.parquet"
                staged = self.folder / f".staged-{output.name}"
                write_durably(staged, merged)
                journal = self.folder / f".compact-{uuid.uuid4().hex}.json"
                write_durably(journal, json.dumps(
                    {"output": output.name, "replaces": [p.name for p, _ in small]}).encode())
                os.replace(staged, output)      # the commit point
                fsync_dir(self.folder)
                return len(small)
        except (OSError, pa.ArrowInvalid) as exc:
            raise BackendError(f"could not compact the event log at {self.folder}: {exc}",
                               fix=f"check {self.folder}; the log is unchanged") from exc
