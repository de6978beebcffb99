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
from closedloop.testing import EVENT_STREAM_CHECKS, check_event_stream
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


@pytest.mark.parametrize("check", list(EVENT_STREAM_CHECKS))
def test_check_event_stream(event_stream: object, check: str) -> None:
    check_event_stream(event_stream, only=check)


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
        check_event_stream(_Unfair(SQLiteEventStream(tmp_path / "s.db")),
                           only="groups_share_and_each_sees_all")


def test_record_bytes_round_trip() -> None:
    fields = {"": b"", "e": bytes(range(256)) * 300, "ü": b"\x00"}
    assert unpack(pack(fields)) == fields


_READER = '''
import sys
from pathlib import Path
from closedloop.backends.sqlite_stream import SQLiteEventStream
s = SQLiteEventStream(sys.argv[1])
out, stop = Path(sys.argv[3]), Path(sys.argv[4])
with out.open("a") as f:
    while True:
        rows = s.read_group("ev", "g", sys.argv[2], 7, 100)
        if not rows and stop.exists():
            break
        f.write("".join(r["e"].decode() + "\\n" for _, r in rows))
        f.flush()
        s.ack("ev", "g", [i for i, _ in rows])
'''


def _got(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_two_processes_share_a_group_each_record_once(tmp_path: Path) -> None:
    """Publish a round, wait until it is read, and go on until both readers took part (no
    clock in the test: a reader that starts late only joins later)."""
    path = tmp_path / "streams.db"
    stream = SQLiteEventStream(path)
    stream.ensure_group("ev", "g")
    outs, stop = [tmp_path / f"{who}.txt" for who in ("a", "b")], tmp_path / "stop"
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(path), who, str(out),
                                 str(stop)], stderr=subprocess.PIPE, text=True)
               for who, out in zip(("a", "b"), outs, strict=True)]
    try:
        n = 0
        while n < 1500 or not all(_got(o) for o in outs):
            assert n < 100_000, "one reader never took part"
            stream.publish("ev", [{"e": str(n + i).encode()} for i in range(25)])
            n += 25
            deadline = time.monotonic() + 300
            while sum(len(_got(o)) for o in outs) < n:
                assert all(r.poll() is None for r in readers), "a reader died"
                assert time.monotonic() < deadline, "the round was not read"
                time.sleep(0.01)
        stop.touch()
        for r in readers:
            _, err = r.communicate(timeout=300)
            assert r.returncode == 0, err[-2000:]
    finally:
        for r in readers:
            if r.poll() is None:  # pragma: no cover - only when the test failed midway
                r.kill()
    got = [_got(o) for o in outs]
    assert sorted(got[0] + got[1]) == list(range(n))
    assert stream.claim("ev", "g", "z", 0.0) == []         # every record acknowledged
    stream.close()
