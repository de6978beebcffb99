"""The protocols every backend implements. Stages see backends only through these.

Rows cross these boundaries as Arrow tables. Times are int64 microseconds since the epoch, UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from closedloop.data.sources import AnySource
from closedloop.errors import BackendError
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

    def latest(self, view: FeatureView, at: int, since: int | None = None,
               written: int | None = None) -> pa.Table:
        """Per entity (``key`` as a string), the snapshot row visible at ``at``: ``et``,
        ``tie``, then the view's ``row_columns`` (its source's delete flag, if it has one, then
        its features); only entities with a row that became visible in
        (``since``, ``at``] when ``since`` is given, or that the store was given after
        ``since`` (its created instant) or after the wall-clock instant ``written`` (its
        ``_ingested_at``; without ``written``, after ``since``)."""
        ...

    def tiles(self, view: FeatureView, hop: int, span: int, at: int,
              since: int | None = None, written: int | None = None) -> pa.Table:
        """Per entity and hop bucket ``b`` ≥ ``at // hop - span``, every aggregated column's
        partials over the rows visible at ``at``: ``n{i}, s{i}, c{i}, m{i}, lo{i}, hi{i},
        l{i}, o{i}`` (count; the sum as the pair s + c, exact to the engine's grid; M2; min,
        max, last, last's order); with ``since``, only the entities ``latest`` would take."""
        ...

    def append(self, source: AnySource, rows: pa.Table,
               unique: Sequence[str] | None = None) -> pa.Table:
        """Append rows to the source's event log in the offline store, durably and whole (a
        crash leaves all of them or none); later reads of the source include them. With
        ``unique``, the rows are a set on those columns: only the first of the rows sharing
        a value, and only if the source does not hold that value yet, is appended (checked and
        appended as one step, no other such append in between). Return the rows appended,
        in their order."""
        ...

    def read(self, source: AnySource, columns: Sequence[str] | None = None) -> pa.Table:
        """Every row the source holds (its files and its event log), or only ``columns``."""
        ...

    def lookup(self, keys: pa.Array | pa.ChunkedArray,
               values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """For each of ``keys``, the position in ``values`` (distinct, of the same type) of
        the equal value, null where there is none (int64)."""
        ...

    def encode(self, keys: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
        """``keys`` dictionary-encoded, as ``pyarrow.compute.dictionary_encode`` does (each
        distinct value once in the dictionary, in any order; a null key stays null)."""
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
    """Durable metadata: registered definitions."""

    def definitions(self) -> list[RegisteredDefinition]:
        """Every registered definition version."""
        ...

    def register(self, items: Sequence[RegisteredDefinition]) -> None:
        """Add definition versions, all or none, in one transaction."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True)
class RunRecord:
    """One training run as the metadata store keeps it: ``record`` is its lineage (plain JSON
    data), ``status`` ``running``, ``finished`` or ``failed`` (with ``error``)."""

    id: str
    model: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    record: dict[str, Any]
    error: str | None = None


class RunStore(Protocol):
    """Training runs: started, then finished or failed, never lost."""

    def start_run(self, run_id: str, model: str, record: dict[str, Any]) -> None:
        """Record a run as running."""
        ...

    def end_run(self, run_id: str, status: str, record: dict[str, Any],
                error: str | None = None) -> None:
        """Record a run's end: ``finished`` or ``failed``, with its final record."""
        ...

    def runs(self, model: str | None = None) -> list[RunRecord]:
        """Every run (of ``model``), oldest first."""
        ...


@dataclass(frozen=True)
class VersionRecord:
    """One registered model version: an immutable bundle, by its content hash."""

    model: str
    version: int
    bundle: str
    run_id: str
    created_at: datetime


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: to ``version`` from ``previous`` (None: newly set; a ``version``
    of None: removed)."""

    model: str
    alias: str
    version: int | None
    previous: int | None
    at: datetime


class ModelStore(Protocol):
    """Model versions and their aliases. Versions are numbered 1, 2, … per model, each number
    given once even to concurrent writers; alias moves are atomic and kept as a history."""

    def add_version(self, model: str, bundle: str, run_id: str) -> int:
        """Register a bundle as the model's next version; return its number."""
        ...

    def versions(self, model: str | None = None) -> list[VersionRecord]:
        """Every version (of ``model``), by model then number."""
        ...

    def move_aliases(self, model: str, moves: dict[str, int | None]) -> list[AliasMove]:
        """Point each alias at its version (None removes it), all in one transaction; a
        version that does not exist is refused and nothing moves."""
        ...

    def aliases(self, model: str) -> dict[str, int]:
        """The model's aliases and the versions they point at."""
        ...

    def alias_history(self, model: str) -> list[AliasMove]:
        """Every alias move of the model, oldest first."""
        ...


@dataclass(frozen=True)
class LadderRecord:
    """A model's promotion ladder as it stands: ``candidate`` climbing against ``baseline``
    (production when it started), at ``step`` (``gate`` … ``ramp``, or ``done``) with
    ``status`` (``running``; ``waiting``: for an approval; ``held``: on evidence, for a person;
    ``paused``; ``promoted`` or ``rolled_back``: finished), the candidate's ``share`` of the
    units, the policy it runs (``spec``), when the step began, and ``generation``, which
    every move increments (a move names the generation it read: a stale one is refused)."""

    model: str
    candidate: int
    baseline: int | None
    step: str
    status: str
    share: float
    spec: dict[str, Any]
    step_started_at: datetime
    generation: int
    ramp_index: int = 0

    @property
    def active(self) -> bool:
        return self.status not in ("promoted", "rolled_back")


@dataclass(frozen=True)
class LadderEvent:
    """One audited transition of a ladder: from (step, status) to (step, status), the
    action (``start``, ``advance``, ``hold``, ``wait``, ``approve``, ``pause``, ``resume``,
    ``rollback``, ``promote``), who took it, and the evidence it was taken on."""

    id: int
    model: str
    candidate: int
    action: str
    from_step: str | None
    to_step: str
    status: str
    share: float
    actor: str
    evidence: dict[str, Any]
    at: datetime


class LadderStore(Protocol):
    """The ladders' state, audit and the controllers' lease. Every change of a ladder is one
    transaction with its audit record (and the alias moves it makes): a process killed at any
    point leaves the ladder as it was before the change or after it, never between."""

    def ladder(self, model: str) -> LadderRecord | None:
        """The model's current (or last) ladder."""
        ...

    def ladders(self) -> list[LadderRecord]:
        ...

    def put_ladder(self, record: LadderRecord, event: LadderEvent, *, expect: int | None,
                   aliases: dict[str, int | None] | None = None) -> LadderRecord:
        """Write ``record`` (its generation one above ``expect``; ``expect`` None: the model
        has no active ladder) with its ``event`` and alias moves, atomically; a ``LadderMoved``
        when another writer changed the ladder since ``expect`` was read."""
        ...

    def ladder_events(self, model: str) -> list[LadderEvent]:
        """Every transition of the model's ladders, oldest first."""
        ...

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds: True when ``holder`` holds
        it now, False when another holder's lease has not expired."""
        ...

    def release_lease(self, name: str, holder: str) -> None:
        ...


@dataclass(frozen=True)
class ActionRecord:
    """One alert and what was done about it: the audit trail of monitoring. ``status``:
    ``awaiting_approval``, ``done``, ``failed``, ``released`` (a fallback or a freeze lifted)
    or ``declined``; ``evidence`` the figures the alert fired on; ``outcome`` what the
    playbook did (or why it could not)."""

    id: int
    model: str
    alert: str
    signal: str
    subject: str                     # the column, constraint or slice it fired on
    playbook: str
    status: str
    evidence: dict[str, Any]
    outcome: str
    actor: str
    at: datetime
    updated_at: datetime


class SwitchStore(Protocol):
    """Named switches per model that every process reads: the forced fallback
    (``fallback``) and the training windows frozen as contaminated (``freeze:…``)."""

    def switches(self, model: str) -> dict[str, dict[str, Any]]:
        ...

    def set_switch(self, model: str, name: str, value: dict[str, Any] | None) -> None:
        """Set a switch (None clears it)."""
        ...


class MonitorStore(SwitchStore, Protocol):
    """The monitors' audit trail (every alert, its evidence, the action and its outcome) and
    their switches."""

    def add_action(self, record: ActionRecord) -> ActionRecord:
        """Store a new action (its ``id`` is assigned); the stored record."""
        ...

    def update_action(self, action_id: int, *, status: str, outcome: str,
                      actor: str) -> ActionRecord:
        ...

    def actions(self, model: str | None = None) -> list[ActionRecord]:
        """Every action (of ``model``), oldest first."""
        ...

    def put_window_states(self, model: str, version: int, worker: str,
                          states: Mapping[int, dict[str, Any]], *, keep_since: int) -> None:
        """Replace what ``worker`` counted of each window (by start, µs) of one version (a
        JSON-able ``WindowState``), and drop the model's states of windows that start before
        ``keep_since``."""
        ...

    def window_states(self, model: str, version: int,
                      starts: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """Every worker's state of each window of ``starts`` that has any, by start."""
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

    def write_values(self, namespace: str, keys: Sequence[str],
                     values: Sequence[bytes]) -> None:
        """Set ``values`` under distinct ``keys`` of one namespace, all or none: ``write``'s
        bulk form (batch scores), with no tuple per item."""
        ...

    def read(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """The values of the keys, None where absent, in order, in one round trip."""
        ...

    async def read_async(self, keys: Sequence[tuple[str, str]]) -> list[bytes | None]:
        """``read`` on the running event loop: a networked store awaits its reply (other
        requests run meanwhile); an embedded one reads at once. Call ``aclose`` on that loop
        before it ends."""
        ...

    async def aclose(self) -> None:
        """Release the running event loop's connections (``read_async``'s)."""
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


def check_values(keys: Sequence[str], values: Sequence[bytes]) -> None:
    """``write_values``' one precondition, shared by the stores."""
    if len(keys) != len(values):
        raise BackendError(f"write_values got {len(keys)} keys for {len(values)} values",
                           fix="pass one value per key")


class PredictionLog(Protocol):
    """Every served prediction, appended durably per model; see ``backends/predictions.py``.

    ``append`` returns a future that resolves once the records are durable (``durable``
    mode) — a caller answers only then — or fails with a ``BackendError``; a failed write
    fails only its own appends, and the log stays open and tries again with the next one.
    Records of one writer are read back in the order they were appended."""

    @property
    def healthy(self) -> bool:
        """False from a failed write until a write or a probe of the backend succeeds."""
        ...

    def append(self, model: str, records: Sequence[Any]) -> Future[None]:
        """Queue records (dataclasses or mappings, JSON-serializable) of one model."""
        ...

    def flush(self) -> None:
        """Wait until everything appended so far is written."""
        ...

    def records(self, model: str) -> Iterator[dict[str, Any]]:
        """Every whole record of a model, each writer's in append order."""
        ...

    def read(self, model: str, columns: Mapping[str, pa.DataType] | None = None,
             kinds: Sequence[str] | None = None) -> pa.Table:
        """A model's records as an Arrow table (empty when nothing was logged); with
        ``columns``, only those fields, typed as given (null where a record lacks one); with
        ``kinds``, only the records whose ``kind`` is one of them."""
        ...

    def size(self, model: str) -> int:
        """Bytes the model's log holds."""
        ...

    def close(self) -> None:
        """Commit what is queued and stop the writer."""
        ...


class EventStream(Protocol):
    """Streams of records shared by consumer groups (Redis Streams): every record of a
    stream is delivered to one consumer of each group, and stays pending until acknowledged.
    Records are flat mappings of names to bytes."""

    def publish(self, stream: str, records: Sequence[Mapping[str, bytes]]) -> list[str]:
        """Append records in order; their ids."""
        ...

    def ensure_group(self, stream: str, group: str) -> None:
        """Create the consumer group (reading from the stream's start) unless it exists."""
        ...

    def read_group(self, stream: str, group: str, consumer: str, count: int,
                   block_ms: int) -> list[tuple[str, dict[str, bytes]]]:
        """Up to ``count`` records not yet delivered to the group, waiting up to
        ``block_ms``; each becomes pending for ``consumer``."""
        ...

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None:
        """Acknowledge records: no longer pending."""
        ...

    def claim(self, stream: str, group: str, consumer: str, min_idle_s: float,
              count: int = 1000) -> list[tuple[str, dict[str, bytes]]]:
        """Hand to ``consumer`` up to ``count`` records pending in ``group`` for
        ``min_idle_s`` or longer — those of a consumer that died before acknowledging."""
        ...

    def read_all(self, stream: str) -> list[tuple[str, dict[str, bytes]]]:
        """Every record of the stream, in order (no group involved)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class ArtefactStore(Protocol):
    """Immutable blobs by content hash: ``put`` stores once and returns the sha256; ``get``
    returns the bytes after checking them against it (``ArtefactCorrupted`` if they differ)."""

    def put(self, data: bytes) -> str:
        """Store ``data``; return its sha256 (hex)."""
        ...

    def get(self, digest: str) -> bytes:
        """The bytes stored under ``digest``, verified."""
        ...
