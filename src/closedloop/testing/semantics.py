"""The hand-written cases of the feature semantics (docs/architecture.md, "Feature
semantics") — window bounds, the arrival rule, ties, TTL, nulls and defaults — and
``check_offline_engine``, which runs them against any ``OfflineEngine``."""

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

from closedloop.backends.base import (
    ROW_ID,
    ROW_KEY,
    ROW_TS,
    OfflineEngine,
)
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
    check_lookup(engine)
    check_encode(engine)


def check_lookup(engine: OfflineEngine) -> None:
    """``lookup`` finds each key's position among the values — null for a key not there,
    a null key, or an empty set of values — whatever the order."""
    import pyarrow as pa

    values = pa.array(["b", "a", "c", "é"])
    keys = pa.chunked_array([["a", "x", None], ["é", "a", "c", "b"]])
    assert engine.lookup(keys, values).to_pylist() == [1, None, None, 3, 1, 2, 0]
    assert engine.lookup(keys, pa.array([], pa.string())).null_count == len(keys)
    assert engine.lookup(pa.array([], pa.string()), values).to_pylist() == []


def check_encode(engine: OfflineEngine) -> None:
    """``encode`` numbers the distinct keys (nulls stay null): decoded, the keys come back;
    each value is in the dictionary once."""
    import pyarrow as pa

    keys = pa.chunked_array([["b", None, "a"], ["b", "é", "a", None]])
    found = engine.encode(keys)
    assert found.dictionary_decode().to_pylist() == keys.to_pylist()
    assert sorted(found.dictionary.to_pylist()) == ["a", "b", "é"]
    assert found.indices.null_count == 2
    assert len(engine.encode(pa.array([], pa.string()))) == 0
    assert engine.encode(pa.array([None, None], pa.string())).null_count == 2
