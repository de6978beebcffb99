"""The server's batching: one model's queued requests served together (``Batcher``; see its
docstring), each request's timings stamped on its records."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from closedloop.errors import ClosedLoopError
from closedloop.serving.online import NotLogged, OnlineModel
from closedloop.serving.predictor import Served

if TYPE_CHECKING:
    from closedloop.server.app import ServingApp

log = logging.getLogger("closedloop.server")

#: The most instances served as one merged batch.
MERGE_INSTANCES = 256


@dataclass
class _Queued:
    model: OnlineModel
    rows: list[dict[str, Any]]
    done: asyncio.Future[tuple[Served, int, int]]
    arrived: float                         # time.perf_counter() when the request came in


class Batcher:
    """Serves one model's queued requests together — only those already waiting, never
    holding one back for others to come: the first request of a quiet moment is served
    alone at once; requests that arrive while a batch is being served (its online fetch in
    flight, its log write being committed) wait for it, then go as the next batch, up to
    ``MERGE_INSTANCES`` instances. A batch is one online fetch, one predict per version,
    one prediction-log append and one shadow job. Each request gets its own slice; routes
    are per instance, so merging changes no score, route or decision. If a merged batch
    fails on one request's input, each of its requests is served again alone, so the bad
    one gets its own error and the rest their predictions."""

    def __init__(self, app: ServingApp, name: str) -> None:
        self.app = app
        self.name = name
        self.queue: list[_Queued] = []
        self.running = False

    def submit(self, model: OnlineModel, rows: list[dict[str, Any]],
               arrived: float | None = None,
               ) -> asyncio.Future[tuple[Served, int, int]]:
        """Queue a checked request that came in at ``arrived`` (``time.perf_counter()``;
        default: now); its future gives the batch served and the request's slice of it."""
        done: asyncio.Future[tuple[Served, int, int]] = asyncio.get_running_loop().create_future()
        self.queue.append(_Queued(model, rows, done,
                                  time.perf_counter() if arrived is None else arrived))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return done

    async def _drain(self) -> None:
        try:
            while self.queue:
                head = self.queue[0].model         # a reload mid-queue: one version per batch
                cap = min(MERGE_INSTANCES, head.predictor.serving.max_instances)
                batch: list[_Queued] = []
                rest: list[_Queued] = []
                size = 0
                for item in self.queue:
                    if item.model is head and (not batch or size + len(item.rows) <= cap):
                        batch.append(item)
                        size += len(item.rows)
                    else:
                        rest.append(item)
                self.queue = rest
                await self._serve(head, batch)
        finally:
            self.running = False

    async def _serve(self, model: OnlineModel, batch: list[_Queued]) -> None:
        rows = batch[0].rows if len(batch) == 1 else [r for q in batch for r in q.rows]
        began = time.perf_counter()
        deadline = min(q.arrived for q in batch) + self.app.fetch_timeout_s
        try:
            served = await model.serve_async(
                rows, checked=True, deadline=deadline,
                before_log=lambda s: _timed(s, batch, began, time.perf_counter()))
        except NotLogged as exc:               # predicted, but the log refused: all 503
            for item in batch:
                _fail(item.done, exc)
            return
        except Exception as exc:
            if len(batch) > 1:
                for item in batch:              # find the bad one: each request alone
                    await self._serve(model, [item])
                return
            if not isinstance(exc, ClosedLoopError):    # a bug: a 500 for this one request
                log.exception("serving a request of %s failed", self.name)
            _fail(batch[0].done, exc)
            return
        at = 0
        for item in batch:
            if not item.done.done():            # a client that went away is skipped
                item.done.set_result((served, at, at + len(item.rows)))
            at += len(item.rows)


def _timed(served: Served, batch: list[_Queued], began: float, handed: float) -> None:
    """Each request's queue wait (arrival to its batch's start: reading the body, checking
    it, waiting behind the batch ahead) and its whole time on the server up to the log
    (arrival to the records handed to the prediction log), in its records' ``latency_ms``
    beside the batch's stages."""
    records = served.records
    at = 0
    for item in batch:
        timing = {**served.latency_ms, "queue": (began - item.arrived) * 1e3,
                  "request": (handed - item.arrived) * 1e3}
        for i in range(at, at + len(item.rows)):
            records[i] = replace(records[i], latency_ms=timing)
        at += len(item.rows)


def _fail(done: asyncio.Future[Any], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)



__all__ = ["MERGE_INSTANCES", "Batcher"]
