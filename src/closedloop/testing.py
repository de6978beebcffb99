"""Conformance checks every pluggable implementation must pass.

``check_offline_engine(engine)`` runs the hand-written cases of the feature semantics
(docs/architecture.md, "Feature semantics") — window bounds, the arrival rule, ties, TTL,
nulls and defaults — against any ``OfflineEngine``. A new engine is one parametrize line in
``tests/conformance/``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS, OfflineEngine, OnlineStore
from closedloop.data.sources import Entity, EventSource, TableSource
from closedloop.features.consistency import same_value
from closedloop.features.definitions import Agg, FeatureView

BASE = datetime(2026, 3, 1, tzinfo=UTC)


def at(hours: float = 0, minutes: float = 0, seconds: float = 0, micros: int = 0) -> datetime:
    """A time relative to the cases' base instant (2026-03-01T00:00Z)."""
    return BASE + timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=micros)


@dataclass
class SemanticCase:
    """Source rows, one view, query rows and the values the semantics demand."""

    name: str
    rule: str
    rows: list[dict[str, Any]]
    view: Callable[[str], FeatureView]           # path of the written source -> view
    queries: list[tuple[str | None, datetime]]
    expected: list[dict[str, Any]]
    timestamps: tuple[str, ...] = field(default=("ts", "arrival", "created"))


_user = Entity("user", key="user_id")


def _events(arrival: bool = True) -> Callable[[str], EventSource]:
    def make(path: str) -> EventSource:
        return EventSource("ev", path=path, timestamp="ts",
                           arrival="arrival" if arrival else None,
                           schema={"user_id": str, "amount": float})
    return make


def _aggs(path: str, fns: tuple[str, ...], windows: tuple[str, ...] = ("1h",),
          arrival: bool = True, default: Any = None) -> FeatureView:
    return FeatureView("w", entity=_user, source=_events(arrival)(path),
                       aggregations=[Agg("amount", fn, windows=list(windows),
                                         default=None if fn in ("sum", "count") else default)
                                     for fn in fns])


def _snapshot(path: str, ttl: str | None = None, created: bool = True,
              defaults: dict[str, Any] | None = None, deleted: bool = False) -> FeatureView:
    src = TableSource("tab", path=path, timestamp="ts", created="created" if created else None,
                      deleted="deleted" if deleted else None,
                      schema={"user_id": str, "spend": float, "tier": str})
    return FeatureView("s", entity=_user, source=src, features=["spend", "tier"], ttl=ttl,
                       defaults=defaults or {})


