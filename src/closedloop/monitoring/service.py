"""``project.monitoring``: each model's monitor computed from the prediction log and the label
store, its alerts, and the playbooks they run — with an audit trail of alert, evidence,
action and outcome (``closedloop monitor``; the server and the stream scorer run it every
``Monitor.every``).

``check(model)`` computes the report and acts on nothing. ``run(model)`` also evaluates the
alerts: an alert that fires and has no open action for the same subject gets one — run at
once, or stored ``awaiting_approval`` when its playbook asks for approval (``approve``
runs it, ``decline`` closes it). Playbooks:

* ``rollback``: the ladder's rollback (a running ladder ends; else previous becomes
  production again);
* ``freeze_training``: the alert's windows are marked contaminated: the model's training
  runs leave their rows out (and record that) until ``release``;
* ``fallback``: the model's traffic goes to its declared fallback (every worker within its
  reload interval) until ``release``;
* ``notify``: the alert and its evidence POSTed as JSON to the webhook.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import ActionRecord, LadderStore, MonitorStore
from closedloop.data.clock import Clock
from closedloop.data.instants import parse_duration
from closedloop.errors import ClosedLoopError, MonitoringError
from closedloop.monitoring.counts import WindowState
from closedloop.monitoring.reference import Reference
from closedloop.monitoring.signals import (
    OutcomeLag,
    SliceSignals,
    VersionSignals,
    counted_from_log,
    outcome_lag,
    slice_signals,
    version_signals,
)
from closedloop.monitoring.spec import Alert, Monitor
from closedloop.registry.service import RegistryService
from closedloop.serving.controller import LadderService
from closedloop.serving.service import ServingService

_log = logging.getLogger("closedloop.monitoring")

#: The log columns a monitor reads.
COLUMNS = ("time", "version", "score", "decision", "fallback", "features", "subject")


@dataclass(frozen=True)
class Firing:
    """An alert that holds in a report: on what, and the figures it holds on."""

    alert: Alert
    subject: str
    evidence: Mapping[str, Any]


@dataclass(frozen=True)
class MonitorReport:
    """One monitor's signals at one instant (see ``closedloop.monitoring.signals``)."""

    model: str
    at: int
    monitor: Monitor
    windows: tuple[tuple[int, int], ...]
    rows: int
    versions: tuple[VersionSignals, ...]
    lag: OutcomeLag
    slices: tuple[SliceSignals, ...]
    firing: tuple[Firing, ...] = ()
    problems: tuple[str, ...] = ()          # what could not be computed, and why
    unmatched_labels: int = 0               # labels for subjects no logged prediction names
    actions: tuple[ActionRecord, ...] = field(default=())


