"""Tiles: the partial aggregates a windowed view keeps online, one per entity, hop and bucket.

A tile is ``bucket, fields...`` holding, for each aggregated column, only the partials that
the view's functions need (``TileLayout``): ``n`` (non-null count) for count,
mean and stddev; ``s`` and ``c`` (the sum as an unevaluated pair s + c, "double-double":
every addition is Knuth's TwoSum, its rounding error carried in c, so a window's sum is
exact to ~106 bits and rounded once on reading, as the offline plans' exact integer sums are;
an int64 value enters as its nearest float and the exact remainder) for sum, mean and stddev;
``m2`` (second moment about the mean, merged by Chan's formula) for stddev; ``lo``/``hi``
for min/max; ``last`` with its order (event time, tie) for last. A view over
sum/count/mean/max of one column keeps four numbers per tile instead of eleven, so its record
stays small (SQLite keeps it inline in its B-tree page) and a push touches little.

A windowed record is one flat list of tiles per hop, in the layout's hop order, sorted by
bucket: ``[b0, fields..., b1, fields..., ...]``, ``TileLayout.width`` items per tile (few
objects, so decoding is cheap and a push allocates little). Merging, folding events in and
reading a window all go through this one layout, so materialization, push and serving cannot
disagree on the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from closedloop.errors import DataError
from closedloop.features.definitions import FeatureView, WindowedFeature

#: One flat list per hop: ``[bucket, fields..., bucket, fields..., ...]`` by bucket.
WindowRecord = list[list[Any]]


def _order(tie: Any) -> tuple[bool, Any]:
    return (tie is not None, 0 if tie is None else tie)


class ColumnSlots:
    """Where one aggregated column's partials sit in a tile (-1: not kept)."""

    __slots__ = ("c", "column", "hi", "last", "lo", "m2", "n", "oet", "otie", "s", "width")

    def __init__(self, column: str, fns: set[str], start: int) -> None:
        self.column = column
        pos = start
        slots = {}
        for name, wanted in (("n", fns & {"count", "mean", "stddev"}),
                             ("s", fns & {"sum", "mean", "stddev"}),
                             ("c", fns & {"sum", "mean", "stddev"}),
                             ("m2", fns & {"stddev"}), ("lo", fns & {"min"}),
                             ("hi", fns & {"max"}), ("last", fns & {"last"}),
                             ("oet", fns & {"last"}), ("otie", fns & {"last"})):
            slots[name] = pos if wanted else -1
            pos += bool(wanted)
        self.n, self.s, self.c, self.m2 = slots["n"], slots["s"], slots["c"], slots["m2"]
        self.lo, self.hi = slots["lo"], slots["hi"]
        self.last, self.oet, self.otie = slots["last"], slots["oet"], slots["otie"]
        self.width = pos - start

    def empty(self) -> list[Any]:
        """This column's fields of a tile with no value."""
        out: list[Any] = []
        for slot, zero in ((self.n, 0), (self.s, 0.0), (self.c, 0), (self.m2, 0.0),
                           (self.lo, None),
                           (self.hi, None), (self.last, None), (self.oet, None),
                           (self.otie, None)):
            if slot >= 0:
                out.append(zero)
        return out

    def one(self, x: Any, et: int, tie: Any) -> list[Any]:
        """This column's fields of a tile holding the single value ``x`` (None: no value)."""
        if x is None:
            return self.empty()
        out: list[Any] = []
        if self.n >= 0:
            out.append(1)
        if self.s >= 0:
            head = float(x)
            out += (head, (float(x - int(head)) or 0) if type(x) is int else 0)   # exact
        if self.m2 >= 0:
            out.append(0.0)
        if self.lo >= 0:
            out.append(x)
        if self.hi >= 0:
            out.append(x)
        if self.last >= 0:
            out += (x, et, tie)
        return out

    def merge(self, a: list[Any], i: int, b: Sequence[Any], j: int) -> None:
        """Fold this column's fields of the tile at ``b[j:]`` into the tile at ``a[i:]``."""
        if self.m2 >= 0:
            na, nb = a[i + self.n], b[j + self.n]
            if nb:
                if na:
                    delta = ((b[j + self.s] + b[j + self.c]) / nb
                             - (a[i + self.s] + a[i + self.c]) / na)
                    a[i + self.m2] += b[j + self.m2] + delta * delta * na * nb / (na + nb)
                else:
                    a[i + self.m2] = b[j + self.m2]
        if self.n >= 0:
            a[i + self.n] += b[j + self.n]
        k = self.s
        if k >= 0:                         # TwoSum: s + c stays the exact running sum
            x, y = a[i + k], b[j + k]
            total = x + y
            back = total - x
            a[i + k] = total
            c = a[i + k + 1] + b[j + k + 1] + ((x - (total - back)) + (y - back))
            a[i + k + 1] = c or 0          # an exact sum keeps c as the int 0: 2 bytes, not 9
        if self.lo >= 0:
            x = b[j + self.lo]
            if x is not None and (a[i + self.lo] is None or x < a[i + self.lo]):
                a[i + self.lo] = x
        if self.hi >= 0:
            x = b[j + self.hi]
            if x is not None and (a[i + self.hi] is None or x > a[i + self.hi]):
                a[i + self.hi] = x
        if self.last >= 0:
            _LastOnly(self).merge(a, i, b, j)

    def value(self, fn: str, tile: Sequence[Any] | None) -> Any:
        """A windowed function's value from merged fields (None where the window is empty)."""
        if fn == "count":
            return 0 if tile is None else int(tile[self.n])
        if fn == "sum":
            return 0.0 if tile is None else tile[self.s] + tile[self.c]
        if tile is None:
            return None
        if fn == "mean":
            n = tile[self.n]
            return (tile[self.s] + tile[self.c]) / n if n else None
        if fn == "stddev":
            n = tile[self.n]
            return math.sqrt(max(tile[self.m2] / n, 0.0)) if n else None
        if fn == "min":
            return tile[self.lo]
        if fn == "max":
            return tile[self.hi]
        return tile[self.last]