def semantic_cases() -> list[SemanticCase]:
    """The hand-written cases, one or more per rule."""
    def ev(t: datetime, amount: float | None, arrival: datetime | None = None,
           user: str = "a") -> dict[str, Any]:
        return {"user_id": user, "ts": t, "arrival": arrival or t, "amount": amount}

    def snap(t: datetime, spend: float | None, tier: str | None, created: datetime,
             user: str = "a") -> dict[str, Any]:
        return {"user_id": user, "ts": t, "created": created, "spend": spend, "tier": tier}

    def change(t: datetime, spend: float | None, deleted: bool | None, user: str = "a",
               created: datetime | None = None) -> dict[str, Any]:
        return {**snap(t, spend, None if spend is None else "t", created or t, user),
                "deleted": deleted}

    # A 1h window has a 5m hop: at 10:07 it starts at 10:05 - 1h = 09:05, inclusive.
    boundary = [ev(at(9, 4, 59, 999_999), 1), ev(at(9, 5), 2), ev(at(10, 7), 4),
                ev(at(10, 7, micros=1), 8)]
    return [
        SemanticCase(
            "window_bounds", "window: event time >= floor(t/hop)*hop - w, and <= t",
            boundary, lambda p: _aggs(p, ("sum", "count")),
            [("a", at(10, 7)), ("a", at(10, 9, 59, 999_999)), ("a", at(10, 10))],
            [{"amount_sum_1h": 6.0, "amount_count_1h": 2},
             {"amount_sum_1h": 14.0, "amount_count_1h": 3},
             {"amount_sum_1h": 12.0, "amount_count_1h": 2}]),
        SemanticCase(
            "arrival_rule", "visible at t only if event time <= t and arrival time <= t",
            [ev(at(10), 5, arrival=at(10, 30)), ev(at(10, 1), 7)],
            lambda p: _aggs(p, ("sum", "count", "last")),
            [("a", at(10, 29, 59)), ("a", at(10, 30))],
            [{"amount_sum_1h": 7.0, "amount_count_1h": 1, "amount_last_1h": 7.0},
             {"amount_sum_1h": 12.0, "amount_count_1h": 2, "amount_last_1h": 7.0}]),
        SemanticCase(
            "late_outside_window", "a row arriving after its window passed never counts there",
            [ev(at(8), 3, arrival=at(10, 30))],
            lambda p: _aggs(p, ("count",), windows=("1h", "1d")),
            [("a", at(10, 29)), ("a", at(10, 31))],
            [{"amount_count_1h": 0, "amount_count_1d": 0},
             {"amount_count_1h": 0, "amount_count_1d": 1}]),
        SemanticCase(
            "last_tie_break", "last: latest event time, then the later arrival",
            [ev(at(10), 1, arrival=at(10, 2)), ev(at(10), 2, arrival=at(10, 1)),
             ev(at(9, 59), 9, arrival=at(10, 3))],
            lambda p: _aggs(p, ("last", "max", "min")),
            [("a", at(10, 1, 30)), ("a", at(10, 5))],
            [{"amount_last_1h": 2.0, "amount_max_1h": 2.0, "amount_min_1h": 2.0},
             {"amount_last_1h": 1.0, "amount_max_1h": 9.0, "amount_min_1h": 1.0}]),
        SemanticCase(
            "nulls_and_defaults", "nulls are ignored; an empty window is 0 for sum/count, "
            "else the default",
            [ev(at(10), None), ev(at(10, 1), 4), ev(at(10, 2), None, user="b")],
            lambda p: _aggs(p, ("sum", "count", "mean", "min", "stddev"), default=-1.0),
            [("a", at(10, 5)), ("b", at(10, 5)), ("zz", at(10, 5)), (None, at(10, 5))],
            [{"amount_sum_1h": 4.0, "amount_count_1h": 1, "amount_mean_1h": 4.0,
              "amount_min_1h": 4.0, "amount_stddev_1h": 0.0},
             *[{"amount_sum_1h": 0.0, "amount_count_1h": 0, "amount_mean_1h": -1.0,
                "amount_min_1h": -1.0, "amount_stddev_1h": -1.0}] * 3]),
        SemanticCase(
            "stddev_population", "stddev is the population standard deviation",
            [ev(at(10), 2), ev(at(10, 1), 4), ev(at(10, 2), 4), ev(at(10, 3), 4),
             ev(at(10, 4), 5), ev(at(10, 5), 5), ev(at(10, 6), 7), ev(at(10, 7), 9)],
            lambda p: _aggs(p, ("stddev", "mean")),
            [("a", at(10, 8))], [{"amount_stddev_1h": 2.0, "amount_mean_1h": 5.0}]),
        SemanticCase(
            "stddev_level_shift", "stddev is about the window's own mean: a far-away value "
            "before the window costs none of its variance; a constant window's is 0",
            [ev(at(-96), 1e9), ev(at(10), 10), ev(at(10, 5), 12),
             ev(at(-96), 1e16, user="b"), ev(at(10), 7, user="b"), ev(at(10, 1), 7, user="b"),
             ev(at(10, 2), 7, user="b")],
            lambda p: _aggs(p, ("stddev", "mean")),
            [("a", at(10, 10)), ("b", at(10, 10))],
            [{"amount_stddev_1h": 1.0, "amount_mean_1h": 11.0},
             {"amount_stddev_1h": 0.0, "amount_mean_1h": 7.0}]),
        SemanticCase(
            "sum_cancels", "a sum is exact, rounded once: terms that cancel leave the rest",
            [ev(at(10), 1e9), ev(at(10, 1), 0.5), ev(at(10, 2), -1e9),
             ev(at(10), 1e16, user="b"), ev(at(10, 1), 1, user="b"),
             ev(at(10, 2), -1e16, user="b")],
            lambda p: _aggs(p, ("sum", "mean", "count")),
            [("a", at(10, 5)), ("b", at(10, 5))],
            [{"amount_sum_1h": 0.5, "amount_mean_1h": 0.5 / 3, "amount_count_1h": 3},
             {"amount_sum_1h": 1.0, "amount_mean_1h": 1 / 3, "amount_count_1h": 3}]),
        SemanticCase(
            "snapshot_ties", "same entity and time: the later created wins, then the "
            "greater values (nulls lowest)",
            [snap(at(0), 10, "gold", at(0, 5)), snap(at(0), 11, "silver", at(0, 9)),
             snap(at(0), 99, None, at(0, 1)),
             snap(at(0), 5, "x", at(0, 1), user="b"), snap(at(0), 6, None, at(0, 1), user="b")],
            lambda p: _snapshot(p), [("a", at(1)), ("b", at(1))],
            [{"spend": 11.0, "tier": "silver"}, {"spend": 6.0, "tier": None}]),
        SemanticCase(
            "snapshot_ttl", "a value older than its TTL is absent (age <= ttl is present)",
            [snap(at(0), 10, "gold", at(0)), snap(at(-1), 7, "bronze", at(-1))],
            lambda p: _snapshot(p, ttl="2d", defaults={"tier": "none"}),
            [("a", at(48)), ("a", at(48, micros=1)), ("a", at(-0.5)), ("a", at(-2))],
            [{"spend": 10.0, "tier": "gold"}, {"spend": None, "tier": "none"},
             {"spend": 7.0, "tier": "bronze"}, {"spend": None, "tier": "none"}]),
        SemanticCase(
            "snapshot_as_of", "the latest row at or before t; rows after t are unseen",
            [snap(at(0), 1, "a", at(0)), snap(at(5), 2, "b", at(5))],
            lambda p: _snapshot(p, created=False),
            [("a", at(4, 59)), ("a", at(5)), ("a", at(-1))],
            [{"spend": 1.0, "tier": "a"}, {"spend": 2.0, "tier": "b"},
             {"spend": None, "tier": None}]),
        SemanticCase(
            "cdc_deletes", "a delete ends the entity's state from its change time until a "
            "later upsert; at the same change time the delete wins; a null flag is an upsert",
            [change(at(0), 1, False), change(at(2), None, True), change(at(4), 3, None),
             change(at(1), 5, False, user="b"), change(at(1), 6, True, user="b"),
             change(at(0), 7, False, user="c", created=at(0, 5)),
             change(at(0), None, True, user="c", created=at(0, 1))],
            lambda p: _snapshot(p, deleted=True, defaults={"tier": "gone"}),
            [("a", at(1)), ("a", at(2)), ("a", at(3, 59)), ("a", at(4)), ("b", at(1)),
             ("c", at(1))],
            [{"spend": 1.0, "tier": "t"}, {"spend": None, "tier": "gone"},
             {"spend": None, "tier": "gone"}, {"spend": 3.0, "tier": "t"},
             {"spend": None, "tier": "gone"}, {"spend": 7.0, "tier": "t"}]),
        SemanticCase(
            "snapshot_arrival", "event-source snapshots respect arrival: an unarrived newer "
            "row leaves the older one showing",
            [ev(at(10), 1), ev(at(11), 2, arrival=at(13))],
            lambda p: FeatureView("e", entity=_user, source=_events()(p), features=["amount"]),
            [("a", at(12)), ("a", at(13))], [{"amount": 1.0}, {"amount": 2.0}]),
    ]


