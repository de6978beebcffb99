"""Workload `ab`: the A/B analysis of a 10-million-prediction log joined to its labels — two
arms, a million units, three metrics, a CUPED covariate.

The data (generated once per size): a model's prediction log as closedloop writes it
(``.closedloop/predictions/bench/*.jsonl``, one record per line): 2M predictions before the
test (production, no ladder step: the pre-period) and 8M during it (step ``L1:ab``, each
unit's arm fixed by a hash of the unit: ``ab`` for the candidate, ``production`` for the
control); and the labels (``labels.parquet``: subject, label). Each unit has its own
base rate, which its labels follow and both versions' scores track (the candidate more
closely), so a unit's pre-period explains much of its test-period value.

* ``closedloop``: what the ladder's controller runs at its A/B step, less the label
  store (the labels are a file here): the prediction log read as a table
  (``closedloop.serving.records.prediction_table``, the columns the A/B step reads, as
  ``project.serving.predictions`` reads them), their labels looked up in the offline
  engine (``join_labels``), the arms and the pre-period as masks
  (``closedloop.serving.measure``), and ``closedloop.serving.evidence.ab_evidence`` with
  the units numbered by the engine (``encode``): unit-level means of log loss (primary;
  CUPED by each unit's pre-period log loss, then a confidence sequence), Brier and the
  block rate (guardrails; confidence sequences), the SRM check and the sample the MDE
  needs.
* ``floor``: one hand-written DuckDB query over the same files (the JSON log read with its
  columns declared, joined to the labels, per-unit means, each arm's sums, the pre-period's
  join) and numpy with ``closedloop.experiments`` on the sums.

Outputs compared, per metric: the arms' means, the effect and its interval. Target: at most
1.5x the floor, identical numbers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.data import DATA

N = 10_000_000
UNITS = 1_000_000
PRE_SHARE = 0.2
METRICS = ["log_loss", "brier", "decision:block"]
OUTPUTS = ["control_mean", "treatment_mean", "effect", "low", "high"]
LABEL = "L1:ab"


def ab_data(scale: float = 1.0) -> Path:
    """The log and labels (see module); built once per size."""
    import duckdb

    folder = DATA / f"ab-{scale:g}"
    if (folder / "done.json").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    log = folder / "log" / "bench"
    log.mkdir(parents=True)
    n, units = int(N * scale), max(int(UNITS * scale), 100)
    pre = int(n * PRE_SHARE)
    con = duckdb.connect()
    con.execute("SELECT setseed(0.42)")
    con.execute(f"""
        CREATE TABLE gen AS
        SELECT i, u, rate, i < {pre} AS before,
               (NOT (i < {pre})) AND hash(u) % 2 = 0 AS treated,
               random() AS noise, random() AS draw
        FROM (SELECT i, (hash(i * 7919) % {units})::BIGINT AS u FROM range({n}) t(i)),
             LATERAL (SELECT 0.01 + (hash(u * 31) % 1000) / 1000.0 * 0.2 AS rate)""")
    con.execute("""
        CREATE TABLE scored AS
        SELECT *, least(greatest(rate + CASE WHEN treated THEN 0.05 ELSE 0.1 END
                                 * (noise - 0.5), 0.0001), 0.9999) AS score
        FROM gen""")
    con.execute(f"""
        COPY (SELECT 'p' || i AS id, 'bench' AS model, 1767225600000000 + i AS time,
                     CASE WHEN treated THEN 2 ELSE 1 END AS version,
                     CASE WHEN treated THEN 'ab' ELSE 'production' END AS route,
                     score, CASE WHEN score >= 0.15 THEN 'block' ELSE 'allow' END AS decision,
                     'u' || u AS unit, 's' || i AS subject, false AS fallback,
                     CASE WHEN before THEN NULL ELSE '{LABEL}' END AS step,
                     'prediction' AS kind, 1 AS schema
              FROM scored ORDER BY i)
        TO '{log / "0000-bench.jsonl"}' (FORMAT JSON)""")
    con.execute(f"""
        COPY (SELECT 's' || i AS subject, draw < rate AS label FROM scored ORDER BY i)
        TO '{folder / "labels.parquet"}' (FORMAT PARQUET)""")
    con.close()
    (folder / "done.json").write_text(json.dumps({"scale": scale, "predictions": n,
                                                  "units": units}))
    return folder


def _ladder() -> Any:
    import closedloop as cl

    return cl.Ladder("bench", ab=cl.ABTest(share=0.5, primary="log_loss",
                                           guardrails={"brier": 0.0, "decision:block": 0.0},
                                           min_units=100),
                     ramp=cl.Ramp(steps=(0.5, 1.0)))


def _rows(evidence: Any) -> pa.Table:
    figures = evidence.figures
    found = [figures["primary"], *(figures["guardrails"][m] for m in METRICS[1:])]
    return pa.table({"label_id": np.arange(len(found)),
                     "control_mean": [f["control_mean"] for f in found],
                     "treatment_mean": [f["treatment_mean"] for f in found],
                     "effect": [f["effect"] for f in found],
                     "low": [f["ci"][0] for f in found], "high": [f["ci"][1] for f in found]})


def _closedloop(data: Path) -> Any:
    from closedloop.backends.duckdb import DuckDBEngine
    from closedloop.backends.predictions import FilePredictionLog
    from closedloop.serving.evidence import ab_evidence, mask
    from closedloop.serving.measure import AB_COLUMNS, pre_period
    from closedloop.serving.records import prediction_table
    from closedloop.serving.service import LABELLED_BY, join_labels

    log, engine = FilePredictionLog(data / "log"), DuckDBEngine()
    try:
        table = prediction_table(log, "bench", shadows=False,
                                 columns=[*AB_COLUMNS, *LABELLED_BY])
        table = join_labels(table, pq.read_table(data / "labels.parquet"), engine=engine)
        during = mask(table, pc.equal(table["step"], LABEL))
        treated = during & mask(table, pc.equal(table["route"], "ab"))
        control = during & mask(table, pc.equal(table["route"], "production"))
        ladder = _ladder()
        evidence = ab_evidence(ladder, ladder.spec()["ab"], table, treated, control,
                               pre_period(table, 1, 1), engine=engine)
    finally:
        log.close()
        engine.close()
    return _rows(evidence), {"units": float(sum(evidence.figures["units"].values()))}


def _floor(data: Path) -> Any:
    import duckdb

    from closedloop.experiments import stats

    con = duckdb.connect()
    log = data / "log" / "bench" / "*.jsonl"
    sums = con.sql(f"""
        WITH p AS (SELECT unit, route, step, score, decision, subject
                   FROM read_json('{log}', format = 'newline_delimited',
                                  columns = {{kind: 'VARCHAR', unit: 'VARCHAR',
                                             route: 'VARCHAR', step: 'VARCHAR',
                                             score: 'DOUBLE', decision: 'VARCHAR',
                                             subject: 'VARCHAR'}})
                   WHERE kind = 'prediction'),
        v AS (SELECT unit, route, step,
                     -(y * ln(c) + (1 - y) * ln(1 - c)) AS ll, (score - y) * (score - y) AS br,
                     (decision = 'block')::DOUBLE AS blk
              FROM (SELECT p.*, l.label::DOUBLE AS y,
                           least(greatest(score, 1e-15), 1 - 1e-15) AS c
                    FROM p JOIN read_parquet('{data / "labels.parquet"}') l USING (subject))),
        u AS (SELECT unit, route, avg(ll) AS ll, avg(br) AS br, avg(blk) AS blk FROM v
              WHERE step = '{LABEL}' GROUP BY unit, route),
        pre AS (SELECT unit, avg(ll) AS pre FROM v
                WHERE step IS NULL AND route = 'production' GROUP BY unit),
        f AS (SELECT avg(pre) AS fill FROM pre)
        SELECT route, count(*) AS n, sum(ll), sum(ll * ll), sum(br), sum(br * br), sum(blk),
               sum(blk * blk), sum(coalesce(pre, fill)), sum(coalesce(pre, fill) ^ 2),
               sum(ll * coalesce(pre, fill))
        FROM u LEFT JOIN pre USING (unit), f GROUP BY route""").fetchall()
    con.close()
    arms = {r[0]: r[1:] for r in sums}
    a, b = arms["production"], arms["ab"]
    out: list[tuple[float, float, float, float, float]] = []
    ca = stats.Cuped(a[0], a[1], a[2], a[7], a[8], a[9])
    cb = stats.Cuped(b[0], b[1], b[2], b[7], b[8], b[9])
    theta = stats.cuped(ca, cb, relative=False).theta

    def adjusted(c: stats.Cuped) -> stats.Mean:
        return stats.Mean(c.n, c.post_sum - theta * c.pre_sum,
                          c.post_ss - 2 * theta * c.post_pre_sp + theta ** 2 * c.pre_ss)
    tuning = float(a[0] + b[0])
    seq = stats.sequential(adjusted(ca), adjusted(cb), relative=False, tuning=tuning)
    out.append((a[1] / a[0], b[1] / b[0], seq.expected, *seq.ci))
    for j in (3, 5):                         # brier, block: plain confidence sequences
        ma, mb = stats.Mean(a[0], a[j], a[j + 1]), stats.Mean(b[0], b[j], b[j + 1])
        seq = stats.sequential(ma, mb, relative=False, tuning=tuning)
        out.append((ma.mean, mb.mean, seq.expected, *seq.ci))
    table = pa.table({"label_id": np.arange(len(out)),
                      **{name: [row[k] for row in out] for k, name in enumerate(OUTPUTS)}})
    return table, {"units": float(a[0] + b[0])}


class _AB:
    SYSTEMS: ClassVar[dict[str, Any]] = {"closedloop": _closedloop, "floor": _floor}
    SETUP: ClassVar[set[str]] = set()
    ANCHOR = None
    OUTPUTS = OUTPUTS
    DATA = staticmethod(ab_data)


ab = _AB
