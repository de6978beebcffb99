"""The checks every prediction log must pass."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from closedloop.backends.base import (
    PredictionLog,
)

#: What a check is handed: a maker of logs over one backend, and the model it may write to.
LogMaker = Callable[[], PredictionLog]
Outage = Callable[[], AbstractContextManager[None]]


def _record(id_: str, n: int) -> dict[str, Any]:
    return {"kind": "check", "id": id_, "n": n}


def log_durable_on_acknowledge(make: LogMaker, model: str) -> None:
    """What an acknowledged append holds, another log over the backend reads back, whole."""
    log = make()
    try:
        assert log.healthy
        log.append(model, [_record("a", 0), _record("b", 1)]).result(timeout=60)
        other = make()
        try:
            assert [r["id"] for r in other.records(model)] == ["a", "b"], \
                "durable on acknowledge"
        finally:
            other.close()
    finally:
        log.close()


def log_order_per_writer(make: LogMaker, model: str) -> None:
    """Appends not awaited in between read back in their order; concurrent writers' records
    each in their own writer's order."""
    import threading

    log = make()
    try:
        futures = [log.append(model, [_record(f"o{i}", i)]) for i in range(200)]
        for f in futures:
            f.result(timeout=60)
        assert [r["id"] for r in log.records(model)] == [f"o{i}" for i in range(200)], \
            "one writer's order"

        def writer(w: int) -> None:
            for i in range(50):
                log.append(model, [_record(f"w{w}-{i}", i)]).result(60)
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        records = list(log.records(model))
        for w in range(4):
            mine = [r["n"] for r in records if str(r["id"]).startswith(f"w{w}-")]
            assert mine == list(range(50)), f"writer {w}'s records in its order"
    finally:
        log.close()


def log_reads_back(make: LogMaker, model: str) -> None:
    """``records``, ``read`` (a table; with ``columns``, only those, typed, a field no
    record has null) and ``size`` agree; a model with no records reads as nothing."""
    import pyarrow as pa

    wanted = {"id": pa.string(), "n": pa.int64(), "absent": pa.float64()}
    log = make()
    try:
        assert list(log.records(model)) == []
        assert log.read(model).num_rows == 0
        assert log.read(model, wanted).schema == pa.schema(list(wanted.items()))
        log.append(model, [_record(f"r{i}", i) for i in range(25)]).result(timeout=60)
        records = list(log.records(model))
        table = log.read(model)
        assert table.num_rows == len(records) == 25
        assert table.column("id").to_pylist() == [r["id"] for r in records]
        some = log.read(model, wanted)
        assert some.schema == pa.schema(list(wanted.items()))
        assert sorted(zip(some["id"].to_pylist(), some["n"].to_pylist(), strict=True)) == \
            sorted((r["id"], r["n"]) for r in records)
        assert some["absent"].null_count == 25
        log.append(model, [{"kind": "other", "id": "x", "n": -1}]).result(timeout=60)
        checks = log.read(model, wanted, kinds=["check"])
        assert checks.num_rows == 25
        assert "x" not in checks["id"].to_pylist()
        assert log.read(model, kinds=["other"])["id"].to_pylist() == ["x"]
        nested = {"id": pa.string(), "n": pa.float64(), "times": pa.map_(pa.string(),
                                                                          pa.float64()),
                  "request": pa.string()}
        log.append(model, [{"kind": "nested", "id": "m", "n": 2, "times": {"a": 1, "b": 2.5},
                            "request": {"user": "u1", "amount": 3.5}},
                           {"kind": "nested", "id": "k", "n": "text", "times": 4.5,
                            "request": "plain"}]).result(timeout=60)
        mixed = log.read(model, nested, kinds=["nested"]).sort_by("id")
        assert mixed.schema == pa.schema(list(nested.items()))
        assert mixed["id"].to_pylist() == ["k", "m"]
        assert mixed["n"].to_pylist() == [None, 2.0]          # a value that does not fit: null
        assert mixed["times"].to_pylist() == [None, [("a", 1.0), ("b", 2.5)]]
        assert mixed["request"][0].as_py() == "plain"
        assert json.loads(mixed["request"][1].as_py()) == {"user": "u1", "amount": 3.5}
        assert log.size(model) > 0
    finally:
        log.close()


