"""The scale-out online store: Redis strings under a key prefix; MGET reads, MULTI writes."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

import hiredis
import redis

from closedloop.backends.base import OnlineItem, check_values
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
        self._async: dict[asyncio.AbstractEventLoop, _AsyncReader] = {}

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
        self._apply({k: v for k, v in final.items() if v is not None},
                    [k for k, v in final.items() if v is None])

    def write_values(self, namespace: str, keys: Sequence[str],
                     values: Sequence[bytes]) -> None:
        check_values(keys, values)
        if keys:
            names = map(f"{self.prefix}{namespace}|".__add__, keys)
            self._apply(dict(zip(names, values, strict=True)), [])

    def _apply(self, sets: dict[str, bytes], dels: list[str]) -> None:
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

    async def read_async(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """MGET over this event loop's own pipelined connection (``_AsyncReader``): the loop
        serves other requests while the reply is on its way. A reply slower than
        ``read_timeout`` closes the connection (its replies would be out of order) and is
        ``BackendUnavailable``."""
        if not keys:
            return []
        prefix = self.prefix
        names = [f"{prefix}{ns}|{k}" for ns, k in keys]
        loop = asyncio.get_running_loop()
        reader = self._async.get(loop)
        if reader is None or reader.closed:
            reader = self._async[loop] = _AsyncReader(self.url, self.read_timeout)
        try:
            values = await reader.mget(names)
        except (TimeoutError, OSError, ConnectionError) as exc:
            reader.close()
            raise self._down(exc if not isinstance(exc, asyncio.TimeoutError) else TimeoutError(
                f"no reply within {reader.timeout * 1000:.0f} ms")) from exc
        if isinstance(values, hiredis.ReplyError):
            raise BackendError(f"Redis at {self.url} refused a read: {values}",
                               fix=f"keys under {prefix!r} must be closedloop's")
        return list(values)

    async def aclose(self) -> None:
        reader = self._async.pop(asyncio.get_running_loop(), None)
        if reader is not None:
            await reader.aclose()

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
        # Event-loop connections close on their loop (``aclose``); one whose loop is gone has
        # nothing left to run its close on.
        self._async.clear()
        self._local = threading.local()
        if self._client is not None:
            self._client.close()
            self._client = None


class _AsyncReader(asyncio.Protocol):
    """One asyncio connection to Redis carrying pipelined MGETs: requests go out as they
    come, replies resolve the waiting futures in order (RESP answers in order)."""

    def __init__(self, url: str, timeout: float | None) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = int((parsed.path or "/0").strip("/") or 0)
        self.password = parsed.password
        self.timeout = timeout if timeout is not None else 5.0
        self.closed = False
        self._transport: Any = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._parser = hiredis.Reader()
        self._lost: asyncio.Future[None] | None = None

    async def mget(self, names: list[str]) -> Any:
        if self._transport is None:
            await self._connect()
        return await self._call(_command("MGET", *names))

    async def _connect(self) -> None:
        if self._connecting is None:
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            try:
                await asyncio.wait_for(loop.create_connection(lambda: self, self.host,
                                                              self.port), self.timeout)
                setup = []
                if self.password:
                    setup.append(self._call(_command("AUTH", self.password)))
                if self.db:
                    setup.append(self._call(_command("SELECT", str(self.db))))
                for reply in setup:
                    answer = await reply
                    if isinstance(answer, hiredis.ReplyError):
                        raise ConnectionError(str(answer))
                self._connecting.set_result(None)
            except BaseException as exc:
                self._connecting.set_exception(exc)
                self._connecting.exception()          # retrieved: no "never retrieved"
                self.close()
                raise
        await self._connecting

    def _call(self, data: bytes) -> Any:
        assert self._transport is not None
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        self._transport.write(data)
        return asyncio.wait_for(done, self.timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances; both write alike.
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        while True:
            reply = self._parser.gets()
            if reply is False:
                return
            if self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"the connection closed: {exc}"))

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def aclose(self) -> None:
        """Close and wait until the connection is gone."""
        if self._transport is None:
            return
        lost = asyncio.get_running_loop().create_future()
        self._lost = lost
        self.close()
        await asyncio.wait_for(lost, self.timeout)


def _command(*parts: str) -> bytes:
    """A command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
