"""The workers' request-path counts merged by the monitor: the served fraud traffic observed by
two serving processes' ``RequestMonitor``s (split between them), published to the monitor
store; the monitor then takes features, score and constraints from the merged counts
(``source == "counts"``) and finds what counting the log finds — the same drift, slices,
constraint counts and alerts. A window a worker counted short of the log is counted from the
log."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from tests.monitoring.world import DAY0

import closedloop as cl
from closedloop.monitoring.service import MonitorReport
from closedloop.server.metrics import ServerMetrics
from closedloop.server.monitoring import RequestMonitor
from closedloop.serving.records import PredictionRecord, served

AT = DAY0 + timedelta(days=5)


def _records(project: cl.Project) -> list[PredictionRecord]:
    return [r for r in served(project.prediction_log, "fraud")
            if isinstance(r, PredictionRecord)]


def _workers(project: cl.Project, records: list[PredictionRecord],
             skip: frozenset[str] = frozenset()) -> list[RequestMonitor]:
    """Two workers, each observing every other record (in order), both published."""
    workers = [RequestMonitor(project, ServerMetrics()) for _ in range(2)]
    assert workers[0].worker != workers[1].worker
    for i, record in enumerate(records):
        if record.id not in skip:
            workers[i % 2].observe("fraud", [record])
    for worker in workers:
        worker.publish()
    return workers


def _r(x: float) -> float | None:
    """A statistic to compare (NaN as None; sums added in another order agree to 1e-9)."""
    return None if math.isnan(x) else round(x, 9)


def _figures(report: MonitorReport) -> list[Any]:
    out = []
    for w in report.versions[0].windows:
        results = {"": w.drift, **w.slices}
        out.append((w.start, w.end, w.rows, w.fallback, dict(w.constraints.counts), {
            name: {c: (d.status, d.n_current, *(_r(x) for x in (
                d.missing_share, d.unseen_share, d.psi, d.js, d.ks, d.wasserstein,
                d.chi_square.p_value)))
                   for c, d in r.columns.items()}
            for name, r in results.items() if r is not None}))
    return out


def test_the_monitor_merges_the_workers_counts(monitored: cl.Project) -> None:
    from_log = monitored.monitoring.check("fraud", at=AT)
    assert [w.source for w in from_log.versions[0].windows] == ["log"] * 3
    _workers(monitored, _records(monitored))
    states = monitored.monitoring.store.window_states(
        "fraud", 1, [w.start for w in from_log.versions[0].windows])
    assert all(len(found) == 2 for found in states.values())     # one per worker
    merged = monitored.monitoring.check("fraud", at=AT)
    assert [w.source for w in merged.versions[0].windows] == ["counts"] * 3
    assert _figures(merged) == _figures(from_log)
    assert {(f.alert.name, f.subject) for f in merged.firing} == {
        (f.alert.name, f.subject) for f in from_log.firing}
    assert merged.firing                                  # the bug's alert, from the counts


def test_a_window_counted_short_of_the_log_is_counted_from_the_log(
        monitored: cl.Project) -> None:
    expected = _figures(monitored.monitoring.check("fraud", at=AT))
    records = _records(monitored)
    day = int((DAY0 + timedelta(days=3)).timestamp() * 1e6)
    lost = next(r for r in records if day <= r.time < day + 86_400_000_000 and r.features)
    _workers(monitored, records, skip=frozenset({lost.id}))          # its response never went out
    report = monitored.monitoring.check("fraud", at=AT)
    sources = {w.start: w.source for w in report.versions[0].windows}
    assert sources[day] == "log"
    assert sorted(sources.values()) == ["counts", "counts", "log"]
    assert _figures(report) == expected


def test_a_window_no_longer_kept_is_published_once_more(monitored: cl.Project) -> None:
    """A worker keeps its latest windows; one it lets go is still published, whole."""
    worker = RequestMonitor(monitored, ServerMetrics())
    records = _records(monitored)
    worker.observe("fraud", records[:1])
    live = worker._versions[("fraud", 1)]
    assert live is not None
    live.keep = 1
    worker.observe("fraud", records[1:])
    worker.publish()
    report = monitored.monitoring.check("fraud", at=AT)
    assert [w.source for w in report.versions[0].windows] == ["counts"] * 3
    assert live.states().keys() == {max(live.states())}     # the others forgotten
