"""Streaming inference for real: two scorer processes in one consumer group on one Redis
stream; every event is scored exactly once, its prediction written to the online store, the
prediction log and the predictions stream, with its lag."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa
import pytest
import redis

import closedloop as cl
from tests.conftest import _redis_or_skip


@pytest.mark.redis
def test_two_scorers_share_a_stream_and_score_each_event_once(served: cl.Project) -> None:
    _redis_or_skip()
    client = redis.Redis()
    prefix = f"test-stream-{uuid.uuid4().hex}:"
    root = served.root
    config = root / "closedloop.toml"
    config.write_text(config.read_text() + f'\n[stream]\nurl = "redis://127.0.0.1:6379/0"\n'
                      f'prefix = "{prefix}"\n')
    users = served.data.read("transactions", ["user_id"])["user_id"].to_pylist()[:200]
    scorers = [subprocess.Popen(
        [sys.executable, "-m", "closedloop", "stream", "fraud", "-p", str(root), "--consumer",
         f"c{k}", "--idle-exit", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for k in (1, 2)]
    try:
        time.sleep(5)                          # both scorers up and waiting in the group
        n = 1500
        with cl.Project(root) as project:
            for first in range(0, n, 100):
                now = datetime.now(UTC)
                events = pa.table({
                    "txn_id": [f"s{i}" for i in range(first, first + 100)],
                    "user_id": [users[i % len(users)] for i in range(first, first + 100)],
                    "merchant_id": ["m1"] * 100, "amount": [10.0 + i % 7 for i in range(100)],
                    "country": ["US"] * 100,
                    "event_time": pa.array([now - timedelta(seconds=1)] * 100,
                                           pa.timestamp("us", tz="UTC")),
                    "ingested_at": pa.array([now] * 100, pa.timestamp("us", tz="UTC"))})
                assert project.serving.publish("transactions", events) == 100
                time.sleep(0.05)
        outputs = [s.communicate(timeout=120) for s in scorers]
        for s, (_, err) in zip(scorers, outputs, strict=True):
            assert s.returncode == 0, err
        counts = [int(out.split("scored ")[1].split(" ")[0].replace(",", ""))
                  for out, _ in outputs]
        assert sum(counts) == n
        assert all(c > 0 for c in counts), counts        # the stream was shared
        published = client.xrange(f"{prefix}predictions:fraud")
        records = [orjson.loads(fields[b"p"]) for _, fields in published]
        assert Counter(r["key"] for r in records) == Counter(f"s{i}" for i in range(n))
        assert all(r["lag_ms"] > 0 for r in records)
        with cl.Project(root) as project:
            stored = project.online_store.read([("stream:fraud", f"s{i}") for i in (0, 777)])
            assert all(v is not None for v in stored)
            logged = [r for r in project.prediction_log.records("fraud")
                      if r["kind"] == "prediction"]
            assert {r["subject"] for r in logged} >= {f"s{i}" for i in range(n)}
            # The events were folded in as well: the source's event log holds them.
            held = set(project.data.read("transactions", ["txn_id"])["txn_id"].to_pylist())
            assert {f"s{i}" for i in range(n)} <= held
    finally:
        for s in scorers:
            if s.poll() is None:  # pragma: no cover - only when the test failed midway
                s.kill()
                s.communicate()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
