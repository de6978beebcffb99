"""What the ladder's controller measures at each step, from the evidence it has: the
candidate's evaluation report and the feature log (the gate), and the prediction log joined
to its labels (shadow, guardrails, A/B). ``Measurements`` is the controller's side of it
(``closedloop.serving.controller.LadderService`` is one); the statistics are plain functions
in ``closedloop.serving.evidence``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sps

from closedloop.backends.base import LadderRecord
from closedloop.errors import ClosedLoopError
from closedloop.registry.ladder import Ladder
from closedloop.registry.service import RegistryService
from closedloop.serving.evidence import (
    Evidence,
    Mask,
    _non_inferior,
    _p99,
    _rate,
    ab_evidence,
    mask,
    metric_effect,
    psi,
)
from closedloop.serving.service import ServingService, step_label

#: What the A/B step reads of the log when its metrics need no more (see ``_plain_metrics``).
AB_COLUMNS = ("unit", "route", "step", "version", "score", "decision")


def _plain_metrics(spec: Mapping[str, Any]) -> bool:
    """Whether every metric of an A/B spec is computed from the score, the decision and the
    label alone."""
    names = [spec["primary"], *spec["guardrails"]]
    return all(n in ("log_loss", "brier", "label", "score") or n.startswith("decision:")
               for n in names)


class Measurements:
    """Each step's evidence for a ladder record (see module); needs ``serving``,
    ``registry`` and ``declared(model)``."""

    serving: ServingService
    registry: RegistryService

    def declared(self, model: str) -> Ladder:
        raise NotImplementedError

    # -- evidence ----------------------------------------------------------------------------
    def evidence(self, record: LadderRecord) -> Evidence:
        """The current step's evidence (see module)."""
        if record.step == "gate":
            return self.gate(record)
        predictions = self._predictions(record)
        if record.step == "shadow":
            return self.shadow(record, predictions)
        if record.step == "ab":
            return self.ab(record, predictions)
        guard = record.spec["canary" if record.step == "canary" else "ramp"]["guardrails"]
        return self.guardrails(record, predictions, guard)

    def _predictions(self, record: LadderRecord) -> pa.Table:
        ladder = self.declared(record.model)
        return self.serving.predictions(record.model, requests=self._request_fields(ladder),
                                        shadows=record.step == "shadow",
                                        columns=AB_COLUMNS if record.step == "ab"
                                        and _plain_metrics(record.spec["ab"]) else None)

    def _request_fields(self, ladder: Ladder) -> list[str]:
        if not ladder.metrics:
            return []
        predictor_fields: set[str] = set()
        try:
            predictor_fields = set(self.serving.predictor(ladder.model).fields)
        except ClosedLoopError:
            return []
        return sorted(predictor_fields)

    # .. the offline gate ....................................................................
    def gate(self, record: LadderRecord) -> Evidence:
        spec = record.spec["gate"]
        model = record.model
        report = self.registry.report(model, record.candidate)
        reasons: list[str] = []
        figures: dict[str, Any] = {"metric": spec["metric"], "margin": spec["margin"]}
        compared = report.comparison
        if compared is None or compared.get("against_version") != record.baseline:
            against = None if compared is None else compared.get("against_version")
            reasons.append(f"the evaluation report compares against "
                           f"{'no version' if against is None else f'version {against}'}, "
                           f"not production (version {record.baseline}): retrain the "
                           "candidate with production in place")
            return Evidence("gate", "rollback", reasons, figures)
        overall = _non_inferior(compared, spec["metric"], spec["margin"])
        figures["overall"] = overall
        if overall["verdict"] == "fail":
            reasons.append(f"{spec['metric']} is worse than production's beyond the margin "
                           f"{spec['margin']}: {overall['why']}")
        elif overall["verdict"] == "unmeasured":
            reasons.append(f"the report has no {spec['metric']} difference")
        if spec["slices"]:
            checked = []
            for column, entries in (compared.get("slices") or {}).items():
                for entry in entries:
                    if not entry.get("scored"):
                        continue
                    found = _non_inferior(entry, spec["metric"], spec["margin"])
                    checked.append({"column": column, "slice": entry["slice"],
                                    "rows": entry["rows"], **found})
                    if found["verdict"] == "fail":
                        reasons.append(f"slice {column}={entry['slice']} ({entry['rows']} "
                                       f"rows): {found['why']}")
            figures["slices"] = checked
        for column, fair in report.fairness.items():
            for key, name in (("max_parity_gap", "demographic_parity_difference"),
                              ("max_opportunity_gap", "equal_opportunity_difference")):
                limit = spec.get(key)
                if limit is not None and fair.get(name, 0.0) > limit:
                    reasons.append(f"{name} on {column} is {fair[name]:.3f}, above {limit}")
            figures.setdefault("fairness", {})[column] = {
                k: fair.get(k) for k in ("demographic_parity_difference",
                                         "equal_opportunity_difference")}
        if spec["consistency"]:
            figures["consistency"] = self._consistency(model, record.candidate, reasons)
        verdict = "rollback" if reasons else "pass"
        return Evidence("gate", verdict, reasons, figures)

    def _consistency(self, model: str, version: int, reasons: list[str]) -> dict[str, Any]:
        columns = set(self.registry.version(model, version).features)
        try:
            found = self.serving.features.consistency()
        except ClosedLoopError as exc:
            return {"measured": False, "why": exc.message}
        rows = [c for c in found if c.feature in columns and c.rows]
        if not rows:
            return {"measured": False, "why": "no served vectors of its features are logged"}
        worst = min(rows, key=lambda c: c.match_rate)
        if worst.match_rate < 0.99:
            reasons.append(f"online/offline consistency: {worst.feature} matches on "
                           f"{worst.match_rate:.1%} of {worst.rows} replayed vectors")
        return {"measured": True, "features": len(rows), "worst": worst.feature,
                "worst_match_rate": worst.match_rate}

    # .. the shadow ...........................................................................
    def shadow(self, record: LadderRecord, predictions: pa.Table) -> Evidence:
        spec = record.spec["shadow"]
        label = step_label(record)
        mask = pc.and_(pc.equal(predictions["step"], label),
                       pc.equal(predictions["shadow_version"], record.candidate))
        rows = predictions.filter(pc.fill_null(mask, False))
        n = rows.num_rows
        figures: dict[str, Any] = {"predictions": n, "needed": spec["min_predictions"]}
        if n < spec["min_predictions"]:
            return Evidence("shadow", "wait", [f"{n} of {spec['min_predictions']} shadowed "
                                               "predictions"], figures)
        prod = rows["score"].to_numpy(zero_copy_only=False).astype(np.float64)
        cand = rows["shadow_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        reasons: list[str] = []
        psi_value = psi(prod, cand)
        psi_noise = 9 * 2.0 / n                # E[PSI] of two samples of n over 10 bins
        ks = sps.ks_2samp(prod, cand)
        ks_noise = 1.628 * math.sqrt(2.0 / n)  # the two-sample KS critical D at alpha 0.01
        figures.update(psi=psi_value, psi_limit=spec["max_psi"] + psi_noise,
                       ks=float(ks.statistic), ks_limit=spec["max_ks"] + ks_noise,
                       mean_shift=float(np.mean(cand - prod)))
        shifts: list[str] = []
        if psi_value > spec["max_psi"] + psi_noise:
            shifts.append(f"PSI {psi_value:.3f} > {spec['max_psi'] + psi_noise:.3f}")
        if ks.statistic > spec["max_ks"] + ks_noise:
            shifts.append(f"KS {ks.statistic:.3f} > {spec['max_ks'] + ks_noise:.3f}")
        serving = self.serving.serving(record.model)
        thresholds = [t for _, t in serving.decisions] or [0.5]
        changes = {str(t): float(np.mean((prod >= t) != (cand >= t))) for t in thresholds}
        figures["decision_change"] = changes
        worst = max(changes.values())
        if worst > spec["max_decision_change"]:
            shifts.append(f"{worst:.1%} of decisions would change (limit "
                          f"{spec['max_decision_change']:.1%})")
        # A candidate that scores differently must have earned it: a shift is accepted only
        # from one the offline evaluation found significantly better than production.
        better = self._offline_better(record)
        figures["offline_better"] = better
        if shifts and not better:
            reasons += [*shifts, "and the offline evaluation does not show it better"]
        labels = rows["label"] if "label" in rows.column_names else None
        if labels is not None and labels.null_count < len(labels):
            known = pc.is_valid(labels).to_numpy(zero_copy_only=False)
            y = labels.filter(pc.is_valid(labels)).to_numpy(zero_copy_only=False).astype(
                np.float64)
            gap_p = float(prod[known].mean() - y.mean())
            gap_c = float(cand[known].mean() - y.mean())
            change = abs(gap_c) - abs(gap_p)
            figures["calibration"] = {"matured": int(known.sum()), "production_gap": gap_p,
                                      "candidate_gap": gap_c, "change": change}
            if change > spec["max_calibration_change"]:
                reasons.append(f"calibration: mean score − label rate {gap_c:+.3f} against "
                               f"production's {gap_p:+.3f}")
        else:
            figures["calibration"] = {"matured": 0, "shift": figures["mean_shift"]}
        latency = rows["shadow_latency_ms"].to_numpy(zero_copy_only=False)
        figures["latency_p99_ms"] = float(np.percentile(latency, 99))
        if spec["max_p99_ms"] is not None and figures["latency_p99_ms"] > spec["max_p99_ms"]:
            reasons.append(f"scoring p99 {figures['latency_p99_ms']:.1f} ms > "
                           f"{spec['max_p99_ms']} ms")
        return Evidence("shadow", "hold" if reasons else "pass", reasons, figures)

    def _offline_better(self, record: LadderRecord) -> bool:
        """Whether the candidate's report shows it significantly better than the baseline —
        a higher AUC or a lower log loss, by the whole confidence interval — and
        significantly worse on neither."""
        compared = self.registry.report(record.model, record.candidate).comparison
        if not compared or compared.get("against_version") != record.baseline:
            return False
        auc = compared.get("auc_difference") or {}
        loss = compared.get("log_loss_difference") or {}
        better = auc.get("low", 0.0) > 0 or loss.get("high", 0.0) < 0
        worse = auc.get("high", 0.0) < 0 or loss.get("low", 0.0) > 0
        return bool(better and not worse)

    # .. guardrails (canary, ramp) ...........................................................
    def _arms(self, record: LadderRecord, predictions: pa.Table) -> tuple[Mask, Mask]:
        """The candidate's and production's predictions in this step: masks over the rows."""
        here = mask(predictions, pc.equal(predictions["step"], step_label(record)))
        route = predictions["route"]
        return (here & mask(predictions, pc.equal(route, record.step)),
                here & mask(predictions, pc.equal(route, "production")))

    def guardrails(self, record: LadderRecord, predictions: pa.Table,
                   spec: Mapping[str, Any]) -> Evidence:
        is_treated, is_control = self._arms(record, predictions)
        if is_control.sum() < spec["min_predictions"]:     # a full ramp has no control:
            attempt = f"L{record.spec.get('attempt', 1)}:"  # production's earlier in the ladder
            earlier = np.flatnonzero(mask(predictions, pc.and_(
                pc.starts_with(predictions["step"], attempt),
                pc.equal(predictions["route"], "production"))))
            is_control = np.zeros(predictions.num_rows, dtype=bool)
            is_control[earlier[-10 * spec["min_predictions"]:]] = True
        treated, control = predictions.filter(is_treated), predictions.filter(is_control)
        n = treated.num_rows
        figures: dict[str, Any] = {"predictions": n, "control": control.num_rows,
                                   "needed": spec["min_predictions"]}
        if n < spec["min_predictions"]:
            return Evidence(record.step, "wait", [f"{n} of {spec['min_predictions']} "
                                                  "candidate predictions"], figures)
        reasons: list[str] = []
        budget = self.serving.serving(record.model).budget.p99_ms
        limit = spec["max_p99_ms"] or budget
        p99 = _p99(treated["latency_ms"])
        base = _p99(control["latency_ms"]) if control.num_rows else None
        figures["latency_p99_ms"] = {"candidate": p99, "production": base, "limit": limit}
        # Over budget and slower than production: a slow machine is not the candidate's fault.
        if p99 > limit and (base is None or p99 > 1.2 * base + 1.0):
            reasons.append(f"p99 latency {p99:.1f} ms > {limit} ms (production's "
                           f"{base if base is None else round(base, 1)} ms)")
        rates = {}
        for name, key in (("error_rate", "max_error_rate"),
                          ("fallback_rate", "max_fallback_rate")):
            mine = _rate(treated, name)
            theirs = _rate(control, name) if control.num_rows else 0.0
            rates[name] = {"candidate": mine, "production": theirs, "limit": spec[key]}
            if mine - theirs > spec[key]:
                reasons.append(f"{name.replace('_', ' ')} {mine:.2%} against production's "
                               f"{theirs:.2%} (limit +{spec[key]:.2%})")
        figures["rates"] = rates
        ladder = self.declared(record.model)
        metrics = {}
        for name, worse in spec["metrics"].items():
            found = metric_effect(ladder, name, predictions, is_treated, is_control,
                                  alpha=0.05, sequential=True,
                                  engine=self.serving.features.engine)
            metrics[name] = found
            if "effect" in found and found["worsening_low"] > worse:
                reasons.append(f"{name} is worse by {found['worsening']:.4g} (at least "
                               f"{found['worsening_low']:.4g}; limit {worse})")
        figures["metrics"] = metrics
        return Evidence(record.step, "rollback" if reasons else "pass", reasons, figures)

    # .. the A/B test ........................................................................
    def ab(self, record: LadderRecord, predictions: pa.Table) -> Evidence:
        spec = record.spec["ab"]
        treated, control = self._arms(record, predictions)
        pre = pre_period(predictions, int(record.spec.get("attempt", 1)),
                         record.baseline) if spec["cuped"] else None
        return ab_evidence(self.declared(record.model), spec, predictions, treated, control,
                           pre, engine=self.serving.features.engine)


def pre_period(predictions: pa.Table, attempt: int, baseline: int | None) -> Mask:
    """What production (version ``baseline``) served before a ladder's A/B step — before
    the ladder, or in its earlier steps: each unit's pre-period, for CUPED."""
    step = pc.fill_null(predictions["step"], "")
    later = pc.or_(pc.equal(step, f"L{attempt}:ab"), pc.starts_with(step, f"L{attempt}:ramp"))
    before = pc.and_(pc.and_(pc.invert(later), pc.equal(predictions["version"], baseline)),
                     pc.equal(predictions["route"], "production"))
    return mask(predictions, before)
