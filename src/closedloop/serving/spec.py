"""How a model is served: its routes, post-processing, fallback and latency budget.

A ``Serving`` declaration sits beside its ``Model`` in the definitions module. A model with
no declaration is served by its ``production`` alias alone, with the default budget and a
fallback score of 0.

>>> s = Serving("fraud", unit="user_id", canary=0.05, holdout=0.02,
...             decisions=[("block", 0.9), ("review", 0.5)], default_decision="allow")
>>> s.decide(0.93), s.decide(0.6), s.decide(0.1)
('block', 'review', 'allow')
>>> Budget(p99_ms=60, fetch_ms=15).stages()
{'fetch': 15.0}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from closedloop.data.sources import check_name, declared_in
from closedloop.errors import DefinitionError

STAGES = ("fetch", "transform", "inference", "post")

#: A business rule: given the request and the score, a decision that overrides the
#: thresholds, or None to leave it.
Rule = Callable[[Mapping[str, Any], float], "str | None"]


@dataclass(frozen=True)
class Budget:
    """A model's latency budget in milliseconds: the p99 of the whole request (from its
    arrival at the server to its response, queue wait included) and, where declared, of each
    stage (online feature fetch, transforms, inference, post-processing). A stage with no
    declared budget is measured and reported, never called over. The fetch's hard limit is
    the online store's timeout (``[serving] fetch_timeout_ms``): a store that has not
    answered by then, or is down, makes the model's fallback answer."""

    p99_ms: float = 50.0
    fetch_ms: float | None = None
    transform_ms: float | None = None
    inference_ms: float | None = None
    post_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("p99_ms", "fetch_ms", "transform_ms", "inference_ms", "post_ms"):
            value = getattr(self, name)
            if value is None and name != "p99_ms":
                continue
            if not (isinstance(value, int | float) and not isinstance(value, bool)
                    and value > 0):
                raise DefinitionError(f"budget {name}={value!r} is not a positive number of "
                                      "milliseconds", fix=f"set {name}=15, say")

    def stages(self) -> dict[str, float]:
        """Each declared stage's p99 budget in milliseconds, in path order."""
        return {s: float(v) for s in STAGES if (v := getattr(self, f"{s}_ms")) is not None}

    def spec(self) -> dict[str, float]:
        return {"p99_ms": float(self.p99_ms), **{f"{k}_ms": v for k, v in self.stages().items()}}


