"""The ladder's evidence: what each step measures and how it decides (see
``closedloop.serving.controller``, which runs it on the prediction log and moves the ladder).

Plain functions over Arrow tables of predictions (with their labels): the A/B step's
``ab_evidence``, a metric's unit-level effect (``metric_effect``: CUPED where the pre-period
covers the units, a confidence sequence or Welch), the gate's non-inferiority test, PSI, and
the one-line summaries the demo and ``ladder status`` print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.errors import ExperimentError, PromotionBlocked
from closedloop.experiments import stats
from closedloop.registry.ladder import Ladder

_EPS = 1e-4                   # PSI's floor on a bin's share (as the drift reference)

@dataclass(frozen=True)
class Evidence:
    """What one step's measurement found: the ``verdict`` (``pass``, ``wait``, ``hold``,
    ``rollback``), the ``reasons`` for it (a breach, or what is still missing), and every
    figure measured."""

    step: str
    verdict: str
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(asdict(self))
        return out

    def summary(self) -> str:
        """The step's key figures in one line (the rest is in ``figures``)."""
        return summarize(self.step, self.figures)


def _ci(found: Mapping[str, Any]) -> str:
    low, high = found.get("ci") or (found.get("low"), found.get("high"))
    value = found.get("effect", found.get("difference"))
    if value is None or low is None or high is None:
        return f"not measured ({found.get('why', 'no values')})"
    return f"{value:+.4g} [{low:+.4g}, {high:+.4g}]"


def summarize(step: str, f: Mapping[str, Any]) -> str:
    """A step's key figures in one line."""
    if not f:
        return ""
    if step == "gate":
        overall = f.get("overall") or {}
        slices = f.get("slices") or []
        failed = [s for s in slices if s.get("verdict") == "fail"]
        return (f"{f.get('metric')} difference {_ci(overall)} (margin {f.get('margin')}); "
                f"{len(slices) - len(failed)} of {len(slices)} slices non-inferior")
    if step == "shadow" and "psi" in f:
        change = max((f.get("decision_change") or {"-": 0.0}).values())
        return (f"{f['predictions']:,} requests: PSI {f['psi']:.3f}, KS {f['ks']:.3f}, "
                f"{change:.1%} of decisions changed, mean shift {f['mean_shift']:+.4f}, "
                f"offline {'better' if f.get('offline_better') else 'not better'}")
    if step == "ab" and isinstance(f.get("primary"), dict):
        units = f.get("units") or {}
        return (f"{units.get('treatment', 0):,} vs {units.get('control', 0):,} units "
                f"(SRM p {f.get('srm_p', 1.0):.2f}): {f['primary'].get('metric')} "
                f"{_ci(f['primary'])} by {f['primary'].get('method')}; guardrails "
                + ", ".join(f"{k} {_ci(v)}" for k, v in (f.get("guardrails") or {}).items()))
    if "latency_p99_ms" in f and isinstance(f["latency_p99_ms"], dict):
        rates = f.get("rates") or {}
        fallback = (rates.get("fallback_rate") or {}).get("candidate", 0.0)
        metrics = ", ".join(f"{k} {_ci(v)}" for k, v in (f.get("metrics") or {}).items())
        return (f"{f['predictions']:,} candidate predictions: p99 "
                f"{f['latency_p99_ms']['candidate']:.1f} ms, fallback {fallback:.2%}"
                + (f"; {metrics}" if metrics else ""))
    return ""

def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars as numbers, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

def required_units(found: Mapping[str, Any], spec: Mapping[str, Any]) -> int | None:
    """The units the test needs for its MDE at its power (more than an even split's for
    an uneven one: by 1/(4 s (1 − s)))."""
    try:
        even = stats.sample_size(mean=abs(found["control_mean"]),
                                 variance=found["control_variance"], effect=spec["mde"],
                                 power=spec["power"], alpha=spec["alpha"])
    except ExperimentError:
        return None
    s = spec["share"]
    need: int = math.ceil(even / (4.0 * float(s) * (1.0 - float(s))))
    return need

