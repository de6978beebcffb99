"""The ladder's evidence: what each step measures and how it decides (see
``closedloop.serving.controller``, which runs it on the prediction log and moves the ladder).

Plain functions over Arrow tables of predictions (with their labels): the A/B step's
``ab_evidence``, a metric's unit-level effect (``metric_effect``: CUPED where the pre-period
covers the units, a confidence sequence or Welch), the gate's non-inferiority test, PSI, and
the one-line summaries the demo and ``ladder status`` print.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import OfflineEngine
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

Mask = np.ndarray[Any, np.dtype[np.bool_]]


@dataclass(frozen=True)
class UnitMeans:
    """Each unit's mean value of a metric over its rows that have one: the units (as the
    codes of ``Units``) and their means, in code order."""

    units: np.ndarray[Any, Any]
    means: np.ndarray[Any, Any]

    @property
    def n(self) -> int:
        return int(self.units.size)


@dataclass(frozen=True)
class Units:
    """The rows' units as integer codes, one numbering for every group of the rows (the
    arms, the pre-period: disjoint masks): each group's unit means are one bincount over
    every row, a unit's covariate an index."""

    keys: np.ndarray[Any, Any]    # group × (count + 1) + the unit's code (count: no unit)
    count: int
    groups: int                   # a row in none of them is in group ``groups``
    cache: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, column: pa.ChunkedArray | pa.Array, groups: Sequence[Mask],
           engine: OfflineEngine | None = None) -> Units:
        """The rows' units (``column``) numbered — by the offline ``engine``, in parallel,
        where one is given — and the ``groups`` they fall in."""
        column = pc.cast(column, pa.string())
        if engine is not None:
            encoded = engine.encode(column)
        else:
            encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(
                column, pa.ChunkedArray) else column)
        count = len(encoded.dictionary)
        keys = pc.fill_null(encoded.indices, count).to_numpy(zero_copy_only=False).astype(
            np.int64)
        taken = np.zeros(len(keys), dtype=np.uint8)
        for g, rows in enumerate(groups):      # one pass each, no index built
            taken += rows
            np.add(keys, g * (count + 1), out=keys, where=rows)
        np.add(keys, len(groups) * (count + 1), out=keys, where=taken == 0)
        if taken.max(initial=0) > 1:
            raise ExperimentError("the groups share rows: an arm or the pre-period would "
                                  "count a prediction twice",
                                  fix="select disjoint predictions for each group")
        return cls(keys, count, len(groups))

    def _per_group(self, weights: np.ndarray[Any, Any] | None) -> np.ndarray[Any, Any]:
        size = (self.groups + 1) * (self.count + 1)
        found = np.bincount(self.keys, weights=weights, minlength=size)
        return found.reshape(self.groups + 1, self.count + 1)[:self.groups, :self.count]

    def means(self, values: np.ndarray[Any, Any], has: Mask) -> list[UnitMeans]:
        """Per group, each unit's mean of ``values`` over the group's rows that have one."""
        every = bool(has.all())
        n = self._counts() if every else self._per_group(has.astype(np.float64))
        total = self._per_group(values if every else np.where(has, values, 0.0))
        out = []
        for g in range(self.groups):
            seen = np.flatnonzero(n[g])
            out.append(UnitMeans(seen, total[g, seen] / n[g, seen]))
        return out

    def _counts(self) -> np.ndarray[Any, Any]:
        """Each group's rows per unit (computed once)."""
        if "counts" not in self.cache:
            self.cache["counts"] = self._per_group(None)
        return self.cache["counts"]

    def present(self) -> list[int]:
        """How many units each group holds."""
        return [int(np.count_nonzero(row)) for row in self._counts()]


def mask(table: pa.Table, condition: pa.ChunkedArray | pa.Array) -> Mask:
    """A boolean condition over ``table``'s rows (null as false) as a numpy mask."""
    out: Mask = pc.fill_null(condition, False).to_numpy(zero_copy_only=False).astype(bool)
    return out