@dataclass(frozen=True)
class Serving:
    """The serving declaration of model ``model``.

    Routing is by a hash of the request's ``unit`` field (a user or session id): sticky — a
    unit always takes the same route — and independent across models. ``holdout`` of the
    units get no model decision (``holdout_decision``; production's score is still computed
    and logged, as the counterfactual), ``canary`` of them go to the version aliased
    ``canary``, and each of ``arms`` (alias → share) to its alias; production takes the
    rest. With ``shadow``, the version aliased ``shadow`` scores every request after the
    response has been sent, and its score is logged beside production's.

    A score becomes a decision by ``rules`` (the first that returns one), else by
    ``decisions`` — (decision, lowest score) pairs, highest first — else
    ``default_decision``. ``fallback`` (a score, or a function of the request) answers when
    the online store is down or slower than its timeout; the response says so. ``subject``
    names the request field that identifies what is predicted (a transaction id), so the
    prediction log joins its labels. A request carries at most ``max_instances``
    instances.

    Every prediction says which of its features were missing and why (``no_record``: the
    online store holds nothing for the entity — unknown, or a null key; ``no_value``: the
    record had no value, e.g. an empty window without a default). An instance with more than
    ``max_missing`` of its version's features missing (a share; 0.0: any) is handled by
    ``on_missing``: ``"score"`` (the default: score it anyway, as training would),
    ``"fallback"`` (the fallback score answers, the response says why) or ``"reject"`` (the
    request is refused with a 422 naming the instance and its missing features).
    """

    model: str
    unit: str | None = None
    subject: str | None = None
    holdout: float = 0.0
    canary: float = 0.0
    arms: Mapping[str, float] = field(default_factory=dict)
    shadow: bool = False
    decisions: Sequence[tuple[str, float]] = ()
    default_decision: str = "allow"
    holdout_decision: str | None = None
    rules: Sequence[Rule] = ()
    fallback: float | Callable[[Mapping[str, Any]], float] = 0.0
    budget: Budget = field(default_factory=Budget)
    max_instances: int = 1000
    on_missing: str = "score"
    max_missing: float = 0.0

    def __post_init__(self) -> None:
        check_name("model", self.model)
        shares = {"holdout": self.holdout, "canary": self.canary,
                  **{f"arm {a}": s for a, s in self.arms.items()}}
        for what, share in shares.items():
            if not (isinstance(share, int | float) and 0 <= share <= 1):
                raise DefinitionError(f"serving {self.model!r}: {what} share {share!r} is "
                                      "not in [0, 1]", fix="use a share such as 0.05")
        if sum(shares.values()) > 1:
            raise DefinitionError(f"serving {self.model!r}: the shares {shares} add up to "
                                  "more than 1", fix="leave production a share")
        if self.unit is None and sum(shares.values()) > 0:
            raise DefinitionError(f"serving {self.model!r} splits traffic but names no unit",
                                  fix="pass unit='user_id' (the request field to route by)")
        for alias in self.arms:
            check_name("arm alias", alias.replace("-", "_"))
            if alias in ("production", "canary", "shadow", "holdout"):
                raise DefinitionError(f"serving {self.model!r}: arm {alias!r} is a reserved "
                                      "route", fix="name the arm after its own alias")
        last = 2.0
        for pair in self.decisions:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                    and isinstance(pair[1], int | float) and 0 <= pair[1] <= 1):
                raise DefinitionError(f"serving {self.model!r}: decision {pair!r} is not a "
                                      "(name, lowest score) pair", fix="e.g. ('block', 0.9)")
            if pair[1] >= last:
                raise DefinitionError(f"serving {self.model!r}: decisions must go from the "
                                      "highest threshold down", fix="sort them, highest first")
            last = pair[1]
        if not callable(self.fallback) and not (
                isinstance(self.fallback, int | float) and 0 <= self.fallback <= 1):
            raise DefinitionError(f"serving {self.model!r}: fallback {self.fallback!r} is "
                                  "neither a score in [0, 1] nor a function",
                                  fix="pass a score, or a function of the request")
        if not (isinstance(self.max_instances, int) and self.max_instances >= 1):
            raise DefinitionError(f"serving {self.model!r}: max_instances "
                                  f"{self.max_instances!r} is not a positive integer",
                                  fix="use 1000, say")
        if self.on_missing not in ("score", "fallback", "reject"):
            raise DefinitionError(f"serving {self.model!r}: on_missing {self.on_missing!r} "
                                  "is not score, fallback or reject", fix='use "fallback"')
        if (isinstance(self.max_missing, bool) or not isinstance(self.max_missing, int | float)
                or not 0.0 <= self.max_missing < 1.0):
            raise DefinitionError(f"serving {self.model!r}: max_missing {self.max_missing!r} "
                                  "is not a share in [0, 1)", fix="use 0.5, say")

    @property
    def aliases(self) -> list[str]:
        """Every alias this declaration serves: production first."""
        out = ["production"]
        if self.canary:
            out.append("canary")
        out += [a for a in self.arms if a not in out]
        if self.shadow:
            out.append("shadow")
        return out

    def decide(self, score: float, request: Mapping[str, Any] | None = None) -> str:
        """The decision for a score: a rule's, else the first threshold it reaches."""
        for rule in self.rules:
            decided = rule(request or {}, score)
            if decided is not None:
                return str(decided)
        for name, lowest in self.decisions:
            if score >= lowest:
                return name
        return self.default_decision

    def fallback_score(self, request: Mapping[str, Any]) -> float:
        if callable(self.fallback):
            return float(self.fallback(request))
        return float(self.fallback)

    def spec(self) -> dict[str, Any]:
        return {"model": self.model, "unit": self.unit, "subject": self.subject,
                "holdout": self.holdout, "canary": self.canary, "arms": dict(self.arms),
                "shadow": self.shadow, "decisions": [list(d) for d in self.decisions],
                "default_decision": self.default_decision,
                "holdout_decision": self.holdout_decision,
                "rules": [getattr(r, "__name__", repr(r)) for r in self.rules],
                "fallback": (getattr(self.fallback, "__name__", "function")
                             if callable(self.fallback) else self.fallback),
                "budget": self.budget.spec(), "max_instances": self.max_instances,
                "on_missing": self.on_missing, "max_missing": self.max_missing}


def servings_from_module(module: ModuleType) -> dict[str, Serving]:
    """Every serving declaration a definitions module makes at its top level."""
    return declared_in(module, Serving, lambda s: s.model,
                       "model {name!r} has two serving declarations",
                       fix="declare one Serving per model")