def log_recovers_after_an_outage(make: LogMaker, model: str, outage: Outage) -> None:
    """An append during the outage fails with a ``BackendError`` and ``healthy`` is False,
    and stays False while the outage lasts (the probe does not pass a backend that cannot
    write); after it the log becomes healthy again by itself (probing) and the next append is
    written — no restart."""
    import time

    from closedloop.errors import BackendError

    log = make()
    try:
        log.append(model, [_record("before", 0)]).result(timeout=60)
        with outage():
            try:
                log.append(model, [_record("lost", -1)]).result(60)
            except BackendError:
                pass
            else:
                raise AssertionError("an append during the outage was acknowledged")
            assert not log.healthy, "healthy during an outage"
            # Probing must not call the log healthy while the backend is still down: watch
            # it through many probe intervals (a correct log passes however long this is).
            watch = time.monotonic() + max(0.5, 20 * float(getattr(log, "probe_s", 0.0)))
            while time.monotonic() < watch:
                assert not log.healthy, "a probe called the log healthy during the outage"
                time.sleep(0.01)
        deadline = time.monotonic() + 120
        while not log.healthy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.healthy, "the log did not recover once its backend was back"
        log.append(model, [_record("after", 1)]).result(timeout=60)
        ids = [r["id"] for r in log.records(model)]      # ("before" is the backend's to
        assert ids[-1] == "after"                        # keep: a Redis without persistence
        assert "lost" not in ids                         # restarts empty)
    finally:
        log.close()


_WRITER = """
import sys, threading, time
{child}
log = make()
out = threading.Lock()
def load(w):
    i = 0
    while True:
        rid = f"{{w}}-{{i}}"
        log.append(sys.argv[1], [{{"kind": "check", "id": rid, "n": i}}]).result()
        with out:
            sys.stdout.write(rid + "\\n")
            sys.stdout.flush()
        i += 1
for w in range(4):
    threading.Thread(target=load, args=(w,), daemon=True).start()
time.sleep(600)
"""


def log_survives_a_killed_writer(make: LogMaker, model: str, child: str) -> None:
    """A writer process appending from four threads is SIGKILLed under load: every record
    it had acknowledged is read back (``child``: Python source defining ``make()``, the log
    as the writer opens it)."""
    import signal
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", _WRITER.format(child=child), model],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acked: set[str] = set()
    try:
        for line in writer.stdout:
            acked.add(line.strip())
            if len(acked) >= 500:
                break
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        acked |= {line.strip() for line in writer.stdout if line.strip()}
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=60)
        writer.stdout.close()
    log = make()
    try:
        logged = {r["id"] for r in log.records(model)}
    finally:
        log.close()
    assert len(acked) >= 500, "the writer acknowledged too little before it was killed"
    lost = acked - logged
    assert not lost, f"{len(lost)} acknowledged records lost when the writer was killed"


#: The prediction log's named checks; each writes to a model of its own (``model:name``).
PREDICTION_LOG_CHECKS: dict[str, Callable[[LogMaker, str], None]] = {
    "durable_on_acknowledge": log_durable_on_acknowledge,
    "order_per_writer": log_order_per_writer,
    "reads_back": log_reads_back,
}


def check_prediction_log(make: LogMaker, model: str = "__check-log", *,
                         outage: Outage | None = None, child: str | None = None,
                         only: str | None = None) -> None:
    """Raise AssertionError unless the logs ``make()`` opens (each over the same backend)
    behave as the PredictionLog protocol says (``PREDICTION_LOG_CHECKS``, and with
    ``outage`` — a context manager during which the backend is unreachable —
    ``recovers_after_an_outage``; with ``child`` — Python source defining ``make()`` for a
    writer process — ``survives_a_killed_writer``); ``only`` runs one of them. Each check
    writes to its own model, ``<model>:<check>``, which the caller removes."""
    checks: dict[str, Callable[[LogMaker, str], None]] = dict(PREDICTION_LOG_CHECKS)
    if outage is not None:
        checks["recovers_after_an_outage"] = (
            lambda mk, m: log_recovers_after_an_outage(mk, m, outage))
    if child is not None:
        checks["survives_a_killed_writer"] = (
            lambda mk, m: log_survives_a_killed_writer(mk, m, child))
    if only is not None and only not in checks:
        raise AssertionError(f"no prediction-log check {only!r}: {sorted(checks)}")
    for name, check in checks.items():
        if only is None or name == only:
            check(make, f"{model}:{name}")
