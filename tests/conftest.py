"""Shared fixtures. Service tests mark themselves; under CI=true a missing service fails them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import closedloop as cl
from tests.monitoring.world import monitored, monitored_world  # noqa: F401  (shared fixtures)
from tests.serving.ladder_world import ladder_world, laddered  # noqa: F401  (shared fixtures)
from tests.serving.world import served, served_world  # noqa: F401  (shared fixtures)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """An empty project folder made by ``init_project``."""
    return cl.init_project(tmp_path / "proj", name="test")


@pytest.fixture
def make_project(tmp_path: Path) -> Iterator[object]:
    """Write definitions into a fresh project folder and open it."""
    opened: list[cl.Project] = []

    def make(definitions: str, name: str = "proj") -> cl.Project:
        root = cl.init_project(tmp_path / name, name="test", definitions=definitions)
        project = cl.Project(root)
        opened.append(project)
        return project

    yield make
    for p in opened:
        p.close()


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of this test's own on the local server (trust auth), dropped
    afterwards; skipped when the server is unreachable, failed under CI=true."""
    import uuid

    import sqlalchemy as sa

    admin_url = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    name = f"cltest_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as con:
            con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if IN_CI:
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is unreachable under CI=true: {exc}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _redis_or_skip(url: str = "redis://127.0.0.1:6379/0") -> None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis at {url} is unreachable under CI=true: {exc}")
        pytest.skip(f"Redis at {url} is unreachable: {exc}")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def online_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """Every online store: SQLite in a temporary file; Redis under a key prefix of its own,
    whose keys (and only those) are deleted afterwards."""
    if request.param == "sqlite":
        from closedloop.backends.sqlite import SQLiteOnlineStore

        store: object = SQLiteOnlineStore(tmp_path / "online.db")
        yield store
        store.close()  # type: ignore[attr-defined]
        return
    import uuid

    import redis

    from closedloop.backends.redis import RedisOnlineStore

    _redis_or_skip()
    prefix = f"cltest:{uuid.uuid4().hex}:"
    store = RedisOnlineStore(prefix=prefix)
    yield store
    store.close()  # type: ignore[attr-defined]
    client = redis.Redis()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
