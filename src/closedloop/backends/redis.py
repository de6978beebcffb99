"""The scale-out online store: Redis strings under a key prefix; MGET reads, MULTI writes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis

from closedloop.backends.base import OnlineItem
from closedloop.errors import BackendError, BackendUnavailable


class RedisOnlineStore:
    """Online store in Redis. Keys are ``{prefix}{namespace}|{key}``. ``read_timeout``
    (seconds) bounds a read — connecting included — on the serving path; writes keep the
    client's own timeouts."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "cl:",
                 read_timeout: float | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.read_timeout = read_timeout
        self._client: redis.Redis | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._readers: list[Any] = []

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=2,
                                                socket_timeout=5)
        return self._client

    def _key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}{namespace}|{key}"

    def _down(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}",
                                  fix="start Redis or fix the online store url")

    def write(self, items: Sequence[OnlineItem]) -> None:
        if not items:
            return
        final = {self._key(ns, key): value for ns, key, value in items}   # the last item wins
        sets = {k: v for k, v in final.items() if v is not None}
        dels = [k for k, v in final.items() if v is None]
        try:
            pipe = self._redis().pipeline(transaction=True)    # MULTI … EXEC: all or none
            if dels:
                pipe.delete(*dels)
            if sets:
                pipe.mset(sets)                  # one command, one reply, however many keys
            pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._down(exc) from exc
        except redis.RedisError as exc:
            raise BackendError(f"Redis at {self.url} refused a write: {exc}",
                               fix="check the server; MULTI applied none of it") from exc

    def read(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        if not keys:
            return []
        prefix = self.prefix
        names = [f"{prefix}{ns}|{k}" for ns, k in keys]
        for attempt in range(2):            # one reconnect, as redis-py's client would
            conn = self._reader()
            try:
                conn.send_command("MGET", *names)
                values = conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                conn.disconnect()
                if attempt or isinstance(exc, redis.TimeoutError):   # a timeout: no retry
                    raise self._down(exc) from exc
                continue
            except redis.ResponseError as exc:          # the reply was read: conn is fine
                raise BackendError(f"Redis at {self.url} refused a read: {exc}",
                                   fix=f"keys under {prefix!r} must be closedloop's") from exc
            except BaseException:
                conn.disconnect()          # a reply may be left unread: never reuse the conn
                raise
            return list(values)
        raise AssertionError("unreachable")

    def _reader(self) -> Any:  # redis-py leaves its Connection methods untyped
        """This thread's own connection for reads: the serving hot path sends MGET on it
        directly (one round trip, none of the client's per-command bookkeeping)."""
        conn: Any = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._redis().connection_pool.make_connection()
            if self.read_timeout is not None:
                conn.socket_timeout = conn.socket_connect_timeout = self.read_timeout
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def update(self, keys: Sequence[tuple[str, str]],
               merge: Callable[[list[bytes | None]], list[bytes | None]]) -> None:
        names = [self._key(ns, k) for ns, k in keys]
        try:
            with self._redis().pipeline(transaction=True) as pipe:
                while True:                      # optimistic: retry if a key changed under us
                    try:
                        pipe.watch(*names)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                        current = pipe.mget(names) if names else []
                        new = merge(list(current))  # type: ignore[arg-type]
                        pipe.multi()
                        sets = {name: value for name, value in zip(names, new, strict=True)
                                if value is not None}
                        if sets:
                            pipe.mset(sets)
                        pipe.execute()
                        return
                    except redis.WatchError:
                        continue
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._down(exc) from exc

    def clear(self, namespace: str) -> None:
        try:
            client = self._redis()
            batch: list[str] = []
            for key in client.scan_iter(match=f"{self.prefix}{namespace}|*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._down(exc) from exc

    def close(self) -> None:
        with self._lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.disconnect()
        self._local = threading.local()
        if self._client is not None:
            self._client.close()
            self._client = None
