"""The range plan's parts against their plain definitions: composite-key searches (with code
chunks and absurd time spans), the longest window's bound, per-entity running maxima, exact
sums and sparse tables."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from closedloop.backends import ranges

_times = st.integers(-(2**61), 2**61) | st.integers(0, 50)


@st.composite
def _sorted_events(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    pairs = sorted(draw(st.lists(st.tuples(st.integers(0, 6), _times), max_size=40)))
    code = np.array([c for c, _ in pairs], dtype=np.int64)
    t = np.array([x for _, x in pairs], dtype=np.int64)
    return code, t


@settings(max_examples=300, deadline=None)
@given(events=_sorted_events(), queries=st.lists(st.tuples(st.integers(0, 7), _times),
                                                 max_size=30),
       side=st.sampled_from(["left", "right"]))
def test_search_counts_the_events_before_each_query(events, queries, side) -> None:  # type: ignore[no-untyped-def]
    code, t = events
    queries = sorted(queries, key=lambda q: q[0])
    qc = np.array([c for c, _ in queries], dtype=np.int64)
    qt = np.array([x for _, x in queries], dtype=np.int64)
    got = ranges.search(code, t, qc, qt, side)
    for i, (c, x) in enumerate(queries):
        want = sum(1 for cc, tt in zip(code.tolist(), t.tolist(), strict=True)
                   if cc < c or (cc == c and (tt < x if side == "left" else tt <= x)))
        assert got[i] == want, (c, x)


@settings(max_examples=200, deadline=None)
@given(events=_sorted_events(), span=st.integers(1, 60) | st.integers(1, 2**61),
       block=st.integers(1, 5))
def test_longest_bounds_every_window(events, span, block) -> None:  # type: ignore[no-untyped-def]
    """The most events of one code in (t − span, t] up to an event at t, whatever the block."""
    code, t = events
    got = ranges.longest(ranges.Events(code, t, t, {}), span, block=block)
    want = max((sum(1 for j in range(i + 1) if code[j] == code[i] and t[j] > t[i] - span)
                for i in range(code.size)), default=0)
    assert got == want


@settings(max_examples=200, deadline=None)
@given(events=_sorted_events())
def test_running_max_restarts_at_each_code(events) -> None:  # type: ignore[no-untyped-def]
    code, v = events
    got = ranges.running_max(code, v)
    for i in range(code.size):
        same = [v[j] for j in range(i + 1) if code[j] == code[i]]
        assert got[i] == max(same)


_values = st.lists(st.none() | st.integers(-(10**6), 10**6).map(lambda n: n / 1024)
                   | st.sampled_from([1e12, -3e11, 2.0**-30, 0.0]), min_size=1, max_size=50)


@settings(max_examples=300, deadline=None)
@given(values=_values, data=st.data())
def test_range_sums_are_the_exact_sums_rounded_once(values, data) -> None:  # type: ignore[no-untyped-def]
    x = np.array([0.0 if v is None else v for v in values])
    valid = np.array([v is not None for v in values])
    column = ranges.Column(x, valid, pa.float64())
    n = x.size
    bounds = data.draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), min_size=1,
                                max_size=10))
    lo = np.array([min(a, b) for a, b in bounds], dtype=np.int64)
    end = np.array([max(a, b) for a, b in bounds], dtype=np.int64)
    # Extras: one more position per row, outside its range when there is one.
    extra_rows = np.array([i for i, b in enumerate(end) if b < n], dtype=np.int64)
    extra_pos = end[extra_rows]
    got = ranges._sum(column.limbs(), lo, end, extra_rows, extra_pos)
    for i in range(lo.size):
        terms = x[lo[i]:end[i]].tolist() + ([x[end[i]]] if end[i] < n else [])
        assert got[i] == math.fsum(terms), (i, terms)
    lookup = ranges._Lookup.of(n, lo, end)
    for fn in ("min", "max"):
        found = ranges._extreme(column, fn, lookup, extra_rows, extra_pos)
        for i in range(lo.size):
            picked = [x[j] for j in range(lo[i], end[i]) if valid[j]]
            if end[i] < n and valid[end[i]]:
                picked.append(x[end[i]])
            if picked:
                assert found[i] == (min(picked) if fn == "min" else max(picked))
