"""Batch inference: score every entity (or a given set) from point-in-time features as of a
time, and write each score to the online store, served by lookup.

The production version scores its model's entity — the one entity its feature views share —
with the same features and the same conversion as training (the point-in-time training set
at the chosen instant, then the trainer). Keys go in sorted order, a chunk at a time; each
chunk's scores are written to the online store in one atomic write (namespace
``scores:<model>``, a record ``[score, version, as_of_us, scored_at_us]``), then the job's
checkpoint (version, instant, last key done) is written durably. A run that stops — a crash,
Ctrl-C — resumes after its last written chunk when started again for the same version and
instant; ``restart=True`` starts over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.durable import write_durably
from closedloop.data.instants import now_micros
from closedloop.errors import ServingError
from closedloop.features.online import decode, encode
from closedloop.features.service import FeatureService
from closedloop.registry.service import LoadedModel

Progress = Callable[[int, int, str], None]
_CHUNK = 100_000


def namespace(model: str) -> str:
    return f"scores:{model}"


@dataclass(frozen=True)
class ScoreReport:
    """What a batch-scoring run did: entities scored now, those a resumed run skipped, the
    version and instant, and the wall seconds."""

    model: str
    version: int
    as_of: int
    scored: int
    skipped: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class StoredScore:
    """A batch score as served by lookup."""

    model: str
    key: str
    score: float
    version: int
    as_of: int
    scored_at: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "key": self.key, "score": self.score,
                "version": self.version, "as_of": self.as_of, "scored_at": self.scored_at}


def score_entities(model: str, loaded: LoadedModel, columns: list[str], key: str,
                   key_type: pa.DataType, keys: Sequence[Any], features: FeatureService,
                   at: int, checkpoint: Path,
                   restart: bool = False, progress: Progress | None = None,
                   chunk: int = _CHUNK) -> ScoreReport:
    """Score ``keys`` (see module); ``columns`` are the version's pinned feature columns."""
    start = time.perf_counter()
    version = loaded.version.version
    ordered = sorted(set(keys))
    if any(type(k) is not type(ordered[0]) for k in ordered):
        raise ServingError("the keys to score mix types", fix="send keys of one type")
    done_through = None
    state = _read_checkpoint(checkpoint)
    if not restart and state is not None and state.get("version") == version and state.get(
            "as_of") == at and not state.get("finished"):
        done_through = state.get("last")
    todo = ordered if done_through is None else [k for k in ordered if k > done_through]
    skipped = len(ordered) - len(todo)
    store = features.online_store
    if store is None:
        raise ServingError("batch scoring writes to the online store, and there is none",
                           fix="open the project with closedloop.Project")
    scored = 0
    for first in range(0, len(todo), chunk):
        part = todo[first:first + chunk]
        rows = pa.table({key: pa.array(part, key_type),
                         "__as_of": pa.array(np.full(len(part), at, dtype=np.int64)).cast(
                             pa.timestamp("us", tz="UTC"))})
        table = features.training_set(rows, columns, timestamp="__as_of")
        renamed = table.rename_columns([dict(zip(columns, loaded.version.features,
                                                 strict=True)).get(c, c)
                                        for c in table.column_names])
        scores = loaded.predict(renamed)
        now = now_micros()
        store.write([(namespace(model), str(k), encode([float(s), version, at, now]))
                     for k, s in zip(part, scores.tolist(), strict=True)])
        scored += len(part)
        _write_checkpoint(checkpoint, {"version": version, "as_of": at, "last": part[-1],
                                       "finished": False})
        if progress:
            progress(skipped + scored, len(ordered), f"scored {skipped + scored:,} entities")
    _write_checkpoint(checkpoint, {"version": version, "as_of": at,
                                   "last": ordered[-1] if ordered else None, "finished": True})
    return ScoreReport(model, version, at, scored, skipped, time.perf_counter() - start)


def lookup(features: FeatureService, model: str, key: str) -> StoredScore | None:
    """A batch score by entity key, or None."""
    store = features.online_store
    if store is None:
        return None
    data = store.read([(namespace(model), key)])[0]
    if data is None:
        return None
    score, version, as_of, scored_at = decode(data)
    return StoredScore(model, key, float(score), int(version), int(as_of), int(scored_at))


def entity_keys(features: FeatureService, views: Sequence[Any], key: str,
                key_type: pa.DataType) -> list[Any]:
    """Every key of the entity that a view's source holds (the union over the views)."""
    found: set[Any] = set()
    for view in views:
        table = features.engine.read(view.source, [key])
        if table.num_rows:
            found.update(pc.unique(pc.drop_null(pc.cast(table[key], key_type))).to_pylist())
    return sorted(found)


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(state).encode())
