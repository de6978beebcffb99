"""Instants and durations at the boundary: UTC timestamps as int64 microseconds (naive ones
refused); durations as microseconds, parsed from ``"30s"``, ``"5m"``, ``"1h"``, ``"30d"``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import DefinitionError, PointInTimeError

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

_UNITS = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def to_micros(column: pa.ChunkedArray, what: str) -> pa.ChunkedArray:
    """UTC instants as int64 µs; naive timestamps are refused, never guessed."""
    if not pa.types.is_timestamp(column.type):
        raise PointInTimeError(f"{what} is {column.type}, not a timestamp",
                               fix="use timezone-aware UTC timestamps")
    if column.type.tz is None:
        raise PointInTimeError(
            f"{what} holds naive timestamps (no time zone); closedloop does not guess the zone",
            fix="make them UTC instants, e.g. pandas .dt.tz_localize('UTC') or "
                "pyarrow timestamp('us', tz='UTC')")
    if column.null_count:
        raise PointInTimeError(f"{what} has {column.null_count} null timestamps",
                               fix="every row needs its time")
    return pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant_micros(at: object, what: str = "time") -> int:
    """A timezone-aware datetime as int µs since the epoch; a naive one is refused."""
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise PointInTimeError(f"{what} {at!r} is naive or not a datetime",
                               fix="pass a timezone-aware datetime, e.g. datetime.now(UTC)")
    return (at - _EPOCH) // timedelta(microseconds=1)


def now_micros() -> int:
    """Now, as int µs since the epoch."""
    return time.time_ns() // 1000


def parse_duration(text: object, *, what: str = "duration", zero: bool = False) -> int:
    """Parse ``"30s"``, ``"5m"``, ``"1h"``, ``"30d"``, ``"2w"`` (or a ``timedelta``) into
    microseconds; ``zero`` admits a zero duration (``"0s"``)."""
    if isinstance(text, timedelta) and text >= timedelta(0):
        micros = round(text / timedelta(microseconds=1))
        if micros or zero:
            return micros
    if not isinstance(text, str):
        raise DefinitionError(f"{what} {text!r} is not a string",
                              fix="write durations like '30s', '5m', '1h', '30d', '2w'")
    match = _DURATION.match(text)
    if match is None or (int(match.group(1)) == 0 and not zero):
        raise DefinitionError(f"{what} {text!r} does not parse",
                              fix="write a positive whole number and a unit s, m, h, d or w, "
                                  "e.g. '30s', '5m', '1h', '30d'")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_duration(micros: int) -> str:
    """The shortest exact spelling of a duration: ``format_duration(HOUR) == '1h'``."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"