def _table(rows: list[dict[str, Any]], timestamps: tuple[str, ...]) -> pa.Table:
    columns: dict[str, Any] = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in timestamps:
            columns[name] = pa.array(values, pa.timestamp("us", tz="UTC"))
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def run_case(engine: OfflineEngine, case: SemanticCase, folder: str | Path) -> list[dict[str, Any]]:
    """Write the case's rows, query the engine, return one dict of features per query."""
    path = Path(folder) / f"{case.name}.parquet"
    pq.write_table(_table(case.rows, case.timestamps), path)
    view = case.view(str(path))
    micros = [int(t.timestamp()) * 1_000_000 + t.microsecond for _, t in case.queries]
    rows = pa.table({ROW_ID: pa.array(np.arange(len(case.queries)), pa.int64()),
                     ROW_KEY: pa.array([k for k, _ in case.queries], pa.string()),
                     ROW_TS: pa.array(micros, pa.int64())})
    result = engine.point_in_time(rows, view, list(view.feature_names))
    out = []
    for i in range(result.num_rows):
        row = {}
        for name in view.feature_names:
            value = result[name][i].as_py()
            default = view.default(name)
            row[name] = default if value is None and default is not None else value
        out.append(row)
    return out


def check_offline_engine(engine: OfflineEngine) -> None:
    """Raise AssertionError unless the engine computes every semantic case exactly."""
    with tempfile.TemporaryDirectory() as folder:
        for case in semantic_cases():
            got = run_case(engine, case, folder)
            for query, want, have in zip(case.queries, case.expected, got, strict=True):
                for name, value in want.items():
                    assert same_value(have[name], value), (
                        f"{case.name} ({case.rule}): {name} for {query} is {have[name]!r}, "
                        f"expected {value!r}")


