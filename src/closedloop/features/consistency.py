"""Online/offline consistency, measured: served vectors are logged (sampled, with their time),
then replayed through the offline path, feature by feature.

The log is Parquet in the project's offline store (``.closedloop/feature_log/``): one row per
served vector with its time, the requested features, the entity keys and request values, and
the values served (JSON, so any feature list fits one schema).
"""

from __future__ import annotations

import json
import math
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from closedloop.errors import DataError

_SCHEMA = pa.schema([("at", pa.int64()), ("features", pa.string()), ("row", pa.string()),
                     ("values", pa.string())])


class FeatureLog:
    """Samples served vectors into Parquet files under ``folder``; ``flush`` writes a part.

    Vectors are buffered and written as one part when ``flush_every`` are held or ``flush_s``
    seconds after the first of them (a timer, so an idle server writes too), and at close:
    a crash (SIGKILL) loses at most the vectors of the last ``flush_s`` seconds, never more
    than ``flush_every`` of them."""

    def __init__(self, folder: str | Path, sample: float = 1.0, flush_every: int = 10_000,
                 seed: int | None = None, flush_s: float = 5.0) -> None:
        self.folder = Path(folder)
        self.sample = sample
        self.flush_every = flush_every
        self.flush_s = flush_s
        self._random = random.Random(seed)
        self._rows: list[tuple[int, str, str, str]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def record(self, at: int, features: tuple[str, ...], row: dict[str, Any],
               values: dict[str, Any]) -> None:
        if self.sample < 1.0 and self._random.random() >= self.sample:
            return
        item = (at, json.dumps(features), json.dumps(row, default=str),
                json.dumps(values, default=str))
        with self._lock:
            self._rows.append(item)
            full = len(self._rows) >= self.flush_every
            if not full and self._timer is None:      # the first of a part: bound its wait
                self._timer = threading.Timer(self.flush_s, self.flush)
                self._timer.daemon = True
                self._timer.start()
        if full:
            self.flush()

    @property
    def pending(self) -> int:
        """Vectors held in memory, not yet written."""
        return len(self._rows)

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if not rows:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.table([list(c) for c in zip(*rows, strict=True)], schema=_SCHEMA)
        tmp = self.folder / f".part-{uuid.uuid4().hex}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.folder / f"part-{uuid.uuid4().hex}.parquet")  # visible whole or not

    def read(self) -> pa.Table:
        files = sorted(self.folder.glob("part-*.parquet")) if self.folder.exists() else []
        if not files:
            return _SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(f) for f in files])


@dataclass(frozen=True)
class FeatureConsistency:
    """How one feature served online compares with the offline path at the same instants."""

    feature: str
    rows: int
    matches: int
    missing: int          # offline had a value, online served none
    extra: int            # online served a value, offline has none
    mean_abs_diff: float
    mean_rel_diff: float

    @property
    def match_rate(self) -> float:
        return self.matches / self.rows if self.rows else 1.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def consistency_report(training_set: Callable[..., pa.Table], log: pa.Table,
                       ) -> list[FeatureConsistency]:
    """Replay logged vectors through the offline path and compare, per feature."""
    if log.num_rows == 0:
        raise DataError("the feature log is empty", fix="serve some vectors with logging on "
                        "([online] log_sample > 0) before asking for a report; a server "
                        "writes what it logged every [online] log_flush_s seconds, so vectors "
                        "served in the last few seconds are not there yet")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, features in enumerate(log["features"].to_pylist()):
        groups[features].append(i)
    stats: dict[str, list[float]] = {}
    ats = log["at"].to_pylist()
    rows = log["row"].to_pylist()
    served = log["values"].to_pylist()
    for features_json, idx in groups.items():
        features = json.loads(features_json)
        entity_rows = [json.loads(rows[i]) for i in idx]
        columns: dict[str, list[Any]] = defaultdict(list)
        for r in entity_rows:
            for k in entity_rows[0]:
                columns[k].append(r.get(k))
        columns["__at"] = [ats[i] for i in idx]
        table = pa.table({k: (pa.array(v, pa.int64()).cast(pa.timestamp("us", tz="UTC"))
                              if k == "__at" else pa.array(v)) for k, v in columns.items()})
        offline = training_set(table, features, timestamp="__at")
        for f in features:
            # Offline values as the log keeps served ones (JSON; instants as their text).
            want = [json.loads(json.dumps(v, default=str)) for v in offline[f].to_pylist()]
            s = stats.setdefault(f, [0, 0, 0, 0, 0.0, 0.0, 0])
            for j, i in enumerate(idx):
                have = json.loads(served[i]).get(f)
                s[0] += 1
                if same_value(have, want[j]):
                    s[1] += 1
                elif have is None:
                    s[2] += 1
                elif want[j] is None:
                    s[3] += 1
                a, b = _number(have), _number(want[j])
                if a is not None and b is not None:
                    s[4] += abs(a - b)
                    s[5] += abs(a - b) / max(abs(b), 1e-12)
                    s[6] += 1
    return [FeatureConsistency(f, int(s[0]), int(s[1]), int(s[2]), int(s[3]),
                               s[4] / s[6] if s[6] else 0.0, s[5] / s[6] if s[6] else 0.0)
            for f, s in stats.items()]


def same_value(a: Any, b: Any) -> bool:
    """Feature values agree: both null, or equal (floats within a relative 1e-9; NaN = NaN)."""
    if a is None or b is None:
        return a is None and b is None
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9,
                                                                   abs_tol=1e-9)
    return bool(a == b)
