"""A monitor's report as text lines (``closedloop monitor``) and as one self-contained HTML
page (``--html``): the drift of every column per window as a heat table with its verdict, the
outcome-lag curve (the share of predictions with a label, by age) as inline SVG, the slice
table, the constraints, the alerts and the actions taken."""

from __future__ import annotations

import html
from typing import Any

from closedloop.data.instants import format_instant
from closedloop.monitoring.service import MonitorReport
from closedloop.monitoring.signals import DELAY_BOUNDS


def _age(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def summary(report: MonitorReport) -> list[str]:
    """The report's headline lines."""
    k, w = report.monitor.persistence
    lines = [f"{report.model} at {format_instant(report.at)}: {report.rows:,} predictions in "
             f"the last {w} windows of {report.monitor.window}"]
    for version in report.versions:
        last = version.windows[-1]
        drifted = () if last.drift is None else last.drift.drifted
        lines.append(f"v{version.version}: last window {last.rows:,} rows "
                     f"({last.fallback:,} by the fallback); drifting now: "
                     f"{', '.join(drifted) or 'none'}; in {k} of {w} windows: "
                     f"{', '.join(version.persisted) or 'none'}")
        counted = [w.source for w in version.windows]
        lines.append(f"  counted from: {counted.count('counts')} of {w} windows the serving "
                     f"workers' counts, {counted.count('log')} the prediction log")
        worst = {n: c for n, c in last.constraints.counts.items() if c}
        lines.append("  constraints: " + (", ".join(
            f"{n} {c:,} ({last.constraints.share(n):.1%})" for n, c in worst.items())
            or "none violated"))
    share = report.lag.matured_share(report.monitor.window_micros // 1_000_000)
    lines.append("labels: " + ("none yet" if share is None else
                               f"{share:.1%} of predictions older than one window have one")
                 + ("" if report.lag.median_delay_s is None else
                    f"; median delay {report.lag.median_delay_s / 3600:.1f} h"))
    if report.unmatched_labels:
        lines.append(f"labels for no logged prediction: {report.unmatched_labels:,} (their "
                     "subject matches no prediction: a key mismatch upstream?)")
    for s in report.slices:
        name = "all" if s.column is None else f"{s.column}={s.slice}"
        lines.append(f"slice {name}: {s.rows:,} matured, " + (
            f"AUC {s.auc.value:.3f} [{s.auc.low:.3f}, {s.auc.high:.3f}], calibration gap "
            f"{s.calibration_gap.value:+.4f}" if s.scored and s.auc and s.calibration_gap
            else str(s.reason)))
    for f in report.firing:
        lines.append(f"ALERT {f.alert.name!r} on {f.subject} → {f.alert.playbook.kind}"
                     if f.alert.playbook else f"ALERT {f.alert.name!r} on {f.subject}")
    for a in report.actions:
        lines.append(f"action {a.id}: {a.playbook} {a.status} — {a.outcome or 'waiting'}")
    lines.extend(f"problem: {p}" for p in report.problems)
    return lines


def _lag_svg(report: MonitorReport) -> str:
    points = [(i, done / rows) for i, (_, rows, done) in enumerate(report.lag.matured_by_age)
              if rows]
    width, height = 520, 160
    n = len(DELAY_BOUNDS) + 1
    x = [40 + i * (width - 60) / (n - 1) for i in range(n)]
    path = " ".join(f"{'M' if j == 0 else 'L'}{x[i]:.1f},{height - 20 - v * (height - 40):.1f}"
                    for j, (i, v) in enumerate(points))
    labels = "".join(f'<text x="{x[i]:.1f}" y="{height - 4}" font-size="9" '
                     f'text-anchor="middle">≤{_age(b)}</text>'
                     for i, b in enumerate(DELAY_BOUNDS))
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="share of '
            f'predictions with a label, by age"><rect x="40" y="20" width="{width - 60}" '
            f'height="{height - 40}" fill="none" stroke="#ccc"/>'
            f'<path d="{path}" fill="none" stroke="#1f6feb" stroke-width="2"/>{labels}'
            f'<text x="4" y="24" font-size="9">100%</text>'
            f'<text x="4" y="{height - 20}" font-size="9">0%</text></svg>')


def _cell(column: Any) -> str:
    if column is None:
        return "<td>—</td>"
    shade = min(1.0, max(0.0, column.psi / 0.25)) if column.psi == column.psi else 0.0
    colour = f"rgba(220,50,50,{shade:.2f})"
    mark = " ●" if column.drifted else ""
    value = "n/a" if column.psi != column.psi else f"{column.psi:.3f}"
    return (f'<td style="background:{colour}" title="{html.escape(column.status)}">'
            f"{value}{mark}</td>")


def to_html(report: MonitorReport) -> str:
    """One self-contained page of the report."""
    parts = [f"<h1>Monitor: {html.escape(report.model)}</h1>",
             "<pre>" + html.escape("\n".join(summary(report))) + "</pre>"]
    for version in report.versions:
        names = list(next((w.drift.columns for w in version.windows if w.drift), {}))
        heads = "".join(f"<th>{html.escape(format_instant(w.start)[:16])}</th>"
                        for w in version.windows)
        rows = "".join(
            f"<tr><th>{html.escape(n)}</th>"
            + "".join(_cell(None if w.drift is None else w.drift.columns.get(n))
                      for w in version.windows) + "</tr>" for n in names)
        parts.append(f"<h2>Drift of version {version.version} (PSI per window; ● drifted)</h2>"
                     f"<table><tr><th>column</th>{heads}</tr>{rows}</table>")
    parts.append("<h2>Outcome lag</h2>" + _lag_svg(report))
    slice_rows = "".join(
        f"<tr><td>{html.escape('all' if s.column is None else f'{s.column}={s.slice}')}</td>"
        f"<td>{s.rows:,}</td><td>{s.positives:,}</td>"
        + (f"<td>{s.auc.value:.3f} [{s.auc.low:.3f}, {s.auc.high:.3f}]</td>"
           f"<td>{s.calibration_gap.value:+.4f}</td><td>{s.ece:.4f}</td>"
           if s.scored and s.auc and s.calibration_gap and s.ece is not None
           else f"<td colspan=3>{html.escape(str(s.reason))}</td>") + "</tr>"
        for s in report.slices)
    parts.append("<h2>Slices (matured predictions)</h2><table><tr><th>slice</th><th>rows</th>"
                 "<th>positives</th><th>AUC</th><th>calibration gap</th><th>ECE</th></tr>"
                 f"{slice_rows}</table>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ddd;padding:2px 6px;font-size:12px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Monitor "
            f"{html.escape(report.model)}</title><style>{style}</style></head><body>"
            + "".join(parts) + "</body></html>")


__all__ = ["summary", "to_html"]
