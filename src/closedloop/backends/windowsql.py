"""The SQL plan of windowed aggregations: per-hop tiles and the CTEs a row reads them by
(docs/architecture.md, "The DuckDB plans"), and the exact-sum arithmetic they use."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS
from closedloop.features.definitions import FeatureView, WindowedFeature


def q(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def us(column: str) -> str:
    """A source's instant column as int64 µs, whatever unit its files store it in (nanosecond
    columns hold whole microseconds: ``check_source`` refuses finer ones)."""
    return f"epoch_us(({column})::TIMESTAMPTZ)"


def fdiv(expr: str, hop: int) -> str:
    """Floor division of an int64 expression by a positive constant (correct before 1970)."""
    return f"(({expr}) // {hop} - CASE WHEN ({expr}) % {hop} < 0 THEN 1 ELSE 0 END)"


def scale(largest: float, rows: int) -> float:
    """2^k for the largest k with rows × largest × 2^k < 2^125: every sum of the scaled
    column fits a 128-bit integer, and every value ≥ 2^(52-k) scales to an exact integer."""
    if largest <= 0 or not math.isfinite(largest):
        return 1.0
    k = math.floor(125 - math.log2(rows) - math.log2(largest)) - 1
    return math.ldexp(1.0, max(-1000, min(1000, k)))


def sum_exponent(largest: float, rows: int) -> int:
    """The k of every plan's exact float sums (one grid, so the plans give the same bits):
    each value is rounded to a multiple of 2^-k (half to even), then added exactly. With the
    largest magnitude below 2^e, k = 93 − e − bit_length(rows): every prefix sum of
    value·2^k fits the range plan's two limbs (2^63 · 2^32) and every sum a 128-bit
    integer. Values carrying bits below 2^-k — some 73 binary orders under the column's
    largest for a million rows — lose those bits."""
    if largest <= 0 or not math.isfinite(largest):
        return 0
    e = math.frexp(largest)[1]
    return max(-1000, min(1000, 93 - e - max(rows, 1).bit_length()))


def double(value: float) -> str:
    """A float as an exact DuckDB DOUBLE literal."""
    return f"CAST('{value!r}' AS DOUBLE)"


def total(column: str, where: str, scale: tuple[float, float] | None,
           which: int) -> str:
    """A window's sum of partial sums: exact integers back to a float, or floats in a fixed
    order (value order: the same bits on every run)."""
    if scale is None:
        return f"sum({q(column)} ORDER BY {q(column)}) FILTER (WHERE {where})"
    return (f"(CAST(sum({q(column)}) FILTER (WHERE {where}) AS DOUBLE) / "
            f"{double(scale[which])})")


def nulls_low(expr: str) -> str:
    """An ordering key where null sorts below every value."""
    return f"struct_pack(p := ({expr}) IS NOT NULL, v := {expr})"


def hop_ctes(i: int, hop: int, group: list[WindowedFeature], *, tiled: bool,
             scales: dict[str, tuple[float, float] | None], ints: set[str],
             ) -> list[str]:
    """The CTEs of hop ``i`` (length ``hop``): its tiles (or events as their own tiles), the
    (key, block) pairs each row probes, the partials it reads, and ``h{i}``: one row per
    query row with the windows of ``group``. ``ints``: the int64 columns (summed exactly as
    integers)."""
    span = max(w.window // hop for w in group)
    cols = sorted({w.column for w in group})
    fns = {c: {w.fn for w in group if w.column == c} for c in cols}
    dev = [c for c in cols if "stddev" in fns[c]]

    def last_order(c: str) -> str:
        return f"struct_pack(et := __et, tie := {nulls_low('__tie')}, v := {q(c)})"

    # Partial aggregates: from tiles (grouped) and from raw head events (one row each).
    tile_parts: list[str] = []
    raw_parts: list[str] = []
    for c in cols:
        qc, p = q(c), c
        tile_parts += [f"count({qc}) AS {q('n_' + p)}"]
        raw_parts += [f"({qc} IS NOT NULL)::BIGINT AS {q('n_' + p)}"]
        # Sums are exact (see _profile): terms as scaled 128-bit integers (int64 columns as
        # themselves), or, for a column with NaN or infinities, floats in a fixed order.
        scale = scales.get(c)
        terms: list[tuple[str, str, int, str]] = []   # (prefix, term, scale index, raw)
        if fns[c] & {"sum", "mean", "stddev"}:
            terms.append(("s_", qc if c in ints else f"{qc}::DOUBLE", 0, f"{qc}"))
        if c in dev:
            # stddev: each tile's deviations from its own smallest value r (close to its
            # values, whatever the entity's history): e = Σ(x − r), q = Σ(x − r)²; the
            # window merges tiles by Chan's formula about the window's own mean (below).
            d = f"({qc} - {q('r_' + p)})::DOUBLE"
            zero = f"CASE WHEN {qc} IS NOT NULL THEN 0 END"
            terms += [("e_", d, 1, zero), ("q_", f"({d} * {d})", -1, zero)]
        for prefix, term, which, raw in terms:
            name = q(prefix + p)
            if scale is None or prefix == "q_":
                # Squares span twice the column's binary range: a grid scaled to its largest
                # square would round small ones away. Non-negative terms summed as floats in
                # a fixed order: within n·ε of the sum, and the same bits on every run.
                tile_parts.append(f"sum({term} ORDER BY {term})::DOUBLE AS {name}")
                raw_parts.append(f"({raw})::DOUBLE AS {name}" if prefix != "s_"
                                 else f"{term} AS {name}")
            else:
                exact = _exact(term, scale[which], int_=c in ints and prefix == "s_")
                tile_parts.append(f"sum({exact}) AS {name}")
                raw_parts.append(f"{exact} AS {name}" if prefix == "s_"
                                 else f"CAST({raw} AS HUGEINT) AS {name}")
        if c in dev:
            tile_parts.append(f"min({qc})::DOUBLE AS {q('r_' + p)}")
            raw_parts.append(f"{qc}::DOUBLE AS {q('r_' + p)}")
        if "min" in fns[c]:
            tile_parts.append(f"min({qc}) AS {q('lo_' + p)}")
            raw_parts.append(f"{qc} AS {q('lo_' + p)}")
        if "max" in fns[c]:
            tile_parts.append(f"max({qc}) AS {q('hi_' + p)}")
            raw_parts.append(f"{qc} AS {q('hi_' + p)}")
        if "last" in fns[c]:
            tile_parts += [
                f"arg_max({qc}, {last_order(c)}) FILTER (WHERE {qc} IS NOT NULL) "
                f"AS {q('l_' + p)}",
                f"max({last_order(c)}) FILTER (WHERE {qc} IS NOT NULL) AS {q('o_' + p)}"]
            raw_parts += [f"{qc} AS {q('l_' + p)}",
                          f"CASE WHEN {qc} IS NOT NULL THEN {last_order(c)} END "
                          f"AS {q('o_' + p)}"]
    b, vb = fdiv("__et", hop), fdiv("__v", hop)
    t = f"t{i}"
    refs = "".join(f", min({q(c)}) OVER (PARTITION BY __k, {b}, {vb}) AS {q('r_' + c)}"
                   for c in (dev if tiled else []))  # each tile's reference (order-free)
    located = f"(SELECT *, {b} AS __b, {vb} AS __vb{refs} FROM ev)"
    if tiled:
        tiles = (f"SELECT __k, __b, {fdiv('__b', span)} AS __blk, __vb, "
                 f"{', '.join(tile_parts)} FROM {located} GROUP BY __k, __b, __vb")
    else:
        tiles = (f"SELECT __k, __b, {fdiv('__b', span)} AS __blk, __vb, "
                 f"{', '.join(raw_parts)} FROM {located}")
    ctes = [
        f"{t} AS ({tiles})",
        f"q{i} AS (SELECT {ROW_ID}, {ROW_KEY}, {ROW_TS}, {fdiv(ROW_TS, hop)} AS __T "
        f"FROM __rows)",
        # The two (key, block) pairs each row probes, computed before the join so that
        # the block is part of the hash key (an equality on an expression of the probe
        # side is otherwise pulled out of the join and applied after it).
        f"b{i} AS (SELECT q.*, {fdiv(f'q.__T - {span}', span)} + d.j AS __pb "
        f"FROM q{i} q CROSS JOIN (VALUES (0), (1)) d(j))",
        # Tiles of hops T-span .. T-1 that were complete before hop T began. Tiles are
        # grouped in blocks of `span` hops, so those hops lie in two blocks: each row
        # probes two blocks by equality and reads at most 2 * span tiles.
        f"p{i} AS (SELECT q.{ROW_ID}, q.__T, x.* EXCLUDE (__k, __blk, __vb) "
        f"FROM b{i} q JOIN {t} x ON x.__k = q.{ROW_KEY} AND x.__blk = q.__pb "
        f"WHERE x.__b >= q.__T - {span} AND x.__b < q.__T AND x.__vb < q.__T "
        f"UNION ALL "
        # Raw events that became visible inside hop T, up to t.
        f"SELECT q.{ROW_ID}, q.__T, {b} AS __b, {', '.join(raw_parts)} FROM q{i} q "
        f"JOIN ev e ON e.__k = q.{ROW_KEY} AND {fdiv('e.__v', hop)} = q.__T "
        f"WHERE e.__v <= q.{ROW_TS} AND {fdiv('e.__et', hop)} >= q.__T - {span})",
    ]
    source = f"p{i}"
    stddevs = [w for w in group if w.fn == "stddev"]
    if stddevs:
        ctes.append(_chan_cte(i, hop, stddevs, scales))
        source = f"v{i}"
    outs: list[str] = []
    for w in group:
        n = w.window // hop
        inside = f"__b >= __T - {n}"
        p = w.column
        cnt = f"sum({q('n_' + p)}) FILTER (WHERE {inside})"
        if w.fn == "count":
            expr = f"coalesce({cnt}, 0)::BIGINT"
        elif w.fn == "sum":
            expr = f"coalesce({total('s_' + p, inside, scales.get(p), 0)}, 0)::DOUBLE"
        elif w.fn == "mean":
            expr = f"({total('s_' + p, inside, scales.get(p), 0)} / nullif({cnt}, 0))"
        elif w.fn == "stddev":
            m2 = total(f"m2_{stddevs.index(w)}", "TRUE", None, 0)     # see _chan_cte
            expr = f"CASE WHEN {cnt} > 0 THEN sqrt(greatest({m2} / {cnt}, 0)) END"
        elif w.fn == "min":
            expr = f"min({q('lo_' + p)}) FILTER (WHERE {inside})"
        elif w.fn == "max":
            expr = f"max({q('hi_' + p)}) FILTER (WHERE {inside})"
        else:  # last
            expr = (f"arg_max({q('l_' + p)}, {q('o_' + p)}) "
                    f"FILTER (WHERE {inside} AND {q('o_' + p)} IS NOT NULL)")
        outs.append(f"{expr} AS {q(w.name)}")
    ctes.append(f"h{i} AS (SELECT {ROW_ID}, {', '.join(outs)} FROM {source} "
                f"GROUP BY {ROW_ID})")
    return ctes


def _exact(term: str, scale: float, *, int_: bool = False) -> str:
    """A term as a scaled 128-bit integer (an int64 column's value as itself)."""
    if int_:
        return f"CAST({term} AS HUGEINT)"
    return f"CAST({term} * {double(scale)} AS HUGEINT)"


def _chan_cte(i: int, hop: int, stddevs: list[WindowedFeature],
              scales: dict[str, tuple[float, float] | None]) -> str:
    """``v{i}``: the partials of ``p{i}`` with, per stddev window, each tile's share of the
    window's second moment about the window's own mean (Chan et al.): m2 of the tile about
    its mean, plus n · (tile mean − window mean)², non-negative, summed in ``h{i}`` as floats
    in a fixed order. The window mean comes from the exact sum, over the row's tiles (a window
    function per row), so no far-away value of the entity's history enters the arithmetic:
    the variance of 10 and 12 is 1 whatever came days before, and a constant window's is 0.
    """
    means: list[str] = []
    shares: list[str] = []
    for j, w in enumerate(stddevs):
        p, n = w.column, w.window // hop
        inside = f"__b >= __T - {n}"
        scale = scales.get(p)
        s0, s1 = (1.0, 1.0) if scale is None else scale
        cnt = q("n_" + p)

        def num(name: str, s: float) -> str:
            return f"(CAST({q(name)} AS DOUBLE) / {double(s)})"

        means.append(f"CAST(sum({q('s_' + p)}) FILTER (WHERE {inside}) OVER "
                     f"(PARTITION BY {ROW_ID}) AS DOUBLE) / {double(s0)} / "
                     f"nullif(sum({cnt}) FILTER (WHERE {inside}) OVER "
                     f"(PARTITION BY {ROW_ID}), 0) AS __mu{j}")
        e, sq = num("e_" + p, s1), f"{q('q_' + p)}"
        tile_mean = f"({q('r_' + p)} + {e} / {cnt})"
        tile_m2 = f"greatest({sq} - {e} * {e} / {cnt}, 0)"
        share = f"({tile_m2} + {cnt} * ({tile_mean} - __mu{j}) * ({tile_mean} - __mu{j}))"
        shares.append(f"CASE WHEN {inside} AND {cnt} > 0 THEN {share} END AS m2_{j}")
    return (f"v{i} AS (SELECT *, {', '.join(shares)} FROM (SELECT *, {', '.join(means)} "
            f"FROM p{i}))")


def horizon_of(rows: pa.Table) -> int | None:
    """The latest instant among point-in-time query rows (``__ts``), or None for no rows."""
    if rows.num_rows == 0:
        return None
    latest = pc.max(rows[ROW_TS]).as_py()
    return None if latest is None else int(latest)


def profile(view: FeatureView, hops: list[int], summed: list[str], ints: Collection[str],
            scan: str, first_row: Callable[[str], tuple[Any, ...]],
            horizon: int | None = None,
            ) -> tuple[dict[int, float], dict[str, tuple[float, float] | None]]:
    """One scan of the source (``scan``, its first row fetched by ``first_row``): events per
    tile at each hop (HyperLogLog), and for each summed column the scales that make its float
    sums exact.

    Where tiles would hold fewer than two events on average, grouping costs more than it
    saves, and each event serves as its own tile: the same partial aggregates, so the
    same results, and each row still reads at most the rows of two blocks of hops.

    Float sums (sum, mean, stddev) are added as 128-bit integers: each value times 2^k,
    with k as large as lets every sum of the column fit (from its largest magnitude and
    the row count). Integer addition is exact and has no order, so the result is the same
    bits whatever the threads did — a rebuilt training set hashes the same — and is the
    exact sum rounded once, not a float sum's accumulated error. An int64 column (in
    ``ints``) is summed as its integers, scale 1: exact whatever its magnitude. A column
    holding NaN or infinities falls back to float sums in a fixed order (``None``).
    With ``horizon`` (µs), only the rows visible by then are profiled: a query whose rows
    are all at or before it is a function of what was known by then alone — a row that
    arrives later, however large, changes neither its grid nor its plan, so a training set
    rebuilt after more data came hashes the same.
    stddev's deviations from a tile's smallest value lie in [0, 2m]: the second scale
    (their squares are float sums in a fixed order, see ``windowsql.hop_ctes``).
    """
    source = view.source
    ts = us(q(source.timestamp))
    key = q(view.entity.key)
    parts = [f"approx_count_distinct(hash({key}, {fdiv(ts, h)}))" for h in hops]
    for c in summed:
        x = f"{q(c)}::DOUBLE"
        parts += [f"max(abs({x}))", f"bool_or(isnan({x}) OR isinf({x}))"]
    # The rows every plan aggregates (a key and a time): the range plan sizes its grid
    # by the same count and largest value, so both plans round values alike.
    sql = (f"SELECT count(*), {', '.join(parts)} FROM {scan} "
           f"WHERE {key} IS NOT NULL AND {q(source.timestamp)} IS NOT NULL")
    if horizon is not None:        # only what was visible by then: nothing later moves it
        vis = source.visibility_column
        v = f"greatest({ts}, {us(q(vis))})" if vis else ts
        sql += f" AND {v} <= {int(horizon)}"
    row = first_row(sql)
    total = max(int(row[0]), 1)
    compression = {h: total / max(int(n), 1) for h, n in zip(hops, row[1:], strict=False)}
    scales: dict[str, tuple[float, float] | None] = {}
    rest = row[1 + len(hops):]
    for i, c in enumerate(summed):
        largest, odd = rest[2 * i], rest[2 * i + 1]
        if odd:
            scales[c] = None
            continue
        m = float(largest or 0.0)
        grid = 1.0 if c in ints else math.ldexp(1.0, sum_exponent(m, int(row[0])))
        scales[c] = (grid, scale(2 * m, total))
    return compression, scales