def check_online_store(store: OnlineStore) -> None:
    """Raise AssertionError unless ``store`` behaves as the OnlineStore protocol says:
    writes land, deletes delete, reads keep order and namespaces apart, a write is never
    seen in part, and ``clear`` clears one namespace only."""
    import threading

    ns, other = "__check@1", "__check@2"
    store.clear(ns)
    store.clear(other)
    assert store.read([]) == []
    assert store.read([(ns, "absent")]) == [None]
    blob = bytes(range(256))
    store.write([(ns, "a", b"1"), (ns, "b", blob), (other, "a", b"other")])
    assert store.read([(ns, "b"), (other, "a"), (ns, "a"), (ns, "zz")]) == [
        blob, b"other", b"1", None], "read must keep order and namespaces apart"
    store.write([(ns, "a", b"2"), (ns, "b", None)])
    assert store.read([(ns, "a"), (ns, "b")]) == [b"2", None], "overwrite and delete"
    store.write([(ns, "x", b"1"), (ns, "x", None), (ns, "y", None), (ns, "y", b"2")])
    assert store.read([(ns, "x"), (ns, "y")]) == [None, b"2"], "the last item for a key wins"
    store.write([(ns, "y", None)])
    keys = [f"k{i}" for i in range(300)]
    many = [(ns, k) for k in keys]
    store.write([(ns, k, k.encode()) for k in keys])
    assert store.read(many) == [k.encode() for k in keys], "300 keys in one read"
    lots = [(ns, f"big{i}") for i in range(1_234)]
    store.write([(ns, k, k.encode()) for _, k in lots[::2]])
    assert store.read(lots) == [k.encode() if i % 2 == 0 else None
                                for i, (_, k) in enumerate(lots)], "1,234 keys in one read"
    # The event-loop read answers as the blocking one, also many at once on one loop.
    import asyncio

    async def on_a_loop() -> tuple[Any, ...]:
        try:
            return (await store.read_async(many), await store.read_async([]),
                    list(await asyncio.gather(*(store.read_async(lots[i::7])
                                                for i in range(7)))))
        finally:
            await store.aclose()

    one, none, gathered = asyncio.run(on_a_loop())
    assert one == store.read(many), "read_async answers as read"
    assert none == []
    assert gathered == [store.read(lots[i::7]) for i in range(7)], (
        "concurrent read_async calls each get their own reply")
    # Atomicity: a reader running beside a writer never sees two versions in one read.
    torn: list[list[bytes | None]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            got = store.read(many)
            if len(set(got)) != 1:
                torn.append(got)

    store.write([(ns, k, b"v0") for k in keys])
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 40):
            if version % 2:
                store.write([(ns, k, f"v{version}".encode()) for k in keys])
            else:                                        # the bulk form is atomic as well
                store.write_values(ns, keys, [f"v{version}".encode()] * len(keys))
    finally:
        stop.set()
        thread.join()
    assert not torn, f"a read saw a write in part: {sorted(set(map(repr, torn[0])))[:3]}"
    # write_values sets one namespace's keys as write would, and refuses a length mismatch.
    store.write_values(other, ["p", "q"], [b"1", blob])
    store.write_values(other, [], [])
    assert store.read([(other, "q"), (ns, "p"), (other, "p")]) == [blob, None, b"1"]
    refused = None
    try:
        store.write_values(other, ["p", "q"], [b"2"])
    except Exception as exc:  # any error of the store's own is right
        refused = str(exc)
    assert refused is not None, "write_values must refuse two keys for one value"
    assert "values" in refused, f"a mismatch is named: {refused}"
    assert store.read([(other, "p")]) == [b"1"], "a refused write_values changes nothing"
    _check_update(store, ns)
    store.clear(ns)
    assert store.read([(ns, "k1"), (other, "a")]) == [None, b"other"], "clear is per namespace"
    store.clear(other)


