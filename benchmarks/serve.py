"""Workload `serve`: online predictions over HTTP, driven by wrk from a second process on
loopback, at concurrency 16 and 64 for ``SERVE_SECONDS`` (20) each.

The model: LightGBM, 200 trees, on the `pit` data's 10 online features (two snapshot views of
five floats, one with a 2-day TTL; table a read by its write time), trained and registered
by closedloop once per data size. Each request carries one instance (a random user of
10,000 and a request id).

* ``closedloop-sqlite`` / ``closedloop-redis``: ``closedloop serve`` (one worker) with the
  online store in SQLite / Redis: routing (a 1% holdout, so every request hashes its unit),
  the online fetch, inference, decisions, the durable prediction log (each response sent
  after its record is fsync-ed), metrics.
  Both run without monitoring (``[monitoring] checks = false``, no monitor).
* ``closedloop-monitored``: ``closedloop-redis`` with monitoring on: every prediction checked
  against its version's constraints and counted for drift against its reference on the
  request path, and a monitor over the model (every 5 minutes, its default) in the server.
* ``floor``: ``benchmarks/serve_floor.py``, a hand-written ASGI app on the same stack
  (uvicorn, uvloop, httptools, one worker): parse, one Redis GET of a packed vector, LightGBM
  predict on one numpy row, respond — nothing else.
* ``mlflow`` (the anchor): ``mlflow models serve`` of the same model, one worker, each
  request carrying the user's feature vector (MLflow fetches no features). It needs a Python
  with mlflow and lightgbm: ``MLFLOW_PYTHON``, or mlflow importable here.

Figures, one row per concurrency: ``per_s`` (requests per second), ``p50_ms``, ``p99_ms``
(wrk's latency distribution), ``errors`` (non-2xx responses and socket errors). Outputs
compared: the scores of 200 users, requested one by one after the load.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import closedloop as cl
from benchmarks.data import (
    DATA,
    FEATURES_A,
    FEATURES_B,
    RECORD_FORMAT,
    pit_data,
    private_project,
    project_built,
    redis_cleanup,
)

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ["score"]
CONCURRENCY = (16, 64)
SECONDS = int(os.environ.get("SERVE_SECONDS", "20"))
REFS = [f"fa.{c}" for c in FEATURES_A] + [f"fb.{c}" for c in FEATURES_B]
CHECKED = 200
DEFINITIONS = '''
import closedloop as cl

user = cl.Entity("user", key="user_id")
# Table a's rows are usable from when they were written (created): no leakage.
a = cl.TableSource("a", path={a!r}, timestamp="created",
                   schema={{"user_id": str, **{{c: float for c in {fa!r}}}}})
b = cl.TableSource("b", path={b!r}, timestamp="event_timestamp",
                   schema={{"user_id": str, **{{c: float for c in {fb!r}}}}})
fa = cl.FeatureView("fa", entity=user, source=a, features={fa!r})
fb = cl.FeatureView("fb", entity=user, source=b, features={fb!r}, ttl="2d")
requests = cl.EventSource("requests", path={req!r}, timestamp="event_timestamp",
                          id="request_id", schema={{"request_id": str, "user_id": str}})
outcome = cl.LabelSource("outcome", path={req!r}, subject="request_id",
                         timestamp="event_timestamp", label="label", settled_at="settled_at",
                         schema={{"request_id": str, "label": bool}})
bench = cl.Model("bench", features={refs!r}, label="outcome", rows="requests",
                 trainer=cl.LightGBMTrainer(num_boost_round=200, num_leaves=31, seed=1))
serving = cl.Serving("bench", unit="user_id", subject="request_id", holdout=0.01,
                     decisions=[("review", 0.5)])
'''
LUA = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(7)
local n = 0
request = function()
  n = n + 1
  local body = '{{"instances": [{{"user_id": "u' .. math.random(0, {users} - 1) ..
               '", "request_id": "w' .. n .. '"}}]}}'
  return wrk.format(nil, "{path}", nil, body)
end
'''


def serve_data(scale: float = 1.0) -> Path:
    """The pit data, a requests file (its labels, settled at once) and a project over them
    with the model trained and registered as production; built once per size."""
    folder = DATA / f"serve-{scale:g}"
    if project_built(folder) and json.loads((folder / "done.json").read_text()).get(
            "reference"):                       # a version with a reference (constraints)
        return folder
    data = pit_data(scale)
    folder.mkdir(parents=True, exist_ok=True)
    labels = pq.read_table(data / "labels.parquet")
    requests = pa.table({
        "request_id": pc.binary_join_element_wise(
            "r", pc.cast(labels["label_id"], pa.string()), ""),
        "user_id": labels["user_id"], "event_timestamp": labels["event_timestamp"],
        "settled_at": labels["event_timestamp"], "label": pc.cast(labels["label"], pa.bool_())})
    pq.write_table(requests, folder / "requests.parquet")
    root = folder / "project"
    shutil.rmtree(root, ignore_errors=True)
    cl.init_project(root, definitions=DEFINITIONS.format(
        a=str(data / "a.parquet"), b=str(data / "b.parquet"), fa=FEATURES_A, fb=FEATURES_B,
        req=str(folder / "requests.parquet"), refs=REFS))
    with cl.Project(root) as project:
        project.apply()
        run = project.training.train("bench", cutoff=pit_end(data))
        version = project.registry.register(run.id).version
        project.registry.set_alias("bench", "production", version)
        loaded = project.registry.load("bench", "production")
        loaded.trainer.booster_.save_model(str(folder / "model.txt"))
    users = int(pc.count_distinct(labels["user_id"]).as_py())
    (folder / "done.json").write_text(json.dumps({"scale": scale, "users": users,
                                                  "records": RECORD_FORMAT,
                                                  "reference": True}))
    return folder


def pit_end(data: Path) -> datetime:
    """A day after the last request: every label is settled (they settle at once)."""
    times = pq.read_table(data / "labels.parquet", columns=["event_timestamp"])
    last: datetime = pc.max(times["event_timestamp"]).as_py()
    return last + timedelta(days=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, process: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status != 503:          # answering (not still loading)
                return
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    raise RuntimeError("the server did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ms(text: str) -> float:
    """A wrk duration (``812.00us``, ``4.20ms``, ``1.02s``, ``1.50m``) in milliseconds."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if found is None:
        raise RuntimeError(f"wrk printed a latency this does not read: {text!r}")
    return float(found.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[found.group(2)]


def _wrk(port: int, path: str, users: int, concurrency: int,
         lua: str | None = None) -> dict[str, float]:
    exe = shutil.which("wrk")
    if exe is None:
        raise RuntimeError("the serve workload needs wrk (Debian: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua or LUA.format(users=users, path=path))
    out = subprocess.run([exe, "-t1", f"-c{concurrency}", f"-d{SECONDS}s", "--latency",
                          "-s", f.name, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    if "Latency Distribution" not in out:
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}")
    os.unlink(f.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {"concurrency": concurrency, "per_s": rate, "p50_ms": p50, "p99_ms": p99,
            "errors": errors}


def _scores(port: int, path: str) -> pa.Table:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    scores = []
    for i in range(CHECKED):
        body = json.dumps({"instances": [{"user_id": f"u{i}", "request_id": f"c{i}"}]})
        conn.request("POST", path, body=body, headers={"content-type": "application/json"})
        scores.append(json.loads(conn.getresponse().read())["predictions"][0]["score"])
    conn.close()
    return pa.table({"label_id": np.arange(CHECKED), "score": scores})


def _load(port: int, path: str, users: int, process: subprocess.Popen[bytes],
          cleanup: Any = None) -> Any:
    def job() -> Any:
        try:
            runs = [_wrk(port, path, users, c) for c in CONCURRENCY]
            return _scores(port, path), {"runs": runs}
        finally:
            _stop(process)
            if cleanup is not None:
                cleanup()
    return job


#: ``closedloop-monitored``: a monitor over the model, run inside the server.
MONITOR = """
monitor = cl.Monitor("bench", window="1h", every="5m")
"""
#: The others: no constraint checks, no monitor.
UNMONITORED = '[monitoring]\nchecks = false\nrunner = "off"\n'


def _closedloop(store: str, monitored: bool = False) -> Any:
    def setup(data: Path) -> Any:
        prefix = f"clbench:{uuid.uuid4().hex}:"
        root = private_project(data, "serve", prefix if store == "redis" else None)
        config = root / "closedloop.toml"
        text = config.read_text()
        if not monitored:                   # no constraint checks, no monitor
            text = text.replace('runner = "serve"', 'runner = "off"').replace(
                "checks = true", "checks = false")
            if "checks = false" not in text:       # a project made before the section
                text += UNMONITORED
            config.write_text(text)
        if monitored:
            definitions = root / "definitions.py"
            definitions.write_text(definitions.read_text() + MONITOR)
        with cl.Project(root) as project:
            project.features.materialize()
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "closedloop", "serve", "-p", str(root), "--port", str(port),
             "--workers", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ready(port, process, "/readyz")
        users = json.loads((data / "done.json").read_text())["users"]

        def cleanup() -> None:
            if store == "redis":
                redis_cleanup(prefix)
            shutil.rmtree(root.parent, ignore_errors=True)
        return _load(port, "/v1/models/bench:predict", users, process, cleanup)
    return setup


SAVE_MLFLOW = """
import sys, lightgbm, mlflow.lightgbm
mlflow.lightgbm.save_model(lightgbm.Booster(model_file=sys.argv[1]), sys.argv[2])
"""
MLFLOW_LUA = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
math.randomseed(7)
local bodies = {{{bodies}}}
request = function()
  return wrk.format(nil, "/invocations", nil, bodies[math.random(1, #bodies)])
end
'''


def _vectors(root: Path, users: int) -> tuple[list[str], list[np.ndarray]]:
    """Every user's online feature vector as served now (what the floor and MLflow get)."""
    with cl.Project(root) as project:
        project.features.materialize()
        names = [f"u{i}" for i in range(users)]
        vectors = project.features.online([{"user_id": u} for u in names], REFS)
    assert isinstance(vectors, list)
    return names, [np.array([np.nan if v.values[r] is None else v.values[r] for r in REFS],
                            dtype=np.float64) for v in vectors]


def _mlflow(data: Path) -> Any:
    """The anchor: ``mlflow models serve`` of the same LightGBM model (its pyfunc flavour, one
    worker), the request carrying the features — MLflow has no feature fetch."""
    python = _mlflow_python()
    if python is None:
        raise RuntimeError("the mlflow system needs a Python with mlflow and lightgbm: set "
                           "MLFLOW_PYTHON (python -m venv .venv-mlflow && .venv-mlflow/bin/pip "
                           "install mlflow lightgbm)")
    work = Path(tempfile.mkdtemp(prefix="cl-bench-mlflow-"))
    subprocess.run([python, "-c", SAVE_MLFLOW, str(data / "model.txt"), str(work / "model")],
                   check=True, capture_output=True)
    users = json.loads((data / "done.json").read_text())["users"]
    root = work / "project"
    shutil.copytree(data / "project", root)
    _, rows = _vectors(root, users)
    import lightgbm as lgb

    columns = lgb.Booster(model_file=str(data / "model.txt")).feature_name()

    def body(row: np.ndarray) -> str:      # a missing value as NaN, which MLflow reads
        return json.dumps({"dataframe_split": {"columns": columns,
                                               "data": [[float(x) for x in row]]}})
    port = _free_port()
    process = subprocess.Popen(
        [python, "-m", "mlflow", "models", "serve", "-m", str(work / "model"), "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=work,
        env={**os.environ, "PATH": f"{Path(python).parent}{os.pathsep}{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)   # it runs `uvicorn` by PATH
    _wait_ready(port, process, "/ping")
    lua = MLFLOW_LUA.format(bodies=", ".join(json.dumps(body(r)) for r in rows[:1000]))

    def job() -> Any:
        try:
            runs = [_wrk(port, "/invocations", users, c, lua=lua) for c in CONCURRENCY]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            scores = []
            for row in rows[:CHECKED]:
                conn.request("POST", "/invocations", body=body(row),
                             headers={"content-type": "application/json"})
                answer = json.loads(conn.getresponse().read())
                scores.append(float(answer["predictions"][0]))
            conn.close()
            return pa.table({"label_id": np.arange(CHECKED), "score": scores}), {"runs": runs}
        finally:
            _stop(process)
            shutil.rmtree(work, ignore_errors=True)
    return job


def _floor(data: Path) -> Any:
    import redis

    root = Path(tempfile.mkdtemp(prefix="cl-bench-serve-")) / "project"
    shutil.copytree(data / "project", root)
    users = json.loads((data / "done.json").read_text())["users"]
    prefix = f"clbench:{uuid.uuid4().hex}:"
    client = redis.Redis()
    names, rows = _vectors(root, users)
    pipe = client.pipeline(transaction=False)
    for name, row in zip(names, rows, strict=True):
        pipe.set(prefix + name, row.tobytes())
    pipe.execute()
    port = _free_port()
    env = {**os.environ, "FLOOR_MODEL": str(data / "model.txt"),
           "FLOOR_REDIS": "redis://127.0.0.1:6379/0", "FLOOR_PREFIX": prefix}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.serve_floor:app", "--host", "127.0.0.1",
         "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--log-level",
         "warning", "--no-access-log"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    _wait_ready(port, process, "/")

    def cleanup() -> None:
        keys = [prefix + n for n in names]
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        client.close()
        shutil.rmtree(root.parent, ignore_errors=True)
    return _load(port, "/predict", users, process, cleanup)


def _mlflow_python() -> str | None:
    return os.environ.get("MLFLOW_PYTHON") or (
        sys.executable if importlib.util.find_spec("mlflow") else None)


class _Serve:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop-sqlite": _closedloop("sqlite"),
                                         "closedloop-redis": _closedloop("redis"),
                                         "closedloop-monitored": _closedloop("redis", True),
                                         "floor": _floor, "mlflow": _mlflow}
    SETUP: ClassVar[set[str]] = set(SYSTEMS)
    ANCHOR = "mlflow"
    METRIC = "per_s"

    @staticmethod
    def unavailable() -> dict[str, str]:
        """Systems that cannot run here, and why (the harness leaves them out)."""
        return {} if _mlflow_python() else {
            "mlflow": "set MLFLOW_PYTHON to a Python with mlflow and lightgbm to run the "
                      "anchor (see README)"}
    HIGHER_IS_BETTER = True
    OUTPUTS = OUTPUTS
    DATA = staticmethod(serve_data)


serve = _Serve
