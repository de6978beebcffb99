"""The metadata store through SQLAlchemy: SQLite by default, PostgreSQL for scale-out.

It keeps registered definitions, training runs, model versions and aliases. Writers that race
(two processes registering versions or moving aliases at once) are serialised by the database:
SQLite takes its write lock at the start of each write transaction (``BEGIN IMMEDIATE``) and
waits for it; on PostgreSQL a version number taken twice violates the primary key and the
loser retries with the next. No write is lost and no number is given twice.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from closedloop.backends.base import (
    AliasMove,
    LadderEvent,
    LadderRecord,
    RegisteredDefinition,
    RunRecord,
    VersionRecord,
)
from closedloop.errors import (
    BackendError,
    BackendUnavailable,
    LadderMoved,
    PromotionBlocked,
    RegistryError,
    VersionConflict,
    VersionNotFound,
)

T = TypeVar("T")

_meta = sa.MetaData()
definitions_table = sa.Table(
    "cl_definitions", _meta,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
)
runs_table = sa.Table(
    "cl_runs", _meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
)
versions_table = sa.Table(
    "cl_model_versions", _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("bundle", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
aliases_table = sa.Table(
    "cl_aliases", _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
alias_moves_table = sa.Table(
    "cl_alias_moves", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("version", sa.Integer),
    sa.Column("previous", sa.Integer),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


ladders_table = sa.Table(
    "cl_ladders", _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("candidate", sa.Integer, nullable=False),
    sa.Column("baseline", sa.Integer),
    sa.Column("step", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("ramp_index", sa.Integer, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
)
ladder_events_table = sa.Table(
    "cl_ladder_events", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("candidate", sa.Integer, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("from_step", sa.String(16)),
    sa.Column("to_step", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
leases_table = sa.Table(
    "cl_leases", _meta,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("holder", sa.String(200), nullable=False),
    sa.Column("expires", sa.Float, nullable=False),     # seconds since the epoch
)


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for what was stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class SQLMetadataStore:
    """Metadata in any SQLAlchemy database. ``root`` anchors relative SQLite paths.

    >>> store = SQLMetadataStore("sqlite://")
    >>> store.definitions()
    []
    >>> store.close()
    """

    def __init__(self, url: str, root: str | Path = ".") -> None:
        self.url = url
        self.root = Path(root)
        self._engine: sa.Engine | None = None

    def _db(self) -> sa.Engine:
        if self._engine is None:
            url = sa.make_url(self.url)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                path = Path(url.database)
                if not path.is_absolute():
                    path = self.root / path
                path.parent.mkdir(parents=True, exist_ok=True)
                url = url.set(database=str(path))
            try:
                if url.get_backend_name() == "sqlite":
                    engine = sa.create_engine(url, connect_args={"timeout": 60})
                    _serialise_sqlite_writes(engine)
                else:
                    engine = sa.create_engine(url, pool_pre_ping=True)
                _create_tables(engine)
            except sa.exc.OperationalError as exc:
                raise BackendUnavailable(f"metadata store {self.url!r} is unreachable: {exc.orig}",
                                         fix="start the database or fix [metadata] url") from exc
            self._engine = engine
        return self._engine

    def definitions(self) -> list[RegisteredDefinition]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(definitions_table).order_by(
                definitions_table.c.kind, definitions_table.c.name,
                definitions_table.c.version)).all()
        return [RegisteredDefinition(r.kind, r.name, r.version, r.hash, json.loads(r.spec))
                for r in rows]

    def register(self, items: Sequence[RegisteredDefinition]) -> None:
        now = datetime.now(UTC)
        try:
            with self._db().begin() as con:
                for item in items:
                    con.execute(definitions_table.insert().values(
                        kind=item.kind, name=item.name, version=item.version, hash=item.hash,
                        spec=json.dumps(item.spec, sort_keys=True, default=str),
                        registered_at=now))
        except sa.exc.IntegrityError as exc:
            raise VersionConflict(f"another writer registered one of these versions first: "
                                  f"{exc.orig}", fix="run `closedloop apply` again") from exc
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"metadata store {self.url!r} failed: {exc}",
                               fix="check the database") from exc

    # -- writes that race --------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        try:
            with self._db().begin() as con:
                yield con
        except (RegistryError, VersionConflict, PromotionBlocked):
            raise
        except sa.exc.IntegrityError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise BackendError(f"metadata store {self.url!r} failed: {exc}",
                               fix="check the database") from exc

    def _retrying(self, step: Callable[[sa.Connection], T], attempts: int = 50) -> T:
        """Run one write transaction, again when a concurrent writer took the same key."""
        for attempt in range(attempts):
            try:
                with self._write() as con:
                    return step(con)
            except sa.exc.IntegrityError:
                if attempt == attempts - 1:
                    raise BackendError("metadata store: too many concurrent writers took the "
                                       "same key", fix="retry") from None
                time.sleep(random.uniform(0.001, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- runs ------------------------------------------------------------------------------
    def start_run(self, run_id: str, model: str, record: dict[str, Any]) -> None:
        with self._write() as con:
            con.execute(runs_table.insert().values(
                id=run_id, model=model, status="running", started_at=datetime.now(UTC),
                record=_dump(record)))

    def end_run(self, run_id: str, status: str, record: dict[str, Any],
                error: str | None = None) -> None:
        if status not in ("finished", "failed"):
            raise BackendError(f"run status {status!r} is not finished or failed",
                               fix="end a run as finished or failed")
        with self._write() as con:
            done = con.execute(runs_table.update().where(runs_table.c.id == run_id).values(
                status=status, ended_at=datetime.now(UTC), record=_dump(record), error=error))
            if done.rowcount != 1:
                raise VersionNotFound(f"there is no run {run_id!r}", fix="start it first")

    def runs(self, model: str | None = None) -> list[RunRecord]:
        query = sa.select(runs_table).order_by(runs_table.c.started_at, runs_table.c.id)
        if model is not None:
            query = query.where(runs_table.c.model == model)
        with self._db().connect() as con:
            rows = con.execute(query).all()
        return [RunRecord(r.id, r.model, r.status, _utc(r.started_at),  # type: ignore[arg-type]
                          _utc(r.ended_at), json.loads(r.record), r.error) for r in rows]

    # -- model versions and aliases --------------------------------------------------------
    def add_version(self, model: str, bundle: str, run_id: str) -> int:
        def step(con: sa.Connection) -> int:
            top = con.execute(sa.select(sa.func.max(versions_table.c.version)).where(
                versions_table.c.model == model)).scalar()
            number = int(top or 0) + 1
            con.execute(versions_table.insert().values(
                model=model, version=number, bundle=bundle, run_id=run_id,
                created_at=datetime.now(UTC)))
            return number
        return self._retrying(step)

    def versions(self, model: str | None = None) -> list[VersionRecord]:
        query = sa.select(versions_table).order_by(versions_table.c.model,
                                                   versions_table.c.version)
        if model is not None:
            query = query.where(versions_table.c.model == model)
        with self._db().connect() as con:
            rows = con.execute(query).all()
        return [VersionRecord(r.model, r.version, r.bundle, r.run_id,
                              _utc(r.created_at))  # type: ignore[arg-type]
                for r in rows]

    def move_aliases(self, model: str, moves: dict[str, int | None]) -> list[AliasMove]:
        return self._retrying(lambda con: _move_aliases(con, model, moves))

    def aliases(self, model: str) -> dict[str, int]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(aliases_table.c.alias, aliases_table.c.version).where(
                aliases_table.c.model == model).order_by(aliases_table.c.alias)).all()
        return {str(a): int(v) for a, v in rows}

    def alias_history(self, model: str) -> list[AliasMove]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(alias_moves_table).where(
                alias_moves_table.c.model == model).order_by(alias_moves_table.c.id)).all()
        return [AliasMove(r.model, r.alias, r.version, r.previous,
                          _utc(r.at))  # type: ignore[arg-type]
                for r in rows]

    # -- ladders ------------------------------------------------------------------------------
    def ladder(self, model: str) -> LadderRecord | None:
        with self._db().connect() as con:
            row = con.execute(sa.select(ladders_table).where(
                ladders_table.c.model == model)).first()
        return None if row is None else _ladder(row)

    def ladders(self) -> list[LadderRecord]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(ladders_table).order_by(ladders_table.c.model)).all()
        return [_ladder(r) for r in rows]

    def put_ladder(self, record: LadderRecord, event: LadderEvent, *, expect: int | None,
                   aliases: dict[str, int | None] | None = None) -> LadderRecord:
        def step(con: sa.Connection) -> LadderRecord:
            found = con.execute(sa.select(ladders_table).where(
                ladders_table.c.model == record.model).with_for_update()).first()
            values = {"candidate": record.candidate, "baseline": record.baseline,
                      "step": record.step, "status": record.status, "share": record.share,
                      "ramp_index": record.ramp_index, "spec": _dump(record.spec),
                      "step_started_at": record.step_started_at}
            if expect is None:
                if found is not None and _ladder(found).active:
                    raise LadderMoved(
                        f"model {record.model!r} is already in a ladder (version "
                        f"{found.candidate}, {found.step}, {found.status})",
                        fix=f"finish it first: closedloop ladder rollback {record.model}")
                generation = 1 if found is None else int(found.generation) + 1
                if found is None:
                    con.execute(ladders_table.insert().values(
                        model=record.model, generation=generation, **values))
                else:
                    con.execute(ladders_table.update().where(
                        ladders_table.c.model == record.model).values(
                        generation=generation, **values))
            else:
                if found is None or int(found.generation) != expect:
                    raise LadderMoved(f"the ladder of {record.model!r} moved while this change "
                                      "was being decided", fix="read it again and retry")
                generation = expect + 1
                con.execute(ladders_table.update().where(
                    ladders_table.c.model == record.model).values(
                    generation=generation, **values))
            if aliases:
                _move_aliases(con, record.model, aliases)
            con.execute(ladder_events_table.insert().values(
                model=event.model, candidate=event.candidate, action=event.action,
                from_step=event.from_step, to_step=event.to_step, status=event.status,
                share=event.share, actor=event.actor, evidence=_dump(event.evidence),
                at=event.at))
            row = con.execute(sa.select(ladders_table).where(
                ladders_table.c.model == record.model)).one()
            return _ladder(row)
        return self._retrying(step)

    def ladder_events(self, model: str) -> list[LadderEvent]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(ladder_events_table).where(
                ladder_events_table.c.model == model).order_by(ladder_events_table.c.id)).all()
        return [LadderEvent(r.id, r.model, r.candidate, r.action, r.from_step, r.to_step,
                            r.status, float(r.share), r.actor, json.loads(r.evidence),
                            _utc(r.at))  # type: ignore[arg-type]
                for r in rows]

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        def step(con: sa.Connection) -> bool:
            now = time.time()
            found = con.execute(sa.select(leases_table).where(
                leases_table.c.name == name).with_for_update()).first()
            if found is None:
                con.execute(leases_table.insert().values(name=name, holder=holder,
                                                         expires=now + ttl_s))
                return True
            if found.holder != holder and found.expires > now:
                return False
            con.execute(leases_table.update().where(leases_table.c.name == name).values(
                holder=holder, expires=now + ttl_s))
            return True
        return self._retrying(step)

    def release_lease(self, name: str, holder: str) -> None:
        with self._write() as con:
            con.execute(leases_table.delete().where(leases_table.c.name == name,
                                                    leases_table.c.holder == holder))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _move_aliases(con: sa.Connection, model: str,
                  moves: dict[str, int | None]) -> list[AliasMove]:
    """Alias moves inside a write transaction (see ``move_aliases``)."""
    now = datetime.now(UTC)
    known = set(con.execute(sa.select(versions_table.c.version).where(
        versions_table.c.model == model)).scalars())
    # Lock the rows of the aliases being moved (PostgreSQL; SQLite holds its write lock
    # already), so a concurrent move waits and then sees this one as its previous.
    current = dict(con.execute(
        sa.select(aliases_table.c.alias, aliases_table.c.version)
        .where(aliases_table.c.model == model, aliases_table.c.alias.in_(list(moves)))
        .with_for_update()).all())
    done = []
    for alias, version in moves.items():
        if version is not None and version not in known:
            raise VersionNotFound(f"model {model!r} has no version {version} for alias "
                                  f"{alias!r}", fix=f"its versions are {sorted(known)}")
        previous = current.get(alias)
        where = (aliases_table.c.model == model) & (aliases_table.c.alias == alias)
        if version is None:
            if previous is None:
                continue
            con.execute(aliases_table.delete().where(where))
        elif previous is None:
            con.execute(aliases_table.insert().values(
                model=model, alias=alias, version=version, updated_at=now))
        else:
            con.execute(aliases_table.update().where(where).values(
                version=version, updated_at=now))
        current[alias] = version
        con.execute(alias_moves_table.insert().values(
            model=model, alias=alias, version=version, previous=previous, at=now))
        done.append(AliasMove(model, alias, version, previous, now))
    return done


def _ladder(row: Any) -> LadderRecord:
    return LadderRecord(row.model, row.candidate, row.baseline, row.step, row.status,
                        float(row.share), json.loads(row.spec),
                        _utc(row.step_started_at),  # type: ignore[arg-type]
                        int(row.generation), int(row.ramp_index))


def _create_tables(engine: sa.Engine) -> None:
    """Create the tables that are missing; another process creating them at the same moment
    wins the race and this one finds them made."""
    for attempt in range(5):
        try:
            _meta.create_all(engine)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
            if attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))


def _dump(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str)


def _serialise_sqlite_writes(engine: sa.Engine) -> None:
    """Make pysqlite begin every transaction with ``BEGIN IMMEDIATE``, so a write transaction
    holds the write lock from its first read: two writers queue instead of deadlocking."""
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.isolation_level = None       # we say when transactions begin

    @sa.event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
