"""Both prediction logs pass the shared check, each through a real outage of its backend: the
Redis log's private Redis server is stopped and started again under it; the file log's disk
(a small tmpfs of its own) fills up and is freed again."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from closedloop.backends.predictions import FilePredictionLog, StreamPredictionLog
from closedloop.testing import PREDICTION_LOG_CHECKS, check_prediction_log
from tests.server.test_fallback import PrivateRedis, private_redis  # noqa: F401 - a fixture


@pytest.mark.parametrize("check", [*PREDICTION_LOG_CHECKS, "survives_a_killed_writer"])
def test_the_file_log_passes_the_check(tmp_path: Path, check: str) -> None:
    child = ("from closedloop.backends.predictions import FilePredictionLog\n"
             f"def make(): return FilePredictionLog({str(tmp_path / 'log')!r})")
    check_prediction_log(lambda: FilePredictionLog(tmp_path / "log", probe_s=0.02),
                         child=child, only=check)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of the test's own, unmounted after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        message = f"cannot mount a tmpfs for the full-disk outage: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":      # CI runs as root on this kind of machine
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(fd: int) -> int | None:
    """Write to ``fd`` until the disk refuses; the refusal's errno."""
    while True:
        try:
            os.write(fd, b"\0" * 4096)
        except OSError as exc:
            return exc.errno


def test_the_file_log_passes_the_check_through_a_full_disk(small_disk: Path) -> None:
    """The outage fills the disk to ENOSPC and frees it after. ``segment_bytes=1`` starts a
    segment per commit, so every write needs a new page of the full disk (a write into an
    open segment's last page still fits there, and is then durable); the probe writes and
    fsyncs a byte, so the log is not called healthy while the disk is full."""
    filler = small_disk / "filler"

    @contextmanager
    def outage() -> Iterator[None]:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert _fill(fd) == errno.ENOSPC
        finally:
            os.close(fd)
        try:
            yield
        finally:
            filler.unlink()

    check_prediction_log(lambda: FilePredictionLog(small_disk / "log", probe_s=0.02,
                                                   segment_bytes=1),
                         outage=outage, only="recovers_after_an_outage")


def test_the_redis_log_passes_the_check_through_an_outage(private_redis: PrivateRedis,  # noqa: F811
                                                          ) -> None:
    from closedloop.backends.redis_stream import RedisEventStream

    prefix = f"test-plog-{uuid.uuid4().hex}:"
    url = f"redis://127.0.0.1:{private_redis.port}/0"

    @contextmanager
    def outage() -> Iterator[None]:
        private_redis.stop()
        try:
            yield
        finally:
            private_redis.start()

    check_prediction_log(lambda: StreamPredictionLog(RedisEventStream(url, prefix=prefix),
                                                     probe_s=0.02), outage=outage,
                         only="recovers_after_an_outage")


@pytest.mark.redis
@pytest.mark.parametrize("check", [*PREDICTION_LOG_CHECKS, "survives_a_killed_writer"])
def test_the_redis_log_passes_the_check_on_the_shared_redis(check: str) -> None:
    from closedloop.backends.redis_stream import RedisEventStream
    from tests.conftest import _redis_or_skip

    _redis_or_skip()
    prefix = f"test-plog-{uuid.uuid4().hex}:"
    model = "__check-log"
    try:
        child = ("from closedloop.backends.predictions import StreamPredictionLog\n"
                 "from closedloop.backends.redis_stream import RedisEventStream\n"
                 f"def make(): return StreamPredictionLog(RedisEventStream(prefix={prefix!r}))")
        check_prediction_log(lambda: StreamPredictionLog(RedisEventStream(prefix=prefix)),
                             model, child=child, only=check)
    finally:
        cleanup = RedisEventStream(prefix=prefix)
        cleanup.delete(StreamPredictionLog.name(f"{model}:{check}"))
        cleanup.close()


def test_the_check_catches_a_log_that_acknowledges_before_writing(tmp_path: Path) -> None:
    """The buffered mode acknowledges at once and commits every flush_ms (here a minute): a
    writer killed in between loses what it acknowledged, and the check says so."""
    child = ("from closedloop.backends.predictions import FilePredictionLog\n"
             f"def make(): return FilePredictionLog({str(tmp_path / 'log')!r}, "
             "mode='buffered', flush_ms=60000)")
    with pytest.raises(AssertionError, match="acknowledged records lost"):
        check_prediction_log(lambda: FilePredictionLog(tmp_path / "log"), child=child,
                             only="survives_a_killed_writer")
