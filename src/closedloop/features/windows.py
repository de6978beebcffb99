"""Durations, windows and the tile ("hop") rule — the one written semantics of windows.

All times are integer microseconds since the Unix epoch, UTC. A window of length ``w`` with
hop ``h`` holds, at time t, every *visible* event (event time ≤ t and arrival time ≤ t) whose
event time is ≥ ``floor(t / h) * h - w``. The window's tail is rounded down to a hop boundary,
so it covers between w and w + h of history; its head is exact. Offline and online both compute
exactly this (online keeps one partial aggregate — a tile — per entity and hop).

>>> parse_duration("90d") == 90 * DAY
True
>>> hop_for(parse_duration("1h")) == 5 * MINUTE
True
>>> window_start(t=10 * HOUR + 7 * MINUTE, length=HOUR, hop=5 * MINUTE) == 9 * HOUR + 5 * MINUTE
True
"""

from __future__ import annotations

from closedloop.data.instants import (  # noqa: F401 - the units, for this module's users
    DAY,
    HOUR,
    MINUTE,
    SECOND,
    WEEK,
    parse_duration,
)
from closedloop.errors import DefinitionError

#: The hops a window may be tiled by, from finest to coarsest.
HOPS = (SECOND, 10 * SECOND, MINUTE, 5 * MINUTE, HOUR, DAY)

#: A window is cut into at least this many hops (so the tail adds at most 1/12 of its length).
MIN_HOPS_PER_WINDOW = 12

MAX_WINDOW = 366 * DAY


def parse_window(text: object) -> int:
    """Parse a window length; windows run from one second to 366 days."""
    micros = parse_duration(text, what="window")
    if micros > MAX_WINDOW:
        raise DefinitionError(f"window {text!r} is longer than 366 days",
                              fix="use a window of at most '366d'")
    return micros


def hop_for(window: int) -> int:
    """The hop of a window: the coarsest of HOPS that divides it into ≥ 12 whole pieces."""
    best = HOPS[0]
    for hop in HOPS:
        if window % hop == 0 and hop * MIN_HOPS_PER_WINDOW <= window:
            best = hop
    return best


def window_start(t: int, length: int, hop: int) -> int:
    """First event time (inclusive) inside the window that ends at ``t``."""
    return (t // hop) * hop - length
