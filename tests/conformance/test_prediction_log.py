"""Both prediction logs pass the shared check — the Redis one through a real outage of a
private Redis server, stopped and started again under it."""

from __future__ import annotations

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
