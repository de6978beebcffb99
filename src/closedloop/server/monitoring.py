"""The server's side of monitoring: every served prediction checked against its version's
constraints and counted for drift (``RequestMonitor.observe``, on the request path, after the
response), the monitors run in a thread of the server (``RequestMonitor.start``), and their
figures on ``/metrics``."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from closedloop.errors import ClosedLoopError
from closedloop.monitoring.constraints import ConstraintChecker
from closedloop.monitoring.live import LiveCounts
from closedloop.monitoring.service import MonitorReport
from closedloop.project import Project
from closedloop.server.metrics import ServerMetrics

log = logging.getLogger("closedloop.server")

#: A served model's window when it declares no monitor.
DEFAULT_WINDOW = 3_600_000_000


class RequestMonitor:
    """Constraints and drift counts per (model, version), the monitors' thread."""

    def __init__(self, project: Project, metrics: ServerMetrics) -> None:
        self.project = project
        self.metrics = metrics
        self.checks = project.settings.monitoring.checks
        self._versions: dict[tuple[str, int], tuple[ConstraintChecker, LiveCounts] | None] = {}
        self._thread: threading.Thread | None = None

    def start(self, models: Sequence[str], stop: Callable[[], bool]) -> None:
        """Run the monitors of ``models`` that declare one, in a thread, until ``stop()``
        (when ``[monitoring] runner = "serve"``)."""
        watched = [m for m in models if m in self.project.monitoring.monitors]
        if not watched or self.project.settings.monitoring.runner != "serve":
            return
        self._thread = threading.Thread(
            target=self.project.monitoring.watch, name="closedloop-monitor", daemon=True,
            kwargs={"holder": f"serve-{os.getpid()}", "stop": stop, "say": self._monitored,
                    "models": watched})
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _monitored(self, report: MonitorReport) -> None:
        self.metrics.monitored(report)
        for f in report.firing:
            log.warning("monitor: %s: alert %r on %s", report.model, f.alert.name, f.subject)
        for a in report.actions:
            log.warning("monitor: %s: %s %s (%s)", report.model, a.playbook, a.status,
                        a.outcome or "waiting for approval")

    def observe(self, name: str, records: Sequence[Any]) -> None:
        """Served records (those the model scored): constraints counted, drift counted."""
        if not self.checks:
            return
        for record in records:
            if record.features is None:             # the fallback answered: no features
                continue
            found = self._version(name, record.version)
            if found is not None:
                checker, live = found
                for violated in checker.check(record.features, record.score):
                    self.metrics.violated(name, violated)
                live.observe(record.time, record.features, record.score)

    def export(self) -> None:
        """Each version's live drift onto the metrics (before ``/metrics`` renders)."""
        for (model, version), pair in list(self._versions.items()):
            drift = None if pair is None else pair[1].drift()
            if drift is not None:
                self.metrics.live(model, version, drift)

    def _version(self, name: str, version: int,
                 ) -> tuple[ConstraintChecker, LiveCounts] | None:
        """The constraints and the live drift counts of a version's reference (None: it has
        none), made once."""
        key = (name, version)
        if key not in self._versions:
            try:
                reference = self.project.monitoring.reference(name, version)
                pinned = self.project.registry.version(name, version).manifest["definitions"]
                keys = {f["ref"]: f["column"] for f in pinned.get("features", [])}
                monitor = self.project.monitoring.monitors.get(name)
                window = monitor.window_micros if monitor is not None else DEFAULT_WINDOW
                self._versions[key] = (ConstraintChecker(reference, keys),
                                       LiveCounts(reference, keys, window_micros=window))
            except ClosedLoopError as exc:              # trained before references
                log.warning("no constraints for %s v%s: %s", name, version, exc)
                self._versions[key] = None
        return self._versions[key]


__all__ = ["RequestMonitor"]
