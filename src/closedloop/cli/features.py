"""The feature-stage commands and the project's first ones: init, apply, features,
training-set, backfill, materialize, push, online, compact, consistency, demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer

from closedloop.cli.common import (
    ProjectOpt,
    Table,
    _number,
    _open,
    _progress,
    _read_rows,
    _stepper,
    _when,
    app,
    out,
)
from closedloop.errors import UsageError, VersionConflict
from closedloop.features.consistency import FeatureConsistency
from closedloop.features.registration import Plan


def _render_plan(plan: Plan, applied: bool) -> None:
    table = Table(title="plan" if not applied else "applied", show_edge=False)
    table.add_column("action")
    table.add_column("definition")
    colours = {"add": "green", "revise": "yellow", "unchanged": "dim", "conflict": "red"}
    for item in plan.items:
        c = colours[item.action]
        table.add_row(f"[{c}]{item.action}[/]", item.describe())
    out.print(table)
    n = len(plan.changes)
    verb = "registered" if applied else "would register"
    out.print(f"{verb} {n} change{'s' if n != 1 else ''}; "
              f"{len(plan.of('unchanged'))} unchanged")


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Folder to create.")] = Path("."),
         name: Annotated[str | None, typer.Option(help="Project name.")] = None) -> None:
    """Create a project: closedloop.toml (embedded defaults, no server) and definitions.py."""
    from closedloop.project import init_project

    root = init_project(path, name=name)
    out.print(f"created project in {root}: edit {root / 'definitions.py'}, then "
              "`closedloop apply`")


@app.command()
def apply(project: ProjectOpt = Path("."),
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")] = False,
          ) -> None:
    """Register the definitions in the metadata store, after showing the plan.

    A registered feature view or transform version never changes in place: change it under a
    new version= and both stay usable. Nothing is written when anything is refused.
    """
    with _open(project) as p:
        plan = p.plan() if dry_run else p.apply()
    _render_plan(plan, applied=not dry_run)
    if plan.of("conflict"):                  # a plan apply would refuse is not a success
        names = ", ".join(i.describe().split(":")[0] for i in plan.of("conflict"))
        raise VersionConflict(f"the plan has {len(plan.of('conflict'))} conflict(s): {names}; "
                              "apply would refuse it",
                              fix="give each changed definition a new version=")


@app.command("features")
def list_features(project: ProjectOpt = Path(".")) -> None:
    """List the project's feature views, their versions, hashes and features."""
    with _open(project) as p:
        table = Table(show_edge=False)
        for col in ("view", "version", "hash", "entity", "source", "features"):
            table.add_column(col)
        for view in p.catalog.views.values():
            table.add_row(view.name, str(view.version), view.hash, view.entity.name,
                          view.source.name, ", ".join(view.feature_names))
        for t in p.catalog.transforms.values():
            table.add_row(t.name, str(t.version), t.hash, "-", "transform",
                          "reads " + ", ".join(t.inputs))
    out.print(table)


