"""The metadata store's shared checks and a race of real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from closedloop.backends.metadata import SQLMetadataStore
from closedloop.testing import METADATA_STORE_CHECKS, check_metadata_store
from tests.conftest import postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.mark.parametrize("check", [None, *METADATA_STORE_CHECKS])
def test_metadata_store_conformance(metadata_url: str, check: str | None) -> None:
    store = SQLMetadataStore(metadata_url)
    try:
        check_metadata_store(store, only=check)
    finally:
        store.close()


_WRITER = '''
import sys
from closedloop.backends.metadata import SQLMetadataStore
store = SQLMetadataStore(sys.argv[1])
me = sys.argv[2]
store.start_run(f"run-{me}", "m", {})
for i in range(25):
    n = store.add_version("m", f"{me}-{i}", f"run-{me}")
    store.move_aliases("m", {"production": n, f"last-{me}": n})
store.end_run(f"run-{me}", "finished", {"writer": me})
store.close()
'''


def test_two_processes_registering_and_moving_aliases_lose_nothing(metadata_url: str) -> None:
    first = SQLMetadataStore(metadata_url)
    first.definitions()                                  # the tables exist before the race
    first.close()
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, metadata_url, who],
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    store = SQLMetadataStore(metadata_url)
    try:
        versions = store.versions("m")
        assert [v.version for v in versions] == list(range(1, 51))     # each number once
        assert sorted(v.bundle for v in versions) == sorted(
            f"{w}-{i}" for w in "ab" for i in range(25))                # no write lost
        aliases = store.aliases("m")
        by_bundle = {v.bundle: v.version for v in versions}
        assert aliases["last-a"] == by_bundle["a-24"]
        assert aliases["last-b"] == by_bundle["b-24"]
        assert aliases["production"] in (aliases["last-a"], aliases["last-b"])
        moves = [m for m in store.alias_history("m") if m.alias == "production"]
        assert len(moves) == 50
        for before, after in itertools.pairwise(moves):     # one chain, no gaps
            assert after.previous == before.version
        assert {r.status for r in store.runs("m")} == {"finished"}
    finally:
        store.close()
