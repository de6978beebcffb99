"""The server's side of monitoring: every served prediction counted for drift and checked
against its version's constraints (``RequestMonitor.observe``, on the request path, after the
response: its values buffered, counted every 2,048 in a thread), the counts published to the
monitor store for the monitors to merge (``RequestMonitor.publish``: every ``[monitoring]
publish_s``, before each monitor run in this process, and at shutdown), the monitors run
in a thread of the server (``RequestMonitor.start``), and their figures on ``/metrics``."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from closedloop.errors import ClosedLoopError
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
        self._versions: dict[tuple[str, int], LiveCounts | None] = {}
        self._thread: threading.Thread | None = None
        self._publishing = threading.Lock()
        #: This process in the monitor store (unique per process lifetime).
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def start(self, models: Sequence[str], stop: Callable[[], bool]) -> None:
        """Run the monitors of ``models`` that declare one, in a thread, until ``stop()``
        (when ``[monitoring] runner = "serve"``)."""
        watched = [m for m in models if m in self.project.monitoring.monitors]
        if not watched or self.project.settings.monitoring.runner != "serve":
            return
        self._thread = threading.Thread(
            target=self.project.monitoring.watch, name="closedloop-monitor", daemon=True,
            kwargs={"holder": f"serve-{os.getpid()}", "stop": stop, "say": self._monitored,
                    "models": watched, "before": self.publish})
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.publish()

    def publish(self, model: str | None = None) -> None:
        """This process's window states (of ``model``; default: every model) into the monitor
        store, replacing what it published before. A store that fails is logged; the
        monitor then counts those windows from the log."""
        with self._publishing:
            for (name, version), live in list(self._versions.items()):
                if live is None or (model is not None and name != model):
                    continue
                states = live.states()
                if not states:
                    continue
                monitor = self.project.monitoring.monitors.get(name)
                w = monitor.persistence[1] if monitor is not None else 3
                keep_since = max(states) - (w + 1) * live.window_micros
                try:
                    self.project.monitoring.store.put_window_states(
                        name, version, self.worker,
                        {start: state.to_dict() for start, state in states.items()},
                        keep_since=keep_since)
                    live.published(states)
                except ClosedLoopError as exc:
                    log.warning("publishing the drift counts of %s v%s failed: %s", name,
                                version, exc)

    def _monitored(self, report: MonitorReport) -> None:
        self.metrics.monitored(report)
        for f in report.firing:
            log.warning("monitor: %s: alert %r on %s", report.model, f.alert.name, f.subject)
        for a in report.actions:
            log.warning("monitor: %s: %s %s (%s)", report.model, a.playbook, a.status,
                        a.outcome or "waiting for approval")

    def observe(self, name: str, records: Sequence[Any]) -> None:
        """Served records (those the model scored): counted for drift and checked against
        their constraints (at each flush of their version's buffer)."""
        if not self.checks:
            return
        for record in records:
            if record.features is None:             # the fallback answered: no features
                continue
            live = self._version(name, record.version)
            if live is not None:
                live.observe(record.time, record.features, record.score, record.request)

    def export(self) -> None:
        """Each version's live drift onto the metrics (before ``/metrics`` renders; the
        buffers flushed, so the constraint counters are current)."""
        for (model, version), live in list(self._versions.items()):
            drift = None if live is None else live.drift()
            if drift is not None:
                self.metrics.live(model, version, drift)

    def _version(self, name: str, version: int) -> LiveCounts | None:
        """The live counts of a version's reference (None: it has none), made once."""
        key = (name, version)
        if key not in self._versions:
            try:
                reference = self.project.monitoring.reference(name, version)
                pinned = self.project.registry.version(name, version).manifest["definitions"]
                keys = {f["ref"]: f["column"] for f in pinned.get("features", [])}
                monitor = self.project.monitoring.monitors.get(name)
                window = monitor.window_micros if monitor is not None else DEFAULT_WINDOW

                def violated(counts: Mapping[str, int]) -> None:
                    for constraint, n in counts.items():
                        if n:
                            self.metrics.violated(name, constraint, n)
                self._versions[key] = LiveCounts(
                    reference, keys, window_micros=window,
                    slices=monitor.slices if monitor is not None else (),
                    keep=monitor.persistence[1] if monitor is not None else 3,
                    on_violations=violated)
            except ClosedLoopError as exc:              # trained before references
                log.warning("no constraints for %s v%s: %s", name, version, exc)
                self._versions[key] = None
        return self._versions[key]


__all__ = ["RequestMonitor"]
