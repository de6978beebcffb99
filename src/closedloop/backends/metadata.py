"""The metadata store through SQLAlchemy: SQLite by default, PostgreSQL for scale-out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from closedloop.backends.base import RegisteredDefinition
from closedloop.errors import BackendError, BackendUnavailable, VersionConflict

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
                engine = sa.create_engine(url)
                _meta.create_all(engine)
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

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
