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

import re

from closedloop.errors import DefinitionError

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY

_UNITS = {"s": SECOND, "m": MINUTE, "h": HOUR, "d": DAY, "w": WEEK}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")

#: The hops a window may be tiled by, from finest to coarsest.
HOPS = (SECOND, 10 * SECOND, MINUTE, 5 * MINUTE, HOUR, DAY)

#: A window is cut into at least this many hops (so the tail adds at most 1/12 of its length).
MIN_HOPS_PER_WINDOW = 12

MAX_WINDOW = 366 * DAY


def parse_duration(text: object, *, what: str = "duration") -> int:
    """Parse ``"30s"``, ``"5m"``, ``"1h"``, ``"30d"``, ``"2w"`` into microseconds."""
    if not isinstance(text, str):
        raise DefinitionError(f"{what} {text!r} is not a string",
                              fix="write durations like '30s', '5m', '1h', '30d', '2w'")
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
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
