"""Online features: the records the online store holds and how they are read.

A record is one view version's state for one entity, pickled (protocol 5) and read back by an
unpickler that refuses every global, so a record can only ever be lists, numbers, strings,
booleans and None — never code:

* snapshot views: ``[event_us, tie_present, tie, [values...]]`` — the latest visible row,
  its values those of the view's ``row_columns`` (a CDC source's delete flag first: a latest
  row that is a delete serves nothing); timestamp values are kept as int µs and served as
  aware datetimes, as training gives them;
* windowed views: one flat list of tiles per hop, ``[bucket, fields..., bucket, ...]`` sorted
  by bucket, holding only the partials the view's functions need (``closedloop.features.tiles``).

Reading at t applies exactly the written semantics: a tile counts when its bucket is within
``[T - n, T]`` for ``T = t // hop``; a snapshot counts while ``t - event ≤ ttl``. Everything
in the store has arrived; the store serves what has arrived by the time it is read.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import SchemaMismatch
from closedloop.features.definitions import FeatureView
from closedloop.features.tiles import WindowReader

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def record_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """A column's values as records keep them: plain Python, timestamps as int µs (UTC)."""
    if pa.types.is_timestamp(column.type):
        column = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    values: list[Any] = column.to_pylist()
    return values


def served_instant(value: Any) -> Any:
    """A timestamp feature as served: int µs from a record back to an aware datetime."""
    return EPOCH + timedelta(microseconds=value) if type(value) is int else value


def snapshot_order(rec: Sequence[Any]) -> tuple[Any, ...]:
    """The tie order of snapshot rows ``[event, tie?, tie, values]``: nulls lowest."""
    return (rec[0], rec[1], rec[2], *((v is not None, v if v is not None else 0)
                                      for v in rec[3]))


def namespace(view: FeatureView) -> str:
    """The online store namespace of a view version."""
    return view.key


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"an online record may not reference {module}.{name}")


def encode(record: Any) -> bytes:
    return pickle.dumps(record, protocol=5)


def decode(data: bytes) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


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
        self.written = tuple(out for outs in outputs for out in outs)   # the keys it fills
        self.key_column = view.entity.key
        self.key_dtype = view.entity.spec()["dtype"]
        # Outputs whose values are instants: kept as µs, served as datetimes.
        self.instants = [out for n, outs in zip(names, outputs, strict=True) for out in outs
                         if view.output_type(n) == "timestamp"]
        if view.aggregations:
            by_name = {w.name: w for w in view.windowed}
            self.windows = WindowReader(view, [(out, by_name[n]) for n, outs in
                                               zip(names, outputs, strict=True) for out in outs])
        else:
            self.ttl = view.ttl_micros
            self.deletes = view.deleted_column is not None   # values[0] is the delete flag
            columns = view.row_columns
            self.writes = [(out, columns.index(n), view.default(n))
                           for n, outs in zip(names, outputs, strict=True) for out in outs]

    def key(self, row: Mapping[str, Any]) -> str | None:
        """The row's entity key as the store keys it; None for a null key, which is no error:
        as offline, the view's features are then their defaults (the view is missing)."""
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
        if value is None:
            return None
        raise SchemaMismatch(f"entity key {self.key_column!r} is {value!r} "
                             f"({type(value).__name__}); entity {self.view.entity.name!r} "
                             f"declares {self.key_dtype}", fix=f"send it as {self.key_dtype}")

    def read(self, data: bytes | None, t: int, into: dict[str, Any]) -> None:
        """Put this view's features at time t into ``into``, by internal reference."""
        record = None if data is None else decode(data)
        if self.view.aggregations:
            self.windows.read(record, t, into)
        else:
            self._snapshot(record, t, into)
        for out in self.instants:
            into[out] = served_instant(into[out])

    def _snapshot(self, record: Any, t: int, into: dict[str, Any]) -> None:
        ttl = self.ttl
        if record is not None and len(record) > 4:     # pushed rows waiting for their time
            record = _visible_latest(record, t)
        if record is not None and record[0] is not None and record[0] <= t and (
                ttl is None or t - record[0] <= ttl) and not (self.deletes and record[3][0]):
            values = record[3]
            for out, pos, default in self.writes:
                value = values[pos]
                into[out] = default if value is None else value
        else:
            for out, _, default in self.writes:
                into[out] = default


def _visible_latest(record: list[Any], t: int) -> list[Any] | None:
    """The latest row of a snapshot record visible at t, its pending rows included."""
    best = record[:4] if record[0] is not None and record[0] <= t else None
    for vis, et, tie, values in record[4]:
        if vis <= t:
            cand = [et, tie is not None, tie or 0, values]
            if best is None or snapshot_order(cand) > snapshot_order(best):
                best = cand
    return best
