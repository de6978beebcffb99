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


def _predictions(project: cl.Project, n: int) -> list[dict] | None:
    """The predictions stream's records once it holds ``n`` of them."""
    records = project.serving.events.read_all("predictions:fraud")
    return [orjson.loads(f["p"]) for _, f in records] if len(records) >= n else None


def _wait_for(probe, what: str, deadline_s: float = 300.0):
    """``probe()``'s first value that is not None, polled until a generous deadline."""
    end = time.monotonic() + deadline_s
    while (value := probe()) is None:
        assert time.monotonic() < end, f"no {what} within {deadline_s:.0f} s"
        time.sleep(0.05)
    return value


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
         f"c{k}", "--idle-exit", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for k in (1, 2)]
    try:
        # No waiting on the clock: publish a batch, wait until it is scored, and go on until
        # at least 1,500 events are out and both scorers have scored some (each batch goes to
        # whichever scorer asks first, so once both are up they take turns). A scorer only
        # idles out when nothing is left.
        n, seen = 0, Counter[str]()
        with cl.Project(root) as project:
            while n < 1500 or len(seen) < 2:
                assert n < 60_000, f"only {sorted(seen)} ever scored"
                assert project.serving.publish("transactions", _events(users, n, 100)) == 100
                n += 100
                records = _wait_for(lambda n=n: _predictions(project, n), f"{n} predictions")
                seen = Counter(r["consumer"] for r in records)
        outputs = [s.communicate(timeout=300) for s in scorers]
        for s, (_, err) in zip(scorers, outputs, strict=True):
            assert s.returncode == 0, err
        counts = [int(out.split("scored ")[1].split(" ")[0].replace(",", ""))
                  for out, _ in outputs]
        assert sum(counts) == n
        assert counts == [seen["c1"], seen["c2"]]         # the stream was shared
        with cl.Project(root) as project:
            records = [orjson.loads(fields["p"])
                       for _, fields in project.serving.events.read_all("predictions:fraud")]
        assert Counter(r["key"] for r in records) == Counter(f"s{i}" for i in range(n))
        assert all(r["lag_ms"] > 0 for r in records)
        with cl.Project(root) as project:
            stored = project.online_store.read([("stream:fraud", f"s{i}") for i in (0, n - 1)])
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


def test_a_forced_fallback_reaches_a_running_scorer(served: cl.Project) -> None:
    """A monitoring playbook's fallback switch, set while the scorer runs, is what the next
    events are scored by; released, the model scores again."""
    users = served.data.read("transactions", ["user_id"])["user_id"].to_pylist()[:50]
    scorer = served.serving.scorer("fraud", consumer="switch")
    scorer.refresh_s = 0.0                      # read the switch before every batch
    served.serving.publish("transactions", _events(users, 0, 20))
    scorer.run(max_events=20, block_ms=50)
    served.monitor_store.set_switch("fraud", "fallback", {"action": 1, "reason": "test"})
    served.serving.publish("transactions", _events(users, 20, 20))
    scorer.run(max_events=20, block_ms=50)
    served.monitor_store.set_switch("fraud", "fallback", None)
    served.serving.publish("transactions", _events(users, 40, 20))
    scorer.run(max_events=20, block_ms=50)
    table = served.serving.predictions("fraud", labels=False, shadows=False,
                                       columns=["subject", "fallback", "fallback_reason"])
    by = dict(zip(table["subject"].to_pylist(), table["fallback"].to_pylist(), strict=True))
    assert [by[f"s{i}"] for i in range(60)] == [False] * 20 + [True] * 20 + [False] * 20
    reasons = set(table.filter(table["fallback"])["fallback_reason"].to_pylist())
    assert reasons == {"forced: test"}
