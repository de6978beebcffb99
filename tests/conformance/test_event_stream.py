"""Every event stream passes the shared check, and two processes reading one group of the
embedded stream get each record once."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from closedloop.backends.sqlite_stream import SQLiteEventStream, pack, unpack
from closedloop.testing import check_event_stream
from tests.conftest import _redis_or_skip


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def event_stream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "embedded":
        stream: object = SQLiteEventStream(tmp_path / "streams.db")
    else:
        _redis_or_skip()
        from closedloop.backends.redis_stream import RedisEventStream

        stream = RedisEventStream(prefix=f"test-es-{uuid.uuid4().hex}:")
    yield stream
    stream.close()  # type: ignore[attr-defined]


def test_check_event_stream(event_stream: object) -> None:
    check_event_stream(event_stream)


class _Unfair:
    """Delivers every record to every consumer of a group: the check must catch it."""

    def __init__(self, inner: SQLiteEventStream) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read_group(self, stream: str, group: str, consumer: str, count: int,
                   block_ms: int) -> list[tuple[str, dict[str, bytes]]]:
        return self.inner.read_group(stream, f"{group}-{consumer}", consumer, count, block_ms)

    def ensure_group(self, stream: str, group: str) -> None:
        for c in ("", "-c1", "-c2", "-c3"):
            self.inner.ensure_group(stream, group + c)


def test_check_catches_a_stream_that_delivers_twice(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="each once"):
        check_event_stream(_Unfair(SQLiteEventStream(tmp_path / "s.db")))


def test_record_bytes_round_trip() -> None:
    fields = {"": b"", "e": bytes(range(256)) * 300, "ü": b"\x00"}
    assert unpack(pack(fields)) == fields


_READER = '''
import sys, time
from closedloop.backends.sqlite_stream import SQLiteEventStream
s = SQLiteEventStream(sys.argv[1])
print("ready", flush=True)
got, quiet = [], time.monotonic()
while time.monotonic() - quiet < 1.5:
    rows = s.read_group("ev", "g", sys.argv[2], 7, 100)
    if rows:
        quiet = time.monotonic()
        got += [r["e"].decode() for _, r in rows]
        s.ack("ev", "g", [i for i, _ in rows])
print(",".join(got))
'''


def test_two_processes_share_a_group_each_record_once(tmp_path: Path) -> None:
    path = tmp_path / "streams.db"
    stream = SQLiteEventStream(path)
    stream.ensure_group("ev", "g")
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(path), who],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for who in ("a", "b")]
    for r in readers:
        assert r.stdout is not None
        assert r.stdout.readline().strip() == "ready"
    n = 0
    for _ in range(60):                                   # published while they read
        stream.publish("ev", [{"e": str(n + i).encode()} for i in range(25)])
        n += 25
        time.sleep(0.01)
    outs = [r.communicate(timeout=120) for r in readers]
    for r, (_, err) in zip(readers, outs, strict=True):
        assert r.returncode == 0, err[-2000:]
    got = [[x for x in out.strip().split(",") if x] for out, _ in outs]
    assert all(got), "both readers took part"
    assert sorted(int(x) for x in got[0] + got[1]) == list(range(n))
    assert stream.claim("ev", "g", "z", 0.0) == []         # every record acknowledged
    stream.close()
