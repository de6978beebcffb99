"""The registry of workloads: name -> module with SYSTEMS, SETUP, ANCHOR, OUTPUTS, DATA."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from benchmarks import (
    ab,
    batch_score,
    drift,
    ingest,
    ladder,
    online,
    pit,
    push,
    serve,
    stream,
    train,
    windows,
)

WORKLOADS: dict[str, ModuleType | Any] = {
    "pit": pit, "windows": windows, "online": online.online,
    "online-batch": online.online_batch, "materialize": online.materialize,
    "push": push.push, "ingest": ingest.ingest, "train": train.train, "serve": serve.serve,
    "batch-score": batch_score.batch_score, "stream": stream.stream, "ladder": ladder.ladder,
    "ab": ab.ab, "drift": drift.drift,
}
