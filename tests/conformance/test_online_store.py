"""Every online store passes the shared check (the `online_store` fixture lists them)."""

from __future__ import annotations

import time

import pytest

from closedloop.backends.redis import RedisOnlineStore
from closedloop.errors import BackendUnavailable
from closedloop.testing import ONLINE_STORE_CHECKS, check_online_store


@pytest.mark.parametrize("check", list(ONLINE_STORE_CHECKS))
def test_check_online_store(online_store, check: str) -> None:  # type: ignore[no-untyped-def]
    check_online_store(online_store, only=check)


class _TornStore:
    """Writes key by key: the check must catch it."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner

    def write(self, items):  # type: ignore[no-untyped-def]
        for item in items:
            self.inner.write([item])

    def write_values(self, namespace, keys, values):  # type: ignore[no-untyped-def]
        for key, value in zip(keys, values, strict=True):
            self.inner.write([(namespace, key, value)])

    def read(self, keys):  # type: ignore[no-untyped-def]
        return self.inner.read(keys)

    async def read_async(self, keys):  # type: ignore[no-untyped-def]
        return await self.inner.read_async(keys)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def update(self, keys, merge):  # type: ignore[no-untyped-def]
        self.inner.update(keys, merge)

    def clear(self, namespace):  # type: ignore[no-untyped-def]
        self.inner.clear(namespace)

    def close(self) -> None:
        self.inner.close()


def test_check_catches_a_store_that_tears_writes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from closedloop.backends.sqlite import SQLiteOnlineStore

    store = _TornStore(SQLiteOnlineStore(tmp_path / "o.db"))
    try:
        with pytest.raises(AssertionError, match="in part"):
            check_online_store(store, only="writes_are_never_seen_in_part")
    finally:
        store.close()


class _LossyStore(_TornStore):
    """Reads, then writes, with nothing holding the keys in between: loses updates."""

    def write(self, items):  # type: ignore[no-untyped-def]
        self.inner.write(items)

    def write_values(self, namespace, keys, values):  # type: ignore[no-untyped-def]
        self.inner.write_values(namespace, keys, values)

    def update(self, keys, merge):  # type: ignore[no-untyped-def]
        values = self.inner.read(keys)
        time.sleep(0.001)                   # another update lands here
        new = merge(values)
        self.inner.write([(ns, k, v) for (ns, k), v in zip(keys, new, strict=True)
                          if v is not None])


def test_check_catches_a_store_that_loses_updates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from closedloop.backends.sqlite import SQLiteOnlineStore

    store = _LossyStore(SQLiteOnlineStore(tmp_path / "o.db"))
    try:
        with pytest.raises(AssertionError, match="lost"):
            check_online_store(store, only="update_merges_and_loses_nothing")
    finally:
        store.close()


def test_redis_down_names_the_url() -> None:
    store = RedisOnlineStore("redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailable, match=r"127\.0\.0\.1:1"):
        store.read([("v@1", "a")])


@pytest.mark.redis
def test_redis_reads_reconnect_after_the_server_drops_the_connection() -> None:
    import uuid

    import redis

    from tests.conftest import _redis_or_skip

    _redis_or_skip()
    store = RedisOnlineStore(prefix=f"cltest:{uuid.uuid4().hex}:")
    try:
        store.write([("v@1", "a", b"1")])
        assert store.read([("v@1", "a")]) == [b"1"]
        conn = store._reader()                  # this thread's read connection
        conn.send_command("CLIENT", "ID")
        client_id = conn.read_response()
        redis.Redis.from_url(store.url).client_kill_filter(_id=client_id)
        assert store.read([("v@1", "a")]) == [b"1"]   # one reconnect, no error
    finally:
        store.clear("v@1")
        store.close()
