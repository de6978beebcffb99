"""Windowed aggregations as ranges over sorted events: the offline engine's in-memory plan.

The same semantics as the SQL plan (docs/architecture.md, "Feature semantics"): at time t a
window of length w and hop h holds the entity's *visible* events (event time ≤ t, and arrival
≤ t) with event time ≥ floor(t / h)·h − w.

Events are sorted by (entity code, event time). For a row (entity, t):

1. The events of its entity with event time in [floor(t/h)·h − w, t] are one contiguous range
   [lo, hi): two binary searches, on a composite (code, time) key, done for all rows at once.
2. Some of them may still be in flight (arrived after t). A running maximum of the visibility
   per entity, in event-time order, bounds them: at the first position j (scanning back from
   hi) where it is ≤ t, every event of the entity up to j is visible. The scan visits only the
   events after j — usually none or the row's own event — in a few vectorised steps; the
   visible events it passes are kept as "extras". A row still scanning after ``depth`` steps
   (a very late event keeps the maximum high) has its window's events listed one by one
   instead.
3. Each aggregate is then the visible prefix range [lo, j] plus the extras:
   count from prefix counts; sum and mean from prefix sums of exact integers (each value times
   2^k, held in two int64 limbs, so a range's sum is exact whatever its length and the result
   is the same bits on every run); min and max from a sparse table (O(1) per range).

Rows go through in chunks (every per-row temporary stays small and in cache) on the engine's
threads; each chunk writes only its own rows' outputs.

Only ``count``, ``sum``, ``mean``, ``min`` and ``max`` of numeric columns with finite values
are computed here; the engine computes the rest with the SQL plan. Memory is O(events ×
columns × log(longest range)), so the engine chooses this plan only when it fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from closedloop.backends.windowsql import sum_exponent
from closedloop.features.definitions import WindowedFeature

FNS = frozenset({"count", "sum", "mean", "min", "max"})
_LIMB = 32
_BLOCK = 1 << 16          # values per block when building per-event arrays
_BOUND = 1 << 62          # composite keys stay below this
Array = np.ndarray[Any, Any]


class TooDeep(Exception):
    """The rows whose window events must be listed one by one would list too many."""


@dataclass
class Column:
    """One aggregated column of the sorted events: values (nulls as 0) and which are valid."""

    values: Array
    valid: Array
    arrow_type: pa.DataType
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def limbs(self) -> tuple[int, Array, Array]:
        """k, and the prefix sums of each value × 2^k as two int64 limbs: value·2^k ≈
        high·2^32 + low with 0 ≤ low ≤ 2^32, rounded to an integer once. k is as large as
        keeps every prefix sum below 2^63 (from the largest magnitude and the count); an
        integer column takes k = 0 and is exact.
        Computed a block at a time, so the temporaries stay small."""
        if "limbs" not in self._cache and self.values.dtype.kind == "i":
            # Integers are exact as they are (k = 0): high·2^32 + low with no rounding at all,
            # whatever their magnitude; 2^31 · n stays below 2^63 for n < 2^32 events.
            x = self.values.astype(np.int64, copy=False)
            ph = np.zeros(x.size + 1, dtype=np.int64)
            pl = np.zeros(x.size + 1, dtype=np.int64)
            np.cumsum(x >> _LIMB, out=ph[1:])
            np.cumsum(x & ((1 << _LIMB) - 1), out=pl[1:])
            self._cache["limbs"] = (0, ph, pl)
        if "limbs" not in self._cache:
            x = self.values
            n = max(int(x.size), 1)
            largest = float(np.max(np.abs(x))) if x.size else 0.0
            k = sum_exponent(largest, n)               # the grid of every plan
            ph = np.empty(x.size + 1, dtype=np.int64)
            pl = np.empty(x.size + 1, dtype=np.int64)
            ph[0] = pl[0] = 0
            for a in range(0, x.size, _BLOCK):
                y = np.ldexp(x[a:a + _BLOCK].astype(np.float64, copy=False), k)
                high = np.floor(np.ldexp(y, -_LIMB))
                ph[a + 1:a + 1 + y.size] = high
                pl[a + 1:a + 1 + y.size] = np.rint(y - np.ldexp(high, _LIMB))
            np.cumsum(ph[1:], out=ph[1:])
            np.cumsum(pl[1:], out=pl[1:])
            self._cache["limbs"] = (k, ph, pl)
        out: tuple[int, Array, Array] = self._cache["limbs"]
        return out

    def counts(self) -> Array:
        if "counts" not in self._cache:
            self._cache["counts"] = _prefix(self.valid.astype(np.int64))
        out: Array = self._cache["counts"]
        return out

    def identity(self, fn: str) -> Any:
        """The identity of min or max for the values' dtype."""
        if self.values.dtype.kind == "f":
            return np.inf if fn == "min" else -np.inf
        info = np.iinfo(self.values.dtype)
        return info.max if fn == "min" else info.min

    def table(self, fn: str, levels: int) -> Array:
        """Sparse table of min or max with ``levels`` levels in one flat array: level i, at
        offset ``offsets(n, levels)[i]``, holds the result over [p, p + 2^i) for every p;
        level 0 is the values with nulls as the identity of min or max."""
        key = f"t_{fn}"
        if key in self._cache and self._cache[key][0] >= levels:
            out: Array = self._cache[key][1]
            return out
        n = self.values.size
        at = offsets(n, levels)
        flat = np.empty(int(at[-1]), dtype=self.values.dtype)
        flat[:n] = self.identity(fn)
        np.copyto(flat[:n], self.values, where=self.valid)
        op = np.minimum if fn == "min" else np.maximum
        for i in range(1, levels):
            prev, half, size = int(at[i - 1]), 1 << (i - 1), int(at[i + 1] - at[i])
            op(flat[prev:prev + size], flat[prev + half:prev + half + size],
               out=flat[int(at[i]):int(at[i]) + size])
        self._cache[key] = (levels, flat)
        return flat


