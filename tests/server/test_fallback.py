"""With the online store down, the model's fallback answers, the response and the log say
so, and the fallback is counted; when the store is back, the model answers again. Runs a
private Redis server (the redis-server binary), stopped and restarted by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import closedloop as cl
from tests.conftest import IN_CI
from tests.server.test_app import INSTANCE, Server, _free_port, start_server, stop_server
from tests.serving.world import END


class PrivateRedis:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("the private Redis did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")  # pragma: no cover
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_the_fallback_answers_while_redis_is_down(served: cl.Project,
                                                  private_redis: PrivateRedis) -> None:
    root = served.root
    config = root / "closedloop.toml"
    text = config.read_text().replace(
        "[online]\n", f'[online]\nstore = "redis"\nurl = "redis://127.0.0.1:'
        f'{private_redis.port}/0"\nprefix = "fallback-test:"\n')
    config.write_text(text)
    with cl.Project(root) as p:
        p.features.materialize(at=END)
    process, port = start_server(root)
    client = Server(port, served, process)
    try:
        status, body = client.predict([INSTANCE])
        assert status == 200, body
        assert body["predictions"][0]["fallback"] is False
        private_redis.stop()
        status, body = client.predict([INSTANCE, {**INSTANCE, "user_id": "u2"}])
        assert status == 200, body
        for p in body["predictions"]:
            assert p["fallback"] is True
            assert p["score"] == 0.01                      # the declared fallback score
            assert p["decision"] == "allow"
            assert "online store" in p["fallback_reason"]   # the response says why
        _, _, raw = client.request("GET", "/metrics")
        assert 'closedloop_fallbacks_total{model="fraud"} 2.0' in raw.decode()
        private_redis.start()                             # back (empty: defaults served)
        status, body = client.predict([INSTANCE])
        assert status == 200, body
        assert body["predictions"][0]["fallback"] is False
    finally:
        stop_server(process)
    records = [r for r in served.prediction_log.records("fraud") if r["kind"] == "prediction"]
    down = [r for r in records if r["fallback"]]
    assert len(down) == 2
    assert all("Redis" in r["fallback_reason"] for r in down)
    assert all(r["features"] is None for r in down)
    assert json.dumps(records)          # plain data throughout


def test_the_fetch_timeout_holds_from_each_requests_arrival(served: cl.Project,
                                                           private_redis: PrivateRedis) -> None:
    """A hung store (a real Redis, paused): the batch ahead waits out its fetch timeout; a
    request queued behind it does not then wait out a timeout of its own — its deadline ran
    from its arrival, so the fallback answers it at once, and says why."""
    import asyncio

    from closedloop.server.app import ServingApp
    from closedloop.server.batching import MERGE_INSTANCES

    root = served.root
    config = root / "closedloop.toml"
    config.write_text(config.read_text().replace(
        "[online]\n", f'[online]\nstore = "redis"\nurl = "redis://127.0.0.1:'
        f'{private_redis.port}/0"\nprefix = "deadline-test:"\n'))
    with cl.Project(root) as p:
        p.features.materialize(at=END)
        users = p.data.read("transactions", ["user_id"])["user_id"].to_pylist()[:50]
    full = [{**INSTANCE, "user_id": users[i % len(users)], "txn_id": f"d{i}"}
            for i in range(MERGE_INSTANCES)]
    behind = [{**INSTANCE, "txn_id": "late"}]
    with cl.Project(root) as project:
        app = ServingApp(project, ["fraud"])
        app.start()
        try:
            predictor = app.online["fraud"]
            pauser = redis.Redis(port=private_redis.port)
            pauser.execute_command("CLIENT", "PAUSE", 600_000, "ALL")   # hung, not down
            pauser.close()

            async def go() -> list[Any]:
                batcher = app._batcher("fraud")
                try:
                    return list(await asyncio.gather(batcher.submit(predictor, full),
                                                     batcher.submit(predictor, behind)))
                finally:
                    await project.online_store.aclose()      # as the server's shutdown does
            (first, _, _), (second, at, _) = asyncio.run(go())
        finally:
            private_redis.stop()                   # paused until then: only a stop ends it
            app.stop()
    assert first is not second
    assert all(p.fallback for p in first.predictions)
    late = second.predictions[at]
    assert late.fallback
    assert late.fallback_reason is not None
    assert "of the request's arrival" in late.fallback_reason
    timing = second.records[at].latency_ms
    assert timing["queue"] >= first.records[0].latency_ms["fetch"]   # it waited, then
    assert timing["fetch"] <= timing["queue"]                          # did not wait again


def test_the_redis_prediction_log_serves_again_once_redis_is_back(
        served: cl.Project, private_redis: PrivateRedis) -> None:
    """A short Redis outage under the Redis prediction log: requests that cannot be logged
    are refused (503, never answered unlogged) and ``/readyz`` says the log is failing; once
    Redis is back the server is ready and answers again, without a restart."""
    root = served.root
    config = root / "closedloop.toml"
    config.write_text(config.read_text() + f'\n[serving]\nlog = "redis"\n\n[stream]\nurl = '
                      f'"redis://127.0.0.1:{private_redis.port}/0"\nprefix = "log-outage:"\n')
    process, port = start_server(root)
    client = Server(port, served, process)
    try:
        status, body = client.predict([INSTANCE])
        assert status == 200, body
        private_redis.stop()
        status, body = client.predict([INSTANCE])
        assert status == 503, body
        assert "Redis" in body["fix"]
        status, _, raw = client.request("GET", "/readyz")
        assert status == 503
        assert json.loads(raw)["log"] == "failing"
        private_redis.start()
        deadline = time.monotonic() + 120           # the log probes Redis while idle
        while client.request("GET", "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.request("GET", "/readyz")[0] == 200
        status, body = client.predict([INSTANCE, {**INSTANCE, "txn_id": "t2"}])
        assert status == 200, body
        answered = [p["id"] for p in body["predictions"]]
    finally:
        stop_server(process)
    with cl.Project(root) as p:
        logged = {r["id"] for r in p.prediction_log.records("fraud") if r["kind"] == "prediction"}
    assert set(answered) <= logged