def metric_effect(ladder: Ladder, name: str, rows: pa.Table, treated: Mask, control: Mask,
                  *, alpha: float, sequential: bool, pre: Mask | None = None,
                  engine: OfflineEngine | None = None) -> dict[str, Any]:
    """The candidate's effect on a metric at unit level over ``rows``: per arm (a mask over
    the rows), each unit's mean value over its (matured, when the metric reads labels)
    predictions; the absolute effect (candidate − production) with its interval — a
    confidence sequence, or Welch's (CUPED-adjusted by each unit's mean over the ``pre``
    rows) — and ``worsening`` (low, value, high): the effect turned so that positive is
    worse. The units are numbered by the offline ``engine`` where one is given."""
    units = Units.of(rows["unit"], [control, treated] + ([] if pre is None else [pre]),
                     engine)
    value, has = _values(ladder, name, rows)
    a, b, *before = units.means(value, has)
    return _effect(ladder, name, a, b, alpha=alpha, sequential=sequential,
                   before=before[0] if before else None)


def _effect(ladder: Ladder, name: str, a: UnitMeans, b: UnitMeans, *, alpha: float,
            sequential: bool, before: UnitMeans | None) -> dict[str, Any]:
    """``metric_effect`` on the arms' unit means (control ``a``, treatment ``b``)."""
    needs_label, higher = ladder.metric(name)
    if a.n < 2 or b.n < 2:
        return {"why": f"{a.n} and {b.n} units with a value"}
    arm_a = _mean_arm(a.means)
    arm_b = _mean_arm(b.means)
    out: dict[str, Any] = {"control_mean": arm_a.mean, "treatment_mean": arm_b.mean,
                           "control_variance": arm_a.variance, "units": [a.n, b.n]}
    adjusted = None
    if before is not None and before.n:
        fill = float(before.means.mean())
        size = int(max(a.units.max(), b.units.max(), before.units.max())) + 1
        covariate = np.full(size, np.nan)
        covariate[before.units] = before.means
        (ca, seen_a), (cb, seen_b) = (_cuped_arm(a, covariate, fill),
                                      _cuped_arm(b, covariate, fill))
        covered = seen_a + seen_b
        if covered < 0.1 * (a.n + b.n):   # a covariate for too few units
            out["cuped_skipped"] = f"{covered} of {a.n + b.n} units have a pre-period"
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
                                       relative=False, alpha=alpha, tuning=float(a.n + b.n))
                effect, low, high = seq.expected, *seq.ci
                out["method"] = "cuped+sequential"
        elif sequential:
            seq = stats.sequential(arm_a, arm_b, relative=False, alpha=alpha,
                                   tuning=float(a.n + b.n))
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
               worsening_low=ends[0], worsening_high=ends[1], label=needs_label)
    return out


def ab_evidence(ladder: Ladder, spec: Mapping[str, Any], rows: pa.Table, treated: Mask,
                control: Mask, pre: Mask | None = None,
                engine: OfflineEngine | None = None) -> Evidence:
    """The A/B step's evidence over ``rows``, predictions with their labels: the two arms
    and, for CUPED, what production served before the test, each a mask over the rows.
    Unit counts and the SRM check, the primary metric's effect (CUPED where the pre-period
    covers the units; a confidence sequence or Welch), the units the MDE needs, each
    guardrail's effect, and the verdict (see ``closedloop.serving.controller``). The
    controller and the `ab` benchmark both run it: the units are numbered once and every
    metric is computed once over all the rows (the units numbered by the offline
    ``engine`` where one is given)."""
    primary = spec["primary"]
    limits = spec["guardrails"]
    if not isinstance(limits, dict):             # a policy recorded as a list
        limits = dict.fromkeys(limits, 0.0)
    everyone = Units.of(rows["unit"], [control, treated] + ([] if pre is None else [pre]),
                        engine)
    present = everyone.present()
    units = {"control": present[0], "treatment": present[1]}
    figures: dict[str, Any] = {"units": units, "share": spec["share"],
                               "predictions": {"control": int(control.sum()),
                                               "treatment": int(treated.sum())}}
    if units["control"] and units["treatment"]:
        p = stats.srm([units["control"], units["treatment"]],
                      [1 - spec["share"], spec["share"]])
        figures["srm_p"] = p
        if p < spec["srm_p"]:
            return Evidence("ab", "hold", [f"sample ratio mismatch: {units} units for "
                                           f"a {spec['share']:.0%} split (p = {p:.2g})"],
                            figures)
    needs_label, _ = ladder.metric(primary)
    if needs_label and "label" in rows.column_names:
        waiting = mask(rows, pc.is_null(rows["label"]))
        figures["maturing"] = int(np.count_nonzero(waiting & (treated | control)))
    least = min(units.values())
    if least < spec["min_units"]:
        return Evidence("ab", "wait", [f"{least} of {spec['min_units']} units in the "
                                       "smaller arm"], figures)

    seen: dict[str, np.ndarray[Any, Any]] = {}

    def effect(name: str, cuped: bool) -> dict[str, Any]:
        value, has = _values(ladder, name, rows, seen)
        a, b, *before = everyone.means(value, has)
        return _effect(ladder, name, a, b, alpha=spec["alpha"],
                       sequential=spec["sequential"],
                       before=before[0] if cuped and before else None)

    found = effect(primary, True)
    figures["primary"] = {"metric": primary, **found}
    if "effect" not in found:
        return Evidence("ab", "wait", [f"{primary}: {found.get('why', 'not measurable')}"],
                        figures)
    required = required_units(found, spec)
    figures["required_units"] = required
    total = units["control"] + units["treatment"]
    if required is not None:
        figures["progress"] = total / required
    reasons: list[str] = []
    for name, limit in limits.items():
        g = found if name == primary else effect(name, False)
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