def offsets(n: int, levels: int) -> Array:
    """Where each level of a sparse table over n values starts (and, last, its size)."""
    sizes = [max(n - (1 << i) + 1, 0) for i in range(levels)]
    return np.cumsum([0, *sizes]).astype(np.int64)


@dataclass
class Events:
    """A source's events sorted by (code, event time): code, event time, visibility (all
    int64 microseconds) and the aggregated columns."""

    code: Array
    et: Array
    v: Array
    columns: dict[str, Column]


def _prefix(a: Array) -> Array:
    out = np.empty(a.size + 1, dtype=a.dtype)
    out[0] = 0
    np.cumsum(a, out=out[1:])
    return out


def _chunks(code: Array, qcode: Array, span: int) -> list[tuple[int, int, int, int, int]]:
    """Slices of codes small enough that (code − first) × span stays below 2^62:
    (first code, event start, event end, query start, query end); both sides sorted by code."""
    if code.size == 0:
        return []
    per = max(1, _BOUND // max(span, 1))
    last = max(int(code[-1]), int(qcode[-1]) if qcode.size else 0)
    if per > last:
        return [(0, 0, code.size, 0, qcode.size)]
    out = []
    for first in range(0, last + 1, per):
        e0, e1 = np.searchsorted(code, [first, first + per])
        q0, q1 = np.searchsorted(qcode, [first, first + per])
        if e1 > e0 or q1 > q0:
            out.append((first, int(e0), int(e1), int(q0), int(q1)))
    return out


def search(code: Array, t: Array, qcode: Array, qt: Array, side: str) -> Array:
    """For each query (code, time), the number of events before it in (code, time) order:
    all events of smaller codes, and those of its code with time < qt (``side="left"``) or
    ≤ qt (``"right"``). ``code``/``t`` sorted by (code, t); queries sorted by code."""
    out = np.zeros(qcode.size, dtype=np.int64)
    if code.size == 0 or qcode.size == 0:
        return out
    lo, hi = int(t.min()), int(t.max())
    span = hi - lo + 3
    for first, e0, e1, q0, q1 in _chunks(code, qcode, span):
        if q1 == q0:
            continue
        if e1 == e0:
            out[q0:q1] = e0
            continue
        if span >= _BOUND:             # absurd time spans: one code at a time, raw times
            out[q0:q1] = e0 + np.searchsorted(t[e0:e1], qt[q0:q1], side=side)  # type: ignore[call-overload]
            continue
        base = (code[e0:e1] - first) * span
        keys = base + (t[e0:e1] - (lo - 1))
        qkeys = (qcode[q0:q1] - first) * span + (np.clip(qt[q0:q1], lo - 1, hi + 1) - (lo - 1))
        out[q0:q1] = e0 + np.searchsorted(keys, qkeys, side=side)  # type: ignore[call-overload]
    return out


def running_max(code: Array, v: Array) -> Array:
    """Per code (sorted), the running maximum of ``v``."""
    out = np.empty_like(v)
    if v.size == 0:
        return out
    lo, hi = int(v.min()), int(v.max())
    span = hi - lo + 1
    for first, e0, e1, _, _ in _chunks(code, code[:0], span):
        if span >= _BOUND:
            for c in np.unique(code[e0:e1]):
                a, b = np.searchsorted(code, [c, c + 1])
                out[a:b] = np.maximum.accumulate(v[a:b])
            continue
        base = (code[e0:e1] - first) * span
        out[e0:e1] = np.maximum.accumulate(base + (v[e0:e1] - lo)) - base + lo
    return out


@dataclass
class _Scan:
    """Per row (sorted by code, time): ``last`` — every event of the row's entity up to this
    position is visible (seg start − 1 if none is known to be); and the visible events after
    it, as (row, position) pairs."""

    last: Array
    rows: Array
    pos: Array


def scan(events: Events, pm: Array, start: Array, hi: Array, t: Array, lo_min: Array,
         depth: int = 32, limit: int = 20_000_000) -> _Scan:
    """Step 2 of the module's plan: walk back from each row's last event while the running
    maximum of visibility ``pm`` is after t."""
    last = hi - 1
    rows_parts: list[Array] = []
    pos_parts: list[Array] = []
    idx = np.flatnonzero((last >= start) & (pm[np.maximum(last, 0)] > t))
    for _ in range(depth):
        if idx.size == 0:
            break
        j = last[idx]
        seen = events.v[j] <= t[idx]
        rows_parts.append(idx[seen])
        pos_parts.append(j[seen])
        j = j - 1
        last[idx] = j
        more = (j >= start[idx]) & (pm[np.maximum(j, 0)] > t[idx])
        idx = idx[more]
    if idx.size:
        # Rows still scanning: drop what the scan found for them and list every event of
        # their widest window instead.
        deep = np.zeros(t.size, dtype=bool)
        deep[idx] = True
        if rows_parts:
            r, p = np.concatenate(rows_parts), np.concatenate(pos_parts)
            keep = ~deep[r]
            rows_parts, pos_parts = [r[keep]], [p[keep]]
        a, b = lo_min[idx], hi[idx]
        lengths = b - a
        total = int(lengths.sum())
        if total > limit:
            raise TooDeep(f"{idx.size:,} rows would list {total:,} events")
        row = np.repeat(idx, lengths)
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        pos = np.repeat(a, lengths) + (np.arange(total, dtype=np.int64) - offsets)
        seen = events.v[pos] <= t[row]
        rows_parts.append(row[seen])
        pos_parts.append(pos[seen])
        last[idx] = start[idx] - 1
    rows_all = np.concatenate(rows_parts) if rows_parts else np.zeros(0, np.int64)
    pos_all = np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.int64)
    return _Scan(last, rows_all, pos_all)


