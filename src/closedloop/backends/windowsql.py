"""The SQL plan of windowed aggregations: per-hop tiles and the CTEs a row reads them by
(docs/architecture.md, "The DuckDB plans"), and the exact-sum arithmetic they use."""

from __future__ import annotations

import math

from closedloop.backends.base import ROW_ID, ROW_KEY, ROW_TS
from closedloop.features.definitions import WindowedFeature


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


def double(value: float) -> str:
    """A float as an exact DuckDB DOUBLE literal."""
    return f"CAST('{value!r}' AS DOUBLE)"


def total(column: str, where: str, scale: tuple[float, float, float] | None,
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


def hop_ctes(i: int, hop: int, group: list[WindowedFeature], shift: dict[str, str],
             *, tiled: bool, scales: dict[str, tuple[float, float, float] | None],
             ) -> list[str]:
    """The CTEs of hop ``i`` (length ``hop``): its tiles (or events as their own tiles), the
    (key, block) pairs each row probes, the partials it reads, and ``h{i}``: one row per
    query row with the windows of ``group``."""
    span = max(w.window // hop for w in group)
    cols = sorted({w.column for w in group})
    fns = {c: {w.fn for w in group if w.column == c} for c in cols}

    def last_order(c: str) -> str:
        return f"struct_pack(et := __et, tie := {nulls_low('__tie')}, v := {q(c)})"

    # Partial aggregates: from tiles (grouped) and from raw head events (one row each).
    tile_parts: list[str] = []
    raw_parts: list[str] = []
    for c in cols:
        qc, d = q(c), f"({q(c)} - {shift[c]})"
        p = f"{c}"
        tile_parts += [f"count({qc}) AS {q('n_' + p)}"]
        raw_parts += [f"({qc} IS NOT NULL)::BIGINT AS {q('n_' + p)}"]
        # Sums are exact (see _profile): terms as scaled 128-bit integers, or, for a
        # column with NaN or infinities, floats added in a fixed order.
        scale = scales.get(c)
        terms = [("s_", f"{qc}::DOUBLE", 0)] if fns[c] & {"sum", "mean"} else []
        if "stddev" in fns[c]:
            terms += [("d_", f"({d})::DOUBLE", 1), ("q_", f"({d} * {d})::DOUBLE", 2)]
        for prefix, term, which in terms:
            name = q(prefix + p)
            if scale is None:
                tile_parts.append(f"sum({term} ORDER BY {term})::DOUBLE AS {name}")
                raw_parts.append(f"{term} AS {name}")
            else:
                exact = f"CAST({term} * {double(scale[which])} AS HUGEINT)"
                tile_parts.append(f"sum({exact}) AS {name}")
                raw_parts.append(f"{exact} AS {name}")
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
    located = f"(SELECT *, {b} AS __b, {vb} AS __vb FROM ev)"
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
            sd = total("d_" + p, inside, scales.get(p), 1)
            sq = total("q_" + p, inside, scales.get(p), 2)
            expr = (f"CASE WHEN {cnt} > 0 THEN sqrt(greatest(({sq} - {sd} * {sd} / {cnt}) "
                    f"/ {cnt}, 0)) END")
        elif w.fn == "min":
            expr = f"min({q('lo_' + p)}) FILTER (WHERE {inside})"
        elif w.fn == "max":
            expr = f"max({q('hi_' + p)}) FILTER (WHERE {inside})"
        else:  # last
            expr = (f"arg_max({q('l_' + p)}, {q('o_' + p)}) "
                    f"FILTER (WHERE {inside} AND {q('o_' + p)} IS NOT NULL)")
        outs.append(f"{expr} AS {q(w.name)}")
    ctes.append(f"h{i} AS (SELECT {ROW_ID}, {', '.join(outs)} FROM p{i} GROUP BY {ROW_ID})")
    return ctes
