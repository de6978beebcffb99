"""The one place that serves: ``OnlineModel`` finishes every prediction it makes.

``Predictor.predict`` computes a batch's predictions and their log records; an
``OnlineModel`` is what serves them — the HTTP server, the stream scorer and the in-process
API (``project.serving.predict``) all call it, so every served prediction gets the same
finish:

1. **predict** (``closedloop.serving.predictor.Predictor``);
2. **log**: the records are appended to the prediction log and the call returns only once
   the log acknowledged them (``durable`` mode: on disk or in Redis) — a prediction that
   could not be logged raises, and is never returned;
3. **shadow**: the shadow version's scoring of the same vectors is queued for the project's
   one shadow worker (``ShadowQueue``), which logs its records after the call returned. The
   queue is bounded: when the shadow falls behind, its work is dropped and counted, never
   queued without end.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from closedloop.backends.base import PredictionLog
from closedloop.errors import ClosedLoopError, ServingError
from closedloop.serving.predictor import Predictor, Served
from closedloop.serving.records import ShadowRecord

log = logging.getLogger("closedloop.serving")

#: A shadow job: what ``Served.after`` holds — it scores, and returns the records to log.
ShadowJob = Callable[[], list[ShadowRecord]]


class NotLogged(ServingError):
    """The prediction log refused a batch's records: its predictions are not served (the
    server answers their requests 503)."""


class ShadowQueue:
    """One worker thread scoring shadow versions after their responses (see module).
    ``on_drop(model, predictions)`` hears of dropped work (the server counts it)."""

    def __init__(self, log: PredictionLog, *, size: int = 1024,
                 on_drop: Callable[[str, int], None] | None = None) -> None:
        self.log = log
        self.on_drop = on_drop
        self.dropped = 0
        self._queue: queue.Queue[tuple[str, ShadowJob, int] | None] = queue.Queue(size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, model: str, job: ShadowJob, predictions: int) -> bool:
        """Queue a shadow job; False (and counted) when the queue is full."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="closedloop-shadow",
                                                daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((model, job, predictions))
        except queue.Full:
            self._drop(model, predictions)
            return False
        return True

    def _drop(self, model: str, predictions: int) -> None:
        self.dropped += predictions
        if self.on_drop is not None:
            self.on_drop(model, predictions)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                model, job, _ = item
                try:
                    self.log.append(model, job())
                except Exception:                 # the shadow never harms production
                    log.exception("shadow scoring of %s failed", model)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        """Wait until every queued job has run (tests; ``serve`` callers never wait)."""
        self._queue.join()

    def close(self) -> None:
        """Drop the work not begun (shutting down is not worth a production delay), let the
        job in progress finish, stop the worker."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if item is not None:
                self._drop(item[0], item[2])
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=10)


class OnlineModel:
    """A model as served: its predictor, the prediction log and the shadow queue (see
    module). ``serve`` and ``serve_async`` return only logged predictions."""

    def __init__(self, predictor: Predictor, log: PredictionLog, shadow: ShadowQueue) -> None:
        self.predictor = predictor
        self.log = log
        self.shadow = shadow

    @property
    def model(self) -> str:
        return self.predictor.model

    @property
    def aliases(self) -> dict[str, int]:
        return self.predictor.aliases

    def check(self, instances: Any) -> list[dict[str, Any]]:
        """The instances of a request, or a ``RequestError`` naming the bad field."""
        return self.predictor.check(instances)

    def serve(self, instances: Any, *, at: datetime | None = None) -> Served:
        """Predict (as of ``at``, default now on the project's clock), log — returning once
        the log acknowledged — and queue the shadow."""
        served = self.predictor.predict(instances, at=at)
        try:
            self.log.append(self.model, served.records).result()
        except ClosedLoopError as exc:
            raise NotLogged(exc.message, fix=exc.fix) from exc
        self._after(served)
        return served

    async def serve_async(self, instances: Any, *, checked: bool = False,
                          deadline: float | None = None,
                          before_log: Callable[[Served], None] | None = None) -> Served:
        """``serve`` on the running event loop (the server's): the online fetch and the
        log's acknowledgement are awaited, so other requests run meanwhile. ``deadline``:
        see ``Predictor.predict_async``; ``before_log`` sees the batch before its records are
        logged (the server adds its timings)."""
        served = await self.predictor.predict_async(instances, checked=checked,
                                                    deadline=deadline)
        if before_log is not None:
            before_log(served)
        try:
            await asyncio.wrap_future(self.log.append(self.model, served.records))
        except ClosedLoopError as exc:
            raise NotLogged(exc.message, fix=exc.fix) from exc
        self._after(served)
        return served

    def _after(self, served: Served) -> None:
        if served.after is not None:
            self.shadow.put(self.model, served.after, len(served.predictions))

