"""The `serve` workload's floor: a minimal hand-written ASGI app doing the same work with no
framework — parse the JSON body, one Redis GET of the entity's packed feature vector, LightGBM
predict on that numpy row (one thread), respond — on the same server stack (uvicorn, uvloop,
httptools). No routing, no log, no metrics: the cost of the work itself.

Configured by environment: ``FLOOR_MODEL`` (a LightGBM model file), ``FLOOR_REDIS`` (URL),
``FLOOR_PREFIX`` (key prefix of the packed vectors).
"""

from __future__ import annotations

import gc
import os
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson
import redis

_BOOSTER = lgb.Booster(model_file=os.environ["FLOOR_MODEL"])
_REDIS = redis.Redis.from_url(os.environ["FLOOR_REDIS"])
_PREFIX = os.environ["FLOOR_PREFIX"]
_WIDTH = _BOOSTER.num_feature()
_HEADERS = [(b"content-type", b"application/json")]
gc.freeze()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    instance = orjson.loads(body)["instances"][0]
    packed = _REDIS.get(_PREFIX + instance["user_id"])
    row = (np.frombuffer(packed, dtype=np.float64) if packed is not None
           else np.full(_WIDTH, np.nan)).reshape(1, -1)
    score = float(_BOOSTER.predict(row, num_threads=1)[0])
    out = orjson.dumps({"predictions": [{"score": score}]})
    await send({"type": "http.response.start", "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})
