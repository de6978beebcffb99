"""The scale-out event stream: Redis Streams with consumer groups (XADD, XREADGROUP, XACK)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from closedloop.errors import BackendError, BackendUnavailable


class RedisEventStream:
    """``EventStream`` over Redis Streams; stream names are prefixed with ``prefix``."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "cl:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: redis.Redis | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_connect_timeout=2,
                                                socket_timeout=10)
        return self._client

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn(self._redis())
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}",
                                     fix="start Redis or fix the stream url") from exc
        except redis.ResponseError as exc:
            raise BackendError(f"Redis at {self.url} refused {what}: {exc}",
                               fix="check the stream's name and group") from exc

    def publish(self, stream: str, records: Sequence[Mapping[str, bytes]]) -> list[str]:
        name = self.prefix + stream

        def run(client: redis.Redis) -> list[str]:
            pipe = client.pipeline(transaction=False)
            for record in records:
                pipe.xadd(name, dict(record))  # type: ignore[arg-type]  # bytes values
            return [i.decode() for i in pipe.execute()]
        out: list[str] = self._call("XADD", run)
        return out

    def ensure_group(self, stream: str, group: str) -> None:
        def run(client: redis.Redis) -> None:
            try:
                client.xgroup_create(self.prefix + stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._call("XGROUP CREATE", run)

    def read_group(self, stream: str, group: str, consumer: str, count: int,
                   block_ms: int) -> list[tuple[str, dict[str, bytes]]]:
        # Redis reads BLOCK 0 as "forever"; the protocol's 0 is "do not wait".
        def run(client: redis.Redis) -> list[tuple[str, dict[str, bytes]]]:
            reply: Any = client.xreadgroup(group, consumer, {self.prefix + stream: ">"},
                                           count=count,
                                           block=block_ms if block_ms > 0 else None)
            out = []
            for _, entries in reply or []:
                for rid, fields in entries:
                    out.append((rid.decode(), {k.decode(): v for k, v in fields.items()}))
            return out
        found: list[tuple[str, dict[str, bytes]]] = self._call("XREADGROUP", run)
        return found

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None:
        if ids:
            self._call("XACK", lambda c: c.xack(self.prefix + stream, group, *ids))

    def claim(self, stream: str, group: str, consumer: str, min_idle_s: float,
              count: int = 1000) -> list[tuple[str, dict[str, bytes]]]:
        def run(client: redis.Redis) -> list[tuple[str, dict[str, bytes]]]:
            reply: Any = client.xautoclaim(self.prefix + stream, group, consumer,
                                           min_idle_time=int(min_idle_s * 1000),
                                           start_id="0-0", count=count)
            return [(rid.decode(), {k.decode(): v for k, v in fields.items()})
                    for rid, fields in reply[1] if fields]
        found: list[tuple[str, dict[str, bytes]]] = self._call("XAUTOCLAIM", run)
        return found

    def read_all(self, stream: str) -> list[tuple[str, dict[str, bytes]]]:
        name = self.prefix + stream

        def run(client: redis.Redis) -> list[tuple[str, dict[str, bytes]]]:
            out: list[tuple[str, dict[str, bytes]]] = []
            start = "-"
            while True:                          # in pages, so a long stream stays cheap
                page: Any = client.xrange(name, min=start, max="+", count=10_000)
                for rid, fields in page:
                    out.append((rid.decode(), {k.decode(): v for k, v in fields.items()}))
                if len(page) < 10_000:
                    return out
                start = "(" + page[-1][0].decode()
        found: list[tuple[str, dict[str, bytes]]] = self._call("XRANGE", run)
        return found

    def delete(self, stream: str) -> None:
        """Drop a stream (tests and benchmarks clean up what they made)."""
        self._call("DEL", lambda c: c.delete(self.prefix + stream))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