def _check_update(store: OnlineStore, ns: str) -> None:
    """``update`` hands ``merge`` the current values in order, writes back what it returns
    (None leaves a key as it is), and never loses an update made beside it."""
    import threading

    store.write([(ns, "u1", b"1")])
    seen: list[list[bytes | None]] = []

    def merge(values: list[bytes | None]) -> list[bytes | None]:
        seen.append(list(values))
        return [b"one", None, b"three"]

    store.update([(ns, "u1"), (ns, "u2"), (ns, "u3")], merge)
    assert seen[-1] == [b"1", None, None], "merge gets the current values, in order"
    assert store.read([(ns, "u1"), (ns, "u2"), (ns, "u3")]) == [b"one", None, b"three"]

    def bump(values: list[bytes | None]) -> list[bytes | None]:
        return [str(int(v or b"0") + 1).encode() for v in values]

    store.write([(ns, "n1", b"0"), (ns, "n2", b"0")])
    rounds, errors = 60, []

    def worker() -> None:
        try:
            for _ in range(rounds):
                store.update([(ns, "n1"), (ns, "n2")], bump)
        except Exception as exc:  # surfaced below, with the store's own message
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, f"update raised beside another update: {errors[0]!r}"
    got = store.read([(ns, "n1"), (ns, "n2")])
    assert got == [str(3 * rounds).encode()] * 2, f"an update was lost: {got}"


