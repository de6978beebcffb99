"""Monitors, declared in the definitions module beside the model they watch.

>>> import closedloop as cl
>>> monitor = cl.Monitor("fraud", window="1h", alerts=[
...     cl.Alert("features drift", on="drift", playbook=cl.Fallback()),
...     cl.Alert("nan inputs", on="constraint", threshold=0.01, playbook=cl.Notify(
...         "http://127.0.0.1:9/hook"))])
>>> monitor.alerts[0].playbook.kind
'fallback'

Every alert names its playbook; an alert without one is refused. A playbook runs at once
(``approval=False``) or waits for ``closedloop monitor approve`` (``approval=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from closedloop.data.instants import parse_duration
from closedloop.data.sources import declared_in
from closedloop.errors import MonitoringError
from closedloop.monitoring.detect import DriftRule

#: What an alert can watch.
SIGNALS = ("drift", "constraint", "slice", "outcome_lag")


@dataclass(frozen=True)
class Playbook:
    """What to do when an alert fires (one of the subclasses)."""

    approval: bool = field(default=False, kw_only=True)   # wait for `monitor approve`

    kind = "playbook"

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "approval": self.approval}


@dataclass(frozen=True)
class Rollback(Playbook):
    """The ladder's rollback: end a running ladder, or restore previous as production."""

    kind = "rollback"


@dataclass(frozen=True)
class FreezeTraining(Playbook):
    """Mark the alert's data window contaminated: training leaves it out until released,
    and a run records the windows it left out."""

    kind = "freeze_training"


@dataclass(frozen=True)
class Fallback(Playbook):
    """Route the model's traffic to its declared fallback until released."""

    kind = "fallback"


@dataclass(frozen=True)
class Notify(Playbook):
    """POST the alert, its evidence and the report's summary as JSON to ``url``."""

    url: str = ""
    timeout_s: float = 5.0
    kind = "notify"

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise MonitoringError(f"notify needs an http(s) URL, got {self.url!r}",
                                  fix="pass Notify('https://hooks.example.com/...')")

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "url": self.url, "timeout_s": self.timeout_s}


@dataclass(frozen=True)
class Alert:
    """A rule over one signal of the monitor's report, bound to a playbook.

    * ``drift``: a column's drift persisted (k of the last w windows); ``columns`` limits
      it (default every feature, the score and the label);
    * ``constraint``: a constraint's violations exceed ``threshold`` (a share of rows) in
      the last window;
    * ``slice``: a matured slice's AUC is below ``threshold`` with its whole interval;
    * ``outcome_lag``: the share of predictions older than one window with a label is below
      ``threshold``.
    """

    name: str
    on: str
    playbook: Playbook | None = None
    columns: tuple[str, ...] = ()
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.on not in SIGNALS:
            raise MonitoringError(f"alert {self.name!r} watches {self.on!r}, which is not a "
                                  "signal", fix=f"use one of {', '.join(SIGNALS)}")
        if not isinstance(self.playbook, Playbook):
            raise MonitoringError(f"alert {self.name!r} names no playbook",
                                  fix="bind it to Rollback(), FreezeTraining(), Fallback() "
                                      "or Notify(url): an alert nobody acts on is noise")
        if self.on in ("constraint", "slice", "outcome_lag") and self.threshold is None:
            raise MonitoringError(f"alert {self.name!r} on {self.on} needs a threshold",
                                  fix="pass threshold=")
        object.__setattr__(self, "columns", tuple(self.columns))

    def spec(self) -> dict[str, Any]:
        assert self.playbook is not None
        return {"name": self.name, "on": self.on, "columns": list(self.columns),
                "threshold": self.threshold, "playbook": self.playbook.spec()}


@dataclass(frozen=True)
class Monitor:
    """What to watch for one model, how often, and what to do about it."""

    model: str
    window: str = "1h"                      # one window of traffic
    persistence: tuple[int, int] = (2, 3)   # drift in k of the last w windows
    rule: DriftRule = field(default_factory=DriftRule)
    slices: Sequence[str] = ()              # request fields to cut the matured rows by
    min_slice_size: int = 200
    cohort: str = "90d"                     # slice metrics: the matured predictions this old
    alerts: Sequence[Alert] = ()
    every: str = "5m"                       # how often the server and the scorer run it

    def __post_init__(self) -> None:
        k, w = self.persistence
        if not 1 <= k <= w:
            raise MonitoringError(f"persistence {self.persistence} is impossible",
                                  fix="use (k, w) with 1 <= k <= w")
        parse_duration(self.window, what="monitor window")
        parse_duration(self.every, what="monitor schedule")
        parse_duration(self.cohort, what="monitor cohort")
        names = [a.name for a in self.alerts]
        if len(names) != len(set(names)):
            raise MonitoringError(f"monitor {self.model!r} names two alerts alike",
                                  fix="give every alert its own name")
        object.__setattr__(self, "slices", tuple(self.slices))
        object.__setattr__(self, "alerts", tuple(self.alerts))

    @property
    def window_micros(self) -> int:
        return parse_duration(self.window)

    @property
    def every_micros(self) -> int:
        return parse_duration(self.every)

    def spec(self) -> dict[str, Any]:
        return {"model": self.model, "window": self.window,
                "persistence": list(self.persistence), "rule": self.rule.__dict__,
                "slices": list(self.slices), "min_slice_size": self.min_slice_size,
                "cohort": self.cohort,
                "alerts": [a.spec() for a in self.alerts], "every": self.every}


def monitors_from_module(module: ModuleType) -> dict[str, Monitor]:
    """Every monitor a definitions module declares at its top level, by model."""
    return declared_in(module, Monitor, lambda m: m.model, "model {name!r} has two monitors",
                       fix="declare one Monitor per model")


__all__ = ["SIGNALS", "Alert", "Fallback", "FreezeTraining", "Monitor", "Notify", "Playbook",
           "Rollback", "monitors_from_module"]
