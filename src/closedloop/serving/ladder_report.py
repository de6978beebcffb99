"""The ladder report: one self-contained HTML page of a model's ladders — every transition
with its evidence, and charts drawn as inline SVG (nothing fetched when the page opens):

* the candidate's share of the units over the transitions (a step chart);
* the shadow's and production's score distributions on the same requests (histograms);
* each metric's effect with its interval, per traffic step (an interval plot: the A/B
  test's primary and guardrails, the canary's and ramp's guardrails);
* the gate's overall and per-slice differences with their intervals.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from closedloop.backends.base import LadderEvent, LadderRecord

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}"
          "td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left;"
          "vertical-align:top}.plots{display:flex;flex-wrap:wrap;gap:2em}"
          ".rollback{color:#b42318}.promote{color:#067647}.hold{color:#b54708}"
          "pre{white-space:pre-wrap;font-size:11px;max-width:60em;margin:0}")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _figure(title: str, body: str, width: int, height: int) -> str:
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="{_e(title)}">{body}</svg>'
            f"<figcaption>{_e(title)}</figcaption></figure>")


def share_chart(events: Sequence[LadderEvent], width: int = 520, height: int = 220) -> str:
    """The candidate's share of the units after each transition, as a step chart."""
    pad, inner_w, inner_h = 40, width - 60, height - 70
    n = max(len(events), 2)
    parts = [f'<rect x="{pad}" y="20" width="{inner_w}" height="{inner_h}" fill="none" '
             'stroke="#333"/>']
    points: list[str] = []
    for i, e in enumerate(events):
        x = pad + inner_w * i / (n - 1)
        y = 20 + inner_h * (1 - e.share)
        if points:
            points.append(f"{x:.1f},{points[-1].split(',')[1]}")
        points.append(f"{x:.1f},{y:.1f}")
        colour = {"rollback": "#b42318", "promote": "#067647", "hold": "#b54708"}.get(
            e.action, "#1f6feb")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">'
                     f"<title>{_e(e.action)} → {_e(e.to_step)} ({e.share:.0%})</title>"
                     "</circle>")
        parts.append(f'<text x="{x:.1f}" y="{height - 30}" font-size="10" '
                     f'text-anchor="middle">{_e(e.to_step)}</text>')
    parts.insert(1, f'<polyline points="{" ".join(points)}" fill="none" stroke="#1f6feb" '
                    'stroke-width="2"/>')
    for level in (0.0, 0.5, 1.0):
        y = 20 + inner_h * (1 - level)
        parts.append(f'<text x="{pad - 6}" y="{y + 4:.1f}" font-size="10" '
                     f'text-anchor="end">{level:.0%}</text>')
    return _figure("the candidate's share of the units, transition by transition", "".join(parts),
                   width, height)


def histograms(production: np.ndarray[Any, Any], candidate: np.ndarray[Any, Any],
               title: str, bins: int = 20, width: int = 520, height: int = 220) -> str:
    """Two score distributions over [0, 1] on shared bins: production filled, the candidate
    outlined."""
    pad, inner_w, inner_h = 40, width - 60, height - 60
    edges = np.linspace(0.0, 1.0, bins + 1)
    a = np.histogram(np.clip(production, 0, 1), edges)[0] / max(len(production), 1)
    b = np.histogram(np.clip(candidate, 0, 1), edges)[0] / max(len(candidate), 1)
    top = float(max(a.max(initial=0), b.max(initial=0), 1e-9))
    step = inner_w / bins
    parts = [f'<rect x="{pad}" y="20" width="{inner_w}" height="{inner_h}" fill="none" '
             'stroke="#333"/>']
    for i in range(bins):                # heights on a square-root scale: rare bins show
        for share, style in ((a[i], 'fill="#9ec5fe"'),
                             (b[i], 'fill="none" stroke="#b42318" stroke-width="1.5"')):
            h = inner_h * math.sqrt(share / top)
            parts.append(f'<rect x="{pad + i * step:.1f}" y="{20 + inner_h - h:.1f}" '
                         f'width="{step:.1f}" height="{h:.1f}" {style}/>')
    parts.append(f'<text x="{pad}" y="{height - 20}" font-size="10">0</text>'
                 f'<text x="{pad + inner_w}" y="{height - 20}" font-size="10" '
                 'text-anchor="end">1</text>'
                 f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
                 'score (blue: production; red outline: the candidate; height: √share)'
                 '</text>')
    return _figure(title, "".join(parts), width, height)


def intervals(rows: Sequence[tuple[str, float, float, float, float | None]], title: str,
              width: int = 600) -> str:
    """Effects with their intervals (name, effect, low, high, limit), 0 marked: each row's
    interval is a bar, its effect a dot, its limit (if any) a tick."""
    if not rows:
        return ""
    height = 50 + 28 * len(rows)
    pad_l, pad_r = 230, 20
    inner = width - pad_l - pad_r
    lo = min(min(r[2] for r in rows), 0.0, *(r[4] for r in rows if r[4] is not None))
    hi = max(max(r[3] for r in rows), 0.0, *(r[4] for r in rows if r[4] is not None))
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return pad_l + inner * (v - lo) / span

    parts = [f'<line x1="{x(0):.1f}" y1="15" x2="{x(0):.1f}" y2="{height - 25}" '
             'stroke="#999" stroke-dasharray="4"/>']
    for i, (name, effect, low, high, limit) in enumerate(rows):
        y = 30 + 28 * i
        parts.append(f'<text x="{pad_l - 8}" y="{y + 4}" font-size="11" '
                     f'text-anchor="end">{_e(name)}</text>'
                     f'<line x1="{x(low):.1f}" y1="{y}" x2="{x(high):.1f}" y2="{y}" '
                     'stroke="#1f6feb" stroke-width="3"/>'
                     f'<circle cx="{x(effect):.1f}" cy="{y}" r="4" fill="#1f6feb"/>')
        if limit is not None:
            parts.append(f'<line x1="{x(limit):.1f}" y1="{y - 8}" x2="{x(limit):.1f}" '
                         f'y2="{y + 8}" stroke="#b42318" stroke-width="2"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="10">{lo:.4g}</text>'
                 f'<text x="{width - pad_r}" y="{height - 8}" font-size="10" '
                 f'text-anchor="end">{hi:.4g}</text>')
    return _figure(title, "".join(parts), width, height)


