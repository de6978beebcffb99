"""Batch inference: score every entity (or a given set) from point-in-time features as of a
time, and write each score to the online store, served by lookup.

The production version scores its model's entity — the one entity its feature views share —
with the same features and the same conversion as training (the point-in-time training set
at the chosen instant, then the trainer's batch predict). Keys go in sorted order; the scores
are written a chunk at a time, each chunk in one atomic online-store write (namespace
``scores:<model>``; a record packs score, version, as-of and scored-at µs in 32 bytes), then
the job's checkpoint (version, instant, last key written) is written durably. A run that
stops — a crash, Ctrl-C — resumes after its last written chunk when started again for the
same version and instant; ``restart=True`` starts over.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.data.durable import write_durably
from closedloop.data.instants import format_instant, now_micros
from closedloop.errors import ServingError
from closedloop.features.service import FeatureService
from closedloop.registry.service import LoadedModel

Progress = Callable[[int, int, str], None]
_CHUNK = 100_000
_RECORD = struct.Struct("<dqqq")          # score, version, as_of µs, scored_at µs
_RECORD_DTYPE = np.dtype([("score", "<f8"), ("version", "<i8"), ("as_of", "<i8"),
                          ("scored_at", "<i8")])


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
                "version": self.version, "as_of": format_instant(self.as_of),
                "scored_at": format_instant(self.scored_at)}


def score_entities(model: str, loaded: LoadedModel, columns: list[str], key: str,
                   key_type: pa.DataType, keys: pa.Array | Sequence[Any],
                   features: FeatureService, at: int, checkpoint: Path,
                   restart: bool = False, progress: Progress | None = None,
                   chunk: int = _CHUNK) -> ScoreReport:
    """Score ``keys`` (see module); ``columns`` are the version's pinned feature columns.

    The features of every key still to do come from one point-in-time query and are scored
    at once (the trainer's own batch path); the writes then go a chunk at a time."""
    start = time.perf_counter()
    version = loaded.version.version
    try:
        given = pa.array(keys, key_type) if not isinstance(keys, pa.Array) else keys
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ServingError(f"the keys to score are not all {key_type}: {exc}",
                           fix=f"send {key_type} keys") from None
    ordered = _distinct_sorted(given)
    state = _read_checkpoint(checkpoint)
    todo = ordered
    if not restart and state is not None and state.get("version") == version and state.get(
            "as_of") == at and not state.get("finished") and state.get("last") is not None:
        todo = ordered.filter(pc.greater(ordered, pa.scalar(state["last"], key_type)))
    skipped = len(ordered) - len(todo)
    store = features.online_store
    if store is None:
        raise ServingError("batch scoring writes to the online store, and there is none",
                           fix="open the project with closedloop.Project")
    space = namespace(model)
    scored = 0
    if len(todo):
        rows = pa.table({key: todo, "__as_of": pa.array(np.full(len(todo), at, dtype=np.int64))
                         .cast(pa.timestamp("us", tz="UTC"))})
        table = features.training_set(rows, columns, timestamp="__as_of")
        names = dict(zip(columns, loaded.version.features, strict=True))
        table = table.rename_columns([names.get(c, c) for c in table.column_names])
        texts = pc.cast(todo, pa.string()).to_pylist()

        def write(first: int, scores: np.ndarray[Any, Any]) -> int:
            part = texts[first:first + len(scores)]
            store.write_values(space, part, records(scores, version, at, now_micros()))
            _write_checkpoint(checkpoint, {"version": version, "as_of": at,
                                           "last": todo[first + len(part) - 1].as_py(),
                                           "finished": False})
            return len(part)

        # One writer thread, in chunk order, so the checkpoint only ever moves past written
        # chunks; the next chunk is scored meanwhile (the store releases the GIL as it
        # writes, LightGBM as it scores).
        with ThreadPoolExecutor(1) as writer:
            pending: Future[int] | None = None
            for first in range(0, len(texts), chunk):
                scores = loaded.predict(table.slice(first, chunk))
                if pending is not None:
                    scored += pending.result()
                    if progress:
                        progress(skipped + scored, len(ordered),
                                 f"scored {skipped + scored:,} entities")
                pending = writer.submit(write, first, scores)
            if pending is not None:
                scored += pending.result()
                if progress:
                    progress(skipped + scored, len(ordered),
                             f"scored {skipped + scored:,} entities")
    _write_checkpoint(checkpoint, {"version": version, "as_of": at,
                                   "last": ordered[-1].as_py() if len(ordered) else None,
                                   "finished": True})
    return ScoreReport(model, version, at, scored, skipped, time.perf_counter() - start)


def records(scores: np.ndarray[Any, Any], version: int, as_of: int,
            scored_at: int) -> list[bytes]:
    """The stored record of each score (``_RECORD``'s layout), built in numpy.

    >>> r = records(np.array([0.25]), 3, 10, 11)[0]
    >>> _RECORD.unpack(r)
    (0.25, 3, 10, 11)
    """
    out = np.empty(len(scores), dtype=_RECORD_DTYPE)
    out["score"], out["version"], out["as_of"], out["scored_at"] = (
        scores, version, as_of, scored_at)
    blobs = out.view(np.dtype(("V", _RECORD.size))).tolist()
    return blobs  # type: ignore[return-value]  # a void array's items are bytes


def _distinct_sorted(keys: pa.Array) -> pa.Array:
    """The distinct non-null keys in order; keys already so (every key read from a source,
    say) are taken as they are."""
    keys = pc.drop_null(keys)
    if len(keys) < 2 or pc.all(pc.less(keys.slice(0, len(keys) - 1), keys.slice(1))).as_py():
        return keys
    distinct: pa.Array = pc.unique(keys).sort()
    return distinct


def lookup(features: FeatureService, model: str, key: str) -> StoredScore | None:
    """A batch score by entity key, or None."""
    store = features.online_store
    if store is None:
        return None
    data = store.read([(namespace(model), key)])[0]
    if data is None:
        return None
    score, version, as_of, scored_at = _RECORD.unpack(data)
    return StoredScore(model, key, score, version, as_of, scored_at)


def entity_keys(features: FeatureService, views: Sequence[Any], key: str,
                key_type: pa.DataType) -> pa.Array:
    """Every key of the entity that a view's source holds (the union over the views), in
    order."""
    parts = []
    for view in views:
        table = features.engine.read(view.source, [key])
        if table.num_rows:
            parts.append(pc.unique(pc.drop_null(pc.cast(table[key], key_type))))
    if not parts:
        return pa.array([], key_type)
    unique: pa.Array = pc.unique(pa.chunked_array(parts, key_type)).sort()
    return unique


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
        return state
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durably(path, json.dumps(state).encode())