def check_trainer(trainer: Any) -> None:
    """The shared checks every trainer must pass (``closedloop.training.trainers.Trainer``):
    it learns a plain signal from rows with missing values; probabilities are one per row in
    [0, 1]; two fits of fresh copies give the same bytes (a retrain is bit for bit); a model
    loaded from its bytes predicts exactly as the one that wrote them; given the same values
    as an Arrow table of float64 columns (nulls for the gaps) it learns the same bytes and
    predicts the same; its parameters are plain data; a single-class training set is a
    ``TrainingError``."""
    import copy
    import json

    from sklearn.metrics import roc_auc_score

    from closedloop.errors import TrainingError
    from closedloop.training.trainers import Trainer

    if not isinstance(trainer, Trainer):
        raise AssertionError(f"{trainer!r} does not implement the Trainer protocol")
    rng = np.random.default_rng(42)
    X = rng.normal(size=(2000, 5))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.5, size=2000) > 0).astype(np.int64)
    X[rng.random(X.shape) < 0.05] = np.nan                      # training sets have gaps
    first, second = copy.deepcopy(trainer), copy.deepcopy(trainer)
    first.fit(X[:1500], y[:1500], X_valid=X[1500:1750], y_valid=y[1500:1750],
              feature_names=[f"v.f{i}" for i in range(5)])
    second.fit(X[:1500], y[:1500], X_valid=X[1500:1750], y_valid=y[1500:1750],
               feature_names=[f"v.f{i}" for i in range(5)])
    p = first.predict_proba(X[1750:])
    if p.shape != (250,) or not np.all((p >= 0) & (p <= 1)):
        raise AssertionError(f"predict_proba gave shape {p.shape} or values outside [0, 1]")
    auc = roc_auc_score(y[1750:], p)
    if auc < 0.8:
        raise AssertionError(f"the trainer did not learn a plain signal (AUC {auc:.3f})")
    if first.to_bytes() != second.to_bytes():
        raise AssertionError("two fits on the same data gave different bytes: not reproducible")
    loaded = copy.deepcopy(trainer)
    loaded.load(first.to_bytes())
    if not np.array_equal(loaded.predict_proba(X[1750:]), p):
        raise AssertionError("a model loaded from its bytes predicts differently")
    def table(rows: np.ndarray[Any, Any]) -> pa.Table:
        return pa.table({f"v.f{i}": pa.array(rows[:, i], from_pandas=True) for i in range(5)})

    arrow = copy.deepcopy(trainer)
    arrow.fit(table(X[:1500]), y[:1500], X_valid=table(X[1500:1750]), y_valid=y[1500:1750],
              feature_names=[f"v.f{i}" for i in range(5)])
    if arrow.to_bytes() != first.to_bytes():
        raise AssertionError("the same values as an Arrow table gave a different model")
    if not np.array_equal(arrow.predict_proba(table(X[1750:])), p):
        raise AssertionError("the same rows as an Arrow table were scored differently")
    json.dumps(first.params())
    try:
        copy.deepcopy(trainer).fit(X[:100], np.zeros(100, dtype=np.int64))
    except TrainingError:
        pass
    else:
        raise AssertionError("fitting a single class did not raise TrainingError")


def check_metadata_store(store: Any) -> None:
    """The shared checks every metadata store must pass, on an empty store: definitions,
    runs, model versions numbered once each, aliases moved atomically with their history."""
    from closedloop.backends.base import RegisteredDefinition
    from closedloop.errors import VersionConflict, VersionNotFound

    if store.definitions() != []:
        raise AssertionError("the store is not empty")
    d1 = RegisteredDefinition("entity", "user", 1, "h1", {"kind": "entity", "name": "user"})
    d2 = RegisteredDefinition("feature_view", "v", 1, "h2", {"nested": {"a": [1, 2]}})
    store.register([d1, d2])
    if sorted(store.definitions(), key=lambda d: d.kind) != [d1, d2]:
        raise AssertionError(f"definitions did not round-trip: {store.definitions()}")
    try:
        store.register([RegisteredDefinition("entity", "other", 1, "h3", {}), d1])
    except VersionConflict:
        pass
    else:
        raise AssertionError("registering a version twice did not raise VersionConflict")
    if len(store.definitions()) != 2:
        raise AssertionError("a refused register left part of itself behind")
    # Runs: running, then finished or failed; records round-trip as JSON.
    store.start_run("r1", "fraud", {"params": {"lr": 0.1}})
    store.start_run("r2", "fraud", {})
    store.start_run("r3", "churn", {})
    store.end_run("r1", "finished", {"params": {"lr": 0.1}, "metrics": {"auc": 0.9}})
    store.end_run("r2", "failed", {}, error="TrainingError: boom")
    runs = {r.id: r for r in store.runs()}
    if (runs["r1"].status, runs["r2"].status, runs["r3"].status) != (
            "finished", "failed", "running"):
        raise AssertionError(f"run statuses are wrong: {runs}")
    if runs["r1"].record["metrics"] != {"auc": 0.9} or runs["r2"].error != "TrainingError: boom":
        raise AssertionError("run records or errors did not round-trip")
    if runs["r1"].started_at.tzinfo is None or runs["r1"].ended_at is None:
        raise AssertionError("run times must be aware datetimes")
    if [r.id for r in store.runs("churn")] != ["r3"]:
        raise AssertionError("runs(model) did not filter")
    try:
        store.end_run("nope", "finished", {})
    except VersionNotFound:
        pass
    else:
        raise AssertionError("ending an unknown run did not raise VersionNotFound")
    # Versions: 1, 2, … per model.
    numbers = [store.add_version("fraud", f"b{i}", "r1") for i in range(3)]
    if numbers != [1, 2, 3] or store.add_version("churn", "c", "r3") != 1:
        raise AssertionError(f"versions were numbered {numbers}")
    if [v.bundle for v in store.versions("fraud")] != ["b0", "b1", "b2"]:
        raise AssertionError("versions did not round-trip")
    # Aliases: atomic moves, a missing version refused with nothing moved, history kept.
    store.move_aliases("fraud", {"production": 1})
    store.move_aliases("fraud", {"production": 2, "previous": 1, "shadow": 3})
    try:
        store.move_aliases("fraud", {"canary": 3, "production": 9})
    except VersionNotFound:
        pass
    else:
        raise AssertionError("an alias to a missing version did not raise VersionNotFound")
    if store.aliases("fraud") != {"previous": 1, "production": 2, "shadow": 3}:
        raise AssertionError(f"aliases are {store.aliases('fraud')} after a refused move")
    store.move_aliases("fraud", {"shadow": None})
    if "shadow" in store.aliases("fraud"):
        raise AssertionError("removing an alias left it in place")
    history = [(m.alias, m.version, m.previous) for m in store.alias_history("fraud")]
    if history != [("production", 1, None), ("production", 2, 1), ("previous", 1, None),
                   ("shadow", 3, None), ("shadow", None, 3)]:
        raise AssertionError(f"alias history is {history}")