def _sum(limbs: tuple[int, Array, Array], lo: Array, end: Array, rows: Array,
         pos: Array) -> Array:
    """Exact sums of [lo, end) plus the extras (rows, pos), back to floats."""
    k, ph, pl = limbs
    dh = ph[end] - ph[lo]
    dl = pl[end] - pl[lo]
    if rows.size:
        np.add.at(dh, rows, ph[pos + 1] - ph[pos])
        np.add.at(dl, rows, pl[pos + 1] - pl[pos])
    carry = dl >> _LIMB                      # normalise: 0 ≤ low < 2^32
    dh += carry
    dl -= carry << _LIMB
    # high·2^32 + low, rounded once: the high limb as a float, then the exact remainder
    # (at most 2^9 · 2^32 + 2^32, exact as a float) added in one correctly rounded step.
    head = dh.astype(np.float64)
    rest = ((dh - head.astype(np.int64)) << _LIMB) + dl
    out: Array = np.ldexp(np.ldexp(head, _LIMB) + rest.astype(np.float64), -k)
    return out


@dataclass
class _Lookup:
    """Where a sparse table answers each row's range [lo, end): two cells, or none."""

    levels: int
    first: Array
    second: Array
    empty: Array

    @classmethod
    def of(cls, n: int, lo: Array, end: Array) -> _Lookup:
        length = end - lo
        levels = max(1, int(length.max()).bit_length()) if length.size else 1
        level = np.frexp(np.maximum(length, 1))[1] - 1          # floor(log2(length))
        empty = length == 0
        first = offsets(n, levels)[level] + lo
        second = first + (length - np.left_shift(1, level))
        first[empty] = 0
        second[empty] = 0
        return cls(levels, first, second, empty)