def _values(ladder: Ladder, name: str, rows: pa.Table,
            seen: dict[str, np.ndarray[Any, Any]] | None = None,
            ) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Each prediction's value of metric ``name`` and whether it has one (matured);
    ``seen`` keeps the score and labels as arrays for the next metric over the same rows."""
    needs_label, _ = ladder.metric(name)
    seen = {} if seen is None else seen
    if "score" not in seen:
        seen["score"] = rows["score"].to_numpy(zero_copy_only=False).astype(np.float64,
                                                                            copy=False)
    score = seen["score"]
    has = np.ones(rows.num_rows, dtype=bool)
    y = np.zeros(rows.num_rows)
    if needs_label:
        if "label" not in rows.column_names:
            return np.zeros(rows.num_rows), np.zeros(rows.num_rows, dtype=bool)
        if "y" not in seen:
            labels = rows["label"]
            seen["has"] = pc.is_valid(labels).to_numpy(zero_copy_only=False)
            seen["y"] = pc.fill_null(pc.cast(labels, pa.float64()), 0.0).to_numpy(
                zero_copy_only=False)
        has, y = seen["has"], seen["y"]
    if name == "log_loss":
        p = np.clip(score, 1e-15, 1 - 1e-15)
        one = y == 1.0
        if np.count_nonzero(one) + np.count_nonzero(y == 0.0) == y.size:
            value = np.subtract(1.0, p, out=p, where=~one)  # one logarithm a row, in place
            np.log(value, out=value)
            np.negative(value, out=value)
        else:
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


def _mean_arm(v: np.ndarray[Any, Any]) -> stats.Mean:
    return stats.Mean(float(v.size), float(v.sum()), float(np.dot(v, v)))


def _cuped_arm(arm: UnitMeans, covariate: np.ndarray[Any, Any], fill: float,
               ) -> tuple[stats.Cuped, int]:
    """An arm with each unit's pre-period value as covariate (``fill``, the pre-period's
    mean, for a unit it never saw: any fixed value is a valid covariate), and how many of
    its units the pre-period saw."""
    pre = covariate[arm.units]
    seen = ~np.isnan(pre)
    pre = np.where(seen, pre, fill)
    post = arm.means
    return stats.Cuped(float(post.size), float(post.sum()), float(np.dot(post, post)),
                       float(pre.sum()), float(np.dot(pre, pre)),
                       float(np.dot(post, pre))), int(np.count_nonzero(seen))


def _adjusted_arm(arm: stats.Cuped, theta: float) -> stats.Mean:
    """An arm's CUPED-adjusted values (post − θ·pre) as a mean metric's statistics."""
    n = arm.n
    s = arm.post_sum - theta * arm.pre_sum
    ss = arm.post_ss - 2 * theta * arm.post_pre_sp + theta ** 2 * arm.pre_ss
    return stats.Mean(n, s, ss)
