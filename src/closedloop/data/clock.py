"""The one clock: where every "now" of a project comes from.

Each command and API that reads "now" — materialize, push, ingest's arrival stamp, an online
read, a served prediction, batch scoring, a training cutoff, the labels known — takes it from
the project's ``Clock`` unless it is handed an instant of its own (``at=``, ``--at``):

* **wall** (the default): the system clock;
* **fixed**: one instant, ``[clock] at = "2025-06-01T00:00:00Z"`` or ``--at`` — a project on
  historical data is materialized, served and scored as of that instant;
* **replay**: ``[clock] replay = true`` or ``closedloop serve --replay`` — the server reads
  each request's own instant from a field of every instance (``[clock] field``; default: the
  model's rows source's timestamp column), so a day of history replayed in event-time order,
  with its events pushed in arrival order beside it, is served exactly as training saw it.
  Everything that is not a request keeps the fixed instant, or the wall clock.

Physical facts stay on the wall clock whatever the mode: when the store was given a row
(``_ingested_at``), when a materialization began, when a batch score or a stream prediction
was written (its lag), CPU usage, run ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from closedloop.data.instants import format_instant, instant_micros, now_micros
from closedloop.errors import PointInTimeError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_instant(text: object, what: str = "time") -> int:
    """An ISO 8601 instant with its zone (``2026-03-01T12:00Z``) — or an aware datetime — as
    int µs; text that does not parse or carries no zone is refused (closedloop never guesses a
    zone)."""
    if isinstance(text, datetime):
        return instant_micros(text, what)
    if not isinstance(text, str):
        raise PointInTimeError(f"{what} {text!r} is not an ISO 8601 instant",
                               fix="write e.g. 2026-03-01T12:00:00Z")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PointInTimeError(f"{what} {text!r} does not parse",
                               fix="write an ISO 8601 instant with its zone, e.g. "
                                   "2026-03-01T12:00Z") from None
    if value.tzinfo is None:
        raise PointInTimeError(f"{what} {text!r} has no time zone; closedloop does not guess it",
                               fix="add Z or an offset, e.g. 2026-03-01T12:00Z")
    return instant_micros(value, what)


@dataclass(frozen=True, slots=True)
class Clock:
    """A project's clock (see module): ``at`` a fixed instant in µs (None: the wall clock);
    ``replay``: served requests carry their own instant in ``field``."""

    at: int | None = None
    replay: bool = False
    field: str | None = None

    @classmethod
    def of(cls, at: str | datetime | None = None, *, replay: bool = False,
           field: str | None = None) -> Clock:
        """A clock from an ISO instant or aware datetime (None: the wall clock)."""
        return cls(None if at is None else parse_instant(at, "clock instant"), replay, field)

    def now(self) -> int:
        """Now in µs: the fixed instant, or the wall clock."""
        return now_micros() if self.at is None else self.at

    def instant(self, at: datetime | None, what: str = "at") -> int:
        """``at`` in µs when given, else now."""
        return self.now() if at is None else instant_micros(at, what)

    def datetime(self, at: datetime | None = None) -> datetime:
        """``at`` when given, else now, as an aware datetime."""
        return at if at is not None else _EPOCH + timedelta(microseconds=self.now())

    @property
    def fixed(self) -> bool:
        """Whether "now" is a given instant rather than the wall clock."""
        return self.at is not None

    def describe(self) -> str:
        base = "the wall clock" if self.at is None else f"fixed at {format_instant(self.at)}"
        if self.replay:
            return f"replay (each request's {self.field or 'event time'}); otherwise {base}"
        return base


WALL = Clock()


def clock_text(clock: Clock) -> str:
    """A clock as text, to hand to another process (``closedloop serve``'s workers)."""
    return json.dumps({"at": clock.at, "replay": clock.replay, "field": clock.field})


def clock_from_text(text: str) -> Clock:
    """The clock ``clock_text`` wrote."""
    data = json.loads(text)
    return Clock(data["at"], data["replay"], data["field"])
