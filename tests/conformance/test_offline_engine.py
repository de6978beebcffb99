"""Every offline engine passes the shared semantic cases. A new engine is one line below."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from closedloop.backends.base import OfflineEngine
from closedloop.backends.duckdb import DuckDBEngine
from closedloop.testing import check_offline_engine, run_case, semantic_cases

ENGINES: dict[str, Callable[[], OfflineEngine]] = {
    "duckdb": lambda: DuckDBEngine(),
    # The same engine forced onto each of its window plans: SQL over tiles, SQL over raw
    # events, and ranges over sorted events.
    "duckdb-tiles": lambda: DuckDBEngine(tile_min_compression=0.0, window_plan="sql"),
    "duckdb-events": lambda: DuckDBEngine(tile_min_compression=float("inf"),
                                          window_plan="sql"),
    "duckdb-ranges": lambda: DuckDBEngine(window_plan="ranges"),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[OfflineEngine]:
    made = ENGINES[request.param]()
    yield made
    made.close()


@pytest.mark.parametrize("case", semantic_cases(), ids=lambda c: c.name)
def test_semantic_case(engine: OfflineEngine, case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    got = run_case(engine, case, tmp_path)
    for query, want, have in zip(case.queries, case.expected, got, strict=True):
        for name, value in want.items():
            assert have[name] == pytest.approx(value, rel=1e-9, abs=1e-9) if isinstance(
                value, float) else have[name] == value, (case.rule, query, name, have[name])


def test_check_offline_engine_passes(engine: OfflineEngine) -> None:
    check_offline_engine(engine)


class _WrongEngine:
    """An engine that ignores the arrival rule: the check must catch it."""

    def __init__(self) -> None:
        self.inner = DuckDBEngine()

    def columns(self, source):  # type: ignore[no-untyped-def]
        return self.inner.columns(source)

    def point_in_time(self, rows, view, features):  # type: ignore[no-untyped-def]
        import dataclasses

        if view.source.kind == "event" and view.source.arrival:
            view = dataclasses.replace(view, source=dataclasses.replace(view.source, arrival=None))
        return self.inner.point_in_time(rows, view, features)

    def close(self) -> None:
        self.inner.close()


def test_check_catches_a_wrong_engine() -> None:
    wrong = _WrongEngine()
    try:
        with pytest.raises(AssertionError, match="arrival"):
            check_offline_engine(wrong)
    finally:
        wrong.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=20),
                       min_size=1, max_size=3))
def test_encode_agrees_with_arrow(engine: OfflineEngine, chunks: list[list[str | None]]) -> None:
    """The engine's dictionary encoding decodes to the keys and numbers each distinct value
    once, as Arrow's does (whatever the order it numbers them in)."""
    keys = pa.chunked_array(chunks, pa.string())
    found = engine.encode(keys)
    arrow = pc.dictionary_encode(keys.combine_chunks())
    assert found.dictionary_decode().to_pylist() == keys.to_pylist()
    assert sorted(found.dictionary.to_pylist()) == sorted(arrow.dictionary.to_pylist())
    assert found.indices.null_count == arrow.indices.null_count
