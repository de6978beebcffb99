"""Online features: the records the online store holds, how they are read, and how they merge.

A record is one view version's state for one entity, pickled (protocol 5) and read back by an
unpickler that refuses every global, so a record can only ever be lists, numbers, strings,
booleans and None — never code:

* snapshot views: ``[event_us, tie_present, tie, [values...]]`` — the latest visible row;
* windowed views: ``{"<hop>": [[bucket, [partials per column]], ...]}`` — one tile per hop
  bucket, each column's partials ``[n, sum, m2, min, max, last, last_order]`` where
  ``last_order`` is ``[event_us, tie_present, tie]``.

Reading at t applies exactly the written semantics: a tile counts when its bucket is within
``[T - n, T]`` for ``T = t // hop``; a snapshot counts while ``t - event ≤ ttl``. Everything
in the store has arrived; the store serves what has arrived by the time it is read.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from closedloop.errors import SchemaMismatch
from closedloop.features.definitions import FeatureView, WindowedFeature

# Column partials: positions in the per-column list of a tile.
N, S, M2, MIN, MAX, LAST, ORDER = range(7)

Partials = list[Any]
Tile = list[Any]          # [bucket, [Partials per column]]


def namespace(view: FeatureView) -> str:
    """The online store namespace of a view version."""
    return f"{view.name}@{view.version}"


def view_columns(view: FeatureView) -> list[str]:
    """The source columns a windowed view aggregates, in a fixed order."""
    return list(dict.fromkeys(a.column for a in view.aggregations))


def hops(view: FeatureView) -> dict[int, int]:
    """Each hop of a windowed view and the longest window (in hops) that uses it."""
    out: dict[int, int] = {}
    for w in view.windowed:
        out[w.hop] = max(out.get(w.hop, 0), w.window // w.hop)
    return out


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an online record may not reference {module}.{name}")


def encode(record: Any) -> bytes:
    return pickle.dumps(record, protocol=5)


def decode(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def _order_key(order: list[Any] | None) -> tuple[Any, ...]:
    if order is None:
        return (-math.inf,)
    return (order[0], order[1], order[2] if order[1] else 0)


def merge_partials(a: Partials, b: Partials) -> Partials:
    """Merge two columns' partials (Chan et al. for the second moment)."""
    if not b[N]:
        return a
    if not a[N]:
        return b
    n = a[N] + b[N]
    delta = b[S] / b[N] - a[S] / a[N]
    m2 = a[M2] + b[M2] + delta * delta * a[N] * b[N] / n
    if _order_key(b[ORDER]) > _order_key(a[ORDER]) or (
            _order_key(b[ORDER]) == _order_key(a[ORDER]) and b[LAST] > a[LAST]):
        last, order = b[LAST], b[ORDER]
    else:
        last, order = a[LAST], a[ORDER]
    return [n, a[S] + b[S], m2, min(a[MIN], b[MIN]), max(a[MAX], b[MAX]), last, order]


def empty_partials() -> Partials:
    return [0, 0.0, 0.0, None, None, None, None]


def finish(fn: str, p: Partials) -> Any:
    """A windowed feature's value from merged partials (None where the window is empty)."""
    n = p[N]
    if fn == "count":
        return int(n)
    if fn == "sum":
        return float(p[S]) if n else 0.0
    if not n:
        return None
    if fn == "mean":
        return p[S] / n
    if fn == "stddev":
        return math.sqrt(max(p[M2] / n, 0.0))
    if fn == "min":
        return p[MIN]
    if fn == "max":
        return p[MAX]
    return p[LAST]


def windowed_values(view: FeatureView, record: dict[str, Any] | None, t: int,
                    wanted: Sequence[WindowedFeature]) -> dict[str, Any]:
    """The wanted windowed features at time t from an entity's tiles."""
    columns = view_columns(view)
    out: dict[str, Any] = {}
    for w in wanted:
        tiles = record.get(str(w.hop), ()) if record else ()
        top = t // w.hop
        low = top - w.window // w.hop
        merged = empty_partials()
        col = columns.index(w.column)
        for tile in tiles:
            if low <= tile[0] <= top:
                merged = merge_partials(merged, tile[1][col])
        value = finish(w.fn, merged)
        out[w.name] = w.default if value is None and w.default is not None else value
    return out


@dataclass(frozen=True, slots=True)
class OnlineVector:
    """One entity row's features as served: values by requested reference, and which views
    had no record for this entity (their features are the declared defaults)."""

    values: dict[str, Any]
    missing: tuple[str, ...]
    at: int


class ViewReader:
    """Everything needed to read one view version's features from a record, computed once
    per requested feature list (the serving hot path does no parsing or lookups)."""

    def __init__(self, view: FeatureView, names: Sequence[str],
                 outputs: Sequence[Sequence[str]]) -> None:
        """``outputs[i]`` lists the keys under which feature ``names[i]`` is written."""
        self.view = view
        self.namespace = namespace(view)
        self.key_column = view.entity.key
        self.key_dtype = view.entity.spec()["dtype"]
        if view.aggregations:
            by_name = {w.name: w for w in view.windowed}
            self.windowed = [(out, by_name[n]) for n, outs in zip(names, outputs, strict=True)
                             for out in outs]
        else:
            self.ttl = view.ttl_micros
            self.writes = [(out, view.features.index(n), view.default(n))
                           for n, outs in zip(names, outputs, strict=True) for out in outs]

    def key(self, row: Mapping[str, Any]) -> str:
        try:
            value = row[self.key_column]
        except KeyError:
            raise SchemaMismatch(f"the request has no {self.key_column!r}, the key of entity "
                                 f"{self.view.entity.name!r}",
                                 fix=f"send {self.key_column!r}") from None
        if self.key_dtype == "string":
            if type(value) is str:
                return value
        elif isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise SchemaMismatch(f"entity key {self.key_column!r} is {value!r} "
                             f"({type(value).__name__}); entity {self.view.entity.name!r} "
                             f"declares {self.key_dtype}", fix=f"send it as {self.key_dtype}")

    def read(self, data: bytes | None, t: int, into: dict[str, Any]) -> None:
        """Put this view's features at time t into ``into``, by internal reference."""
        record = None if data is None else decode(data)
        if self.view.aggregations:
            got = windowed_values(self.view, record, t, [w for _, w in self.windowed])
            for out, w in self.windowed:
                into[out] = got[w.name]
            return
        ttl = self.ttl
        if record is not None and record[0] <= t and (ttl is None or t - record[0] <= ttl):
            values = record[3]
            for out, pos, default in self.writes:
                value = values[pos]
                into[out] = default if value is None else value
        else:
            for out, _, default in self.writes:
                into[out] = default
