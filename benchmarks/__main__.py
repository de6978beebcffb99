"""``python -m benchmarks [WORKLOAD...] [--json] [--repeat N] [--scale F]``

Runs each workload's systems side by side on the same generated files, each run in a fresh
process, and prints per system the median wall seconds, the median peak memory (RSS of the
process), the number of result cells that differ from the floor, and the ratios: closedloop
against the floor (lower is better, 1.0 = as fast as the hand-written query) and the anchor
against closedloop (how many times faster closedloop is).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.workloads import WORKLOADS
from closedloop.testing import same_value

ROOT = Path(__file__).resolve().parents[1]


def run_child(workload: str, system: str, data: Path, out: Path) -> dict[str, float]:
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.child", workload, system,
                               str(data), str(out)], cwd=ROOT, stdout=stdout, check=False)
        stdout.seek(0)
        text = stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{workload}/{system} failed with exit code {proc.returncode}")
    result: dict[str, float] = json.loads(text.strip().splitlines()[-1])
    return result


def mismatches(table: pa.Table, floor: pa.Table, outputs: list[str]) -> int:
    """Cells that differ from the floor, matched by label_id; a missing row counts all cells."""
    table = table.sort_by("label_id")
    floor = floor.sort_by("label_id")
    ids = table["label_id"].to_pylist()
    want_ids = floor["label_id"].to_pylist()
    bad = 0
    if ids != want_ids:
        index = {v: i for i, v in enumerate(ids)}
        bad += len(outputs) * (len(set(want_ids) - set(ids)) + abs(len(ids) - len(set(ids))))
        keep = [index[v] for v in want_ids if v in index]
        table = table.take(keep)
        floor = floor.filter(pa.array([v in index for v in want_ids]))
    for name in outputs:
        have, want = table[name].to_pylist(), floor[name].to_pylist()
        bad += sum(not same_value(h, w) for h, w in zip(have, want, strict=True))
    return bad


def run_workload(name: str, repeat: int, scale: float, systems: list[str] | None,
                 as_json: bool) -> list[dict[str, Any]]:
    module = WORKLOADS[name]
    if not as_json:
        print(f"\n== {name}: data at scale {scale:g} (generated on first use) ...", flush=True)
    data = module.DATA(scale)
    missing = module.unavailable() if hasattr(module, "unavailable") else {}
    for system, why in missing.items():
        if systems is None or system in systems:
            print(f"{name}: leaving out {system}: {why}", file=sys.stderr, flush=True)
    base = getattr(module, "FLOOR", "floor")    # what the others are measured against
    chosen = [s for s in module.SYSTEMS if (systems is None or s in systems or s == base)
              and s not in missing]
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in chosen}
    outs = {s: Path(tempfile.mkdtemp()) / f"{s}.parquet" for s in chosen}
    for _ in range(repeat):                 # interleave systems so drift hits all alike
        for system in chosen:
            runs[system].append(run_child(name, system, data, outs[system]))
    floor = pq.read_table(outs[base])
    results = []
    for system in chosen:
        table = pq.read_table(outs[system])
        # A system may report several runs (one per concurrency, say): a row for each.
        parts = [[r.get("runs", [{}])[j] for r in runs[system]]
                 for j in range(len(runs[system][0].get("runs", [{}])))]
        for part in parts:
            figures = {key: round(statistics.median(r[key] for r in runs[system]), 4)
                       for key in runs[system][0] if key != "runs"}
            figures.update({key: round(statistics.median(p[key] for p in part), 4)
                            for key in part[0]})
            results.append({
                "workload": name, "system": system, **figures,
                "mismatches": mismatches(table, floor, module.OUTPUTS),
                "rows": table.num_rows, "repeat": repeat, "scale": scale,
            })
    return results


def render(results: list[dict[str, Any]], anchor: str | None, metric: str,
           higher: bool = False, base: str = "floor") -> None:
    """One line per system; ratios on the workload's headline metric (lower is better)
    against ``base`` (the floor, or the workload's own baseline)."""
    def floor_of(r: dict[str, Any]) -> dict[str, Any] | None:
        return next((f for f in results if f["system"] == base
                     and f.get("concurrency") == r.get("concurrency")), None)

    ours = [r for r in results if r["system"].startswith("closedloop") and r["system"] != base]
    extra = [k for k in ("concurrency", "cpu_s", "caught", "false_alarms", "p50_ms", "p99_ms",
                         "per_s", "errors", "rollback_s",
                         "mismatched", "materialize_s",
                         "ingest_s", "train_s", "fit_s", "overhead_s", "overhead_share")
             if any(k in r for r in results)]
    width = {k: max(10, len(k) + 2) for k in extra}
    head = "".join(f"{k:>{width[k]}}" for k in extra)
    print(f"{'system':<18}{'seconds':>9}{head}{'peak MB':>9}{'mismatches':>11}  ratio")
    for r in results:
        ratio = ""
        floor = floor_of(r)
        if r["system"].startswith("closedloop") and floor:
            ratio = f"{r[metric] / floor[metric]:.2f}x {base} ({metric})"
        elif r["system"] == anchor and ours:
            mine = [o for o in ours if o.get("concurrency") == r.get("concurrency")] or ours
            better = [(o["system"], o[metric] / r[metric] if higher else r[metric] / o[metric])
                      for o in mine]
            ratio = ", ".join(f"{name} {x:.1f}x better" for name, x in better) + f" ({metric})"
        cells = "".join(f"{r[k]:>{width[k]}.4g}" if k in r else " " * width[k] for k in extra)
        print(f"{r['system']:<18}{r['seconds']:>9.3f}{cells}{r['peak_mb']:>9.0f}"
              f"{r['mismatches']:>11}  {ratio}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", choices=[[], *WORKLOADS], metavar="WORKLOAD",
                        help=f"workloads to run (default: all of {', '.join(WORKLOADS)})")
    parser.add_argument("--json", action="store_true", help="one JSON object per system run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per system (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size")
    parser.add_argument("--systems", nargs="*", help="only these systems (the floor always runs)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or not 0 < args.scale <= 10:
        parser.error("--repeat must be >= 1 and --scale in (0, 10]")
    for name in args.workloads or list(WORKLOADS):
        results = run_workload(name, args.repeat, args.scale, args.systems, args.json)
        if args.json:
            for r in results:
                print(json.dumps(r), flush=True)
        else:
            render(results, WORKLOADS[name].ANCHOR, getattr(WORKLOADS[name], "METRIC",
                                                                  "seconds"),
                   getattr(WORKLOADS[name], "HIGHER_IS_BETTER", False),
                   getattr(WORKLOADS[name], "FLOOR", "floor"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
