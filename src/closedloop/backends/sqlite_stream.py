"""The embedded event stream: an append-only log of records in one SQLite file (WAL mode),
with the consumer groups of Redis Streams, shared by processes on one machine.

* ``publish`` appends records under increasing sequence numbers in one transaction, fsync-ed
  before it returns (``synchronous=FULL``): a published record survives a crash.
* A group keeps the last sequence it delivered. ``read_group`` takes the write lock, hands
  out the next records to one consumer, records them as pending for it and moves the group
  on, all in one transaction: two consumers of a group never get the same record, and a
  record is never skipped.
* ``ack`` removes records from the group's pending list. Records whose consumer died stay
  pending, as in Redis; ``claim`` hands those idle longer than a bound to another consumer.
* Waiting (``block_ms``) polls a read-only ``max(seq)`` every few milliseconds and takes the
  write lock only when there is something to deliver.

Records are never updated or deleted, except that ``delete`` drops a whole stream.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from closedloop.errors import BackendError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
  stream TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL,
  PRIMARY KEY (stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
  stream TEXT NOT NULL, grp TEXT NOT NULL, last_seq INTEGER NOT NULL,
  PRIMARY KEY (stream, grp)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
  stream TEXT NOT NULL, grp TEXT NOT NULL, seq INTEGER NOT NULL, consumer TEXT NOT NULL,
  delivered REAL NOT NULL, PRIMARY KEY (stream, grp, seq)) WITHOUT ROWID;
"""
_POLL_S = 0.005
_KEY = struct.Struct("<H")
_VALUE = struct.Struct("<I")


def pack(fields: Mapping[str, bytes]) -> bytes:
    """A record's fields as bytes: per field, key length, key, value length, value.

    >>> unpack(pack({"e": b"{}", "k": b""}))
    {'e': b'{}', 'k': b''}
    """
    out = bytearray()
    for key, value in fields.items():
        name = key.encode()
        out += _KEY.pack(len(name)) + name + _VALUE.pack(len(value)) + bytes(value)
    return bytes(out)


def unpack(data: bytes) -> dict[str, bytes]:
    out, at = {}, 0
    view = memoryview(data)
    while at < len(data):
        (n,) = _KEY.unpack_from(view, at)
        key = bytes(view[at + 2:at + 2 + n]).decode()
        at += 2 + n
        (m,) = _VALUE.unpack_from(view, at)
        out[key] = bytes(view[at + 4:at + 4 + m])
        at += 4 + m
    return out


