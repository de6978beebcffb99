"""The embedded online store: one SQLite table of (namespace, key) → bytes, WAL mode."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from closedloop.backends.base import OnlineItem
from closedloop.errors import BackendError, BackendUnavailable

# One text primary key "namespace<US>key": an IN list over it is a handful of index probes.
_SCHEMA = """CREATE TABLE IF NOT EXISTS cl_online (
    k TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL
) WITHOUT ROWID"""
_SEP = "\x1f"


def _k(namespace: str, key: str) -> str:
    return f"{namespace}{_SEP}{key}"


class SQLiteOnlineStore:
    """Online store in a SQLite file (``":memory:"`` for a private in-memory one).

    >>> store = SQLiteOnlineStore(":memory:")
    >>> store.write([("v@1", "u1", b"x")])
    >>> store.read([("v@1", "u1"), ("v@1", "u2")])
    [b'x', None]
    >>> store.close()
    """

    def __init__(self, path: str | Path, cache_mb: int = 256) -> None:
        self.path = str(path)
        self.cache_mb = cache_mb
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._reads: dict[int, str] = {}

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                # Serve reads from memory: a large page cache and the file mapped.
                con.execute(f"PRAGMA cache_size=-{self.cache_mb * 1024}")
                con.execute(f"PRAGMA mmap_size={self.cache_mb * 1024 * 1024}")
                con.execute(_SCHEMA)
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"online store {self.path!r} cannot be opened: {exc}",
                                         fix="check the path and its permissions") from exc
            self._con = con
        return self._con

    def write(self, items: Sequence[OnlineItem]) -> None:
        sets = [(_k(ns, key), value) for ns, key, value in items if value is not None]
        dels = [(_k(ns, key),) for ns, key, value in items if value is None]
        with self._lock:
            con = self._db()
            try:
                con.execute("BEGIN IMMEDIATE")
                if sets:
                    con.executemany("INSERT OR REPLACE INTO cl_online VALUES (?, ?)", sets)
                if dels:
                    con.executemany("DELETE FROM cl_online WHERE k = ?", dels)
                con.execute("COMMIT")
            except sqlite3.Error as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise BackendError(f"online store {self.path!r} write failed: {exc}",
                                   fix="check the disk; nothing of this write was applied") from exc

    def read(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        if not keys:
            return []
        n = len(keys)
        sql = self._reads.get(n)
        if sql is None:
            sql = self._reads[n] = (f"SELECT k, value FROM cl_online "
                                    f"WHERE k IN ({', '.join(['?'] * n)})")
        sep = _SEP
        wanted = [ns + sep + key for ns, key in keys]
        with self._lock:
            try:
                rows = self._db().execute(sql, wanted).fetchall()
            except sqlite3.Error as exc:
                raise BackendError(f"online store {self.path!r} read failed: {exc}",
                                   fix="check the file") from exc
        found = dict(rows)
        return [found.get(k) for k in wanted]

    def update(self, keys: Sequence[tuple[str, str]],
               merge: Callable[[list[bytes | None]], list[bytes | None]]) -> None:
        wanted = [_k(ns, key) for ns, key in keys]
        with self._lock:
            con = self._db()
            try:
                con.execute("BEGIN IMMEDIATE")     # holds the write lock from read to write
                found: dict[str, bytes] = {}
                for start in range(0, len(wanted), 500):
                    part = wanted[start:start + 500]
                    found.update(con.execute(
                        f"SELECT k, value FROM cl_online WHERE k IN ({', '.join('?' * len(part))})",
                        part).fetchall())
                new = merge([found.get(k) for k in wanted])
                con.executemany("INSERT OR REPLACE INTO cl_online VALUES (?, ?)",
                                [(k, v) for k, v in zip(wanted, new, strict=True) if v is not None])
                con.execute("COMMIT")
            except BaseException as exc:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise BackendError(f"online store {self.path!r} update failed: {exc}",
                                       fix="check the disk; nothing was applied") from exc
                raise

    def clear(self, namespace: str) -> None:
        with self._lock:
            self._db().execute("DELETE FROM cl_online WHERE k >= ? AND k < ?",
                               (namespace + _SEP, namespace + chr(ord(_SEP) + 1)))

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None
