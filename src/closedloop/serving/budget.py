"""The latency budget report: what ``closedloop budget`` prints, from the prediction log.

Per stage (fetch, transform, inference, post) p50 and p99 over the last predictions logged,
each against its declared budget; the ``queue`` — a served request's wait before its batch
began, behind the batch ahead — and the ``total``: a served request's whole time on the
server, arrival to the log, where the server measured it, else (an in-process predict) the
stages added up, against the budget's ``p99_ms``. Only what is declared can be over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from closedloop.serving.records import PredictionRecord
from closedloop.serving.spec import STAGES, Budget


@dataclass(frozen=True, slots=True)
class Latency:
    """One row of the report: p50 and p99 in ms (None: nothing measured) and the budget."""

    p50_ms: float | None
    p99_ms: float | None
    budget_ms: float | None = None

    @classmethod
    def of(cls, values: Sequence[float], budget_ms: float | None = None) -> Latency:
        if not values:
            return cls(None, None, budget_ms)
        return cls(float(np.percentile(values, 50)), float(np.percentile(values, 99)),
                   budget_ms)

    @property
    def declared(self) -> bool:
        return self.budget_ms is not None

    @property
    def over(self) -> bool:
        return (self.p99_ms is not None and self.budget_ms is not None
                and self.p99_ms > self.budget_ms)


@dataclass(frozen=True, slots=True)
class BudgetReport:
    """A model's measured latency against its budget (see module)."""

    model: str
    predictions: int            # how many logged predictions the report reads
    served: int                 # of them, served by the server (queue and total measured)
    stages: Mapping[str, Latency]
    queue: Latency
    total: Latency
    fallbacks: int

    @property
    def over(self) -> list[str]:
        """The stages, then ``total``, whose p99 is over their declared budget."""
        return [name for name, row in [*self.stages.items(), ("total", self.total)]
                if row.over]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "over": self.over}


def budget_report(model: str, budget: Budget, logged: Sequence[PredictionRecord],
                  ) -> BudgetReport:
    """The report over ``logged`` (the last predictions of ``model``)."""
    timings = [r.latency_ms for r in logged]
    declared = budget.stages()
    return BudgetReport(
        model, len(timings), sum(1 for t in timings if "request" in t),
        {s: Latency.of([t[s] for t in timings], declared.get(s)) for s in STAGES},
        Latency.of([t["queue"] for t in timings if "queue" in t]),
        Latency.of([t.get("request", sum(t[s] for s in STAGES)) for t in timings],
                   float(budget.p99_ms)),
        sum(1 for r in logged if r.fallback))