class MonitoringService:
    """Stage 5's watch (see module)."""

    def __init__(self, monitors: Mapping[str, Monitor], serving: ServingService,
                 registry: RegistryService, ladder: LadderService, store: MonitorStore,
                 clock: Clock, leases: LadderStore) -> None:
        self.monitors = monitors
        self.serving = serving
        self.registry = registry
        self.ladder = ladder
        self.store = store
        self.clock = clock
        self.leases = leases

    def watch(self, *, holder: str, stop: Callable[[], bool] = lambda: False,
              say: Callable[[MonitorReport], None] | None = None,
              models: Sequence[str] | None = None,
              before: Callable[[str], None] | None = None) -> None:
        """Run each declared monitor (of ``models``) every ``Monitor.every`` until ``stop()``,
        under a lease per model so one process at a time runs it (the server's workers and
        stream scorers all call this; one of them acts). ``before(model)`` is called before
        each run (the server publishes its counts). Each report goes to ``say``; a run that
        fails is logged and tried again at its next turn."""
        names = [m for m in (models or list(self.monitors)) if m in self.monitors]
        due = dict.fromkeys(names, 0.0)
        held: set[str] = set()
        try:
            while not stop():
                for model in names:
                    if stop() or time.monotonic() < due[model]:
                        continue
                    every = self.monitors[model].every_micros / 1e6
                    due[model] = time.monotonic() + every
                    if not self.leases.acquire_lease(f"monitor:{model}", holder, 2 * every):
                        continue
                    held.add(model)
                    try:
                        if before is not None:
                            before(model)
                        report = self.run(model, actor=f"monitor ({holder})")
                    except Exception:              # the next turn tries again
                        _log.exception("the monitor of %s failed", model)
                        continue
                    if say is not None:
                        say(report)
                wake = min(due.values(), default=time.monotonic() + 1.0)
                while not stop() and time.monotonic() < wake:
                    time.sleep(min(0.2, max(wake - time.monotonic(), 0.01)))
        finally:
            for model in held:
                self.leases.release_lease(f"monitor:{model}", holder)

    def monitor(self, model: str) -> Monitor:
        """The model's declared monitor, or the default one for a served model."""
        found = self.monitors.get(model)
        if found is not None:
            return found
        self.serving.serving(model)                  # an unknown model says so
        return Monitor(model)

    # -- computing ---------------------------------------------------------------------------
    def check(self, model: str, *, at: datetime | None = None) -> MonitorReport:
        """The monitor's report now (or ``at``), its firing alerts listed, nothing run."""
        monitor = self.monitor(model)
        now = self.clock.instant(at)
        bounds = window_bounds(now, monitor)
        k = monitor.persistence[0]
        requests = list(monitor.slices)

        def read(columns: Sequence[str]) -> tuple[pa.Table, pa.Array, pa.Table]:
            table = self.serving.predictions(model, at=at, shadows=False, requests=requests,
                                             columns=list(columns))
            times = pc.cast(table["time"], pa.int64())
            return table, times, table.filter(pc.and_(pc.greater_equal(times, bounds[0][0]),
                                                      pc.less(times, now)))
        # First without the features: the windows the workers counted need none of them.
        table, times, recent = read([c for c in COLUMNS if c != "features"])
        problems: list[str] = []
        plans = []
        for number in sorted(set(pc.unique(recent["version"]).to_pylist()) - {None}):
            try:
                reference = self.registry.reference(model, int(number))
            except ClosedLoopError as exc:
                problems.append(f"version {number}: {exc.message}")
                continue
            if reference.model != model:
                problems.append(f"version {number}: its reference is {reference.model!r}'s")
                continue
            pinned = self.registry.version(model, int(number)).manifest["definitions"]
            keys = {f["ref"]: f["column"] for f in pinned.get("features", [])}
            found = self.store.window_states(model, int(number), [b[0] for b in bounds])
            states = {start: [WindowState.from_dict(d) for d in dicts
                              if d.get("counts", {}).get("reference") == reference.hash]
                      for start, dicts in found.items()}
            plans.append((int(number), reference, keys, states))
        if any(counted_from_log(_renamed(recent.filter(pc.equal(recent["version"], n)),
                                         requests), states, bounds, requests)
               for n, _, _, states in plans):
            table, times, recent = read(COLUMNS)
        versions = [version_signals(_renamed(recent.filter(pc.equal(recent["version"], n)),
                                             requests), reference, monitor.rule, bounds, k,
                                    n, keys, requests, states)
                    for n, reference, keys, states in plans]
        lag = outcome_lag(recent, now)
        cohort = table.filter(pc.and_(pc.greater_equal(
            times, now - parse_duration(monitor.cohort)), pc.less(times, now)))
        sliced = tuple(slice_signals(_renamed(cohort, requests), requests,
                                     monitor.min_slice_size))
        unmatched = self.serving.unmatched_labels(model, table, at)
        report = MonitorReport(model, now, monitor, bounds, recent.num_rows, tuple(versions),
                               lag, sliced, problems=tuple(problems),
                               unmatched_labels=unmatched)
        return _with_firing(report)

    # -- acting ------------------------------------------------------------------------------
    def run(self, model: str, *, at: datetime | None = None,
            actor: str = "monitor") -> MonitorReport:
        """``check``, then every firing alert without an open action gets one (see module):
        one action per alert, on every subject it holds on (the first names the action;
        ``evidence["subjects"]`` lists them all)."""
        report = self.check(model, at=at)
        since = report.windows[0][0]
        open_ = {a.alert for a in self.store.actions(model) if _open(a, since)}
        grouped: dict[str, list[Firing]] = {}
        for firing in report.firing:
            grouped.setdefault(firing.alert.name, []).append(firing)
        taken = []
        for name, firings in grouped.items():
            if name in open_:
                continue
            first = firings[0]
            playbook = first.alert.playbook
            assert playbook is not None
            when = datetime.now(UTC)
            record = self.store.add_action(ActionRecord(
                0, model, name, first.alert.on, first.subject, playbook.kind,
                "awaiting_approval" if playbook.approval else "running",
                {**first.evidence, "subjects": [f.subject for f in firings],
                 "windows": [list(w) for w in report.windows], "at": report.at}, "", actor,
                when, when))
            taken.append(record if playbook.approval else self._act(record, actor))
        return MonitorReport(**{**report.__dict__, "actions": tuple(taken)})

    def _act(self, record: ActionRecord, actor: str) -> ActionRecord:
        """Run the action's playbook; its outcome (or failure) in the audit."""
        alert = next((a for a in self.monitor(record.model).alerts if a.name == record.alert),
                     None)
        try:
            if alert is None or alert.playbook is None:
                raise MonitoringError(f"the monitor of {record.model!r} no longer declares "
                                      f"alert {record.alert!r}", fix="decline the action")
            outcome = self._playbook(record, alert)
        except ClosedLoopError as exc:
            return self.store.update_action(record.id, status="failed",
                                            outcome=f"{exc.code} {exc}", actor=actor)
        except OSError as exc:                      # a webhook that does not answer
            return self.store.update_action(record.id, status="failed",
                                            outcome=f"{type(exc).__name__}: {exc}",
                                            actor=actor)
        return self.store.update_action(record.id, status="done", outcome=outcome,
                                        actor=actor)

    def _playbook(self, record: ActionRecord, alert: Alert) -> str:
        playbook = alert.playbook
        assert playbook is not None
        why = f"alert {alert.name!r} on {record.subject} (action {record.id})"
        if playbook.kind == "rollback":
            done = self.ladder.rollback(record.model, actor="monitor", reason=why)
            aliases = self.registry.aliases(record.model)
            return (f"rolled back: production is version {aliases.get('production')}"
                    + ("" if done is None else f"; the ladder of v{done.candidate} ended"))
        if playbook.kind == "fallback":
            self.store.set_switch(record.model, "fallback", {"action": record.id,
                                                             "reason": why})
            return "traffic to the fallback until released"
        if playbook.kind == "freeze_training":
            windows = record.evidence.get("windows", [])
            start, end = int(windows[0][0]), int(windows[-1][1])
            self.store.set_switch(record.model, f"freeze:{start}:{end}",
                                  {"action": record.id, "start": start, "end": end})
            return f"training leaves out [{start}, {end}) µs until released"
        url = getattr(playbook, "url", "")
        body = json.dumps({"model": record.model, "alert": record.alert,
                           "signal": record.signal, "subject": record.subject,
                           "evidence": record.evidence, "action": record.id},
                          default=str).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=getattr(playbook, "timeout_s", 5.0)
                                    ) as answer:
            return f"notified {url}: HTTP {answer.status}"

    def approve(self, model: str, action_id: int, *, actor: str = "cli") -> ActionRecord:
        """Run an action that waits for approval."""
        record = self._action(model, action_id, "awaiting_approval")
        return self._act(record, actor)

    def decline(self, model: str, action_id: int, *, actor: str = "cli") -> ActionRecord:
        self._action(model, action_id, "awaiting_approval")
        return self.store.update_action(action_id, status="declined", outcome="declined",
                                        actor=actor)

    def release(self, model: str, action_id: int, *, actor: str = "cli") -> ActionRecord:
        """Lift what a done fallback or freeze action holds (the traffic back to the model,
        or the window back into training)."""
        record = self._action(model, action_id, "done")
        if record.playbook == "fallback":
            self.store.set_switch(model, "fallback", None)
        elif record.playbook == "freeze_training":
            for name, value in self.store.switches(model).items():
                if name.startswith("freeze:") and value.get("action") == action_id:
                    self.store.set_switch(model, name, None)
        else:
            raise MonitoringError(f"action {action_id} ran {record.playbook}, which holds "
                                  "nothing to release", fix="release a fallback or a freeze")
        return self.store.update_action(action_id, status="released",
                                        outcome=f"{record.outcome}; released", actor=actor)

    def _action(self, model: str, action_id: int, status: str) -> ActionRecord:
        found = next((a for a in self.store.actions(model) if a.id == action_id), None)
        if found is None:
            raise MonitoringError(f"model {model!r} has no monitoring action {action_id}",
                                  fix=f"see them with `closedloop monitor audit {model}`")
        if found.status != status:
            raise MonitoringError(f"action {action_id} is {found.status}, not {status}",
                                  fix=f"see it with `closedloop monitor audit {model}`")
        return found

    def audit(self, model: str | None = None) -> list[ActionRecord]:
        """Every alert acted on, with its evidence, action and outcome, oldest first."""
        return self.store.actions(model)

    def frozen(self, model: str) -> list[tuple[int, int]]:
        """The windows training leaves out for ``model`` ([start, end) µs)."""
        return [(int(v["start"]), int(v["end"])) for name, v in
                self.store.switches(model).items() if name.startswith("freeze:")]

    def reference(self, model: str, version: int | str = "production") -> Reference:
        return self.registry.reference(model, version)