@app.command("training-set")
def training_set(
    rows: Annotated[Path, typer.Argument(help="Parquet file of entity rows (keys + timestamp).")],
    feature: Annotated[list[str], typer.Option("--feature", "-f",
                                               help="A feature reference; repeat for more.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")],
    timestamp: Annotated[str | None, typer.Option(
        help="The rows' timestamp column (found automatically when there is one).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Build a point-in-time training set: each feature as known at each row's timestamp."""
    with _open(project) as p, _progress() as bar:
        task = bar.add_task("reading", total=None)
        result = p.features.training_set(_read_rows(rows), feature, timestamp=timestamp,
                                         progress=_stepper(bar, task))
        bar.update(task, description="writing")
        pq.write_table(result, output)
        bar.update(task, description=f"wrote {result.num_rows} rows to {output}")


@app.command()
def backfill(
    rows: Annotated[Path, typer.Argument(help="An existing training set (Parquet).")],
    feature: Annotated[list[str], typer.Option("--feature", "-f", help="Feature(s) to add.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Parquet file to write.")],
    timestamp: Annotated[str | None, typer.Option(help="The rows' timestamp column.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Add features to an existing training set, with their history from the raw sources."""
    with _open(project) as p, _progress() as bar:
        task = bar.add_task("reading", total=None)
        result = p.features.backfill(_read_rows(rows), feature, timestamp=timestamp,
                                     progress=_stepper(bar, task))
        pq.write_table(result, output)
        bar.update(task, description=f"wrote {result.num_rows} rows to {output}")


@app.command()
def materialize(
    view: Annotated[list[str] | None, typer.Argument(help="Views (default: all).")] = None,
    at: Annotated[str | None, typer.Option(help="As of this instant (default: now).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Recompute every entity.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per view.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Write the offline store's state into the online store: incremental (only entities with
    rows that became visible since the last run, late rows included), idempotent, atomic per
    batch of entities. An --at before the last run's instant rebuilds the view as of it; the
    last run's instant itself has nothing to do, and says so."""
    when = _when(at)
    with _open(project) as p, _progress() as bar:
        task = bar.add_task("materializing", total=None)
        reports = p.features.materialize(view or None, at=when, incremental=not full,
                                         progress=_stepper(bar, task))
    for r in reports:
        if as_json:
            out.print_json(json.dumps(r.to_dict()))
        else:
            out.print(r.summary(), soft_wrap=True)


@app.command()
def push(
    source: Annotated[str, typer.Argument(help="The event source the rows belong to.")],
    rows: Annotated[Path, typer.Argument(help="Parquet file of events with the source's "
                                              "columns (arrival is stamped now if absent).")],
    batch: Annotated[int, typer.Option(min=1, help="Events per push; each is durable and "
                                                   "applied whole.")] = 10_000,
    at: Annotated[str | None, typer.Option(help="The push's instant: the arrival stamped on "
                                           "rows without one, and what is visible (default: "
                                           "now on the project's clock).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Append events to a source's event log durably and fold them into the online features,
    so a read right after sees them. A large file goes in batches, each whole or not at all:
    after a failure, the batches reported done are in."""
    when = _when(at)
    with _open(project) as p, _progress() as bar:
        table = _read_rows(rows, "events", "the source's key, timestamp and value columns")
        task = bar.add_task("pushing", total=table.num_rows)
        done, pending, views = 0, 0, ()
        for start in range(0, max(table.num_rows, 1), batch):
            report = p.features.push(source, table.slice(start, batch), at=when)
            done += report.rows
            pending += report.pending
            views = report.views
            bar.update(task, completed=done, description=f"{source}: {done:,} events")
    out.print(f"{source}: pushed {done:,} events into {', '.join(views) or 'no view'}")
    if pending:
        out.print(f"{pending:,} of them are not visible yet (event or arrival time ahead of "
                  "now): they are served from the moment they become visible")


@app.command()
def online(
    keys: Annotated[list[str], typer.Argument(help="Entity keys and request values: k=v ...")],
    feature: Annotated[list[str], typer.Option("--feature", "-f", help="Feature(s) to serve.")],
    at: Annotated[str | None, typer.Option(help="As of this instant (ISO 8601 with a zone; "
                                           "default: now on the project's clock).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve one online feature vector, as JSON (values that look like numbers are numbers).
    An --at must not be before the view's last materialization instant."""
    when = _when(at)
    row: dict[str, object] = {}
    for item in keys:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{item!r} is not key=value", fix="write e.g. user_id=u1")
        row[name] = _number(value)
    with _open(project) as p:
        vector = p.features.online(row, feature, at=when)
    assert not isinstance(vector, list)
    out.print_json(json.dumps({"values": vector.values, "missing": list(vector.missing)},
                              default=str))


@app.command()
def compact(
    source: Annotated[list[str] | None, typer.Argument(help="Sources (default: all).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Merge the small Parquet parts that pushes leave in each source's event log (a crash
    half-way leaves the log as it was; materialize does this first)."""
    with _open(project) as p, _progress() as bar:
        bar.add_task("compacting", total=None)
        merged = p.features.compact(source or None)
    for name, parts in merged.items():
        out.print(f"{name}: {parts} parts merged into one" if parts else f"{name}: nothing to do")


@app.command()
def consistency(project: ProjectOpt = Path(".")) -> None:
    """Replay the logged online vectors through the offline path and report, per feature, the
    match rate, missing and extra values, and the mean absolute and relative difference."""
    with _open(project) as p:
        report = p.features.consistency()
    render_consistency(report)


def render_consistency(report: list[FeatureConsistency]) -> None:
    # No rules between columns, so the table fits 80 columns with the longest feature names.
    table = Table(title="online vs offline, at the served instants", box=None, pad_edge=False,
                  header_style="bold", caption="missing: offline had a value, online none; "
                  "extra: the reverse; diffs: means over the rows with both")
    table.add_column("feature", no_wrap=True)
    for col in ("rows", "match", "missing", "extra", "abs diff", "rel diff"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report:
        colour = "green" if r.match_rate == 1.0 else "red"
        table.add_row(r.feature, str(r.rows), f"[{colour}]{r.match_rate:.1%}[/]", str(r.missing),
                      str(r.extra), f"{r.mean_abs_diff:.2g}", f"{r.mean_rel_diff:.2g}")
    out.print(table)


def _free_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``… — the first that does not exist yet."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=500, help="Size of the simulated world (at least "
                                                     "500 users, so the held-out weeks hold "
                                                     "frauds to evaluate on).")] = 2000,
    folder: Annotated[Path | None, typer.Option(
        "--dir", help="Where to write the demo project (default: ./closedloop-demo, or the "
        "next free closedloop-demo-N), kept there to explore.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated world.")] = 0,
) -> None:
    """Run the main job on the embedded defaults, no server to install: generate a fraud
    world, register its definitions, build a point-in-time training set, train and register
    the model, serve it in process and over HTTP under simulated traffic, and report the
    latency against its budget and the cost; then train two more versions and promote them
    up the declared ladder over two weeks of live traffic: one is stopped at the gate, the
    other climbs to production."""
    from closedloop.demo import run_demo

    target = folder or _free_folder(Path("closedloop-demo"))
    with _progress() as bar:
        task = bar.add_task("starting", total=None)
        report = run_demo(target, n_users=users, seed=seed, progress=_stepper(bar, task))
    out.print(f"\n[bold]project[/] {report.folder}  (closedloop.toml, definitions.py, data/)")
    out.print(f"world generated in {report.seconds_world:.1f}s; "
              f"{len(report.plan.changes)} definitions registered")
    out.print("\n[bold]ingested[/] (validated, stamped, deduplicated by id):")
    for ingested in report.ingests:
        out.print(f"  {ingested.summary()}", soft_wrap=True)
    if report.delay is not None:
        out.print()
        for line in report.delay.lines():
            out.print(line, soft_wrap=True)
    if report.maturity is not None:
        m = report.maturity
        out.print(f"\n[bold]label maturity[/] at {m.cutoff:%Y-%m-%d}: {m.matured:,} of "
                  f"{m.rows:,} transactions have a closed 60-day window ({m.labelled:,} "
                  f"charged back, {m.defaulted:,} taken as not fraud); {m.maturing:,} still "
                  "maturing are left out, not counted as negatives", soft_wrap=True)
    out.print(f"training set: {report.rows:,} rows x {len(report.feature_summary())} features "
              f"in {report.seconds_training_set:.2f}s, point in time "
              f"(event <= t and arrival <= t) -> {report.output}")
    table = Table(title="features as known at each transaction's time", show_edge=False)
    for col in ("feature", "missing", "mean on fraud", "mean on legit"):
        table.add_column(col, justify="right" if col != "feature" else "left")
    for name, missing, fraud, legit in report.feature_summary():
        table.add_row(name, f"{missing:.1%}", f"{fraud:,.3f}", f"{legit:,.3f}")
    out.print(table)
    if report.run_metrics is not None:
        got = report.run_metrics
        out.print(f"\n[bold]trained[/] run {report.run_id}: test AUC {got.get('auc', 0):.4f} "
                  f"[{got.get('auc_low', 0):.4f}, {got.get('auc_high', 0):.4f}] on "
                  f"{got['test_rows']:,} held-out rows ({got['test_positives']} frauds), log "
                  f"loss {got['log_loss']:.4f}, ECE {got['ece']:.4f}; registered as fraud version "
                  f"{report.version} (production)", soft_wrap=True)
        out.print(f"evaluation report: {report.report}", soft_wrap=True)
    out.print(f"\nonline: materialized {report.materialized:,} entity records as of the world's "
              f"end; served {report.served} vectors, p50 {report.seconds_online_p50 * 1e3:.2f} ms "
              "in process (one store round trip each)")
    render_consistency(list(report.consistency))
    out.print(f"\n[bold]served over HTTP[/]: {report.http_requests:,} requests "
              f"({report.http_failed} failed) at {report.http_per_s:,.0f}/s from 8 clients, "
              "each prediction in the prediction log before its response", soft_wrap=True)
    if report.budget is not None:
        from closedloop.cli.serving import render_budget, render_cost

        render_budget(report.budget)
        render_cost([report.cost])
    if report.ladder is not None:
        lad = report.ladder
        out.print("\n[bold]the ladder[/] (cl.Ladder in definitions.py)")
        out.print(f"version {lad.worse}, on the profile alone, stopped at {lad.worse_step}: "
                  + "; ".join(lad.worse_reasons[:2]), soft_wrap=True, markup=False)
        out.print(f"version {lad.better}, on the full feature set, over {lad.served:,} live "
                  "requests (two weeks replayed through the serving path, their chargebacks "
                  "fast-forwarded 60 days):", soft_wrap=True)
        for move, evidence in lad.transitions:
            out.print(f"  {move}", soft_wrap=True, markup=False)
            if evidence:
                out.print(f"      {evidence}", soft_wrap=True, markup=False)
        out.print(f"production is version {lad.production} (previous: {lad.previous}); "
                  f"ladder report: {lad.report}", soft_wrap=True)
    if report.monitoring is not None:
        mon = report.monitoring
        out.print("\n[bold]monitoring[/] (cl.Monitor in definitions.py)")
        if mon.note:
            out.print(mon.note, soft_wrap=True, markup=False)
        if mon.bug_from:
            out.print(f"the live days after the ladder; from {mon.bug_from} the amount "
                      "arrives in cents (an upstream unit change):", soft_wrap=True,
                      markup=False)
        for day, requests, alerts, actions in mon.days:
            cents = " (in cents)" if mon.bug_from and day >= mon.bug_from else ""
            out.print(f"  {day}: {requests:,} requests{cents}; alerts: "
                      f"{', '.join(alerts) or 'none'}", soft_wrap=True, markup=False)
            for action in actions:
                out.print(f"      {action}", soft_wrap=True, markup=False)
        if mon.fallback_served:
            out.print(f"then {mon.fallback_served:,} predictions answered by the fallback "
                      "until `closedloop alerts release`", soft_wrap=True, markup=False)
        if mon.report is not None:
            out.print(f"monitor report: {mon.report}", soft_wrap=True, markup=False)
    out.print(f"\n[bold]the project stays in {report.folder}[/]; next, try:")
    for command, what in [
            (f"cd {report.folder}", ""),
            ("closedloop features", "every feature, by view and version"),
            (f"closedloop reproduce {report.ladder.run_id if report.ladder else report.run_id}",
             "rebuild and retrain production: identical"),
            ("closedloop runs list", "the runs, with their AUC"),
            ("closedloop models show fraud", "the registered versions and aliases"),
            ("closedloop online user_id=u1 amount=12.5 -f user_txn.amount_sum_1h",
             "one online vector"),
            ("closedloop serve", "the model over HTTP on 127.0.0.1:8000"),
            ("closedloop budget fraud", "latency by stage against the budget"),
            ("closedloop ladder status fraud", "the ladder's transitions and evidence"),
            ("closedloop ladder report fraud", "the ladder's evidence as a page, with charts"),
            ("closedloop alerts list fraud", "the alert, its evidence and the fallback")]:
        out.print(f"  {command}" + (f"   # {what}" if what else ""), soft_wrap=True,
                  markup=False)


