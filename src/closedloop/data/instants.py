"""Instants at the boundary: UTC timestamps as int64 microseconds, naive ones refused."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import PointInTimeError


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
