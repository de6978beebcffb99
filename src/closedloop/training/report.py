"""The evaluation report of a run: JSON for machines, one self-contained HTML page for people
(tables, and the reliability and precision–recall curves drawn as inline SVG — no plotting
library, nothing fetched when the page opens)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EvaluationReport:
    """Everything measured on the held-out test set (and the validation set)."""

    model: str
    rows: int
    test: dict[str, Any]
    validation: dict[str, Any] | None = None
    slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fairness: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparison: dict[str, Any] | None = None
    univariate_auc: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    threshold: float = 0.5
    min_slice_size: int = 200
    confusion: list[dict[str, Any]] = field(default_factory=list)
    importance: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=str, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        return cls(**json.loads(text))

    def headline(self) -> dict[str, Any]:
        """The few numbers a run is known by."""
        t = self.test
        out: dict[str, Any] = {"test_rows": t["rows"], "test_positives": t["positives"],
                               "log_loss": t["log_loss"]["value"], "brier": t["brier"]["value"],
                               "ece": t["ece"]}
        if t.get("auc"):
            out.update(auc=t["auc"]["value"], auc_low=t["auc"]["low"], auc_high=t["auc"]["high"])
        if t.get("average_precision") is not None:
            out["average_precision"] = t["average_precision"]
        if self.comparison and "auc_difference" in self.comparison:
            out["auc_vs_production"] = self.comparison["auc_difference"]["value"]
        return out

    def to_html(self) -> str:
        t = self.test
        parts = [f"<h1>{_e(self.model)}: evaluation on {self.rows:,} held-out rows</h1>"]
        if self.warnings:
            parts.append("<div class=warn><b>Warnings</b><ul>" + "".join(
                f"<li>{_e(w)}</li>" for w in self.warnings) + "</ul></div>")
        parts.append("<h2>Test set</h2>" + _table(
            ["metric", "value", "95% interval"],
            [["AUC", *_interval(t.get("auc"))], ["log loss", *_interval(t["log_loss"])],
             ["Brier", *_interval(t["brier"])], ["ECE (10 bins)", f"{t['ece']:.4f}", ""],
             ["average precision", _num(t.get("average_precision")), ""],
             ["rows / positives", f"{t['rows']:,} / {t['positives']:,}", ""]]))
        if self.validation:
            v = self.validation
            parts.append("<h2>Validation set</h2>" + _table(
                ["metric", "value", "95% interval"],
                [["AUC", *_interval(v.get("auc"))], ["log loss", *_interval(v["log_loss"])]]))
        parts.append("<div class=plots>" + _svg_curve(
            "Reliability", [(b["mean_score"], b["positive_rate"]) for b in t["reliability"]],
            "mean score", "positive rate", diagonal=True) + _svg_curve(
            "Precision–recall", [(p["recall"], p["precision"]) for p in t["pr_curve"]],
            "recall", "precision") + _svg_curve(
            "ROC", [(p["fpr"], p["tpr"]) for p in t.get("roc_curve", [])],
            "false-positive rate", "true-positive rate", diagonal=True) + "</div>")
        if self.confusion:
            parts.append("<h2>Confusion matrix at the decision thresholds (test set)</h2>"
                         + _table(["score ≥", "true pos.", "false pos.", "false neg.",
                                   "true neg.", "precision", "recall", "FP rate"],
                                  [[f"{c['threshold']:g}", f"{c['tp']:,}", f"{c['fp']:,}",
                                    f"{c['fn']:,}", f"{c['tn']:,}", _num(c["precision"]),
                                    _num(c["recall"]), _num(c["false_positive_rate"])]
                                   for c in self.confusion]))
        if self.importance:
            kinds = [k for k in ("gain", "permutation") if k in self.importance]
            names = sorted({n for k in kinds for n in self.importance[k]},
                           key=lambda n: -self.importance.get("permutation", {}).get(n, 0.0))
            parts.append("<h2>Feature importance</h2><p>gain: total split gain in the trees; "
                         "permutation: test AUC lost when the feature is shuffled</p>"
                         + _table(["feature", *kinds],
                                  [[n, *(_num(self.importance[k].get(n)) for k in kinds)]
                                   for n in names]))
        if self.comparison:
            c = self.comparison
            rows = [["log loss (ours − production)", *_interval(c["log_loss_difference"])]]
            if "auc_difference" in c:
                rows.insert(0, ["AUC (ours − production)", *_interval(c["auc_difference"])])
            parts.append(f"<h2>Against production (version {c['against_version']}) on the same "
                         f"{c['rows']:,} rows</h2>" + _table(["metric", "difference",
                                                             "95% interval"], rows))
        for column, slices in self.slices.items():
            rows = []
            for s in slices:
                if s["scored"]:
                    rows.append([s["slice"], f"{s['rows']:,}", f"{s['positives']:,}",
                                 *_interval(s["auc"]), _num(s["log_loss"]["value"])])
                else:
                    rows.append([s["slice"], f"{s['rows']:,}", f"{s['positives']:,}",
                                 s["reason"], "", ""])
            parts.append(f"<h2>Slices by {_e(column)}</h2>" + _table(
                ["slice", "rows", "positives", "AUC", "95% interval", "log loss"], rows))
        for column, f in self.fairness.items():
            rows = [[g["group"], f"{g['rows']:,}", _num(g["selection_rate"]),
                     _num(g["true_positive_rate"])] for g in f["groups"]]
            parts.append(
                f"<h2>Fairness by {_e(column)} at threshold {f['threshold']}</h2>"
                f"<p>demographic-parity difference {f['demographic_parity_difference']:.4f}; "
                f"equal-opportunity difference {f['equal_opportunity_difference']:.4f}</p>"
                + _table(["group", "rows", "selection rate", "true-positive rate"], rows))
        if self.univariate_auc:
            rows = [[k, f"{v:.4f}"] for k, v in sorted(self.univariate_auc.items(),
                                                         key=lambda kv: -kv[1])]
            parts.append("<h2>Univariate AUC per feature (training rows)</h2>" + _table(
                ["feature", "AUC"], rows))
        style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
                 "table{border-collapse:collapse;margin:.5em 0 1.5em}"
                 "td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:right}"
                 "td:first-child,th:first-child{text-align:left}.warn{background:#fff3cd;"
                 "padding:.5em 1em;border-radius:4px}.plots{display:flex;gap:2em}")
        return (f"<!doctype html><html><head><meta charset=utf-8><title>{_e(self.model)} "
                f"evaluation</title><style>{style}</style></head><body>{''.join(parts)}"
                "</body></html>")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.4f}"


def _interval(i: dict[str, Any] | None) -> list[str]:
    if not i:
        return ["", ""]
    return [f"{i['value']:.4f}", f"[{i['low']:.4f}, {i['high']:.4f}]"]


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
        + "</table>")


def _svg_curve(title: str, points: list[tuple[float, float]], x_label: str, y_label: str,
               diagonal: bool = False, size: int = 300) -> str:
    pad = 40
    inner = size - 2 * pad

    def xy(x: float, y: float) -> str:
        return f"{pad + x * inner:.1f},{size - pad - y * inner:.1f}"

    line = " ".join(xy(x, y) for x, y in points)
    diag = (f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{pad}" '
            'stroke="#aaa" stroke-dasharray="4"/>') if diagonal else ""
    dots = "".join(f'<circle cx="{xy(x, y).split(",")[0]}" cy="{xy(x, y).split(",")[1]}" '
                   'r="2.5" fill="#1f6feb"/>' for x, y in points) if diagonal else ""
    return (f'<figure><svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
            f'role="img" aria-label="{_e(title)}">'
            f'<rect x="{pad}" y="{pad}" width="{inner}" height="{inner}" fill="none" '
            f'stroke="#333"/>{diag}<polyline points="{line}" fill="none" stroke="#1f6feb" '
            f'stroke-width="2"/>{dots}'
            f'<text x="{size / 2}" y="{size - 8}" text-anchor="middle" font-size="12">'
            f'{_e(x_label)}</text><text x="12" y="{size / 2}" font-size="12" '
            f'transform="rotate(-90 12 {size / 2})" text-anchor="middle">{_e(y_label)}</text>'
            f'<text x="{pad}" y="{pad - 10}" font-size="13">0–1 × 0–1</text></svg>'
            f"<figcaption>{_e(title)}</figcaption></figure>")