def metric_effect(ladder: Ladder, name: str, treated: pa.Table, control: pa.Table,
                   *, alpha: float, sequential: bool, pre: pa.Table | None = None,
                   units: tuple[pa.Table, pa.Table] | None = None) -> dict[str, Any]:
    """The candidate's effect on a metric at unit level: per arm, each unit's mean value
    over its (matured, when the metric reads labels) predictions; the absolute effect
    (candidate − production) with its interval — a confidence sequence, or Welch's
    (CUPED-adjusted with a pre-period) — and ``worsening`` (low, value, high): the
    effect turned so that positive is worse."""
    needs_label, higher = ladder.metric(name)
    a, b = units if units is not None else (_unit_values(ladder, name, control),
                                            _unit_values(ladder, name, treated))
    if a.num_rows < 2 or b.num_rows < 2:
        return {"why": f"{a.num_rows} and {b.num_rows} units with a value"}
    arm_a = _mean_arm(a)
    arm_b = _mean_arm(b)
    out: dict[str, Any] = {"control_mean": arm_a.mean, "treatment_mean": arm_b.mean,
                           "control_variance": arm_a.variance,
                           "units": [a.num_rows, b.num_rows]}
    before = None if pre is None or not pre.num_rows else _unit_values(ladder, name, pre)
    adjusted = None
    if before is not None and before.num_rows:
        fill = float(pc.mean(before["v"]).as_py())
        (ca, seen_a), (cb, seen_b) = (_cuped_arm(a, before, fill),
                                      _cuped_arm(b, before, fill))
        covered = seen_a + seen_b
        if covered < 0.1 * (a.num_rows + b.num_rows):   # a covariate for too few units
            out["cuped_skipped"] = (f"{covered} of {a.num_rows + b.num_rows} units have "
                                    "a pre-period")
        else:
            try:
                adjusted = stats.cuped(ca, cb, relative=False, alpha=alpha)
            except ExperimentError as exc:    # e.g. a constant covariate: no adjustment
                out["cuped_skipped"] = exc.message
    try:
        if adjusted is not None:
            effect, low, high = (adjusted.effect.expected, *adjusted.effect.ci)
            out.update(method="cuped", theta=adjusted.theta, covered=covered)
            if sequential:               # CUPED's variance, sequential's interval
                seq = stats.sequential(_adjusted_arm(ca, adjusted.theta),
                                       _adjusted_arm(cb, adjusted.theta),
                                       relative=False, alpha=alpha,
                                       tuning=float(a.num_rows + b.num_rows))
                effect, low, high = seq.expected, *seq.ci
                out["method"] = "cuped+sequential"
        elif sequential:
            seq = stats.sequential(arm_a, arm_b, relative=False, alpha=alpha,
                                   tuning=float(a.num_rows + b.num_rows))
            effect, low, high = seq.expected, *seq.ci
            out["method"] = "sequential"
        else:
            w = stats.welch(arm_a, arm_b, relative=False, alpha=alpha)
            effect, low, high = w.expected, *w.ci
            out["method"] = "welch"
    except ExperimentError as exc:
        return {**out, "why": exc.message}
    sign = -1.0 if higher else 1.0
    ends = sorted((sign * low, sign * high))
    out.update(effect=effect, ci=[low, high], worsening=sign * effect,
               worsening_low=ends[0], worsening_high=ends[1],
               label=needs_label)
    return out

def ab_evidence(ladder: Ladder, spec: Mapping[str, Any], treated: pa.Table, control: pa.Table,
                pre: pa.Table | None = None) -> Evidence:
    """The A/B step's evidence over the two arms' predictions (with their labels) and, for
    CUPED, the predictions production made before the test: unit counts and the SRM check,
    the primary metric's effect (CUPED where the pre-period covers the units; a confidence
    sequence or Welch), the units the MDE needs, each guardrail's effect, and the verdict
    (see ``closedloop.serving.controller``). The controller and the `ab` benchmark both run it."""
    primary = spec["primary"]
    limits = spec["guardrails"]
    if not isinstance(limits, dict):             # a policy recorded as a list
        limits = dict.fromkeys(limits, 0.0)
    names = list(dict.fromkeys([primary, *limits]))
    (by_control, n_control), (by_treated, n_treated) = (_unit_tables(ladder, names, control),
                                                        _unit_tables(ladder, names, treated))
    units = {"control": n_control, "treatment": n_treated}
    figures: dict[str, Any] = {"units": units, "share": spec["share"],
                               "predictions": {"control": control.num_rows,
                                               "treatment": treated.num_rows}}
    reasons: list[str] = []
    if units["control"] and units["treatment"]:
        p = stats.srm([units["control"], units["treatment"]],
                      [1 - spec["share"], spec["share"]])
        figures["srm_p"] = p
        if p < spec["srm_p"]:
            return Evidence("ab", "hold", [f"sample ratio mismatch: {units} units for "
                                           f"a {spec['share']:.0%} split (p = {p:.2g})"],
                            figures)
    needs_label, _ = ladder.metric(primary)
    if needs_label and "label" in treated.column_names:
        maturing = int(treated["label"].null_count + control["label"].null_count)
        figures["maturing"] = maturing
    least = min(units.values())
    if least < spec["min_units"]:
        return Evidence("ab", "wait", [f"{least} of {spec['min_units']} units in the "
                                       "smaller arm"], figures)
    by_arm = (by_control, by_treated)
    found = metric_effect(ladder, primary, treated, control, alpha=spec["alpha"],
                                         sequential=spec["sequential"], pre=pre,
                                         units=(by_arm[0][primary], by_arm[1][primary]))
    figures["primary"] = {"metric": primary, **found}
    if "effect" not in found:
        return Evidence("ab", "wait", [f"{primary}: {found.get('why', 'not measurable')}"],
                        figures)
    required = required_units(found, spec)
    figures["required_units"] = required
    total = units["control"] + units["treatment"]
    if required is not None:
        figures["progress"] = total / required
    for name, limit in limits.items():
        g = metric_effect(ladder, name, treated, control, alpha=spec["alpha"],
                                         sequential=spec["sequential"],
                                         units=(by_arm[0][name], by_arm[1][name]))
        figures.setdefault("guardrails", {})[name] = {**g, "limit": limit}
        if "effect" in g and g["worsening_low"] > limit:
            reasons.append(f"guardrail {name} is significantly worse by more than "
                           f"{limit:g} ({g['worsening']:+.4g}, interval {g['ci']})")
    if reasons:
        return Evidence("ab", "rollback", reasons, figures)
    if found["worsening_low"] > 0:
        return Evidence("ab", "rollback", [f"{primary} is significantly worse "
                                           f"({found['worsening']:+.4g}, interval "
                                           f"{found['ci']})"], figures)
    if found["worsening_high"] < 0:
        return Evidence("ab", "pass", [], figures)          # significantly better
    margin = spec["mde"] * abs(found["control_mean"])
    if required is not None and total >= required and found["worsening_high"] < margin:
        return Evidence("ab", "pass", [f"no significant difference on {total} units; "
                                       f"non-inferior within the MDE"], figures)
    left = "" if required is None else f" of {required} required"
    return Evidence("ab", "wait", [f"{primary}: not yet significant ({total} units"
                                   f"{left})"], figures)