class SQLiteEventStream:
    """``EventStream`` in the SQLite file ``path`` (see module); ids are sequence numbers."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._cons: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                con = sqlite3.connect(self.path, isolation_level=None,
                                      timeout=self.busy_timeout_s, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")
                con.executescript(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(f"could not open the event stream at {self.path}: {exc}",
                                   fix=f"check that {self.path.parent} is writable") from exc
            self._local.con = con
            with self._lock:
                self._cons.append(con)
        return con

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        con = self._db()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise BackendError(f"the event stream at {self.path} refused {what}: {exc}",
                               fix=f"check {self.path} (disk space, permissions)") from exc

    def _read(self, what: str, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise BackendError(f"the event stream at {self.path} refused {what}: {exc}",
                               fix=f"check {self.path}") from exc

    def publish(self, stream: str, records: Sequence[Mapping[str, bytes]]) -> list[str]:
        if not records:
            return []
        with self._write("an append") as con:
            (last,) = con.execute("SELECT coalesce(max(seq), 0) FROM records WHERE stream = ?",
                                  (stream,)).fetchone()
            seqs = range(last + 1, last + 1 + len(records))
            con.executemany("INSERT INTO records VALUES (?, ?, ?)",
                            [(stream, s, pack(r)) for s, r in zip(seqs, records, strict=True)])
        return [str(s) for s in seqs]

    def ensure_group(self, stream: str, group: str) -> None:
        with self._write("a new group") as con:
            con.execute("INSERT OR IGNORE INTO groups VALUES (?, ?, 0)", (stream, group))

    def read_group(self, stream: str, group: str, consumer: str, count: int,
                   block_ms: int) -> list[tuple[str, dict[str, bytes]]]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            at, top = self._read("a poll", "SELECT (SELECT last_seq FROM groups WHERE stream = ? "
                                 "AND grp = ?), (SELECT coalesce(max(seq), 0) FROM records "
                                 "WHERE stream = ?)", (stream, group, stream))[0]
            if at is None:
                raise BackendError(f"the event stream {stream!r} has no group {group!r}",
                                   fix="create it first (ensure_group)")
            if int(top) > int(at):
                rows = self._deliver(stream, group, consumer, count)
                if rows:
                    return rows
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(_POLL_S, left))

    def _deliver(self, stream: str, group: str, consumer: str,
                 count: int) -> list[tuple[str, dict[str, bytes]]]:
        with self._write("a group read") as con:
            (at,) = con.execute("SELECT last_seq FROM groups WHERE stream = ? AND grp = ?",
                                (stream, group)).fetchone()
            rows = con.execute("SELECT seq, payload FROM records WHERE stream = ? AND seq > ? "
                               "ORDER BY seq LIMIT ?", (stream, at, count)).fetchall()
            if rows:
                now = time.time()
                con.execute("UPDATE groups SET last_seq = ? WHERE stream = ? AND grp = ?",
                            (rows[-1][0], stream, group))
                con.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
                                [(stream, group, s, consumer, now) for s, _ in rows])
        return [(str(s), unpack(p)) for s, p in rows]

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._write("an acknowledgement") as con:
            con.executemany("DELETE FROM pending WHERE stream = ? AND grp = ? AND seq = ?",
                            [(stream, group, int(i)) for i in ids])

    def pending(self, stream: str, group: str) -> list[tuple[str, str]]:
        """The records delivered to ``group`` and not yet acknowledged: (id, consumer)."""
        rows = self._read("a pending read", "SELECT seq, consumer FROM pending WHERE stream = ? "
                          "AND grp = ? ORDER BY seq", (stream, group))
        return [(str(s), str(c)) for s, c in rows]

    def claim(self, stream: str, group: str, consumer: str, min_idle_s: float,
              count: int = 1000) -> list[tuple[str, dict[str, bytes]]]:
        """Hand to ``consumer`` the pending records idle for ``min_idle_s`` or more (those
        of a consumer that died before acknowledging), as XAUTOCLAIM does."""
        with self._write("a claim") as con:
            now = time.time()
            rows = con.execute(
                "SELECT p.seq, r.payload FROM pending p JOIN records r ON r.stream = p.stream "
                "AND r.seq = p.seq WHERE p.stream = ? AND p.grp = ? AND p.delivered <= ? "
                "ORDER BY p.seq LIMIT ?", (stream, group, now - min_idle_s, count)).fetchall()
            con.executemany("UPDATE pending SET consumer = ?, delivered = ? WHERE stream = ? "
                            "AND grp = ? AND seq = ?",
                            [(consumer, now, stream, group, s) for s, _ in rows])
        return [(str(s), unpack(p)) for s, p in rows]

    def read_all(self, stream: str) -> list[tuple[str, dict[str, bytes]]]:
        rows = self._read("a read", "SELECT seq, payload FROM records WHERE stream = ? "
                          "ORDER BY seq", (stream,))
        return [(str(s), unpack(p)) for s, p in rows]

    def delete(self, stream: str) -> None:
        """Drop a stream, its groups and their pending records."""
        with self._write("a delete") as con:
            for table in ("records", "groups", "pending"):
                con.execute(f"DELETE FROM {table} WHERE stream = ?", (stream,))

    def close(self) -> None:
        with self._lock:
            for con in self._cons:
                con.close()
            self._cons.clear()
        self._local = threading.local()
