"""The HTTP server for real: uvicorn in its own process over a trained project. Predictions
are in the prediction log before their response; bad requests are 4xx naming the field;
metrics, health and the schema answer; a moved alias is served without a failed request."""

from __future__ import annotations

import dataclasses
import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import closedloop as cl
from tests.conftest import _redis_or_skip

INSTANCE = {"user_id": "u1", "txn_id": "t1", "amount": 12.5, "country": "US"}


@dataclass
class Server:
    port: int
    project: cl.Project
    process: subprocess.Popen[bytes]

    def request(self, method: str, path: str, body: bytes | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body,
                         headers={"content-type": "application/json"} if body else {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def predict(self, instances: Any, model: str = "fraud") -> tuple[int, Any]:
        status, _, body = self.request("POST", f"/v1/models/{model}:predict",
                                       json.dumps({"instances": instances}).encode())
        return status, json.loads(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(root: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "closedloop", "serve", "-p", str(root), "--port", str(port),
         *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(stop_server(process))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise AssertionError(f"the server did not become ready: {stop_server(process)}")


@pytest.fixture
def server(served: cl.Project) -> Iterator[Server]:
    process, port = start_server(served.root)
    yield Server(port, served, process)
    stop_server(process)


def stop_server(process: subprocess.Popen[bytes]) -> str:
    """Stop the server; what it printed."""
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output.decode(errors="replace")


def test_a_prediction_is_logged_before_its_response(server: Server) -> None:
    status, body = server.predict([INSTANCE, {**INSTANCE, "user_id": "u2", "txn_id": "t2"}])
    assert status == 200, body
    assert body["model"] == "fraud"
    ids = [p["id"] for p in body["predictions"]]
    assert len(ids) == 2
    assert all(0 <= p["score"] <= 1 and p["version"] in (1, 2) for p in body["predictions"])
    logged = {r["id"]: r for r in server.project.prediction_log.records("fraud")
              if r["kind"] == "prediction"}
    assert set(ids) <= set(logged)                  # durable before the response was sent
    record = logged[ids[0]]
    assert record["subject"] == "t1"
    assert record["unit"] == "u1"
    assert set(record["latency_ms"]) == {"fetch", "transform", "inference", "post", "queue",
                                         "request"}
    stages = sum(record["latency_ms"][s] for s in ("fetch", "transform", "inference", "post"))
    assert record["latency_ms"]["request"] >= record["latency_ms"]["queue"] + stages
    assert len(record["features"]) == 16


def test_a_null_entity_key_is_scored_from_the_defaults_as_offline(server: Server) -> None:
    """A null key is no error (the semantics: its views' defaults, as a training row with a
    null key gets), unless the field is also the routing unit."""
    status, body = server.predict([{"user_id": None}, {"user_id": "u1"}], model="risk")
    assert status == 200, body
    logged = {r["id"]: r for r in server.project.prediction_log.records("risk")
              if r["kind"] == "prediction"}
    features = {k.split("@")[0] + "." + k.split(".")[-1]: v
                for k, v in logged[body["predictions"][0]["id"]]["features"].items()}
    assert features["user_txn.amount_count_30d"] == 0        # an empty window, not an error
    assert features["user_profile.lifetime_spend"] is None
    status, body = server.predict([{**INSTANCE, "user_id": None}])      # fraud's unit
    assert status == 400
    assert body["field"] == "instances[0].user_id"
    schema = json.loads(server.request("GET", "/openapi.json")[2])
    instance = schema["paths"]["/v1/models/risk:predict"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]["instances"]["items"]
    assert instance["required"] == ["user_id"]
    assert instance["properties"]["user_id"]["type"] == ["string", "null"]


@pytest.mark.parametrize(("body", "status", "field"), [
    (b"{not json", 400, "body"),
    (b'{"instances": [{"user_id": "u1", "amount": NaN, "country": "US"}]}', 400, "body"),
    (b"[1, 2]", 400, "body"),
    (b"{}", 400, "instances"),
    (b'{"instances": [], "x": 1}', 400, "x"),
    (b'{"instances": []}', 400, "instances"),
    (b'{"instances": [{"user_id": "u1", "amount": 1.0}]}', 400, "instances[0].country"),
    (b'{"instances": [{"user_id": 5, "amount": 1.0, "country": "US"}]}', 400, None),
    (b'{"instances": [{"user_id": "u1", "amount": "lots", "country": "US"}]}', 400, None),
])
def test_a_bad_request_is_a_4xx_that_names_the_field(server: Server, body: bytes, status: int,
                                                      field: str | None) -> None:
    got, _, raw = server.request("POST", "/v1/models/fraud:predict", body)
    answer = json.loads(raw)
    assert got == status, answer
    assert answer["code"].startswith("CL-")
    assert answer["error"]
    if field is not None:
        assert answer["field"] == field


def test_routes_methods_and_sizes_are_checked(server: Server) -> None:
    assert server.predict([INSTANCE], model="nope")[0] == 404
    assert server.request("GET", "/v1/models/fraud:predict")[0] == 405
    assert server.request("GET", "/nowhere")[0] == 404
    assert server.request("POST", "/healthz", b"{}")[0] == 405
    huge = json.dumps({"instances": [INSTANCE] * 20_000}).encode()
    assert server.request("POST", "/v1/models/fraud:predict", huge)[0] == 413
    status, body = server.predict([INSTANCE] * 1001)
    assert status == 400, body
    assert body["field"] == "instances"
    # The worker survived all of it.
    assert server.predict([INSTANCE])[0] == 200


def test_health_models_schema_and_metrics_answer(server: Server) -> None:
    assert server.request("GET", "/healthz")[0] == 200
    status, _, raw = server.request("GET", "/readyz")
    assert status == 200
    assert json.loads(raw)["models"]["fraud"] == {"production": 1, "canary": 2, "shadow": 2}
    status, _, raw = server.request("GET", "/v1/models")
    assert json.loads(raw)["models"] == [
        {"name": "fraud", "versions": {"production": 1, "canary": 2, "shadow": 2},
         "ladder": None},
        {"name": "risk", "versions": {"production": 1}, "ladder": None}]
    status, _, raw = server.request("GET", "/openapi.json")
    schema = json.loads(raw)
    body = schema["paths"]["/v1/models/fraud:predict"]["post"]["requestBody"]
    item = body["content"]["application/json"]["schema"]["properties"]["instances"]["items"]
    assert set(item["required"]) == {"user_id", "amount", "country"}
    assert set(item["properties"]) == {"user_id", "amount", "country", "txn_id"}
    for _ in range(3):
        assert server.predict([INSTANCE])[0] == 200
    status, headers, raw = server.request("GET", "/metrics")
    text = raw.decode()
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    for stage in ("fetch", "transform", "inference", "post", "queue"):
        assert f'closedloop_stage_seconds_count{{model="fraud",stage="{stage}"}} 3.0' in text
    assert 'closedloop_request_seconds_count{model="fraud"} 3.0' in text
    # A request for an entity the online store does not hold: its features are counted
    # missing, by feature and why, and the response says so.
    status, body = server.predict([{**INSTANCE, "user_id": "nobody-at-all"}])
    assert status == 200
    missing = body["predictions"][0]["missing"]
    assert missing
    assert set(missing.values()) <= {"no_record", "no_value"}
    text = server.request("GET", "/metrics")[2].decode()
    for feature, why in missing.items():
        assert (f'closedloop_missing_features_total{{feature="{feature}",model="fraud",'
                f'reason="{why}"}}') in text


def test_batch_scores_are_served_by_lookup(server: Server) -> None:
    from tests.serving.world import END

    server.project.serving.score("risk", at=END, keys=["u1", "u2"])
    status, _, raw = server.request("GET", "/v1/models/risk/scores/u1")
    assert status == 200, raw
    found = json.loads(raw)
    stored = server.project.serving.stored_score("risk", "u1")
    assert stored is not None
    assert found == stored.to_dict()
    assert server.request("GET", "/v1/models/risk/scores/u3")[0] == 404
    assert server.request("GET", "/v1/models/nope/scores/u1")[0] == 404


def test_a_moved_alias_is_served_without_a_failed_request(server: Server) -> None:
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        body = json.dumps({"instances": [{**INSTANCE, "user_id": "steady"}]}).encode()
        while not stop.is_set():
            conn.request("POST", "/v1/models/fraud:predict", body=body)
            response = conn.getresponse()
            raw = response.read()
            statuses.append(response.status)
            if response.status == 200:
                p = json.loads(raw)["predictions"][0]
                if p["route"] == "production":
                    versions.append(p["version"])
        conn.close()

    route = server.predict([{**INSTANCE, "user_id": "steady"}])[1]["predictions"][0]["route"]
    if route != "production":
        pytest.skip("the steady unit routes elsewhere")  # pragma: no cover - fixed hash
    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    _wait(lambda: len(versions) > 20, "answers from version 1")
    server.project.registry.set_alias("fraud", "production", 2)
    _wait(lambda: versions[-1] == 2, "an answer from version 2")
    moved = len(statuses)
    _wait(lambda: len(statuses) > moved + 20, "answers after the move")
    stop.set()
    for t in threads:
        t.join()
    assert statuses
    assert set(statuses) == {200}
    assert versions[0] == 1
    assert versions[-1] == 2


def _wait(condition: Any, what: str, deadline_s: float = 300.0) -> None:
    """Poll ``condition`` until it holds; fail (not hang) past a generous deadline."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"no {what} within {deadline_s:.0f} s"
        time.sleep(0.02)


@pytest.mark.parametrize("log", ["files", pytest.param("redis", marks=pytest.mark.redis)])
def test_an_answered_prediction_survives_a_sigkill_of_the_server(served: cl.Project,
                                                                 log: str) -> None:
    prefix = f"test-log-{uuid.uuid4().hex}:"
    if log == "redis":
        _redis_or_skip()
        config = served.root / "closedloop.toml"
        config.write_text(config.read_text() + f'\n[serving]\nlog = "redis"\n\n[stream]\n'
                          f'url = "redis://127.0.0.1:6379/0"\nprefix = "{prefix}"\n')
    process, port = start_server(served.root)
    answered: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"instances": [INSTANCE, {**INSTANCE, "user_id": "u9"}]}).encode()
        try:
            while True:
                conn.request("POST", "/v1/models/fraud:predict", body=body)
                response = conn.getresponse()
                raw = response.read()
                if response.status == 200:
                    with lock:
                        answered.extend(p["id"] for p in json.loads(raw)["predictions"])
        except (OSError, http.client.HTTPException):
            return                                   # the server is gone
        finally:
            conn.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(answered) < 1000:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    for t in threads:
        t.join()
    stop_server(process)
    with cl.Project(served.root) as reopened:          # the log the server wrote to
        logged = {r["id"] for r in reopened.prediction_log.records("fraud")}
    if log == "redis":
        client = redis.Redis()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()
    assert len(answered) >= 1000
    assert set(answered) <= logged, f"{len(set(answered) - logged)} answered but not logged"


class _HeldTrainer:
    """A shadow that does not answer until the test lets it."""

    kind = "held"

    def __init__(self) -> None:
        self.release = threading.Event()

    def predict_proba(self, X: Any) -> Any:
        self.release.wait(300)
        return np.full(len(X), 0.5)


def test_a_slow_shadow_stays_off_the_request_path(served: cl.Project) -> None:
    import uvicorn

    from closedloop.registry.service import LoadedModel
    from closedloop.server.app import ServingApp

    app = ServingApp(cl.Project(served.root))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        predictor = app.online["fraud"]
        shadow = predictor.predictor.versions["shadow"]   # (the canary serves that version)
        held = _HeldTrainer()
        predictor.predictor.versions["shadow"] = dataclasses.replace(
            shadow, loaded=LoadedModel(shadow.loaded.version, held))  # type: ignore[arg-type]
        client = Server(port, served, None)  # type: ignore[arg-type]
        ids = []
        # Every request is answered while the shadow has not answered one: it is off the path.
        for i in range(20):
            status, body = client.predict([{**INSTANCE, "user_id": f"s{i}"}])
            assert status == 200
            ids.append(body["predictions"][0]["id"])
        assert not [r for r in served.prediction_log.records("fraud") if r["kind"] == "shadow"]
        held.release.set()

        def shadows() -> list[dict[str, Any]]:
            app.project.prediction_log.flush()
            return [r for r in served.prediction_log.records("fraud") if r["kind"] == "shadow"]
        _wait(lambda: shadows(), "shadow record")
        assert {r["id"] for r in shadows()} <= set(ids)
        assert all(r["score"] == 0.5 and r["version"] == 2 for r in shadows())
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_the_server_measures_what_serving_costs(served: cl.Project) -> None:
    process, port = start_server(served.root)
    client = Server(port, served, process)
    for i in range(30):
        assert client.predict([{**INSTANCE, "user_id": f"c{i}"}])[0] == 200
    stop_server(process)                          # the last usage is logged at shutdown
    report = served.serving.cost("fraud")
    assert report.predictions == 30                # the usage the server logged counts them
    assert report.cpu_s_per_1000["online"] > 0
    assert report.log_bytes_per_day > 0


def test_load_beyond_capacity_is_shed_with_a_503(served: cl.Project) -> None:
    config = served.root / "closedloop.toml"
    config.write_text(config.read_text() + "\n[serving]\nmax_inflight = 1\n")
    process, port = start_server(served.root)
    client = Server(port, served, process)
    results: list[tuple[int, dict[str, str], bytes]] = []
    lock = threading.Lock()
    body = json.dumps({"instances": [INSTANCE]}).encode()

    def burst() -> None:
        for _ in range(10):
            got = client.request("POST", "/v1/models/fraud:predict", body)
            with lock:
                results.append(got)

    try:
        threads = [threading.Thread(target=burst) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _, _, metrics = client.request("GET", "/metrics")
    finally:
        stop_server(process)
    statuses = [s for s, _, _ in results]
    assert set(statuses) == {200, 503}, set(statuses)
    shed = [(h, json.loads(b)) for s, h, b in results if s == 503]
    assert all(h["retry-after"] == "1" and b["code"] == "CL-702" for h, b in shed)
    assert f"closedloop_shed_total {float(len(shed))}" in metrics.decode()


def test_served_vectors_reach_the_feature_log_within_the_flush_bound(served: cl.Project) -> None:
    """The server writes what it logged every [online] log_flush_s, not only at shutdown: the
    vectors are on disk while it runs, and a SIGKILL after that loses none of them."""
    from closedloop.features.consistency import FeatureLog

    config = served.root / "closedloop.toml"
    text = config.read_text()
    assert "log_sample = 1.0" in text
    config.write_text(text.replace("log_sample = 1.0", "log_sample = 1.0\nlog_flush_s = 0.5"))
    log = FeatureLog(served.root / ".closedloop" / "feature_log")
    before = log.read().num_rows
    process, port = start_server(served.root)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(5):
            body = json.dumps({"instances": [{**INSTANCE, "user_id": f"f{i}"}]}).encode()
            conn.request("POST", "/v1/models/fraud:predict", body=body)
            response = conn.getresponse()
            assert response.status == 200, response.read()
            response.read()
        conn.close()
        _wait(lambda: log.read().num_rows >= before + 5, "logged vectors on disk")
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
    rows = [json.loads(r)["user_id"] for r in log.read()["row"].to_pylist()]
    assert {f"f{i}" for i in range(5)} <= set(rows)


def test_every_prediction_is_checked_against_its_constraints(server: Server) -> None:
    status, _ = server.predict([{**INSTANCE, "amount": 1e12}])
    assert status == 200
    text = server.request("GET", "/metrics")[2].decode()
    line = next(li for li in text.splitlines() if li.startswith(
        'closedloop_constraint_violations_total{constraint="out_of_range",model="fraud"}'))
    assert float(line.split()[-1]) >= 1
    # The same predictions counted for drift on the request path (this worker's window).
    assert 'closedloop_live_drift_psi{column="amount_vs_usual",model="fraud",version=' in text
