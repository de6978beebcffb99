"""The prediction log: an acknowledged record survives SIGKILL (durable mode), the buffered
mode loses at most its declared window, commits are grouped, a failed disk is an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from closedloop.backends.predictions import FilePredictionLog as PredictionLog
from closedloop.errors import BackendError, ConfigError

WRITER = textwrap.dedent('''
    import sys, threading, time, uuid
    from closedloop.backends.predictions import FilePredictionLog as PredictionLog
    log = PredictionLog(sys.argv[1], mode=sys.argv[2], flush_ms=float(sys.argv[3]))
    out = threading.Lock()
    def load():
        while True:
            rid = uuid.uuid4().hex
            log.append("m", [{"kind": "prediction", "id": rid, "score": 0.5,
                              "features": {"f": 1.0}}]).result()
            with out:
                sys.stdout.write(f"{rid} {time.monotonic()}\\n")
                sys.stdout.flush()
    for _ in range(4):
        threading.Thread(target=load, daemon=True).start()
    time.sleep(600)
''')


def _kill_under_load(root: Path, mode: str, flush_ms: float, acks: int
                     ) -> tuple[dict[str, float], float]:
    """Run a writer under load, SIGKILL it after ``acks`` acknowledgements; the ids it
    acknowledged with their times, and the time of the kill."""
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(root), mode, str(flush_ms)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    acked: dict[str, float] = {}
    try:
        for line in child.stdout:
            rid, at = line.split()
            acked[rid] = float(at)
            if len(acked) >= acks:
                break
        killed = time.monotonic()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for line in child.stdout:               # acknowledged before the kill landed
            rid, at = line.split()
            acked[rid] = float(at)
    finally:
        if child.poll() is None:  # pragma: no cover - only if the test failed midway
            child.kill()
        child.stdout.close()
    return acked, killed


def test_an_acknowledged_prediction_survives_sigkill(tmp_path: Path) -> None:
    acked, _ = _kill_under_load(tmp_path / "log", "durable", 5.0, 3000)
    logged = {r["id"] for r in PredictionLog(tmp_path / "log").records("m")}
    assert len(acked) >= 3000
    assert set(acked) <= logged, f"{len(set(acked) - logged)} acknowledged records lost"


def test_the_buffered_mode_loses_at_most_its_window(tmp_path: Path) -> None:
    flush_ms = 20.0
    acked, killed = _kill_under_load(tmp_path / "log", "buffered", flush_ms, 20_000)
    logged = {r["id"] for r in PredictionLog(tmp_path / "log").records("m")}
    lost = {rid: at for rid, at in acked.items() if rid not in logged}
    # Whatever was acknowledged a window (plus a generous fsync allowance) before the kill
    # is on disk; anything lost was acknowledged inside that window.
    allowance = flush_ms / 1000 + 0.5
    assert all(at > killed - allowance for at in lost.values()), (
        len(lost), min(lost.values(), default=None), killed)


def test_commits_are_grouped_and_every_record_is_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr("closedloop.backends.predictions.os.fsync", counting)
    log = PredictionLog(tmp_path / "log")

    def load(k: int) -> None:
        for i in range(150):
            log.append("m", [{"kind": "prediction", "id": f"{k}-{i}"}]).result()

    threads = [threading.Thread(target=load, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    records = list(PredictionLog(tmp_path / "log").records("m"))
    assert len(records) == 1200
    assert {r["id"] for r in records} == {f"{k}-{i}" for k in range(8) for i in range(150)}
    assert len(calls) < 1200 / 1.2                 # one fsync served several records


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log")
    log.append("m", [{"id": "a"}, {"id": "b"}]).result()
    log.close()
    (segment,) = log.segments("m")
    with segment.open("ab") as f:
        f.write(b'{"id": "c", "sco')               # a crash in the middle of a write
    again = PredictionLog(tmp_path / "log")
    assert [r["id"] for r in again.records("m")] == ["a", "b"]
    assert again.read("m").column("id").to_pylist() == ["a", "b"]
    by_column = again.read("m", {"id": pa.string()})   # DuckDB's reader: strict, then lenient
    assert by_column.column("id").to_pylist() == ["a", "b"]


def test_a_log_that_cannot_write_says_so_and_recovers(tmp_path: Path) -> None:
    """A failed write fails its own appends and marks the log unhealthy; the log stays open:
    it probes the backend while idle, is healthy again once the disk is back, and writes."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    log = PredictionLog(blocked, probe_s=0.01)
    try:
        with pytest.raises(BackendError, match="could not write") as caught:
            log.append("m", [{"id": "a"}]).result(timeout=10)
        assert "check the disk" in caught.value.fix
        assert not log.healthy
        with pytest.raises(BackendError, match="could not write"):   # tried again, still down
            log.append("m", [{"id": "b"}]).result(timeout=10)
        blocked.unlink()                      # the disk is back; the idle log's probe finds
        deadline = time.monotonic() + 60      # out, and the next append is written
        while not log.healthy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.healthy
        log.append("m", [{"id": "c"}]).result(timeout=10)
        assert [r["id"] for r in log.records("m")] == ["c"]
    finally:
        log.close()
    with pytest.raises(ConfigError):
        PredictionLog(tmp_path, mode="eventually")  # type: ignore[arg-type]


@pytest.mark.redis
def test_the_redis_stream_log_keeps_what_it_acknowledged() -> None:
    import uuid

    import redis as redis_py

    from closedloop.backends.predictions import StreamPredictionLog
    from closedloop.backends.redis_stream import RedisEventStream
    from tests.conftest import _redis_or_skip

    _redis_or_skip()
    prefix = f"test-streamlog-{uuid.uuid4().hex}:"
    log = StreamPredictionLog(RedisEventStream(prefix=prefix))
    try:
        done = [log.append("m", [{"kind": "prediction", "id": f"{k}-{i}", "score": 0.5}])
                for k in range(4) for i in range(50)]
        for d in done:
            d.result(timeout=30)
        again = StreamPredictionLog(RedisEventStream(prefix=prefix))
        ids = [r["id"] for r in again.records("m")]
        assert sorted(ids) == sorted(f"{k}-{i}" for k in range(4) for i in range(50))
        assert again.read("m").num_rows == 200
        assert again.size("m") > 200 * len(b'{"kind":"prediction"}')
        again.close()
    finally:
        log.close()
        client = redis_py.Redis()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
