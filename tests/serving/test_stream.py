"""Streaming inference for real: two scorer processes in one consumer group on one stream
(the embedded log, and Redis Streams); every event is scored exactly once, its prediction
written to the online store, the prediction log and the predictions stream, with its lag.
A scorer claims what a dead one left pending."""

from __future__ import annotations

import subprocess
import sys
import threading
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


def _events(users: list[str], first: int, n: int, late_s: float = 1.0) -> pa.Table:
    now = datetime.now(UTC)
    return pa.table({
        "txn_id": [f"s{i}" for i in range(first, first + n)],
        "user_id": [users[i % len(users)] for i in range(first, first + n)],
        "merchant_id": ["m1"] * n, "amount": [10.0 + i % 7 for i in range(n)],
        "country": ["US"] * n,
        "event_time": pa.array([now - timedelta(seconds=late_s)] * n,
                               pa.timestamp("us", tz="UTC")),
        "ingested_at": pa.array([now] * n, pa.timestamp("us", tz="UTC"))})


@pytest.mark.parametrize("store", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_two_scorers_share_a_stream_and_score_each_event_once(served: cl.Project,
                                                              store: str) -> None:
    prefix = f"test-stream-{uuid.uuid4().hex}:"
    root = served.root
    config = root / "closedloop.toml"
    if store == "redis":
        _redis_or_skip()
        config.write_text(config.read_text() + f'\n[stream]\nurl = "redis://127.0.0.1:6379/0"'
                          f'\nprefix = "{prefix}"\n')
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
                assert project.serving.publish("transactions", _events(users, first, 100)) == 100
                time.sleep(0.05)
        outputs = [s.communicate(timeout=120) for s in scorers]
        for s, (_, err) in zip(scorers, outputs, strict=True):
            assert s.returncode == 0, err
        counts = [int(out.split("scored ")[1].split(" ")[0].replace(",", ""))
                  for out, _ in outputs]
        assert sum(counts) == n
        assert all(c > 0 for c in counts), counts        # the stream was shared
        with cl.Project(root) as project:
            published = project.serving.events.read_all("predictions:fraud")
        records = [orjson.loads(fields["p"]) for _, fields in published]
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
        if store == "redis":
            client = redis.Redis()
            for key in client.scan_iter(match=f"{prefix}*"):
                client.delete(key)
            client.close()


def test_a_scorer_claims_what_a_dead_scorer_left_pending(served: cl.Project) -> None:
    users = served.data.read("transactions", ["user_id"])["user_id"].to_pylist()[:50]
    served.serving.publish("transactions", _events(users, 0, 120))
    events = served.serving.events
    assert events is not None
    events.ensure_group("events:transactions", "closedloop")
    # A scorer took 40 events and died before acknowledging them.
    taken = events.read_group("events:transactions", "closedloop", "dead", 40, 0)
    assert len(taken) == 40
    time.sleep(0.3)
    report = served.serving.scorer("fraud", consumer="alive").run(
        idle_s=1.0, block_ms=50, claim_idle_s=0.2)
    assert report.events == 120
    published = [orjson.loads(f["p"]) for _, f in events.read_all("predictions:fraud")]
    assert Counter(p["key"] for p in published) == Counter(f"s{i}" for i in range(120))
    assert events.claim("events:transactions", "closedloop", "z", 0.0) == []


def test_the_stream_store_in_force() -> None:
    from closedloop.config import StreamSettings

    assert StreamSettings().backend == "embedded"
    assert StreamSettings(url="redis://h:1/0").backend == "redis"
    assert StreamSettings(url="redis://h:1/0", store="embedded").backend == "embedded"


def test_the_lag_is_exported_to_prometheus() -> None:
    import socket
    import urllib.request

    from closedloop.server.metrics import StreamMetrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = StreamMetrics("fraud")
    metrics.serve(port)
    metrics.observe([40.0, 1500.0, 2500.0])
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'closedloop_stream_events_total{model="fraud"} 3.0' in text
    assert 'closedloop_stream_lag_seconds_bucket{le="0.05",model="fraud"} 1.0' in text
    assert 'closedloop_stream_lag_seconds_bucket{le="2.0",model="fraud"} 2.0' in text


KILLED_AT_ACK = """
import os, signal, sys
import closedloop as cl

with cl.Project(sys.argv[1]) as project:
    scorer = project.serving.scorer("fraud", consumer="doomed")

    def die(*args, **kwargs):          # folded, written and logged: never acknowledged
        os.kill(os.getpid(), signal.SIGKILL)

    scorer.stream.ack = die
    scorer.run(max_events=int(sys.argv[2]), block_ms=50)
"""


def test_an_event_redelivered_after_a_kill_between_fold_and_ack_counts_once(
        served: cl.Project) -> None:
    """At least once delivery, exactly once in effect: a scorer SIGKILLed after folding its
    batch into the features and before acknowledging it leaves the batch pending; a live
    scorer claims and scores it again, and push's idempotence on the source's id keeps each
    event counted once, offline and online."""
    users = served.data.read("transactions", ["user_id"])["user_id"].to_pylist()[:30]
    n = 120
    served.serving.publish("transactions", _events(users, 0, n))
    doomed = subprocess.run([sys.executable, "-c", KILLED_AT_ACK, str(served.root), str(n)],
                            capture_output=True, text=True, timeout=300)
    assert doomed.returncode == -9, doomed.stderr
    events = served.serving.events
    assert events is not None
    stop = threading.Event()
    guard = threading.Timer(300, stop.set)       # a hang fails the test instead of the suite
    guard.start()
    try:
        report = served.serving.scorer("fraud", consumer="alive").run(
            max_events=n, block_ms=50, claim_idle_s=0.0, stop=stop)
    finally:
        guard.cancel()
    assert report.events == n                    # the batch was delivered a second time
    assert events.claim("events:transactions", "closedloop", "z", 0.0) == []
    held = Counter(served.data.read("transactions", ["txn_id"])["txn_id"].to_pylist())
    assert all(held[f"s{i}"] == 1 for i in range(n))
    at = datetime.now(UTC)
    features = ["user_txn.amount_count_1h", "user_txn.amount_sum_1h"]
    keys = sorted(set(users))
    offline = served.features.training_set(
        pa.table({"user_id": keys, "t": pa.array([at] * len(keys),
                                                 pa.timestamp("us", tz="UTC"))}), features)
    online = served.features.online([{"user_id": k} for k in keys], features, at=at)
    pushed = Counter(users[i % len(users)] for i in range(n))
    for i, key in enumerate(keys):
        assert offline["user_txn.amount_count_1h"][i].as_py() >= pushed[key]
        for ref in features:
            assert online[i].values[ref] == pytest.approx(offline[ref][i].as_py()), (key, ref)
