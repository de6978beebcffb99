"""``SQLMonitorStore``: the monitors' audit trail, switches and the workers' window states
(what each serving process counted per window, merged by the monitor), in the metadata database
(SQLite by default, PostgreSQL for scale-out), beside the ladders.

>>> from closedloop.backends.metadata import SQLMetadataStore
>>> store = SQLMonitorStore(SQLMetadataStore("sqlite://"))
>>> store.set_switch("fraud", "fallback", {"action": 1})
>>> store.switches("fraud")
{'fallback': {'action': 1}}
>>> store.set_switch("fraud", "fallback", None)
>>> store.switches("fraud")
{}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from closedloop.backends.base import ActionRecord
from closedloop.backends.metadata import SQLMetadataStore, _utc
from closedloop.errors import MonitoringError

_meta = sa.MetaData()
actions_table = sa.Table(
    "cl_monitor_actions", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("alert", sa.String(200), nullable=False),
    sa.Column("signal", sa.String(32), nullable=False),
    sa.Column("subject", sa.String(400), nullable=False),
    sa.Column("playbook", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
states_table = sa.Table(
    "cl_monitor_window_states", _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("start", sa.BigInteger, primary_key=True),
    sa.Column("worker", sa.String(200), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
switches_table = sa.Table(
    "cl_monitor_switches", _meta,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)


class SQLMonitorStore:
    """The ``MonitorStore`` protocol over a ``SQLMetadataStore``'s database."""

    def __init__(self, metadata: SQLMetadataStore) -> None:
        self.metadata = metadata
        self._made = False

    def _db(self) -> sa.Engine:
        engine = self.metadata._db()
        if not self._made:
            _meta.create_all(engine)
            self._made = True
        return engine

    def add_action(self, record: ActionRecord) -> ActionRecord:
        self._db()
        with self.metadata._write() as con:
            found = con.execute(actions_table.insert().values(
                model=record.model, alert=record.alert, signal=record.signal,
                subject=record.subject, playbook=record.playbook, status=record.status,
                evidence=json.dumps(record.evidence, sort_keys=True, default=str),
                outcome=record.outcome, actor=record.actor, at=record.at,
                updated_at=record.updated_at))
            key = found.inserted_primary_key
            assert key is not None
        return replace(record, id=int(key[0]))

    def update_action(self, action_id: int, *, status: str, outcome: str,
                      actor: str) -> ActionRecord:
        self._db()
        with self.metadata._write() as con:
            done = con.execute(actions_table.update().where(actions_table.c.id == action_id)
                               .values(status=status, outcome=outcome, actor=actor,
                                       updated_at=datetime.now(UTC)))
            if done.rowcount == 0:
                raise MonitoringError(f"no monitoring action {action_id}",
                                      fix="see the actions with `closedloop monitor audit`")
            row = con.execute(sa.select(actions_table).where(
                actions_table.c.id == action_id)).one()
        return _action(row)

    def actions(self, model: str | None = None) -> list[ActionRecord]:
        query = sa.select(actions_table).order_by(actions_table.c.id)
        if model is not None:
            query = query.where(actions_table.c.model == model)
        with self._db().connect() as con:
            return [_action(r) for r in con.execute(query).all()]

    def put_window_states(self, model: str, version: int, worker: str,
                          states: Mapping[int, dict[str, Any]], *, keep_since: int) -> None:
        self._db()
        t = states_table
        now = datetime.now(UTC)
        with self.metadata._write() as con:
            con.execute(t.delete().where(t.c.model == model, t.c.start < keep_since))
            if states:
                con.execute(t.delete().where(t.c.model == model, t.c.version == version,
                                             t.c.worker == worker,
                                             t.c.start.in_([int(s) for s in states])))
                con.execute(t.insert(), [
                    {"model": model, "version": version, "start": int(start), "worker": worker,
                     "state": json.dumps(state, separators=(",", ":")), "at": now}
                    for start, state in states.items()])

    def window_states(self, model: str, version: int,
                      starts: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        t = states_table
        with self._db().connect() as con:
            rows = con.execute(sa.select(t.c.start, t.c.state).where(
                t.c.model == model, t.c.version == version,
                t.c.start.in_([int(s) for s in starts])).order_by(t.c.start, t.c.worker)).all()
        out: dict[int, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(int(row.start), []).append(json.loads(row.state))
        return out

    def switches(self, model: str) -> dict[str, dict[str, Any]]:
        with self._db().connect() as con:
            rows = con.execute(sa.select(switches_table).where(
                switches_table.c.model == model).order_by(switches_table.c.name)).all()
        return {r.name: json.loads(r.value) for r in rows}

    def set_switch(self, model: str, name: str, value: dict[str, Any] | None) -> None:
        self._db()
        with self.metadata._write() as con:
            con.execute(switches_table.delete().where(switches_table.c.model == model,
                                                      switches_table.c.name == name))
            if value is not None:
                con.execute(switches_table.insert().values(
                    model=model, name=name, value=json.dumps(value, sort_keys=True, default=str),
                    at=datetime.now(UTC)))


def _action(row: Any) -> ActionRecord:
    return ActionRecord(int(row.id), row.model, row.alert, row.signal, row.subject,
                        row.playbook, row.status, json.loads(row.evidence), row.outcome,
                        row.actor, _utc(row.at),  # type: ignore[arg-type]
                        _utc(row.updated_at))  # type: ignore[arg-type]


__all__ = ["SQLMonitorStore"]