def _non_inferior(compared: Mapping[str, Any], metric: str, margin: float) -> dict[str, Any]:
    """The gate's test on one comparison: AUC difference's lower bound ≥ −margin, or the
    log-loss difference's upper bound ≤ margin."""
    key = "auc_difference" if metric == "auc" else "log_loss_difference"
    found = compared.get(key)
    if not found:
        return {"verdict": "unmeasured"}
    low, value, high = found["low"], found["value"], found["high"]
    if metric == "auc":
        ok = low >= -margin
        why = f"AUC difference {value:+.4f}, lower bound {low:+.4f} < −{margin}"
    else:
        ok = high <= margin
        why = f"log-loss difference {value:+.4f}, upper bound {high:+.4f} > {margin}"
    return {"verdict": "pass" if ok else "fail", "difference": value, "low": low,
            "high": high, **({} if ok else {"why": why})}


def psi(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any], bins: int = 10) -> float:
    """The population stability index of ``actual`` against ``expected`` over
    ``expected``'s quantile bins (each share floored at 1e-4)."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=len(edges) + 1)
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=len(edges) + 1)
    pe = np.maximum(e / max(len(expected), 1), _EPS)
    pa_ = np.maximum(a / max(len(actual), 1), _EPS)
    return float(np.sum((pa_ - pe) * np.log(pa_ / pe)))


def _p99(column: pa.ChunkedArray) -> float:
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)
    return float(np.percentile(values, 99)) if values.size else 0.0


def _rate(rows: pa.Table, name: str) -> float:
    if not rows.num_rows:
        return 0.0
    fallback = pc.fill_null(rows["fallback"], False)
    if name == "error_rate":                # the online store failed or was too slow
        failed = pc.and_(fallback, pc.starts_with(pc.fill_null(rows["fallback_reason"], ""),
                                                  "online store"))
        fallback = failed
    flags = fallback.to_numpy(zero_copy_only=False).astype(bool)
    return float(flags.sum()) / float(rows.num_rows)


def _values(ladder: Ladder, name: str, rows: pa.Table) -> tuple[np.ndarray[Any, Any],
                                                                  np.ndarray[Any, Any]]:
    """Each prediction's value of metric ``name`` and whether it has one (matured)."""
    needs_label, _ = ladder.metric(name)
    score = rows["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    has = np.ones(rows.num_rows, dtype=bool)
    y = np.zeros(rows.num_rows)
    if needs_label:
        if "label" not in rows.column_names:
            return np.zeros(0), np.zeros(rows.num_rows, dtype=bool)
        labels = rows["label"]
        has = pc.is_valid(labels).to_numpy(zero_copy_only=False)
        y = pc.fill_null(pc.cast(labels, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    if name == "log_loss":
        p = np.clip(score, 1e-15, 1 - 1e-15)
        value = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    elif name == "brier":
        value = (score - y) ** 2
    elif name == "label":
        value = y
    elif name == "score":
        value = score
    elif name == "fallback":
        value = pc.fill_null(rows["fallback"], False).to_numpy(zero_copy_only=False).astype(
            np.float64)
    elif name == "latency_ms":
        value = rows["latency_ms"].to_numpy(zero_copy_only=False).astype(np.float64)
    elif name.startswith("decision:"):
        value = pc.equal(rows["decision"], name.split(":", 1)[1]).to_numpy(
            zero_copy_only=False).astype(np.float64)
    else:
        metric = next(m for m in ladder.metrics if m.name == name)
        columns: dict[str, Any] = {c: rows[c].to_numpy(zero_copy_only=False)
                                   for c in ("score", "decision", "fallback", "latency_ms")}
        columns["label"] = np.where(has, y, np.nan)
        for c in rows.column_names:
            if c.startswith("request."):
                columns[c] = rows[c].to_numpy(zero_copy_only=False)
        value = np.asarray(metric.fn(columns), dtype=np.float64)
        if value.shape != (rows.num_rows,):
            raise PromotionBlocked(f"metric {name!r} returned {value.shape} values for "
                                   f"{rows.num_rows} predictions",
                                   fix="return one number per prediction")
    return value, has


def _unit_values(ladder: Ladder, name: str, rows: pa.Table) -> pa.Table:
    """Each unit's mean value of the metric over its predictions that have one: a table of
    ``u`` (the unit, as text) and ``v``, in no particular order."""
    if not rows.num_rows:
        return pa.table({"u": pa.array([], pa.string()), "v": pa.array([], pa.float64())})
    value, has = _values(ladder, name, rows)
    units = rows["unit"]
    if not has.all():
        mask = pa.array(has)
        units, value = units.filter(mask), value[has]
    table = pa.table({"u": pc.cast(units, pa.string()), "v": value})
    return table.group_by("u", use_threads=True).aggregate([("v", "mean")]).rename_columns(
        ["u", "v"])


def _unit_tables(ladder: Ladder, names: list[str], rows: pa.Table,
                 ) -> tuple[dict[str, pa.Table], int]:
    """``_unit_values`` of each metric in ``names``, in one grouping of the rows by unit, and
    how many units the rows hold (with a value or not)."""
    if not rows.num_rows:
        return {name: _unit_values(ladder, name, rows) for name in names}, 0
    columns: dict[str, Any] = {"u": pc.cast(rows["unit"], pa.string())}
    for j, name in enumerate(names):
        value, has = _values(ladder, name, rows)
        columns[f"m{j}"] = pa.array(value, mask=None if has.all() else ~has)
    grouped = pa.table(columns).group_by("u", use_threads=True).aggregate(
        [(f"m{j}", "mean") for j in range(len(names))])
    out = {}
    for j, name in enumerate(names):
        one = grouped.select(["u", f"m{j}_mean"]).rename_columns(["u", "v"])
        out[name] = one if one["v"].null_count == 0 else one.filter(pc.is_valid(one["v"]))
    return out, grouped.num_rows


def _mean_arm(values: pa.Table) -> stats.Mean:
    v = values["v"].to_numpy(zero_copy_only=False)
    return stats.Mean(float(v.size), float(v.sum()), float(np.dot(v, v)))


def _cuped_arm(values: pa.Table, before: pa.Table, fill: float) -> tuple[stats.Cuped, int]:
    """An arm with each unit's pre-period value as covariate (``fill``, the pre-period's
    mean, for a unit it never saw: any fixed value is a valid covariate), and how many of
    its units the pre-period saw."""
    joined = values.join(before.rename_columns(["u", "pre"]), "u", join_type="left outer",
                         use_threads=True)
    pre_col = joined["pre"]
    covered = len(pre_col) - pre_col.null_count
    post = joined["v"].to_numpy(zero_copy_only=False)
    pre = pc.fill_null(pre_col, fill).to_numpy(zero_copy_only=False)
    return stats.Cuped(float(post.size), float(post.sum()), float(np.dot(post, post)),
                       float(pre.sum()), float(np.dot(pre, pre)),
                       float(np.dot(post, pre))), covered


def _adjusted_arm(arm: stats.Cuped, theta: float) -> stats.Mean:
    """An arm's CUPED-adjusted values (post − θ·pre) as a mean metric's statistics."""
    n = arm.n
    s = arm.post_sum - theta * arm.pre_sum
    ss = arm.post_ss - 2 * theta * arm.post_pre_sp + theta ** 2 * arm.pre_ss
    return stats.Mean(n, s, ss)
