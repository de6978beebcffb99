"""Instants and durations at the boundary: UTC timestamps as int64 microseconds (naive ones
refused); durations as microseconds, parsed from ``"30s"``, ``"5m"``, ``"1h"``, ``"30d"``."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
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


INSTANT = pa.timestamp("us", tz="UTC")

#: How to make instants microsecond-exact; said by every error about a finer one.
FLOOR_FIX = ("floor them to the microsecond first, e.g. pandas .dt.floor('us') or "
             "pyarrow.compute.floor_temporal(column, unit='microsecond')")


def sub_micro(column: pa.ChunkedArray | pa.Array) -> np.ndarray[Any, Any]:
    """Which values of an aware or naive timestamp column fall between two microseconds
    (nulls: False). Only a nanosecond column can hold such values."""
    if not pa.types.is_timestamp(column.type) or column.type.unit != "ns":
        return np.zeros(len(column), dtype=bool)
    nanos = pc.fill_null(pc.cast(column, pa.int64()), 0).to_numpy(zero_copy_only=False)
    finer: np.ndarray[Any, Any] = nanos % 1000 != 0      # floor modulo: right before 1970 too
    return finer


def as_instants(column: pa.ChunkedArray | pa.Array, what: str) -> pa.ChunkedArray:
    """The one conversion of timestamps at every boundary (ingestion, push, entity rows, label
    rows): aware timestamps of any unit and zone become UTC instants in microseconds
    (``timestamp[us, tz=UTC]``); nulls stay null. A naive timestamp is refused, never guessed;
    an instant finer than a microsecond is refused, never rounded (``PointInTimeError``)."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column], column.type)
    if not pa.types.is_timestamp(column.type):
        raise PointInTimeError(f"{what} is {column.type}, not a timestamp",
                               fix="use timezone-aware UTC timestamps")
    if column.type.tz is None:
        raise PointInTimeError(
            f"{what} holds naive timestamps (no time zone); closedloop does not guess the zone",
            fix="make them UTC instants, e.g. pandas .dt.tz_localize('UTC') or "
                "pyarrow timestamp('us', tz='UTC')")
    if column.type == INSTANT:
        return column
    finer = sub_micro(column)
    if finer.any():
        nanos = pc.cast(column[int(np.argmax(finer))], pa.int64()).as_py()
        raise PointInTimeError(
            f"{what} has {int(finer.sum()):,} instant(s) finer than a microsecond, e.g. "
            f"{format_nanos(nanos)}; closedloop keeps instants to the microsecond and does "
            "not round them", fix=FLOOR_FIX)
    return pc.cast(column, INSTANT, safe=False)    # exact: nothing below a microsecond


def to_micros(column: pa.ChunkedArray | pa.Array, what: str) -> pa.ChunkedArray:
    """UTC instants as int64 µs (``as_instants``); a null is refused: every row needs its
    time."""
    instants = as_instants(column, what)
    if instants.null_count:
        raise PointInTimeError(f"{what} has {instants.null_count} null timestamps",
                               fix="every row needs its time")
    return pc.cast(instants, pa.int64())


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant_micros(at: object, what: str = "time") -> int:
    """A timezone-aware datetime as int µs since the epoch; a naive one is refused."""
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise PointInTimeError(f"{what} {at!r} is naive or not a datetime",
                               fix="pass a timezone-aware datetime, e.g. datetime.now(UTC)")
    return (at - _EPOCH) // timedelta(microseconds=1)


def format_instant(micros: int) -> str:
    """An instant in µs as ISO UTC: ``2026-03-01T12:00:00Z``, with the microseconds when it
    has some (``…T12:00:00.000001Z``)."""
    seconds, rest = divmod(micros, SECOND)
    text = f"{_EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}"
    return f"{text}.{rest:06d}Z" if rest else f"{text}Z"


def format_nanos(nanos: int) -> str:
    """An instant in nanoseconds as ISO UTC with its nine digits: ``…T00:00:00.123456789Z``."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    return f"{_EPOCH + timedelta(seconds=seconds):%Y-%m-%dT%H:%M:%S}.{rest:09d}Z"


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