def _effects(figures: dict[str, Any]) -> list[tuple[str, float, float, float, float | None]]:
    """The intervals an event's figures hold, each turned so that positive is worse."""
    out: list[tuple[str, float, float, float, float | None]] = []
    found: list[tuple[str, Any, float | None]] = (
        [("primary " + str(figures["primary"].get("metric")), figures["primary"], 0.0)]
        if isinstance(figures.get("primary"), dict) else [])
    found += [(f"guardrail {k}", v, v.get("limit", 0.0))
              for k, v in (figures.get("guardrails") or {}).items()]
    found += [(f"guardrail {k}", v, None) for k, v in (figures.get("metrics") or {}).items()]
    for name, f, limit in found:
        if isinstance(f, dict) and "worsening" in f:
            out.append((name, f["worsening"], f["worsening_low"], f["worsening_high"], limit))
    return out


def _gate(figures: dict[str, Any]) -> list[tuple[str, float, float, float, float | None]]:
    rows = []
    margin = figures.get("margin")
    overall = figures.get("overall") or {}
    if "difference" in overall:
        rows.append(("overall", overall["difference"], overall["low"], overall["high"],
                     None if margin is None else -margin))
    for s in figures.get("slices") or []:
        if "difference" in s:
            rows.append((f"{s['column'].split('.')[-1]}={s['slice']}", s["difference"],
                         s["low"], s["high"], None if margin is None else -margin))
    return rows


def render(model: str, record: LadderRecord | None, events: Sequence[LadderEvent],
           predictions: pa.Table) -> str:
    """The report page of a model's ladders (see module)."""
    parts = [f"<h1>{_e(model)}: promotion ladder</h1>"]
    if record is None:
        parts.append("<p>No ladder has run for this model.</p>")
        return _page(model, parts)
    parts.append(f"<p>Version {record.candidate} against version {record.baseline}: "
                 f"<b>{_e(record.step)}, {_e(record.status)}</b>"
                 + (f", {record.share:.0%} of the units on the candidate" if record.share
                    else "") + f" (policy {_e(record.spec.get('hash'))}).</p>")
    attempts: dict[int, list[LadderEvent]] = {}
    n = 0
    for e in events:
        if e.action == "start":
            n += 1
        attempts.setdefault(n, []).append(e)
    for number in sorted(attempts, reverse=True):
        chunk = attempts[number]
        candidate = chunk[0].candidate
        parts.append(f"<h2>Attempt {number}: version {candidate}</h2>")
        plots = [share_chart(chunk)]
        for e in chunk:
            figures = e.evidence.get("figures") or {}
            if e.from_step == "gate" and figures:
                plots.append(intervals(_gate(figures), "offline gate: AUC or log-loss "
                                       "difference (candidate − production) with its "
                                       "interval; red: the margin"))
            elif figures and _effects(figures):
                plots.append(intervals(_effects(figures), f"{e.from_step}: effect on each "
                                       "metric (positive is worse) with its interval"))
        label = f"L{number}:shadow"
        if "step" in predictions.column_names:
            shadowed = predictions.filter(pc.fill_null(pc.and_(
                pc.equal(predictions["step"], label),
                pc.is_valid(predictions["shadow_score"])), False))
            if shadowed.num_rows:
                plots.append(histograms(
                    shadowed["score"].to_numpy(zero_copy_only=False),
                    shadowed["shadow_score"].to_numpy(zero_copy_only=False),
                    f"shadow: {shadowed.num_rows:,} requests scored by both"))
        parts.append("<div class=plots>" + "".join(plots) + "</div>")
        rows = []
        for e in chunk:
            reasons = "; ".join(e.evidence.get("reasons") or [])
            rows.append(
                f"<tr><td>{_e(e.at.isoformat(timespec='seconds'))}</td>"
                f"<td class={_e(e.action)}>{_e(e.action)}</td><td>{_e(e.from_step or '')} → "
                f"{_e(e.to_step)}</td><td>{_e(e.status)}</td><td>{e.share:.0%}</td>"
                f"<td>{_e(e.actor)}</td><td>{_e(reasons)}<details><summary>evidence"
                f"</summary><pre>{_e(json.dumps(e.evidence, indent=1, sort_keys=True))}"
                "</pre></details></td></tr>")
        parts.append("<table><tr><th>at</th><th>action</th><th>step</th><th>status</th>"
                     "<th>share</th><th>by</th><th>why</th></tr>" + "".join(rows)
                     + "</table>")
    return _page(model, parts)


def _page(model: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(model)} ladder"
            f"</title><style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
