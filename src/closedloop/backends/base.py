"""The protocols every backend implements. Stages see backends only through these.

Rows cross these boundaries as Arrow tables. Times are int64 microseconds since the epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from closedloop.data.sources import AnySource
from closedloop.features.definitions import FeatureView

#: Column names of the query rows handed to an offline engine.
ROW_ID, ROW_KEY, ROW_TS = "__row", "__key", "__ts"


class OfflineEngine(Protocol):
    """Computes point-in-time feature values over the offline store.

    ``point_in_time`` receives ``rows`` with the columns ``__row`` (int64, 0..n-1), ``__key``
    (the entity key) and ``__ts`` (int64 µs), and returns a table with ``__row`` and one column
    per requested feature, one output row per input row, ordered by ``__row``; a feature with
    no value at that time is null (the caller applies declared defaults).
    """

    def columns(self, source: AnySource) -> dict[str, str]:
        """The source's actual columns and their logical types (``timestamp_naive`` included)."""
        ...

    def point_in_time(self, rows: pa.Table, view: FeatureView,
                      features: Sequence[str]) -> pa.Table:
        """Feature values of ``view`` as known at each row's time."""
        ...

    def latest(self, view: FeatureView, at: int, since: int | None = None) -> pa.Table:
        """Per entity (``key`` as a string), the snapshot row visible at ``at``: ``et``,
        ``tie``, then the view's ``row_columns`` (its source's delete flag, if it has one, then
        its features); only entities with a row that became visible in
        (``since``, ``at``] when ``since`` is given."""
        ...

    def tiles(self, view: FeatureView, hop: int, span: int, at: int,
              since: int | None = None) -> pa.Table:
        """Per entity and hop bucket ``b`` ≥ ``at // hop - span``, every aggregated column's
        partials over the rows visible at ``at``: ``n{i}, s{i}, m{i}, lo{i}, hi{i}, l{i},
        o{i}`` (count, sum, M2, min, max, last, last's order)."""
        ...

    def append(self, source: AnySource, rows: pa.Table,
               unique: Sequence[str] | None = None) -> int:
        """Append rows to the source's event log in the offline store, durably and whole (a
        crash leaves all of them or none); later reads of the source include them. With
        ``unique``, the rows are a set on those columns: only the first of the rows sharing
        a value, and only if the source does not hold that value yet, is appended (checked and
        appended as one step, no other such append in between). Return how many rows were
        appended."""
        ...

    def read(self, source: AnySource, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row the source holds (its files and its event log), or only ``columns``."""
        ...

    def compact(self, source: AnySource, small_rows: int = 1_000_000) -> int:
        """Merge the parts of the source's event log under ``small_rows`` rows into one,
        never showing a row twice or losing one, even after a crash; return how many parts
        were merged."""
        ...

    def close(self) -> None:
        """Release the engine's resources."""
        ...


@dataclass(frozen=True)
class RegisteredDefinition:
    """One definition version as the metadata store keeps it."""

    kind: str
    name: str
    version: int
    hash: str
    spec: dict[str, Any]


class MetadataStore(Protocol):
    """Durable metadata: registered definitions (and, in later stages, runs and versions)."""

    def definitions(self) -> list[RegisteredDefinition]:
        """Every registered definition version."""
        ...

    def register(self, items: Sequence[RegisteredDefinition]) -> None:
        """Add definition versions, all or none, in one transaction."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


#: One online write: (namespace, key, value); a value of None deletes the key.
OnlineItem = tuple[str, str, bytes | None]


class OnlineStore(Protocol):
    """A key-value store for served feature records: namespaces of keys holding opaque bytes.

    ``write`` applies all its items atomically (no reader sees part of a call); ``read``
    fetches any number of (namespace, key) pairs in one round trip.
    """

    def write(self, items: Sequence[OnlineItem]) -> None:
        """Set or delete every item, all or none."""
        ...

    def read(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The values of the keys, None where absent, in order, in one round trip."""
        ...

    def update(self, keys: Sequence[tuple[str, str]],
               merge: Callable[[list[bytes | None]], list[bytes | None]]) -> None:
        """Read ``keys``, write ``merge(values)`` back to them, as one atomic step: no other
        write to those keys lands in between (a lost update is impossible)."""
        ...

    def clear(self, namespace: str) -> None:
        """Delete every key of a namespace."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