def _extreme(column: Column, fn: str, at: _Lookup, rows: Array, pos: Array) -> Array:
    """Min or max over each row's range from the sparse table, with the extras folded in;
    the identity where the window is empty."""
    flat = column.table(fn, at.levels)
    op = np.minimum if fn == "min" else np.maximum
    out: Array = op(flat[at.first], flat[at.second])
    out[at.empty] = column.identity(fn)
    if rows.size:
        op.at(out, rows, flat[pos])
    return out


def longest(events: Events, span: int, block: int = _BLOCK) -> int:
    """An upper bound on how many events one window of total length ``span`` (window plus
    hop) holds: the most events of one entity with event times in (t − span, t] for the
    event time t of one of them (the range's last event), counted up to it. Events go
    ``block`` at a time."""
    best = 0
    for a in range(0, events.code.size, block):
        code, et = events.code[a:a + block], events.et[a:a + block]
        e0 = int(np.searchsorted(events.code, code[0], "left"))
        first = e0 + search(events.code[e0:a + code.size], events.et[e0:a + code.size], code,
                            et - span + 1, "left")
        best = max(best, int((np.arange(a, a + code.size) - first).max()) + 1)
    return best


def aggregate(events: Events, code: Array, t: Array, features: Sequence[WindowedFeature],
              at: Array, n: int, depth: int = 32, limit: int = 20_000_000, threads: int = 1,
              chunk: int = 1 << 16) -> dict[str, tuple[Array, Array | None]]:
    """The windowed ``features`` of ``n`` rows: per feature (values, which are null or
    ``None``). ``code`` and ``t`` are the rows whose entity has events, sorted by (code, t),
    and ``at`` their positions among the n; the other rows get an empty window's values.
    Raises ``TooDeep`` when the rows of one chunk would list more than ``limit`` events.

    The shared per-event arrays (prefix counts and sums, sparse tables as deep as the longest
    window can need) are built first; then rows go through in chunks of ``chunk``, so that
    every per-row temporary is small (reused from the heap, in cache), on ``threads``
    threads (numpy releases the GIL). Each chunk finds its rows' ranges and writes only its
    own rows' outputs, so the result depends on neither. The mean, min and max of one column
    and window share one null mask (null exactly where the count is 0).
    """
    groups: dict[tuple[int, int], list[WindowedFeature]] = {}
    for f in features:
        groups.setdefault((f.window, f.hop), []).append(f)
    keys = sorted(groups, reverse=True)
    m = code.size
    spans = [(a, min(a + chunk, m)) for a in range(0, m, chunk)]
    starts = np.searchsorted(events.code, np.arange(int(code.max(initial=-1)) + 1))
    every = at.size == n
    out: dict[str, tuple[Array, Array | None]] = {}
    masks: dict[tuple[str, tuple[int, int]], Array] = {}
    for key in keys:
        for f in groups[key]:
            dtype = (np.int64 if f.fn == "count" else np.float64 if f.fn in ("sum", "mean")
                     else events.columns[f.column].values.dtype)
            values = np.empty(n, dtype=dtype) if every else np.zeros(n, dtype=dtype)
            mask = None
            if f.fn not in ("count", "sum"):
                mask = masks.setdefault((f.column, key), np.ones(n, bool))
            out[f.name] = (values, mask)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        # The shared arrays, built before the chunks read them; the sparse tables' depth is
        # found meanwhile.
        pm = pool.submit(running_max, events.code, events.v)
        built: list[Future[Any]] = []
        for name in dict.fromkeys(f.column for f in features):
            column, fns = events.columns[name], {f.fn for f in features if f.column == name}
            built.append(pool.submit(column.counts))
            if fns & {"sum", "mean"}:
                built.append(pool.submit(column.limbs))
        for name in dict.fromkeys(f.column for f in features):
            column, fns = events.columns[name], {f.fn for f in features if f.column == name}
            widest = max((w + h for w, h in keys if any(
                f.column == name and f.fn in ("min", "max") for f in groups[(w, h)])),
                default=0)
            if widest:
                levels = max(1, longest(events, widest).bit_length())
                built += [pool.submit(column.table, fn, levels) for fn in fns & {"min", "max"}]
        for done in built:
            done.result()
        running = pm.result()

        def chunk_of(i: int) -> None:
            a, b = spans[i]
            qc, qt, where = code[a:b], t[a:b], at[a:b]
            # The chunk's codes are one run of codes, and their events one slice: search
            # that.
            e0, e1 = int(starts[qc[0]]), int(np.searchsorted(events.code, qc[-1], "right"))
            ec, et = events.code[e0:e1], events.et[e0:e1]
            los = {key: e0 + search(ec, et, qc, (qt // key[1]) * key[1] - key[0], "left")
                   for key in keys}
            hi = e0 + search(ec, et, qc, qt, "right")
            got = scan(events, running, starts[qc], hi, qt,
                       np.minimum.reduce(list(los.values())), depth=depth, limit=limit)
            for key in keys:
                lo = los[key]
                end = np.maximum(got.last + 1, lo)
                inside = got.pos >= lo[got.rows]
                rows, pos = got.rows[inside], got.pos[inside]
                lookup = (_Lookup.of(events.code.size, lo, end)
                          if any(f.fn in ("min", "max") for f in groups[key]) else None)
                for name in dict.fromkeys(f.column for f in groups[key]):
                    column = events.columns[name]
                    mine = [f for f in groups[key] if f.column == name]
                    counts = column.counts()
                    cnt = counts[end] - counts[lo]
                    if rows.size:
                        np.add.at(cnt, rows, column.valid[pos].astype(np.int64))
                    total = (_sum(column.limbs(), lo, end, rows, pos)
                             if {f.fn for f in mine} & {"sum", "mean"} else cnt)
                    if (name, key) in masks:
                        masks[(name, key)][where] = cnt == 0
                    for f in mine:
                        values = out[f.name][0]
                        if f.fn == "count":
                            values[where] = cnt
                        elif f.fn == "sum":
                            values[where] = total
                        elif f.fn == "mean":
                            with np.errstate(invalid="ignore", divide="ignore"):
                                values[where] = total / cnt
                        else:
                            assert lookup is not None
                            values[where] = _extreme(column, f.fn, lookup, rows, pos)

        list(pool.map(chunk_of, range(len(spans))))
    return out
