"""The server's Prometheus metrics: per-stage and whole-request latency histograms, and
counters of predictions, fallbacks, shed requests and dropped shadow work.

With several workers, ``closedloop serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any
worker starts; each worker then writes its samples to files there and ``/metrics`` on any
worker reports the sum over all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from closedloop.serving.spec import STAGES

#: Latency buckets in seconds: fine below 10 ms, where the budgets live.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
           0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


#: Lag buckets in seconds: a stream's events are seconds old, not milliseconds.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class ServerMetrics:
    """The metric families, registered once per process."""

    def __init__(self) -> None:
        self.multi = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = REGISTRY if self.multi else CollectorRegistry()
        kw = self.registry
        self.stage = Histogram("closedloop_stage_seconds", "Latency of one serving stage",
                               ["model", "stage"], buckets=BUCKETS, registry=kw)
        self.request = Histogram("closedloop_request_seconds",
                                 "Latency of a predict request, parse to response",
                                 ["model"], buckets=BUCKETS, registry=kw)
        self.predictions = Counter("closedloop_predictions_total", "Predictions served",
                                   ["model", "route", "decision"], registry=kw)
        self.fallbacks = Counter("closedloop_fallbacks_total",
                                 "Predictions answered by the model's fallback", ["model"],
                                 registry=kw)
        self.missing = Counter("closedloop_missing_features_total",
                               "Features a prediction was served without, by why: no_record "
                               "(the online store holds nothing for the entity), no_value",
                               ["model", "feature", "reason"], registry=kw)
        self.shed = Counter("closedloop_shed_total", "Requests refused with a 503 (overload)",
                            registry=kw)
        self.shadow_dropped = Counter("closedloop_shadow_dropped_total",
                                      "Shadow scorings dropped because the shadow fell behind",
                                      ["model"], registry=kw)
        self.errors = Counter("closedloop_request_errors_total", "Requests answered with 4xx",
                              ["status"], registry=kw)
        # Monitoring: constraints counted on the request path; the rest set by each monitor
        # run (in whichever worker holds its lease: "mostrecent" across workers).
        self.constraints = Counter("closedloop_constraint_violations_total",
                                   "Served predictions violating a constraint of their "
                                   "version's reference", ["model", "constraint"], registry=kw)
        gauge: dict[str, Any] = {"registry": kw, "multiprocess_mode": "mostrecent"}
        self.psi = Gauge("closedloop_drift_psi", "PSI of a column in the monitor's last window "
                         "against the serving version's reference",
                         ["model", "version", "column"], **gauge)
        self.drifting = Gauge("closedloop_drift_alert", "1 while a column's drift persists (k "
                              "of the last w windows), else 0",
                              ["model", "version", "column"], **gauge)
        self.matured = Gauge("closedloop_labels_matured_ratio", "Share of the predictions "
                             "older than one monitor window that have their label", ["model"],
                             **gauge)
        self.auc = Gauge("closedloop_matured_auc", "AUC of the matured predictions of the "
                         "monitor's cohort", ["model"], **gauge)
        self.firing = Gauge("closedloop_alerts_firing", "Subjects (columns, slices, "
                            "constraints) an alert holds on in the last monitor run; 0: quiet",
                            ["model", "alert"], **gauge)
        self.live_psi = Gauge("closedloop_live_drift_psi", "PSI of a column in the current "
                              "window, counted on this worker's request path",
                              ["model", "version", "column"], registry=kw,
                              multiprocess_mode="liveall")
        self.actions = Counter("closedloop_monitor_actions_total", "Playbook actions the "
                               "monitors took, by outcome", ["model", "playbook", "status"],
                               registry=kw)
        self._children: dict[str, tuple[dict[str, Any], Any]] = {}
        self._violations: dict[tuple[str, str], Any] = {}

    def violated(self, model: str, constraint: str, rows: int = 1) -> None:
        child = self._violations.get((model, constraint))
        if child is None:
            child = self._violations[(model, constraint)] = self.constraints.labels(
                model, constraint)
        child.inc(rows)

    def live(self, model: str, version: int, drift: Any) -> None:
        """Set the live drift gauges from a worker's request-path counts."""
        for column, found in drift.columns.items():
            if found.psi == found.psi:
                self.live_psi.labels(model, str(version), column).set(found.psi)

    def monitored(self, report: Any) -> None:
        """Set the monitoring gauges from a monitor's report."""
        model = report.model
        for version in report.versions:
            last = version.windows[-1].drift
            for column, found in ({} if last is None else last.columns).items():
                if found.psi == found.psi:                      # NaN: nothing to compare
                    self.psi.labels(model, str(version.version), column).set(found.psi)
                self.drifting.labels(model, str(version.version), column).set(
                    float(column in version.persisted))
        share = report.lag.matured_share(report.monitor.window_micros // 1_000_000)
        if share is not None:
            self.matured.labels(model).set(share)
        overall = next((s for s in report.slices if s.column is None and s.auc), None)
        if overall is not None:
            self.auc.labels(model).set(overall.auc.value)
        counts: dict[str, int] = {a.name: 0 for a in report.monitor.alerts}
        for f in report.firing:
            counts[f.alert.name] = counts.get(f.alert.name, 0) + 1
        for name, n in counts.items():
            self.firing.labels(model, name).set(n)
        for action in report.actions:
            self.actions.labels(model, action.playbook, action.status).inc()

    def of(self, model: str) -> tuple[dict[str, Any], Any]:
        """A model's stage histograms by stage (and ``queue``: the wait before its batch
        began), and its request histogram — looked up once per model, not on every
        request."""
        found = self._children.get(model)
        if found is None:
            found = self._children[model] = (
                {s: self.stage.labels(model, s) for s in (*STAGES, "queue")},
                self.request.labels(model))
        return found

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if not self.multi:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped
        return generate_latest(registry), CONTENT_TYPE_LATEST


class StreamMetrics:
    """A streaming scorer's metrics: its events and their lag (event time to prediction
    written), served by ``serve`` on a port of their own."""

    def __init__(self, model: str) -> None:
        self.registry = CollectorRegistry()
        self.lag = Histogram("closedloop_stream_lag_seconds",
                             "Event time to prediction written, per streamed event", ["model"],
                             buckets=LAG_BUCKETS, registry=self.registry).labels(model)
        self.events = Counter("closedloop_stream_events_total", "Events scored by the stream",
                              ["model"], registry=self.registry).labels(model)

    def observe(self, lags_ms: list[float]) -> None:
        for lag in lags_ms:
            self.lag.observe(lag / 1000)
        self.events.inc(len(lags_ms))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Export on ``http://host:port/metrics`` from a background thread."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)
