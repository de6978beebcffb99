"""The protocols every backend implements. Stages see backends only through these.

Rows cross these boundaries as Arrow tables. Times are int64 microseconds since the epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from closedloop.data.sources import Source
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

    def columns(self, source: Source) -> dict[str, str]:
        """The source's actual columns and their logical types (``timestamp_naive`` included)."""
        ...

    def point_in_time(self, rows: pa.Table, view: FeatureView,
                      features: Sequence[str]) -> pa.Table:
        """Feature values of ``view`` as known at each row's time."""
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
