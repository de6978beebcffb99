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
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

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
    _plain,
    psi,
)
from closedloop.serving.measure import Measurements
from closedloop.serving.service import ServingService

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


class LadderService(Measurements):
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

def describe(record: LadderRecord | None) -> dict[str, Any]:
    """A ladder's state for people and JSON."""
    if record is None:
        return {"ladder": None}
    return {"model": record.model, "candidate": record.candidate, "baseline": record.baseline,
            "step": record.step, "status": record.status, "share": record.share,
            "ramp_index": record.ramp_index, "since": record.step_started_at.isoformat(),
            "policy": record.spec.get("hash"), "attempt": record.spec.get("attempt")}


__all__ = ["Evidence", "LadderService", "Transition", "describe", "psi"]
