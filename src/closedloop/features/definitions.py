"""Feature definitions: windowed aggregations, snapshot features and row transforms.

Definitions are plain frozen data with a content hash. A changed definition is a new version.

>>> import closedloop as cl
>>> user = cl.Entity("user", key="user_id")
>>> txns = cl.EventSource("txns", path="txns.parquet", timestamp="ts",
...                       schema={"user_id": str, "amount": float})
>>> view = cl.FeatureView("user_txn", entity=user, source=txns,
...                       aggregations=[cl.Agg("amount", "sum", windows=["1h", "30d"])])
>>> view.feature_names
('amount_sum_1h', 'amount_sum_30d')
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from closedloop.data.instants import format_duration, parse_duration
from closedloop.data.sources import (
    Entity,
    EventSource,
    LogicalType,
    Source,
    TableSource,
    check_name,
    content_hash,
    source_from_spec,
)
from closedloop.errors import DefinitionError
from closedloop.features.windows import hop_for, parse_window

AggFn = Literal["sum", "count", "mean", "min", "max", "last", "stddev"]
AGG_FNS: tuple[str, ...] = ("sum", "count", "mean", "min", "max", "last", "stddev")


@dataclass(frozen=True)
class WindowedFeature:
    """One output of an ``Agg``: a function of one column over one window."""

    name: str
    column: str
    fn: str
    window: int
    hop: int
    default: Any = None


@dataclass(frozen=True)
class Agg:
    """A windowed aggregation of one column: ``Agg("amount", "sum", windows=["1h", "30d"])``.

    ``fn`` is one of sum, count, mean, min, max, last, stddev (population). Null values are
    ignored; an empty window gives 0 for sum and count (which therefore take no ``default``:
    declaring one is a ``DefinitionError``) and null, or ``default``, for the others.
    """

    column: str
    fn: str
    windows: Sequence[str]
    default: Any = None

    def __post_init__(self) -> None:
        check_name("aggregated column", self.column)
        if self.fn not in AGG_FNS:
            raise DefinitionError(f"aggregation {self.fn!r} of column {self.column!r} is unknown",
                                  fix=f"use one of {', '.join(AGG_FNS)}")
        if isinstance(self.windows, str) or not self.windows:
            raise DefinitionError(f"Agg({self.column!r}, {self.fn!r}) needs a list of windows",
                                  fix="write windows=['1h', '1d']")
        object.__setattr__(self, "windows", tuple(self.windows))
        for w in self.windows:
            parse_window(w)
        if self.default is not None and self.fn in ("sum", "count"):
            raise DefinitionError(
                f"Agg({self.column!r}, {self.fn!r}) declares default={self.default!r}, which "
                f"would never apply: an empty window's {self.fn} is 0",
                fix="drop default=; defaults apply to mean, min, max, stddev and last")

    def outputs(self) -> list[WindowedFeature]:
        out = []
        for text in self.windows:
            micros = parse_window(text)
            out.append(WindowedFeature(
                name=f"{self.column}_{self.fn}_{format_duration(micros)}", column=self.column,
                fn=self.fn, window=micros, hop=hop_for(micros), default=self.default))
        return out


@dataclass(frozen=True)
class FeatureView:
    """A named, versioned group of features of one entity computed from one source.

    Either ``aggregations`` (windowed, event sources only) or ``features`` (snapshot columns:
    the latest visible row, absent once older than ``ttl``).
    """

    name: str
    entity: Entity
    source: Source
    version: int = 1
    aggregations: Sequence[Agg] = ()
    features: Sequence[str] = ()
    ttl: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        check_name("feature view", self.name)
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise DefinitionError(f"feature view {self.name!r} has version {self.version!r}",
                                  fix="versions are whole numbers from 1")
        if not isinstance(self.entity, Entity):
            raise DefinitionError(f"feature view {self.name!r}: entity must be an Entity",
                                  fix="pass entity=cl.Entity(...)")
        if not isinstance(self.source, EventSource | TableSource):
            raise DefinitionError(f"feature view {self.name!r}: source must be an EventSource "
                                  "or TableSource", fix="pass source=cl.EventSource(...)")
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "defaults", dict(self.defaults))
        if bool(self.aggregations) == bool(self.features):
            raise DefinitionError(
                f"feature view {self.name!r} needs exactly one of aggregations= or features=",
                fix="declare windowed Aggs, or the snapshot columns to serve")
        if self.aggregations and not isinstance(self.source, EventSource):
            raise DefinitionError(
                f"feature view {self.name!r} aggregates over table source {self.source.name!r}",
                fix="windowed aggregations need an EventSource; serve table columns with features=")
        if self.ttl is not None:
            if self.aggregations:
                raise DefinitionError(f"feature view {self.name!r}: ttl applies to snapshot "
                                      "features only", fix="drop ttl=; windows bound the age")
            parse_duration(self.ttl, what=f"ttl of feature view {self.name!r}")
        for column in self.features:
            check_name(f"feature of view {self.name!r}", column)
        names = self.feature_names
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise DefinitionError(f"feature view {self.name!r} defines {dupes} more than once",
                                  fix="remove the repeated feature")
        for key in self.defaults:
            if key not in names:
                raise DefinitionError(f"feature view {self.name!r} has a default for unknown "
                                      f"feature {key!r}", fix=f"features are {list(names)}")
        schema = self.source.logical_schema
        if schema:
            needed = [a.column for a in self.aggregations] + list(self.features)
            for column in needed:
                if column not in schema:
                    raise DefinitionError(
                        f"feature view {self.name!r} reads column {column!r}, which source "
                        f"{self.source.name!r} does not declare",
                        fix=f"add it to the source schema (declared: {sorted(schema)})")
            for agg in self.aggregations:
                if agg.fn in ("sum", "mean", "stddev") and schema[agg.column] not in (
                        "int64", "float64", "bool"):
                    raise DefinitionError(
                        f"{agg.fn} of column {agg.column!r} needs a number, but it is declared "
                        f"{schema[agg.column]}", fix="aggregate a numeric column or use count/last")

    # Derived from the frozen fields, so computed once (the serving path reads them often).
    @functools.cached_property
    def ttl_micros(self) -> int | None:
        return None if self.ttl is None else parse_duration(self.ttl)

    @functools.cached_property
    def windowed(self) -> tuple[WindowedFeature, ...]:
        return tuple(out for agg in self.aggregations for out in agg.outputs())

    @functools.cached_property
    def deleted_column(self) -> str | None:
        """The source's delete flag, when its rows can be deletes (a CDC table source)."""
        return self.source.deleted if isinstance(self.source, TableSource) else None

    @functools.cached_property
    def row_columns(self) -> tuple[str, ...]:
        """The columns of a snapshot row as records keep it and the tie order compares them:
        the delete flag first (so at equal times a delete wins), then the features."""
        flag = self.deleted_column
        return ((flag,) if flag else ()) + tuple(self.features)

    @functools.cached_property
    def feature_names(self) -> tuple[str, ...]:
        if self.aggregations:
            return tuple(f.name for f in self.windowed)
        return tuple(self.features)

    def default(self, feature: str) -> Any:
        if feature in self.defaults:
            return self.defaults[feature]
        for f in self.windowed:
            if f.name == feature:
                return f.default
        return None

    def output_type(self, feature: str) -> LogicalType:
        """The logical type of a feature's values."""
        schema = self.source.logical_schema
        for f in self.windowed:
            if f.name == feature:
                if f.fn == "count":
                    return "int64"
                if f.fn in ("sum", "mean", "stddev"):
                    return "float64"
                return schema.get(f.column, "float64")
        return schema.get(feature, "float64")

    def spec(self) -> dict[str, Any]:
        return {
            "kind": "feature_view", "name": self.name, "version": self.version,
            "entity": self.entity.spec(), "source": self.source.spec(),
            "aggregations": [{"column": a.column, "fn": a.fn,
                              "windows": [format_duration(parse_window(w)) for w in a.windows],
                              "default": a.default} for a in self.aggregations],
            "features": list(self.features), "ttl": self.ttl_micros,
            "defaults": dict(sorted(self.defaults.items())),
        }

    @property
    def key(self) -> str:
        """``name@version``: how pins, online namespaces and served columns name it."""
        return f"{self.name}@{self.version}"

    @property
    def hash(self) -> str:
        return content_hash(self.spec())

    def registered_spec(self) -> dict[str, Any]:
        """The spec plus where the source's rows live (kept, but not hashed)."""
        return {**self.spec(), "location": {"path": self.source.path,
                                            "format": self.source.format}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FeatureView:
        """Rebuild a registered view (e.g. an old version no longer in the code)."""
        e = spec["entity"]
        location = spec.get("location") or {}
        if "path" not in location:
            raise DefinitionError(f"registered view {spec['name']!r} v{spec['version']} has no "
                                  "recorded location", fix="define it in code again")
        source = source_from_spec(spec["source"], location["path"], location.get("format", "auto"))
        aggs = [Agg(a["column"], a["fn"], windows=a["windows"], default=a.get("default"))
                for a in spec["aggregations"]]
        ttl = spec.get("ttl")
        return cls(spec["name"], entity=Entity(e["name"], key=e["key"], dtype=e["dtype"]),
                   source=source, version=spec["version"], aggregations=aggs,
                   features=spec["features"],
                   ttl=None if ttl is None else format_duration(int(ttl)),
                   defaults=spec.get("defaults") or {})


Columns = Mapping[str, "np.ndarray[Any, Any]"]


@dataclass(frozen=True)
class Transform:
    """A row transform: a vectorised function over named input columns.

    The same function runs at training (N rows) and at serving (1 row). Inputs are feature
    references (``"user_txn.amount_sum_1h"``) or request-time values (``"request.amount"``,
    read from the entity rows' own column ``amount``).
    """

    name: str
    fn: Callable[[Columns], Any]
    inputs: tuple[str, ...]
    version: int = 1
    default: Any = None

    def spec(self) -> dict[str, Any]:
        try:
            code = textwrap.dedent(inspect.getsource(self.fn))
        except (OSError, TypeError):
            code = getattr(self.fn, "__qualname__", repr(self.fn))
        return {"kind": "transform", "name": self.name, "version": self.version,
                "inputs": list(self.inputs), "code": code, "default": self.default}

    @property
    def key(self) -> str:
        """``name@version``: how a model's pins name it."""
        return f"{self.name}@{self.version}"

    @property
    def hash(self) -> str:
        return content_hash(self.spec())

    def __call__(self, columns: Columns) -> Any:
        return self.fn(columns)


def transform(
    inputs: Sequence[str], *, name: str | None = None, version: int = 1, default: Any = None,
) -> Callable[[Callable[[Columns], Any]], Transform]:
    """Declare a row transform over columns.

    >>> import numpy as np
    >>> @transform(inputs=["request.amount"])
    ... def log_amount(c):
    ...     return np.log1p(c["request.amount"])
    >>> float(log_amount({"request.amount": np.array([0.0])})[0])
    0.0
    """
    if isinstance(inputs, str) or not inputs:
        raise DefinitionError(f"transform inputs {inputs!r} must be a non-empty list",
                              fix="write @cl.transform(inputs=['view.feature', 'request.x'])")

    def wrap(fn: Callable[[Columns], Any]) -> Transform:
        label = check_name("transform", name or fn.__name__)
        return Transform(name=label, fn=fn, inputs=tuple(inputs), version=version,
                         default=default)

    return wrap