class TileLayout:
    """A windowed view's tiles: its hops (with the longest window of each, in hops) and where
    each column's partials sit. Computed once per view (``TileLayout.of``)."""

    _cache: dict[int, tuple[FeatureView, TileLayout]] = {}  # noqa: RUF012  # a per-process memo

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        spans: dict[int, int] = {}
        for w in view.windowed:
            spans[w.hop] = max(spans.get(w.hop, 0), w.window // w.hop)
        self.hops: tuple[tuple[int, int], ...] = tuple(sorted(spans.items()))
        fns: dict[str, set[str]] = {}
        for a in view.aggregations:
            fns.setdefault(a.column, set()).add(a.fn)
        # Columns in order of first use: the order the offline engine numbers them in.
        self.columns: tuple[ColumnSlots, ...] = ()
        pos = 1
        for column, used in fns.items():
            slots = ColumnSlots(column, used, pos)
            self.columns += (slots,)
            pos += slots.width
        self.width = pos
        self._merge = _compiled_merge(self.columns)
        self.fields: Callable[[Sequence[Any], int, Any], list[Any]] = (
            _compiled_fields(self.columns))

    @classmethod
    def of(cls, view: FeatureView) -> TileLayout:
        hit = cls._cache.get(id(view))
        if hit is not None and hit[0] is view:
            return hit[1]
        layout = cls(view)
        cls._cache[id(view)] = (view, layout)
        return layout

    def check(self, record: Any) -> None:
        """Refuse a record that is not in this layout (written by an older closedloop): one
        tile list per hop, then, when some pushed rows are not visible yet, their list."""
        n, w = len(self.hops), self.width
        ok = type(record) is list and n <= len(record) <= n + 1
        i = 0
        while ok and i < n:                 # whole tiles of this layout's width in every hop
            ok = type(record[i]) is list and len(record[i]) % w == 0
            i += 1
        if not ok:
            raise DataError(f"the online record of view {self.view.name!r} v{self.view.version} "
                            "is in a format this closedloop does not read",
                            fix="rewrite the online store: closedloop materialize --full")

    def column(self, name: str) -> ColumnSlots:
        return next(c for c in self.columns if c.column == name)

    def hop_index(self, hop: int) -> int:
        return next(i for i, (h, _) in enumerate(self.hops) if h == hop)

    def merge(self, a: list[Any], i: int, b: Sequence[Any], j: int) -> None:
        """Fold the tile at ``b[j:]`` into the tile at ``a[i:]`` (``a`` keeps its bucket):
        every column's ``ColumnSlots.merge``, run as one straight-line function compiled
        for this layout (``_compiled_merge``) — the hot loop of pushes and reads."""
        self._merge(a, i, b, j)

    def fields_of(self, values: Sequence[Any], et: int, tie: Any) -> list[Any]:
        """The fields of a tile holding one event (``values`` by column, in layout order):
        every column's ``ColumnSlots.one``. ``fields`` is the same, compiled for this layout
        (``_compiled_fields``) — it runs once per pushed event."""
        out: list[Any] = []
        for c, x in zip(self.columns, values, strict=True):
            out += c.one(x, et, tie)
        return out

    def find(self, tiles: Sequence[Any], b: int) -> int:
        """The position in ``tiles`` of the first tile whose bucket is ≥ ``b``."""
        w = self.width
        i = len(tiles) - w
        while i >= 0 and tiles[i] >= b:     # from the newest: reads and pushes are recent
            i -= w
        return i + w

    def fold(self, record: WindowRecord | None,
             events: Sequence[tuple[int, Any, Sequence[Any]]], now: int, *,
             checked: bool = False) -> WindowRecord:
        """The record after ``events`` — (event time, tie, values by column) — with tiles
        older than any window can read at ``now`` dropped (``checked``: the caller checked
        the record's layout already)."""
        if record is None:
            record = [[] for _ in self.hops]
        elif not checked:
            self.check(record)
        fields = [(et, self.fields(values, et, tie)) for et, tie, values in events]
        w = self.width
        for h, (hop, span) in enumerate(self.hops):
            tiles = record[h]
            for et, f in fields:
                b = et // hop
                last = len(tiles) - w
                if last >= 0 and tiles[last] == b:      # the usual case: the newest bucket
                    self.merge(tiles, last, f, -1)
                elif last < 0 or tiles[last] < b:
                    tiles.append(b)
                    tiles += f
                else:
                    i = self.find(tiles, b)
                    if tiles[i] == b:
                        self.merge(tiles, i, f, -1)
                    else:
                        tiles[i:i] = [b, *f]
            oldest = now // hop - span
            if tiles and tiles[0] < oldest:
                del tiles[:self.find(tiles, oldest)]
        return record

    def push(self, record: WindowRecord | None,
             events: Sequence[tuple[int, Any, Sequence[Any], int]], now: int) -> WindowRecord:
        """The record after pushed ``events`` — (event time, tie, values, visible from) — at
        ``now``: rows visible by now (and pending ones that have become so) are folded into
        the tiles; the others wait in a pending list, counted by reads once visible."""
        n = len(self.hops)
        if record is not None:
            self.check(record)
        waiting = record[n] if record is not None and len(record) > n else []
        if not waiting and all(e[3] <= now for e in events):     # the usual case: all visible
            return self.fold(record, [(e[0], e[1], e[2]) for e in events], now, checked=True)
        ready: list[tuple[int, Any, Sequence[Any]]] = []
        later: list[Any] = []
        for vis, et, tie, values in [*map(tuple, waiting),
                                     *((v, e, t, x) for e, t, x, v in events)]:
            if vis <= now:
                ready.append((et, tie, values))
            else:
                later.append([vis, et, tie, list(values)])
        out = self.fold(None if record is None else record[:n], ready, now, checked=True)
        if later:
            out.append(sorted(later, key=lambda p: (p[0], p[1])))
        return out

    def window(self, tiles: Sequence[Any], hop: int, span: int, t: int) -> list[Any] | None:
        """The merged tile of a window of ``span`` hops at ``t`` (None: no tile in range)."""
        top = t // hop
        w = self.width
        hi = self.find(tiles, top + 1)
        lo = self.find(tiles, top - span)
        if lo >= hi:
            return None
        acc = list(tiles[lo:lo + w])
        for i in range(lo + w, hi, w):
            self.merge(acc, 0, tiles, i)
        return acc


class WindowReader:
    """Reads the wanted windowed features of one view from its records: one merge per
    distinct window, then each function from the merged tile."""

    def __init__(self, view: FeatureView, wanted: Sequence[tuple[str, WindowedFeature]]) -> None:
        """``wanted`` pairs an output key with the windowed feature written under it."""
        self.layout = TileLayout.of(view)
        groups: dict[tuple[int, int], list[tuple[str, ColumnSlots, str, Any]]] = {}
        for out, w in wanted:
            groups.setdefault((w.hop, w.window // w.hop), []).append(
                (out, self.layout.column(w.column), w.fn, w.default))
        self.groups = [(self.layout.hop_index(hop), hop, span, outs)
                       for (hop, span), outs in groups.items()]

    def read(self, record: WindowRecord | None, t: int, into: dict[str, Any]) -> None:
        layout = self.layout
        pending = None
        if record is not None:
            layout.check(record)
            if len(record) > len(layout.hops):
                pending = record[-1]
        for h, hop, span, outs in self.groups:
            tile = None if record is None else layout.window(record[h], hop, span, t)
            if pending:                     # pushed rows that have become visible since
                tile = self._with_pending(tile, pending, hop, span, t)
            for out, column, fn, default in outs:
                value = column.value(fn, tile)
                into[out] = default if value is None and default is not None else value

    def _with_pending(self, tile: list[Any] | None, pending: Sequence[Any], hop: int,
                      span: int, t: int) -> list[Any] | None:
        top = t // hop
        for vis, et, tie, values in pending:
            b = et // hop
            if vis <= t and top - span <= b <= top:
                fields = self.layout.fields(values, et, tie)
                if tile is None:
                    tile = [b, *fields]
                else:
                    self.layout.merge(tile, 0, fields, -1)
        return tile


def _compiled_merge(columns: Sequence[ColumnSlots]) -> Any:
    """``ColumnSlots.merge`` of every column as one function with its offsets as constants:
    the same arithmetic (a property test holds the two equal) with no slot lookups or
    branches on absent partials. ``last`` keeps its method (its order comparison is rare)."""
    lines = ["def merge(a, i, b, j):"]
    calls: dict[str, Any] = {}
    for k, c in enumerate(columns):
        n, s, m2, lo, hi = c.n, c.s, c.m2, c.lo, c.hi
        if m2 >= 0:
            lines += [f" na = a[i + {n}]; nb = b[j + {n}]",
                      " if nb:",
                      "  if na:",
                      f"   d = (b[j + {s}] + b[j + {s + 1}]) / nb - "
                      f"(a[i + {s}] + a[i + {s + 1}]) / na",
                      f"   a[i + {m2}] += b[j + {m2}] + d * d * na * nb / (na + nb)",
                      "  else:",
                      f"   a[i + {m2}] = b[j + {m2}]"]
        if n >= 0:
            lines.append(f" a[i + {n}] += b[j + {n}]")
        if s >= 0:                        # TwoSum; c (at s + 1) kept as the int 0 when exact
            lines += [f" x = a[i + {s}]; y = b[j + {s}]; t = x + y; e = t - x",
                      f" a[i + {s}] = t",
                      f" a[i + {s + 1}] = (a[i + {s + 1}] + b[j + {s + 1}]"
                      " + ((x - (t - e)) + (y - e))) or 0"]
        for slot, better in ((lo, "<"), (hi, ">")):
            if slot >= 0:
                lines += [f" v = b[j + {slot}]",
                          " if v is not None:",
                          f"  w = a[i + {slot}]",
                          f"  if w is None or v {better} w:",
                          f"   a[i + {slot}] = v"]
        if c.last >= 0:
            calls[f"last{k}"] = _LastOnly(c).merge
            lines.append(f" last{k}(a, i, b, j)")
    if len(lines) == 1:
        lines.append(" return None")
    namespace: dict[str, Any] = dict(calls)
    exec("\n".join(lines), namespace)  # our own text: offsets are ints
    return namespace["merge"]


def _compiled_fields(columns: Sequence[ColumnSlots]) -> Any:
    """``TileLayout.fields_of`` as one straight-line function: each column's ``one`` (or
    ``empty`` for a null) inlined, its slots known (a property test holds the two equal)."""
    lines = ["def fields(values, et, tie):", " out = []"]
    for k, c in enumerate(columns):
        one: list[str] = []
        empty: list[str] = []
        for slot, full, zero in ((c.n, "1", "0"), (c.s, "h", "0.0"),
                                 (c.c, "((float(x - int(h)) or 0) if type(x) is int else 0)",
                                  "0"),
                                 (c.m2, "0.0", "0.0"), (c.lo, "x", "None"), (c.hi, "x", "None"),
                                 (c.last, "x", "None"), (c.oet, "et", "None"),
                                 (c.otie, "tie", "None")):
            if slot >= 0:
                one.append(full)
                empty.append(zero)
        lines += [f" x = values[{k}]",
                  " if x is None:",
                  f"  out += ({', '.join(empty)},)",
                  " else:"]
        if c.s >= 0:
            lines.append("  h = float(x)")
        lines.append(f"  out += ({', '.join(one)},)")
    lines.append(" return out")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # our own text: slots are fixed
    return namespace["fields"]


class _LastOnly:
    """The ``last`` part of ``ColumnSlots.merge`` alone."""

    __slots__ = ("last", "oet", "otie")

    def __init__(self, c: ColumnSlots) -> None:
        self.last, self.oet, self.otie = c.last, c.oet, c.otie

    def merge(self, a: list[Any], i: int, b: Sequence[Any], j: int) -> None:
        if b[j + self.oet] is None:
            return
        if a[i + self.oet] is None:
            later = True
        else:
            ka = (a[i + self.oet], *_order(a[i + self.otie]))
            kb = (b[j + self.oet], *_order(b[j + self.otie]))
            later = kb > ka or (kb == ka and b[j + self.last] > a[i + self.last])
        if later:
            for slot in (self.last, self.oet, self.otie):
                a[i + slot] = b[j + slot]