def check_event_stream(stream: Any, name: str = "__check-stream") -> None:
    """Raise AssertionError unless ``stream`` behaves as the EventStream protocol says:
    records come back in order with their bytes; each goes to one consumer of a group and
    to every group; an unacknowledged record stays pending and can be claimed once idle;
    ``block_ms`` waits and an empty read returns nothing. ``name`` (and only it) is
    deleted before and after."""
    import time

    stream.delete(name)
    try:
        assert stream.read_all(name) == []
        stream.ensure_group(name, "g")
        stream.ensure_group(name, "g")                          # twice is fine
        stream.ensure_group(name, "h")
        blob = bytes(range(256))
        ids = stream.publish(name, [{"e": b"0", "blob": blob}] + [
            {"e": str(i).encode()} for i in range(1, 10)])
        assert len(ids) == len(set(ids)) == 10
        assert stream.publish(name, []) == []
        assert [r for _, r in stream.read_all(name)][:1] == [{"e": b"0", "blob": blob}]
        assert [i for i, _ in stream.read_all(name)] == ids, "read_all keeps order"
        first = stream.read_group(name, "g", "c1", 4, 0)
        second = stream.read_group(name, "g", "c2", 100, 0)
        assert [r["e"] for _, r in first + second] == [str(i).encode() for i in range(10)], \
            "a group's consumers share the records, each once, in order"
        assert stream.read_group(name, "g", "c1", 100, 0) == []
        assert len(stream.read_group(name, "h", "c1", 100, 0)) == 10, "every group sees all"
        t0 = time.monotonic()
        assert stream.read_group(name, "g", "c1", 10, 150) == []
        assert time.monotonic() - t0 >= 0.12, "block_ms waits"
        stream.ack(name, "g", [i for i, _ in second])
        time.sleep(0.05)
        # c1 died with ``first`` pending: once idle, another consumer claims them.
        assert stream.claim(name, "g", "c3", 60.0) == [], "not yet idle long enough"
        claimed = stream.claim(name, "g", "c3", 0.02)
        assert [i for i, _ in claimed] == [i for i, _ in first], "the unacknowledged ones"
        assert claimed[0][1] == {"e": b"0", "blob": blob}
        stream.ack(name, "g", [i for i, _ in claimed])
        time.sleep(0.05)
        assert stream.claim(name, "g", "c3", 0.0) == [], "acknowledged: nothing pending"
        later = stream.publish(name, [{"e": b"10"}])
        assert [i for i, _ in stream.read_group(name, "g", "c1", 10, 0)] == later
    finally:
        stream.delete(name)