def window_bounds(now: int, monitor: Monitor) -> tuple[tuple[int, int], ...]:
    """The monitor's last ``w`` windows at ``now`` (µs), [start, end) on the grid of its
    window (a window starts at a multiple of its length), the last one the window ``now``
    falls in, ending at ``now`` (an instant on the grid ends the window before it)."""
    size, w = monitor.window_micros, monitor.persistence[1]
    end = -(-now // size) * size
    return tuple((end - (w - j) * size, min(end - (w - j - 1) * size, now))
                 for j in range(w))


def _open(action: ActionRecord, since: int) -> bool:
    """Whether an action still answers its alert: one waiting or running; a fallback or
    freeze until released; a notify or rollback taken within the report's windows (after
    them, the alert holding again is news and acts again)."""
    if action.status in ("awaiting_approval", "running"):
        return True
    if action.status != "done":
        return False
    if action.playbook in ("fallback", "freeze_training"):
        return True
    return int(action.evidence.get("at", 0)) >= since


def _renamed(table: pa.Table, requests: list[str]) -> pa.Table:
    """``request.<field>`` columns under the field's own name (the slice's name)."""
    names = [c[len("request."):] if c.startswith("request.") and c[8:] in requests else c
             for c in table.column_names]
    return table.rename_columns(names)


def _with_firing(report: MonitorReport) -> MonitorReport:
    """The report with every alert that holds in it (see ``Alert``)."""
    firing: list[Firing] = []
    for alert in report.monitor.alerts:
        if alert.on == "drift":
            for version in report.versions:
                for key in version.persisted:
                    where, _, column = key.rpartition(":")
                    if alert.columns and column not in alert.columns:
                        continue
                    last = next((found.columns[column] for w in reversed(version.windows)
                                 if (found := (w.slices.get(where) if where else w.drift))
                                 is not None and column in found.columns), None)
                    evidence: dict[str, Any] = {"version": version.version, "column": column,
                                                "persistence": list(report.monitor.persistence)}
                    if where:
                        evidence["slice"] = where
                    if last is not None:
                        evidence.update(psi=last.psi, p_value=last.chi_square.p_value,
                                        js=last.js, n=last.n_current)
                    firing.append(Firing(alert, f"v{version.version}:{key}", evidence))
        elif alert.on == "constraint":
            assert alert.threshold is not None
            for version in report.versions:
                window = version.windows[-1]
                for name, n in window.constraints.counts.items():
                    share = window.constraints.share(name)
                    if (not alert.columns or name in alert.columns) and share > alert.threshold:
                        firing.append(Firing(alert, f"v{version.version}:{name}", {
                            "version": version.version, "constraint": name, "rows": n,
                            "share": share, "threshold": alert.threshold}))
        elif alert.on == "slice":
            assert alert.threshold is not None
            for s in report.slices:
                if s.scored and s.auc is not None and s.auc.high < alert.threshold:
                    name = "all" if s.column is None else f"{s.column}={s.slice}"
                    firing.append(Firing(alert, name, {"auc": s.auc.value, "low": s.auc.low,
                                                       "high": s.auc.high, "rows": s.rows,
                                                       "threshold": alert.threshold}))
        else:                                           # outcome_lag
            assert alert.threshold is not None
            matured = report.lag.matured_share(report.monitor.window_micros // 1_000_000)
            if matured is not None and matured < alert.threshold:
                firing.append(Firing(alert, "labels", {"matured_share": matured,
                                                       "threshold": alert.threshold}))
    return MonitorReport(**{**report.__dict__, "firing": tuple(firing)})


__all__ = ["COLUMNS", "Firing", "MonitorReport", "MonitoringService", "window_bounds"]
