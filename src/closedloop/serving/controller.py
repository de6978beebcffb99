"""``project.ladder``: the promotion ladder's controller and its commands.

The ladder is declared (``closedloop.registry.ladder``); its state — the candidate, the step,
the status and the candidate's share of the units — is kept in the metadata store
(``LadderStore``), and every change of it is one transaction with its audit record and the
alias moves it makes. The commands (``promote``, ``approve``, ``pause``, ``resume``,
``rollback``) and the controller (``tick``, ``run``) change it only through that one write,
which names the generation it read: a change decided on a stale read is refused
(``LadderMoved``), so a person's rollback and the controller's advance never interleave.
Two controllers never move one ladder: ``tick`` holds the ladder's lease in the metadata
store while it decides.

Each tick measures the current step's evidence (``Evidence``) and:

* **passes** — to the next step (or, at the end of the ramp, makes the candidate
  ``production`` and the old version ``previous``), or **waits** for a person's approval
  when the declaration asks for one;
* **waits** — the evidence is not yet enough (too few predictions, units or matured
  labels): nothing moves, the evidence says what is missing;
* **holds** — the shadow differs from production beyond its limits: a person decides
  (``approve`` overrides, ``rollback`` ends);
* **rolls back** — a guardrail breach, or an A/B test the candidate significantly loses:
  its share goes to 0 at once.

Evidence comes from the prediction log joined to the label store
(``ServingService.predictions``), the candidate's evaluation report and the feature log.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as sps

from closedloop.backends.base import LadderEvent, LadderRecord, LadderStore
from closedloop.errors import (
    ClosedLoopError,
    LadderMoved,
    PromotionBlocked,
)
from closedloop.registry.ladder import STEPS, Ladder
from closedloop.registry.service import RegistryService
from closedloop.serving.evidence import (
    Evidence,
    _non_inferior,
    _p99,
    _plain,
    _rate,
    ab_evidence,
    metric_effect,
    psi,
)
from closedloop.serving.service import ServingService, step_label

_log = logging.getLogger("closedloop.ladder")

#: A ladder's lease lasts this long unless renewed (a controller that died frees it then).
LEASE_S = 10.0


@dataclass(frozen=True)
class Transition:
    """One tick's outcome for a ladder: the evidence and the record after it (unchanged
    when the verdict was to wait)."""

    model: str
    evidence: Evidence
    before: LadderRecord
    after: LadderRecord

    @property
    def moved(self) -> bool:
        return self.after.generation != self.before.generation

    def describe(self) -> str:
        b, a = self.before, self.after
        where = f"{a.step} {a.status}" + (f", {a.share:.0%} of units" if a.share else "")
        head = (f"{self.model} v{a.candidate}: {b.step} -> {where}" if self.moved
                else f"{self.model} v{a.candidate}: {a.step}, {self.evidence.verdict}")
        return head + ("" if not self.evidence.reasons else
                       " (" + "; ".join(self.evidence.reasons) + ")")

    def evidence_line(self) -> str:
        """The evidence the move was made on, in one line."""
        return self.evidence.summary()


def _now() -> datetime:
    return datetime.now(UTC)


class LadderService:
    """The ladders of a project: commands, the controller and the evidence (see module)."""

    def __init__(self, serving: ServingService, registry: RegistryService,
                 store: LadderStore, *, holder: str | None = None) -> None:
        self.serving = serving
        self.registry = registry
        self.store = store
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"

    # -- reading -----------------------------------------------------------------------------
    def declared(self, model: str) -> Ladder:
        self.serving.serving(model)                   # an unknown model: its own error
        ladder = self.serving.ladders.get(model)
        if ladder is None:
            raise PromotionBlocked(f"model {model!r} declares no ladder",
                                   fix=f"declare cl.Ladder({model!r}) in the definitions "
                                       "module (its defaults are a sound start)")
        return ladder

    def status(self, model: str) -> LadderRecord | None:
        """The model's current (or last) ladder."""
        self.declared(model)
        return self.store.ladder(model)

    def history(self, model: str) -> list[LadderEvent]:
        """Every audited transition of the model's ladders, oldest first."""
        self.declared(model)
        return self.store.ladder_events(model)

    def report(self, model: str) -> str:
        """The HTML page of the model's ladders: every transition with its evidence, and
        charts (``closedloop.serving.ladder_report``)."""
        from closedloop.serving.ladder_report import render

        record = self.status(model)
        return render(model, record, self.store.ladder_events(model),
                      self.serving.predictions(model, labels=False))

    def _active(self, model: str) -> LadderRecord:
        record = self.status(model)
        if record is None or not record.active:
            raise PromotionBlocked(f"model {model!r} has no ladder running",
                                   fix=f"start one: closedloop promote {model} VERSION")
        return record

    # -- commands ----------------------------------------------------------------------------
    def promote(self, model: str, version: int, *, actor: str = "cli") -> LadderRecord:
        """Start ``version`` up the model's ladder against its production version; the
        offline gate is measured at once (it needs no traffic)."""
        ladder = self.declared(model)
        target = self.registry.version(model, version)
        aliases = self.registry.aliases(model)
        production = aliases.get("production")
        if production is None:
            raise PromotionBlocked(f"model {model!r} has no production version to compare a "
                                   "candidate with", fix=f"make the first one production: "
                                   f"closedloop models alias {model} production {version}")
        if production == target.version:
            raise PromotionBlocked(f"version {version} of {model!r} is production already",
                                   fix="promote a newer version")
        try:
            loaded = self.registry.load(model, target.version)
            self.serving._pinned(loaded)
        except ClosedLoopError as exc:
            raise PromotionBlocked(f"version {version} of {model!r} cannot be served: "
                                   f"{exc.message}", fix=exc.fix) from exc
        current = self.store.ladder(model)
        if current is not None and current.active:
            raise PromotionBlocked(f"model {model!r} is already in a ladder: version "
                                   f"{current.candidate} at {current.step} ({current.status})",
                                   fix=f"finish it first, or: closedloop ladder rollback "
                                       f"{model}")
        attempt = 1 + sum(e.action == "start" for e in self.store.ladder_events(model))
        spec = {**ladder.spec(), "hash": ladder.hash, "attempt": attempt}
        first = ladder.steps[0]
        share = self._share_at(ladder, first, 0)
        record = LadderRecord(model, target.version, production, first, "running", share,
                              spec, _now(), 0)
        event = self._event(record, "start", None, actor,
                            {"baseline": production, "policy": ladder.hash})
        record = self.store.put_ladder(record, event, expect=None)
        if first == "gate":
            self.tick(model)
            record = self.store.ladder(model) or record
        return record

    def approve(self, model: str, *, actor: str = "cli") -> LadderRecord:
        """Let a ladder that waits for approval (or is held on its evidence) go on to its
        next step."""
        record = self._active(model)
        if record.status not in ("waiting", "held"):
            raise PromotionBlocked(f"the ladder of {model!r} is {record.status} at "
                                   f"{record.step}, not waiting for an approval",
                                   fix="approve a step when `closedloop ladder status` says "
                                       "it waits")
        evidence = {"approved": record.step, "was": record.status}
        return self._advance(record, "approve", actor, evidence)

    def pause(self, model: str, *, actor: str = "cli") -> LadderRecord:
        """Stop the controller moving the ladder; traffic stays as it is."""
        record = self._active(model)
        if record.status == "paused":
            raise PromotionBlocked(f"the ladder of {model!r} is paused already",
                                   fix=f"closedloop ladder resume {model}")
        return self._put(record, replace(record, status="paused"), "pause", actor,
                         {"was": record.status})

    def resume(self, model: str, *, actor: str = "cli") -> LadderRecord:
        record = self._active(model)
        if record.status != "paused":
            raise PromotionBlocked(f"the ladder of {model!r} is {record.status}, not paused",
                                   fix="pause it first")
        return self._put(record, replace(record, status="running"), "resume", actor, {})

    def rollback(self, model: str, *, actor: str = "cli", reason: str = "by hand",
                 ) -> LadderRecord | None:
        """End the running ladder, its candidate's share to 0 at once; with no ladder
        running, restore ``previous`` as production (the version it replaces becomes
        ``previous``). Every server worker serves the result within ``reload_s``."""
        self.serving.serving(model)
        record = self.store.ladder(model) if model in self.serving.ladders else None
        if record is not None and record.active:
            return self._put(record, replace(record, status="rolled_back", share=0.0),
                             "rollback", actor, {"reason": reason})
        aliases = self.registry.aliases(model)
        previous = aliases.get("previous")
        if previous is None:
            raise PromotionBlocked(f"model {model!r} has no previous version to roll back to",
                                   fix="set production by hand: closedloop models alias "
                                       f"{model} production VERSION")
        production = aliases.get("production")
        moves: dict[str, int | None] = {"production": previous}
        if production is not None and production != previous:
            moves["previous"] = production
        if record is not None:         # the promoted ladder's audit says it was undone
            after = replace(record, status="rolled_back", share=0.0)
            event = self._event(after, "rollback", record.step, actor,
                                {"reason": reason, "production": previous,
                                 "replaced": production})
            return self.store.put_ladder(after, event, expect=record.generation,
                                         aliases=moves)
        self.registry.store.move_aliases(model, moves)
        return None

    # -- the controller ----------------------------------------------------------------------
    def tick(self, model: str | None = None, *, keep: bool = False) -> list[Transition]:
        """Measure each running ladder (or ``model``'s) and move it as its evidence says;
        a ladder whose lease another controller holds is left alone. The lease is held for
        the tick, and after it with ``keep`` (a running controller's, renewed each tick)."""
        names = [model] if model is not None else sorted(self.serving.ladders)
        out = []
        for name in names:
            lease = f"ladder:{name}"
            if not self.store.acquire_lease(lease, self.holder, LEASE_S):
                continue
            try:
                record = self.store.ladder(name)
                if record is None or not record.active or record.status != "running":
                    continue
                evidence = self.evidence(record)
                try:
                    after = self._decide(record, evidence)
                except LadderMoved:           # a command moved it meanwhile: next tick
                    continue
                out.append(Transition(name, evidence, record, after))
            finally:
                if not keep:
                    self.store.release_lease(lease, self.holder)
        return out

    def run(self, *, every_s: float = 5.0, stop: Callable[[], bool] = lambda: False,
            say: Callable[[Transition], None] | None = None) -> None:
        """Tick every ``every_s`` seconds until ``stop()``; each move is told to ``say``."""
        try:
            while not stop():
                try:
                    moved = self.tick(keep=True)
                except Exception:            # a failed measurement: the next tick tries again
                    _log.exception("the ladder controller's tick failed")
                    moved = []
                for t in moved:
                    if say is not None and (t.moved or t.evidence.reasons):
                        say(t)
                deadline = time.monotonic() + every_s
                while not stop() and time.monotonic() < deadline:
                    time.sleep(min(0.2, every_s))
        finally:
            for name in self.serving.ladders:
                self.store.release_lease(f"ladder:{name}", self.holder)

    def _decide(self, record: LadderRecord, evidence: Evidence) -> LadderRecord:
        figures = evidence.to_dict()
        if evidence.verdict == "wait":
            return record
        if evidence.verdict == "hold":
            return self._put(record, replace(record, status="held"), "hold", "controller",
                             figures)
        if evidence.verdict == "rollback":
            return self._put(record, replace(record, status="rolled_back", share=0.0),
                             "rollback", "controller", figures)
        if record.step in record.spec.get("approve", []):
            return self._put(record, replace(record, status="waiting"), "wait", "controller",
                             figures)
        return self._advance(record, "advance", "controller", figures)

    def _advance(self, record: LadderRecord, action: str, actor: str,
                 evidence: dict[str, Any]) -> LadderRecord:
        ladder = self.declared(record.model)
        steps = [s for s in STEPS if record.spec.get(s) is not None]
        ramp = list(record.spec["ramp"]["steps"])
        if record.step == "ramp" and record.ramp_index + 1 < len(ramp):
            after = replace(record, status="running", ramp_index=record.ramp_index + 1,
                            share=float(ramp[record.ramp_index + 1]), step_started_at=_now())
            return self._put(record, after, action, actor, evidence)
        if record.step == "ramp":                 # the end: the candidate is production
            after = replace(record, step="done", status="promoted", share=0.0,
                            step_started_at=_now())
            moves: dict[str, int | None] = {"production": record.candidate}
            if record.baseline is not None:
                moves["previous"] = record.baseline
            event = self._event(after, "promote", record.step, actor, evidence)
            return self.store.put_ladder(after, event, expect=record.generation,
                                         aliases=moves)
        step = steps[steps.index(record.step) + 1]
        after = replace(record, step=step, status="running", ramp_index=0,
                        share=self._share_at(ladder, step, 0, record.spec),
                        step_started_at=_now())
        return self._put(record, after, action, actor, evidence)

    @staticmethod
    def _share_at(ladder: Ladder, step: str, index: int,
                  spec: Mapping[str, Any] | None = None) -> float:
        spec = spec or ladder.spec()
        if step == "canary":
            return float(spec["canary"]["share"])
        if step == "ab":
            return float(spec["ab"]["share"])
        if step == "ramp":
            return float(spec["ramp"]["steps"][index])
        return 0.0

    def _event(self, record: LadderRecord, action: str, from_step: str | None, actor: str,
               evidence: dict[str, Any]) -> LadderEvent:
        return LadderEvent(0, record.model, record.candidate, action, from_step, record.step,
                           record.status, record.share, actor, _plain(evidence), _now())

    def _put(self, before: LadderRecord, after: LadderRecord, action: str, actor: str,
             evidence: dict[str, Any]) -> LadderRecord:
        event = self._event(after, action, before.step, actor, evidence)
        return self.store.put_ladder(after, event, expect=before.generation)

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
        table = self.serving.predictions(record.model,
                                         requests=self._request_fields(ladder))
        return table

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
    def _arms(self, record: LadderRecord, predictions: pa.Table,
              ) -> tuple[pa.Table, pa.Table]:
        label = step_label(record)
        here = predictions.filter(pc.fill_null(pc.equal(predictions["step"], label), False))
        treated = here.filter(pc.equal(here["route"], record.step))
        control = here.filter(pc.equal(here["route"], "production"))
        return treated, control

    def guardrails(self, record: LadderRecord, predictions: pa.Table,
                   spec: Mapping[str, Any]) -> Evidence:
        treated, control = self._arms(record, predictions)
        if control.num_rows < spec["min_predictions"]:     # a full ramp has no control:
            attempt = f"L{record.spec.get('attempt', 1)}:"  # production's earlier in the ladder
            earlier = predictions.filter(pc.fill_null(pc.and_(
                pc.starts_with(predictions["step"], attempt),
                pc.equal(predictions["route"], "production")), False))
            control = earlier.slice(max(0, earlier.num_rows - 10 * spec["min_predictions"]))
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
            found = metric_effect(ladder, name, treated, control, alpha=0.05,
                                        sequential=True)
            metrics[name] = found
            if "effect" in found and found["worsening_low"] > worse:
                reasons.append(f"{name} is worse by {found['worsening']:.4g} (at least "
                               f"{found['worsening_low']:.4g}; limit {worse})")
        figures["metrics"] = metrics
        return Evidence(record.step, "rollback" if reasons else "pass", reasons, figures)

    # .. the A/B test ........................................................................
    def ab(self, record: LadderRecord, predictions: pa.Table) -> Evidence:
        spec = record.spec["ab"]
        ladder = self.declared(record.model)
        treated, control = self._arms(record, predictions)
        pre = self._pre_period(record, predictions) if spec["cuped"] else None
        return ab_evidence(ladder, spec, treated, control, pre)

    def _pre_period(self, record: LadderRecord, predictions: pa.Table) -> pa.Table:
        """What production served before this ladder's A/B step (before the ladder, or in
        its earlier steps): each unit's pre-period, for CUPED."""
        attempt = f"L{record.spec.get('attempt', 1)}:"
        step = pc.fill_null(predictions["step"], "")
        later = pc.or_(pc.equal(step, f"{attempt}ab"), pc.starts_with(step, f"{attempt}ramp"))
        before = pc.and_(pc.and_(pc.invert(later),
                                 pc.equal(predictions["version"], record.baseline)),
                         pc.equal(predictions["route"], "production"))
        return predictions.filter(pc.fill_null(before, False))

def describe(record: LadderRecord | None) -> dict[str, Any]:
    """A ladder's state for people and JSON."""
    if record is None:
        return {"ladder": None}
    return {"model": record.model, "candidate": record.candidate, "baseline": record.baseline,
            "step": record.step, "status": record.status, "share": record.share,
            "ramp_index": record.ramp_index, "since": record.step_started_at.isoformat(),
            "policy": record.spec.get("hash"), "attempt": record.spec.get("attempt")}


__all__ = ["Evidence", "LadderService", "Transition", "describe", "psi"]
