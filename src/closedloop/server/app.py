"""The HTTP server: a plain ASGI application (no framework on the hot path), run by uvicorn.

Routes:

* ``POST /v1/models/{name}:predict`` — ``{"instances": [{...}, ...]}`` → ``{"model",
  "predictions": [{"id", "score", "decision", "version", "route", "fallback",
  "fallback_reason", "missing"}]}``. The
  response is sent once every prediction is in the prediction log (durable mode);
* ``GET /v1/models/{name}/scores/{key}`` — the entity's batch score (``closedloop score``):
  ``{"model", "key", "score", "version", "as_of", "scored_at"}``, or 404;
* ``GET /v1/models`` — the served models, their versions by alias and the running ladder's
  split (candidate, step, share) as this worker applies it;
* ``GET /healthz`` (alive), ``GET /readyz`` (every model loaded and the prediction log
  writable: 503 while its last write failed), ``GET /metrics``
  (Prometheus), ``GET /openapi.json`` (the schema, from the models' declared fields).

A bad request is a 4xx whose body names the field — ``{"error", "code", "field", "fix"}`` —
never a 500. More than ``max_inflight`` requests in flight on a worker are shed with a 503
and ``Retry-After``. The requests already queued for a model are served as one batch
(``Batcher``), never held back for more to come. Aliases are polled every ``reload_s``: a
moved alias loads the new version off the event loop and swaps it in; requests in flight
finish on the version they started on, so none is dropped. A running promotion ladder's
split of the traffic is polled with them, and swapped in place when only it moved; the
ladder's controller runs in a thread of the server when ``[ladder] controller = "serve"``
(its lease keeps it to one worker at a time). Each model is served through its
``OnlineModel`` (``closedloop.serving.online``), as the stream scorer and the in-process API
are: predicted, logged before the response, the shadow queued for the project's shadow worker
(bounded: when the shadow falls behind, its work is dropped and counted here).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from closedloop.errors import ClosedLoopError, Overloaded, RequestError
from closedloop.server.batching import Batcher
from closedloop.server.metrics import ServerMetrics
from closedloop.server.monitoring import RequestMonitor
from closedloop.server.openapi import openapi
from closedloop.serving.online import NotLogged, OnlineModel

if TYPE_CHECKING:
    from closedloop.project import Project

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_PREFIX = "/v1/models/"
log = logging.getLogger("closedloop.server")


class ServingApp:
    """The ASGI application over one project (see module). ``models``: the models to serve
    (default: every model with a production version)."""

    def __init__(self, project: Project, models: list[str] | None = None) -> None:
        self.project = project
        self.models = models
        settings = project.settings.serving
        self.max_inflight = settings.max_inflight
        self.max_body = settings.max_body_bytes
        self.fetch_timeout_s = settings.fetch_timeout_ms / 1000
        self.reload_s = settings.reload_s
        self.metrics = ServerMetrics()
        #: The served models by name (swapped whole when an alias moves).
        self.online: dict[str, OnlineModel] = {}
        self.inflight = 0
        self.ready = False
        self._reloader: asyncio.Task[None] | None = None
        self._made: dict[str, int] = {}            # predictions since the last usage record
        self._batchers: dict[str, Batcher] = {}
        self._cpu = time.process_time()
        self._stopping = threading.Event()
        self._controller: threading.Thread | None = None
        self.monitoring = RequestMonitor(project, self.metrics)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load the predictors (at start-up, before traffic)."""
        names = self.models
        if names is None:
            names = [m for m in self.project.serving.models
                     if "production" in self.project.registry.aliases(m)]
        for name in names:
            self.online[name] = self.project.serving.online(name)
        self.project.serving.shadow.on_drop = self._dropped
        ladder = self.project.settings.ladder
        if self.project.serving.ladders and ladder.controller == "serve":
            self._controller = threading.Thread(
                target=self.project.ladder.run, name="closedloop-ladder", daemon=True,
                kwargs={"every_s": ladder.every_s, "stop": self._stopping.is_set,
                        "say": lambda t: log.warning("ladder: %s", t.describe())})
            self._controller.start()
        self.monitoring.start(list(self.online), self._stopping.is_set)
        self.ready = True
        gc.collect()
        gc.freeze()        # start-up objects leave the collector's generations: a flatter tail

    def _dropped(self, model: str, predictions: int) -> None:
        self.metrics.shadow_dropped.labels(model).inc(predictions)

    def stop(self) -> None:
        """Drop the shadow work not begun (shutting down is not worth a production delay;
        counted), let the shadow in progress finish, log the last usage, close the
        project."""
        self._stopping.set()
        if self._controller is not None:
            self._controller.join(timeout=30)
        self.monitoring.join()
        self.project.serving.shadow.close()
        self.record_usage()
        self.project.close()

    def record_usage(self) -> None:
        """Log the process CPU spent since the last call, split across the models by their
        predictions (``closedloop cost`` measures from it)."""
        now = time.process_time()
        spent, self._cpu = now - self._cpu, now
        made, self._made = self._made, {}
        total = sum(made.values())
        for model, count in made.items():
            self.project.serving.usage(model, "online", spent * count / total, count)

    async def _reload_loop(self) -> None:
        serving = self.project.serving
        ticks = 0
        published = time.monotonic()
        every = self.project.settings.monitoring.publish_s
        while True:
            await asyncio.sleep(self.reload_s)
            ticks += 1
            if ticks * self.reload_s >= _USAGE_EVERY_S:
                ticks = 0
                await asyncio.to_thread(self.record_usage)
            if time.monotonic() - published >= every:
                published = time.monotonic()
                await asyncio.to_thread(self.monitoring.publish)
            for name, current in list(self.online.items()):
                try:
                    aliases, split = await asyncio.to_thread(serving.routing, name)
                    if aliases != current.aliases:
                        fresh = await asyncio.to_thread(serving.online, name)
                        self.online[name] = fresh       # its split and fallback: as of now
                        log.warning("model %s now serves %s", name, fresh.aliases)
                        continue
                    if split != current.predictor.split:    # the ladder moved: swap its split
                        current.predictor.split = split
                        log.warning("model %s: ladder %s", name,
                                    "ended" if split is None else
                                    f"{split.step}, {split.share:.0%} on v{split.candidate}")
                    forced = await asyncio.to_thread(serving.forced, name)
                    if forced != current.predictor.forced:   # a fallback playbook, or released
                        current.predictor.forced = forced
                        log.warning("model %s: %s", name, f"fallback forced: {forced}"
                                    if forced else "fallback released")
                except ClosedLoopError as exc:    # keep serving what is loaded
                    log.warning("reloading %s failed: %s", name, exc)

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        if path.startswith(_PREFIX) and path.endswith(":predict"):
            if method != "POST":
                await _send(send, 405, {"error": f"{method} {path}: use POST",
                                        "code": "CL-701"}, [(b"allow", b"POST")])
                return
            await self._predict(path[len(_PREFIX):-len(":predict")], receive, send)
            return
        if method != "GET":
            if path in _GETS:
                await _send(send, 405, {"error": f"{method} {path}: use GET",
                                        "code": "CL-701"}, [(b"allow", b"GET")])
            else:
                await _send(send, 404, {"error": f"no route {method} {path}",
                                        "code": "CL-701"})
            return
        if path.startswith(_PREFIX) and "/scores/" in path:
            name, _, key = path[len(_PREFIX):].partition("/scores/")
            found = (self.project.serving.stored_score(name, key)
                     if name in self.online and key else None)
            if found is None:
                await _send(send, 404, {"error": f"no batch score of {name!r} for {key!r}",
                                        "code": "CL-501", "field": "key",
                                        "fix": f"run closedloop score {name}"})
            else:
                await _send(send, 200, found.to_dict())
            return
        if path == "/healthz":
            await _send(send, 200, {"status": "ok"})
        elif path == "/readyz":          # loaded, and the prediction log can be written
            logged = self.project.prediction_log.healthy
            ready = self.ready and logged
            await _send(send, 200 if ready else 503,
                        {"ready": ready, "log": "ok" if logged else "failing",
                         "models": {n: m.aliases for n, m in self.online.items()}})
        elif path == "/metrics":
            self.monitoring.export()
            body, ctype = self.metrics.render()
            await _raw(send, 200, body, [(b"content-type", ctype.encode())])
        elif path == "/openapi.json":
            await _send(send, 200, openapi({n: m.predictor for n, m in self.online.items()}))
        elif path == "/v1/models":
            await _send(send, 200, {"models": [
                {"name": n, "versions": m.aliases, "ladder": _split(m)}
                for n, m in self.online.items()]})
        else:
            await _send(send, 404, {"error": f"no route GET {path}", "code": "CL-701"})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self._reloader = asyncio.get_running_loop().create_task(self._reload_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._reloader is not None:
                    self._reloader.cancel()
                await self.project.online_store.aclose()
                await asyncio.to_thread(self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _predict(self, name: str, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        if self.inflight >= self.max_inflight:
            self.metrics.shed.inc()
            shed = Overloaded("the server is at capacity", fix="retry after a moment")
            await _send(send, status_of(shed), _error(shed), [(b"retry-after", b"1")])
            return
        self.inflight += 1
        try:
            await self._predict_one(name, receive, send, start)
        finally:
            self.inflight -= 1

    async def _predict_one(self, name: str, receive: Receive, send: Send,
                           start: float) -> None:
        try:
            body = await _body(receive, self.max_body)
            model = self.online.get(name)
            if model is None:
                raise UnknownModel(f"there is no served model {name!r}", field="name",
                                   fix=f"the models are {sorted(self.online)}")
            rows = model.check(_parse(body)["instances"])
            served, first, last = await self._batcher(name).submit(model, rows, start)
        except ClosedLoopError as exc:
            status = status_of(exc)
            if status < 500:
                self.metrics.errors.labels(str(status)).inc()
            await _send(send, status, _error(exc))
            return
        mine = served.predictions[first:last]
        await _raw(send, 200, orjson.dumps({"model": name, "predictions": [
            p.to_dict() for p in mine]}), _JSON)
        m = self.metrics
        stages, request = m.of(name)
        for stage, ms in served.records[first].latency_ms.items():
            if stage != "request":
                stages[stage].observe(ms / 1e3)
        request.observe(time.perf_counter() - start)
        self.monitoring.observe(name, served.records[first:last])   # constraints, drift
        for p in mine:
            m.predictions.labels(name, p.route, p.decision).inc()
            if p.fallback:
                m.fallbacks.labels(name).inc()
            if p.missing:
                for feature, why in p.missing.items():
                    m.missing.labels(name, feature, why).inc()
        self._made[name] = self._made.get(name, 0) + len(mine)

    def _batcher(self, name: str) -> Batcher:
        found = self._batchers.get(name)
        if found is None:
            found = self._batchers[name] = Batcher(self, name)
        return found

def _split(model: OnlineModel) -> dict[str, Any] | None:
    """The running ladder's hold on a served model's traffic, as this worker applies it."""
    split = model.predictor.split
    if split is None:
        return None
    return {"candidate": split.candidate, "step": split.step, "share": split.share}


_USAGE_EVERY_S = 5.0                  # how often the server logs its CPU use
_GETS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/models"}


def _parse(body: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"the body is not valid JSON: {exc}", field="body",
                           fix='send {"instances": [{...}]} (NaN and Infinity are not JSON)'
                           ) from None
    if type(request) is not dict:
        raise RequestError("the body must be a JSON object", field="body",
                           fix='send {"instances": [{...}]}')
    extra = sorted(set(request) - {"instances"})
    if extra:
        raise RequestError(f"the body has unknown field(s) {extra}", field=extra[0],
                           fix='send only "instances"')
    if "instances" not in request:
        raise RequestError("the body has no 'instances'", field="instances",
                           fix='send {"instances": [{...}]}')
    return request


async def _body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("the client went away", field="body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the body is larger than {limit} bytes", field="body",
                               fix="send fewer instances per request")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class UnknownModel(RequestError):
    """A request for a model this server does not serve."""


class BodyTooLarge(RequestError):
    """A request body over ``[serving] max_body_bytes``."""


#: The one table of HTTP statuses: an error's status is its nearest class here.
STATUS: dict[type[ClosedLoopError], int] = {
    UnknownModel: 404,
    BodyTooLarge: 413,
    RequestError: 400,           # a bad request, naming its field
    NotLogged: 503,              # a prediction that is not logged is not served
    Overloaded: 503,
    ClosedLoopError: 422,        # well-formed, but it cannot be served (e.g. a bad key type)
}


def status_of(exc: ClosedLoopError) -> int:
    """The HTTP status of an error (``STATUS``)."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def _error(exc: ClosedLoopError) -> dict[str, Any]:
    return {"error": exc.message, "code": exc.code, "field": getattr(exc, "field", None),
            "fix": exc.fix}


async def _send(send: Send, status: int, payload: Any,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _raw(send, status, orjson.dumps(payload), _JSON + (headers or []))


async def _raw(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app() -> ServingApp:
    """The app of the project named by ``CLOSEDLOOP_PROJECT`` (uvicorn's factory, one per
    worker process), serving ``CLOSEDLOOP_MODELS`` (comma-separated) or every model, on the
    clock ``CLOSEDLOOP_CLOCK`` (``closedloop.data.clock.clock_text``) or the project's."""
    from closedloop.data.clock import clock_from_text
    from closedloop.project import Project

    root = Path(os.environ.get("CLOSEDLOOP_PROJECT", "."))
    models = [m for m in os.environ.get("CLOSEDLOOP_MODELS", "").split(",") if m] or None
    clock = os.environ.get("CLOSEDLOOP_CLOCK")      # serve --at / --replay
    return ServingApp(Project(root, clock=None if clock is None else clock_from_text(clock)),
                      models)
