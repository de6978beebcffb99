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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import ModuleType
from typing import Any, Literal, TypeVar

import pyarrow as pa

from closedloop.data.instants import format_duration, parse_duration
from closedloop.errors import DefinitionError

T = TypeVar("T")

LogicalType = Literal["string", "int64", "float64", "bool", "timestamp"]

#: The Arrow type of each logical type, for values crossing into Arrow.
#: The column every row ingested or pushed carries: the instant the store was given it (UTC).
INGESTED_AT = "_ingested_at"

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC")}

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


def declared_in(module: ModuleType, kind: type[T], key: Callable[[T], str], what: str,
                fix: str) -> dict[str, T]:
    """Every ``kind`` a definitions module declares at its top level, by ``key``; two
    different ones under one key are a DefinitionError (``what`` names the clash)."""
    found: dict[str, T] = {}
    for value in vars(module).values():
        if isinstance(value, kind):
            name = key(value)
            if name in found and found[name] is not value:
                raise DefinitionError(what.format(name=name), fix=fix)
            found[name] = value
    return found


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
    id: str | None = None

    def __post_init__(self) -> None:
        check_name("source", self.name)
        check_name(f"timestamp column of source {self.name!r}", self.timestamp)
        if self.id is not None:
            check_name(f"id column of source {self.name!r}", self.id)
        if not isinstance(self.path, str) or not self.path:
            raise DefinitionError(f"source {self.name!r} has no path",
                                  fix="give path= a Parquet/CSV file or a folder of them")
        if self.format not in ("parquet", "csv", "auto"):
            raise DefinitionError(f"source {self.name!r} has format {self.format!r}",
                                  fix="use 'parquet', 'csv' or 'auto'")
        for column, declared in self.schema.items():
            check_name(f"column of source {self.name!r}", column)
            logical_type(column, declared)
        if self.logical_schema.get(self.timestamp, "timestamp") != "timestamp":
            raise DefinitionError(f"source {self.name!r} declares its timestamp column "
                                  f"{self.timestamp!r} as {self.schema[self.timestamp]!r}",
                                  fix="declare it 'timestamp', or leave it out of schema=")

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
        spec = {"kind": kind, "name": self.name, "timestamp": self.timestamp,
                "schema": dict(sorted(self.logical_schema.items()))}
        if self.id is not None:        # only when declared, so older hashes stay as they were
            spec["id"] = self.id
        return spec

    @property
    def time_columns(self) -> tuple[str, ...]:
        """The columns holding instants: the timestamp and the tie column, if any."""
        return (self.timestamp, *([self.tie_column] if self.tie_column else []))

    @property
    def tie_column(self) -> str | None:
        raise NotImplementedError  # each source kind states its own


@dataclass(frozen=True)
class EventSource(_SourceBase):
    """Append-only events: each row happened at ``timestamp`` and became known at ``arrival``.

    A row is visible at time t only if its event time ≤ t and (when ``arrival`` is declared)
    its arrival time ≤ t. Same entity and event time: the later arrival wins. ``id`` names the
    column that identifies an event: ingesting one again (a replay) changes nothing.
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

    ``timestamp`` is the row's change time; ``created`` orders rows with the same entity and
    timestamp: the later created wins. A row is an upsert of its entity's state; with
    ``deleted`` declared, a row whose ``deleted`` column is true is a delete: from its change
    time on, the entity has no state (its snapshot features are absent), until a later upsert.
    """

    created: str | None = None
    deleted: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.created is not None:
            check_name(f"created column of source {self.name!r}", self.created)
        if self.deleted is not None:
            check_name(f"deleted column of source {self.name!r}", self.deleted)
            if self.logical_schema.get(self.deleted, "bool") != "bool":
                raise DefinitionError(f"source {self.name!r}: deleted column "
                                      f"{self.deleted!r} must be bool",
                                      fix="declare it bool, or leave it out of schema=")

    kind = "table"

    @property
    def tie_column(self) -> str | None:
        return self.created

    @property
    def visibility_column(self) -> str | None:
        return None

    def spec(self) -> dict[str, Any]:
        spec = {**self._common_spec("table"), "created": self.created}
        if self.deleted is not None:
            spec["deleted"] = self.deleted
        return spec


@dataclass(frozen=True)
class LabelSource(_SourceBase):
    """Labels, and when each became known: the label store of one outcome.

    Each row labels a *subject* — the row a model scored, named by ``subject`` (a transaction
    id, or an entity key) at ``timestamp`` (the prediction or event time) — with the value in
    ``label``, known from ``settled_at``. ``max_delay`` is the longest a label can take to
    settle (``"60d"`` for chargebacks, ``"0s"`` for clicks): a subject's label window closes at
    its timestamp + ``max_delay``. ``default`` is the label of a subject whose window closed
    with no label (``False``: no chargeback means no fraud); ``None`` means such subjects are
    unlabelled and left out.

    >>> cb = LabelSource("chargebacks", path="data/cb.parquet", subject="txn_id",
    ...                  timestamp="event_time", label="is_fraud", settled_at="settled_at",
    ...                  max_delay="60d", default=False)
    >>> cb.max_delay_micros // 86_400_000_000, cb.tie_column
    (60, 'settled_at')
    """

    subject: str = ""
    label: str = ""
    settled_at: str = ""
    max_delay: str | timedelta = "0s"
    default: Any = None

    kind = "label"

    def __post_init__(self) -> None:
        super().__post_init__()
        for role in ("subject", "label", "settled_at"):
            check_name(f"{role} column of label source {self.name!r}", getattr(self, role))
        self.max_delay_micros  # noqa: B018 - parse now, so a bad delay fails at definition
        if self.default is not None and not isinstance(self.default, bool | int | float | str):
            raise DefinitionError(f"label source {self.name!r}: default {self.default!r} is "
                                  "not a plain value", fix="use a bool, number or string")

    @property
    def max_delay_micros(self) -> int:
        return parse_duration(self.max_delay, what=f"max_delay of {self.name!r}", zero=True)

    @property
    def tie_column(self) -> str | None:
        return self.settled_at

    @property
    def visibility_column(self) -> str | None:
        return self.settled_at           # a label is known from when it settled

    def spec(self) -> dict[str, Any]:
        return {**self._common_spec("label"), "subject": self.subject, "label": self.label,
                "settled_at": self.settled_at,
                "max_delay": format_duration(self.max_delay_micros) if self.max_delay_micros
                else "0s", "default": self.default}


Source = EventSource | TableSource
AnySource = EventSource | TableSource | LabelSource


def source_from_spec(spec: dict[str, Any], path: str, file_format: str = "auto") -> Source:
    """Rebuild a source from its registered spec and the location it was registered with."""
    common = {"name": spec["name"], "path": path, "timestamp": spec["timestamp"],
              "schema": dict(spec["schema"]), "format": file_format, "id": spec.get("id")}
    if spec["kind"] == "event":
        return EventSource(**common, arrival=spec.get("arrival"))
    if spec["kind"] == "table":
        return TableSource(**common, created=spec.get("created"), deleted=spec.get("deleted"))
    raise DefinitionError(f"registered source kind {spec['kind']!r} is unknown",
                          fix="upgrade closedloop to read this metadata store")
