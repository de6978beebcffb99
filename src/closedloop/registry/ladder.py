"""The promotion ladder, declared: ``cl.Ladder`` beside a model's ``Serving``.

A candidate version climbs five steps, each with the evidence it needs and what happens on
a breach (the controller, ``closedloop.serving.controller``, measures and moves):

1. ``Gate`` — the offline gate, on the candidate's evaluation report: non-inferior to
   production on the primary metric, overall and on every slice of at least the model's
   ``min_slice_size`` rows, by the confidence bound of the paired difference; fairness
   limits; the online/offline consistency check; its features servable. A failure stops the
   ladder before any traffic.
2. ``Shadow`` — the candidate scores live traffic after each response, logged and never
   acted on, until ``min_predictions``; its scores are compared with production's on the
   same requests (PSI, KS, the share of decisions that would change, calibration, latency).
   A candidate that scores differently passes only if the offline evaluation found it
   significantly better (a better model should change decisions; one that merely shifts
   them has not earned it). A breach **holds** the ladder for a person to look.
3. ``Canary`` — ``share`` of the units are served by the candidate, with guardrails
   (p99 latency as callers see it, fallback and error rates, declared metrics), each
   measured on at least ``min_predictions``; a breach **rolls back**.
4. ``ABTest`` — pre-registered primary and guardrail metrics on unit-level values of
   matured predictions, with the sample the minimum detectable effect needs; an SRM check,
   Welch (or CUPED, with a pre-period) and confidence sequences, so the controller may look
   at every tick; a significantly worse primary or guardrail **rolls back**.
5. ``Ramp`` — the candidate's share grows through ``steps`` to 1.0 with the canary's
   guardrails at each; then it becomes ``production`` and the old version ``previous``.

Every step may require a person's approval before it is left (``approve``). A ladder's
shares are state, never constants: the controller writes them in the metadata store, and
every server worker picks them up within ``[serving] reload_s``. Shares only grow while a
ladder climbs, and a unit's group is decided by a hash with the ladder's own salt, so a
unit on the candidate stays on it as the share grows, and holdouts (hashed with the model's
salt) are independent of it.

>>> Ladder("fraud").steps
('gate', 'shadow', 'canary', 'ab', 'ramp')
>>> Ladder("fraud").shares()
[('canary', 0.05), ('ab', 0.2), ('ramp', 0.25), ('ramp', 0.5), ('ramp', 1.0)]
>>> Ladder("fraud", shadow=None, ab=None).shares()
[('canary', 0.05), ('ramp', 0.25), ('ramp', 0.5), ('ramp', 1.0)]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from closedloop.data.sources import check_name, declared_in
from closedloop.errors import DefinitionError

#: The steps of a ladder, in order; ``done`` is the end of a promoted one.
STEPS = ("gate", "shadow", "canary", "ab", "ramp")

#: Per-prediction metrics every ladder knows. ``decision:<name>`` (the rate of a decision,
#: lower is better: a block, a review) is known too. Each: (needs a label, higher is better).
BUILTIN_METRICS: dict[str, tuple[bool, bool]] = {
    "log_loss": (True, False),
    "brier": (True, False),
    "label": (True, True),
    "score": (False, True),
    "fallback": (False, False),
    "latency_ms": (False, False),
}


@dataclass(frozen=True)
class Metric:
    """A declared per-prediction metric: ``fn`` maps the columns of matured predictions —
    ``score``, ``decision``, ``label``, ``fallback``, ``latency_ms`` and the request's
    fields as ``request.<field>`` (numpy arrays) — to one number per prediction; a unit's
    value is the mean over its predictions. ``higher_is_better`` says which way is worse;
    ``label``: it reads the label, so only matured predictions count."""

    name: str
    fn: Callable[[Mapping[str, Any]], Any]
    higher_is_better: bool = True
    label: bool = True

    def __post_init__(self) -> None:
        check_name("metric", self.name)
        if self.name in BUILTIN_METRICS:
            raise DefinitionError(f"metric {self.name!r} is a built-in metric",
                                  fix="give the declared metric its own name")
        if not callable(self.fn):
            raise DefinitionError(f"metric {self.name!r}: fn is not a function",
                                  fix="pass a function of the columns")


def _share(where: str, value: Any, *, zero: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not (0 <= value <= 1 if zero else 0 < value <= 1)):
        raise DefinitionError(f"{where}: share {value!r} is not in {'[0' if zero else '(0'}, 1]"
                              " (a share of the units; 1.0 is all of them)",
                              fix="use a share such as 0.05")
    return float(value)


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(f"{where}: {value!r} is not a positive count; a step that "
                              "passes on no evidence is no step",
                              fix="use 500, say (or drop the step: pass None)")
    return value


def _limit(where: str, value: Any, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise DefinitionError(f"{where}: {value!r} is not a non-negative number",
                              fix="use 0.02, say")
    return float(value)


def _level(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 0.5:
        raise DefinitionError(f"{where}: alpha {value!r} is not in (0, 0.5)",
                              fix="use 0.05")
    return float(value)


@dataclass(frozen=True)
class Gate:
    """The offline gate (see module). ``metric``: ``auc`` (the candidate's AUC minus
    production's must have its lower confidence bound above −``margin``) or ``log_loss``
    (the paired difference's upper bound below ``margin``); ``slices``: the same on every
    slice the report scored; ``max_parity_gap`` / ``max_opportunity_gap``: the largest
    demographic-parity and equal-opportunity differences allowed on each protected column;
    ``consistency``: the served vectors replayed offline must match."""

    metric: str = "auc"
    margin: float = 0.01
    slices: bool = True
    max_parity_gap: float | None = None
    max_opportunity_gap: float | None = None
    consistency: bool = True

    def __post_init__(self) -> None:
        if self.metric not in ("auc", "log_loss"):
            raise DefinitionError(f"gate metric {self.metric!r} is not auc or log_loss",
                                  fix='use metric="auc"')
        _limit("gate margin", self.margin, optional=False)
        _limit("gate max_parity_gap", self.max_parity_gap)
        _limit("gate max_opportunity_gap", self.max_opportunity_gap)

    def spec(self) -> dict[str, Any]:
        return {"metric": self.metric, "margin": self.margin, "slices": self.slices,
                "max_parity_gap": self.max_parity_gap,
                "max_opportunity_gap": self.max_opportunity_gap,
                "consistency": self.consistency}


@dataclass(frozen=True)
class Shadow:
    """The shadow step (see module): the candidate's and production's scores of the same
    ``min_predictions`` requests must agree — PSI over production's deciles at most
    ``max_psi`` and the KS distance at most ``max_ks`` (each above the noise its sample size
    allows), at most ``max_decision_change`` of the decisions changed at any threshold, the
    calibration gap (mean score minus label rate, on the matured) moved at most
    ``max_calibration_change``; ``max_p99_ms``: the candidate's scoring p99 limit."""

    min_predictions: int = 1000
    max_psi: float = 0.1
    max_ks: float = 0.1
    max_decision_change: float = 0.02
    max_calibration_change: float = 0.02
    max_p99_ms: float | None = None

    def __post_init__(self) -> None:
        _count("shadow min_predictions", self.min_predictions)
        for name in ("max_psi", "max_ks", "max_decision_change", "max_calibration_change"):
            _limit(f"shadow {name}", getattr(self, name), optional=False)
        _limit("shadow max_p99_ms", self.max_p99_ms)

    def spec(self) -> dict[str, Any]:
        return {"min_predictions": self.min_predictions, "max_psi": self.max_psi,
                "max_ks": self.max_ks, "max_decision_change": self.max_decision_change,
                "max_calibration_change": self.max_calibration_change,
                "max_p99_ms": self.max_p99_ms}


@dataclass(frozen=True)
class Guardrails:
    """What the candidate's share of traffic must keep, measured on at least
    ``min_predictions`` of its predictions (and as many of production's): its p99 latency
    as callers see it, queue wait included (``max_p99_ms``; default the serving budget's),
    its fallback rate at most ``max_fallback_rate`` above production's, its error rate
    (fallbacks because a store failed) at most ``max_error_rate``; and each of ``metrics``
    (metric → the largest worsening allowed, in the metric's units, candidate against
    production, on the matured)."""

    min_predictions: int = 500
    max_p99_ms: float | None = None
    max_error_rate: float = 0.01
    max_fallback_rate: float = 0.02
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _count("guardrail min_predictions", self.min_predictions)
        _limit("guardrail max_p99_ms", self.max_p99_ms)
        _limit("guardrail max_error_rate", self.max_error_rate, optional=False)
        _limit("guardrail max_fallback_rate", self.max_fallback_rate, optional=False)
        for name, worse in self.metrics.items():
            _limit(f"guardrail on {name!r}", worse, optional=False)

    def spec(self) -> dict[str, Any]:
        return {"min_predictions": self.min_predictions, "max_p99_ms": self.max_p99_ms,
                "max_error_rate": self.max_error_rate,
                "max_fallback_rate": self.max_fallback_rate, "metrics": dict(self.metrics)}


@dataclass(frozen=True)
class Canary:
    """The canary step (see module): ``share`` of the units on the candidate, guarded."""

    share: float = 0.05
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        _share("canary", self.share)

    def spec(self) -> dict[str, Any]:
        return {"share": self.share, "guardrails": self.guardrails.spec()}


@dataclass(frozen=True)
class ABTest:
    """The A/B step (see module): ``share`` of the units on the candidate, the rest on
    production (the control: the two arms are every unit outside the holdout). ``primary``: the
    metric decided on; ``guardrails``: metrics that must not be significantly worse;
    ``mde``: the relative effect on the primary the test must be able to detect with
    ``power`` at ``alpha`` (two-sided) — hence the units it needs; ``cuped``: adjust by each
    unit's pre-period value of the primary where the log has one; ``sequential``: decide on
    confidence sequences (safe to look at every tick) rather than a fixed-horizon test
    (look only once the sample is in); ``min_units`` per arm before any look; ``srm_p``: a
    sample-ratio mismatch below this p-value stops the test. ``guardrails`` is a list of
    metrics (none may be significantly worse at all) or a mapping of each to the worsening
    it may show (in the metric's units) before it rolls the candidate back — a model that
    stops three times the fraud may block a few more good customers."""

    share: float = 0.2
    primary: str = "log_loss"
    guardrails: Sequence[str] | Mapping[str, float] = ("brier",)
    mde: float = 0.05
    power: float = 0.8
    alpha: float = 0.05
    cuped: bool = True
    sequential: bool = True
    min_units: int = 200
    srm_p: float = 0.001

    def __post_init__(self) -> None:
        _share("ab", self.share)
        if isinstance(self.guardrails, str):
            raise DefinitionError("ab guardrails is a string, not a list of metric names",
                                  fix=f'use guardrails=["{self.guardrails}"]')
        for name, worse in self.limits().items():
            _limit(f"ab guardrail on {name!r}", worse, optional=False)
        _limit("ab mde", self.mde, optional=False)
        if not self.mde > 0:
            raise DefinitionError("ab mde must be above 0", fix="use 0.05 (5%)")
        if not (isinstance(self.power, float) and 0.5 <= self.power < 1):
            raise DefinitionError(f"ab power {self.power!r} is not in [0.5, 1)",
                                  fix="use 0.8")
        _level("ab", self.alpha)
        _count("ab min_units", self.min_units)
        if not (isinstance(self.srm_p, float) and 0 < self.srm_p < 0.5):
            raise DefinitionError(f"ab srm_p {self.srm_p!r} is not in (0, 0.5)",
                                  fix="use 0.001")

    def limits(self) -> dict[str, float]:
        """Each guardrail metric and the worsening it may show (0: none)."""
        if isinstance(self.guardrails, Mapping):
            return {str(k): v for k, v in self.guardrails.items()}
        return dict.fromkeys(self.guardrails, 0.0)

    def spec(self) -> dict[str, Any]:
        return {"share": self.share, "primary": self.primary,
                "guardrails": self.limits(), "mde": self.mde, "power": self.power,
                "alpha": self.alpha, "cuped": self.cuped, "sequential": self.sequential,
                "min_units": self.min_units, "srm_p": self.srm_p}


@dataclass(frozen=True)
class Ramp:
    """The ramp (see module): the candidate's share through ``steps``, ending at 1.0, each
    held until the guardrails pass on ``guardrails.min_predictions`` of that step."""

    steps: Sequence[float] = (0.25, 0.5, 1.0)
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        if isinstance(self.steps, str | bytes) or not list(self.steps):
            raise DefinitionError("a ramp needs its shares, e.g. (0.25, 0.5, 1.0)",
                                  fix="pass steps=(0.25, 0.5, 1.0)")
        last = 0.0
        for share in self.steps:
            if _share("ramp step", share) <= last:
                raise DefinitionError(f"ramp steps {list(self.steps)} do not grow step by step",
                                      fix="list each share larger than the one before")
            last = float(share)
        if last != 1.0:
            raise DefinitionError(f"the ramp {list(self.steps)} never reaches 1.0, so the "
                                  "candidate would never serve everyone",
                                  fix="end the ramp at 1.0")

    def spec(self) -> dict[str, Any]:
        return {"steps": [float(s) for s in self.steps], "guardrails": self.guardrails.spec()}


@dataclass(frozen=True)
class Ladder:
    """Model ``model``'s promotion ladder (see module): each step's declaration, or None to
    skip it (the ramp cannot be skipped: it is how a candidate reaches production);
    ``approve``: the steps a person must approve before the ladder leaves them;
    ``metrics``: declared metrics the A/B test and guardrails may name; ``version``: bump it
    when the policy changes (a running ladder keeps the policy it started with)."""

    model: str
    gate: Gate | None = field(default_factory=Gate)
    shadow: Shadow | None = field(default_factory=Shadow)
    canary: Canary | None = field(default_factory=Canary)
    ab: ABTest | None = field(default_factory=ABTest)
    ramp: Ramp = field(default_factory=Ramp)
    approve: Sequence[str] = ()
    metrics: Sequence[Metric] = ()
    version: int = 1

    def __post_init__(self) -> None:
        check_name("model", self.model)
        kinds = {"gate": Gate, "shadow": Shadow, "canary": Canary, "ab": ABTest, "ramp": Ramp}
        for step, kind in kinds.items():
            value = getattr(self, step)
            if value is None and step == "ramp":
                raise DefinitionError(f"ladder {self.model!r}: the ramp cannot be skipped; it "
                                      "is how a candidate reaches production",
                                      fix="pass ramp=cl.Ramp(steps=(1.0,)) to go at once")
            if value is not None and not isinstance(value, kind):
                raise DefinitionError(f"ladder {self.model!r}: {step}= is a "
                                      f"{type(value).__name__}, not a {kind.__name__}",
                                      fix=f"pass {step}=cl.{kind.__name__}(...) or None")
        if isinstance(self.approve, str):
            raise DefinitionError(f"ladder {self.model!r}: approve is a string, not a list",
                                  fix=f'use approve=["{self.approve}"]')
        for step in self.approve:
            if step not in STEPS:
                raise DefinitionError(f"ladder {self.model!r}: approve names {step!r}, which "
                                      f"is not a step", fix=f"the steps are {list(STEPS)}")
            if getattr(self, step) is None:
                raise DefinitionError(f"ladder {self.model!r}: approve names {step!r}, which "
                                      "this ladder skips", fix=f"declare {step}= or drop it")
        if not (isinstance(self.version, int) and self.version >= 1):
            raise DefinitionError(f"ladder {self.model!r}: version {self.version!r} is not a "
                                  "positive integer", fix="use version=1")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise DefinitionError(f"ladder {self.model!r} declares a metric twice: {names}",
                                  fix="name each metric once")
        for where, metric in self._metric_uses():
            self.metric(metric, where)
        last = 0.0
        for step, share in self.shares():     # a unit on the candidate stays there
            if share < last:
                raise DefinitionError(f"ladder {self.model!r}: the {step} share {share} is "
                                      f"below an earlier step's {last}; a unit on the "
                                      "candidate would be taken off it",
                                      fix="let each step's share be at least the last's")
            last = share

    def _metric_uses(self) -> list[tuple[str, str]]:
        uses = []
        if self.ab is not None:
            uses.append(("ab primary", self.ab.primary))
            uses += [("ab guardrail", g) for g in self.ab.limits()]
        for step in (self.canary, self.ramp):
            if step is not None:
                uses += [("guardrail", m) for m in step.guardrails.metrics]
        return uses

    def metric(self, name: str, where: str = "metric") -> tuple[bool, bool]:
        """(needs a label, higher is better) of a metric this ladder knows, or a
        ``DefinitionError`` naming the known ones."""
        if name in BUILTIN_METRICS:
            return BUILTIN_METRICS[name]
        if name.startswith("decision:") and len(name) > len("decision:"):
            return False, False             # the rate of an action: more of it is worse
        for m in self.metrics:
            if m.name == name:
                return m.label, m.higher_is_better
        known = [*BUILTIN_METRICS, "decision:<name>", *(m.name for m in self.metrics)]
        raise DefinitionError(f"ladder {self.model!r}: {where} {name!r} is not a metric it "
                              f"knows", fix=f"use one of {known}, or declare it in "
                                            "metrics=[cl.Metric(...)]")

    @property
    def steps(self) -> tuple[str, ...]:
        """The steps this ladder climbs, in order."""
        return tuple(s for s in STEPS if getattr(self, s) is not None)

    def shares(self) -> list[tuple[str, float]]:
        """The candidate's share of units at each traffic step, in order."""
        out: list[tuple[str, float]] = []
        if self.canary is not None:
            out.append(("canary", self.canary.share))
        if self.ab is not None:
            out.append(("ab", self.ab.share))
        out += [("ramp", float(s)) for s in self.ramp.steps]
        return out

    def spec(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version,
                "gate": None if self.gate is None else self.gate.spec(),
                "shadow": None if self.shadow is None else self.shadow.spec(),
                "canary": None if self.canary is None else self.canary.spec(),
                "ab": None if self.ab is None else self.ab.spec(),
                "ramp": self.ramp.spec(), "approve": list(self.approve),
                "metrics": [{"name": m.name, "higher_is_better": m.higher_is_better,
                             "label": m.label} for m in self.metrics]}

    @property
    def hash(self) -> str:
        """The policy's content hash (recorded with every ladder it runs)."""
        text = json.dumps(self.spec(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def ladders_from_module(module: ModuleType) -> dict[str, Ladder]:
    """Every ladder a definitions module declares at its top level."""
    return declared_in(module, Ladder, lambda lad: lad.model,
                       "model {name!r} has two ladders", fix="declare one Ladder per model")
