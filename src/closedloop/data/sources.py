"""Entities and sources: plain, frozen declarations of where rows live and what they mean.

>>> import closedloop as cl
>>> user = cl.Entity("user", key="user_id")
>>> txns = cl.EventSource("transactions", path="data/txns", timestamp="event_time",
...                       arrival="ingested_at", schema={"user_id": str, "amount": float})
>>> txns.kind, txns.tie_column
('event', 'ingested_at')
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from closedloop.errors import DefinitionError

LogicalType = Literal["string", "int64", "float64", "bool", "timestamp"]

_PY_TYPES: dict[object, LogicalType] = {
    str: "string",
    int: "int64",
    float: "float64",
    bool: "bool",
    "str": "string",
    "string": "string",
    "int": "int64",
    "int64": "int64",
    "float": "float64",
    "float64": "float64",
    "double": "float64",
    "bool": "bool",
    "timestamp": "timestamp",
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid identifier, else raise a DefinitionError naming it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} is not a valid identifier",
            fix="use letters, digits and underscores, starting with a letter",
        )
    return name


def logical_type(column: str, declared: object) -> LogicalType:
    """Map a declared schema type (``str``, ``float``, ``"int64"``…) to a logical type."""
    try:
        return _PY_TYPES[declared]
    except (KeyError, TypeError):
        raise DefinitionError(
            f"column {column!r} declares type {declared!r}, which closedloop does not know",
            fix="declare one of str, int, float, bool or 'timestamp'",
        ) from None


def content_hash(spec: dict[str, Any]) -> str:
    """The hash of a definition: SHA-256 of its canonical JSON spec, first 16 hex digits."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entity:
    """What features describe: a user, a merchant, a card. ``key`` names the join column.

    >>> Entity("user", key="user_id").key
    'user_id'
    """

    name: str
    key: str
    dtype: type | str = str
    description: str = ""

    def __post_init__(self) -> None:
        check_name("entity", self.name)
        check_name("entity key", self.key)
        logical_type(self.key, self.dtype)

    def spec(self) -> dict[str, Any]:
        return {"kind": "entity", "name": self.name, "key": self.key,
                "dtype": logical_type(self.key, self.dtype)}

    @property
    def hash(self) -> str:
        return content_hash(self.spec())


@dataclass(frozen=True)
class _SourceBase:
    name: str
    path: str
    timestamp: str
    schema: dict[str, Any] = field(default_factory=dict)
    format: Literal["parquet", "csv", "auto"] = "auto"
    description: str = ""

    def __post_init__(self) -> None:
        check_name("source", self.name)
        check_name(f"timestamp column of source {self.name!r}", self.timestamp)
        if not isinstance(self.path, str) or not self.path:
            raise DefinitionError(f"source {self.name!r} has no path",
                                  fix="give path= a Parquet/CSV file or a folder of them")
        if self.format not in ("parquet", "csv", "auto"):
            raise DefinitionError(f"source {self.name!r} has format {self.format!r}",
                                  fix="use 'parquet', 'csv' or 'auto'")
        for column, declared in self.schema.items():
            check_name(f"column of source {self.name!r}", column)
            logical_type(column, declared)

    @property
    def file_format(self) -> Literal["parquet", "csv"]:
        if self.format != "auto":
            return self.format
        return "csv" if self.path.lower().endswith((".csv", ".csv.gz")) else "parquet"

    @property
    def logical_schema(self) -> dict[str, LogicalType]:
        return {c: logical_type(c, t) for c, t in self.schema.items()}

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError  # each source kind states its own spec

    @property
    def hash(self) -> str:
        return content_hash(self.spec())

    def _common_spec(self, kind: str) -> dict[str, Any]:
        # The path is where rows live, not what they mean: it is not part of the hash,
        # so moving the data does not make a new version.
        return {"kind": kind, "name": self.name, "timestamp": self.timestamp,
                "schema": dict(sorted(self.logical_schema.items()))}


@dataclass(frozen=True)
class EventSource(_SourceBase):
    """Append-only events: each row happened at ``timestamp`` and became known at ``arrival``.

    A row is visible at time t only if its event time ≤ t and (when ``arrival`` is declared)
    its arrival time ≤ t. Same entity and event time: the later arrival wins.
    """

    arrival: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arrival is not None:
            check_name(f"arrival column of source {self.name!r}", self.arrival)

    kind = "event"

    @property
    def tie_column(self) -> str | None:
        return self.arrival

    @property
    def visibility_column(self) -> str | None:
        return self.arrival

    def spec(self) -> dict[str, Any]:
        return {**self._common_spec("event"), "arrival": self.arrival}


@dataclass(frozen=True)
class TableSource(_SourceBase):
    """Timestamped snapshot rows (a nightly "lifetime spend" table, a CDC feed).

    ``created`` orders rows with the same entity and timestamp: the later created wins.
    """

    created: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.created is not None:
            check_name(f"created column of source {self.name!r}", self.created)

    kind = "table"

    @property
    def tie_column(self) -> str | None:
        return self.created

    @property
    def visibility_column(self) -> str | None:
        return None

    def spec(self) -> dict[str, Any]:
        return {**self._common_spec("table"), "created": self.created}


Source = EventSource | TableSource


def source_from_spec(spec: dict[str, Any], path: str, file_format: str = "auto") -> Source:
    """Rebuild a source from its registered spec and the location it was registered with."""
    common = {"name": spec["name"], "path": path, "timestamp": spec["timestamp"],
              "schema": dict(spec["schema"]), "format": file_format}
    if spec["kind"] == "event":
        return EventSource(**common, arrival=spec.get("arrival"))
    if spec["kind"] == "table":
        return TableSource(**common, created=spec.get("created"))
    raise DefinitionError(f"registered source kind {spec['kind']!r} is unknown",
                          fix="upgrade closedloop to read this metadata store")
