"""The training and registry commands of ``closedloop``: ``train``, ``reproduce``, ``runs``
and ``models`` (registered on the app of ``closedloop.cli``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from closedloop.cli.common import ProjectOpt, Table, _open, _progress, _stepper, _when, app, out
from closedloop.errors import UsageError


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="The model to train (declared with cl.Model).")],
    cutoff: Annotated[str | None, typer.Option(help="Train on labels matured by this instant "
                                                    "(default: now).")] = None,
    register: Annotated[bool, typer.Option(help="Register the run's bundle as a new version."
                                           )] = True,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder for the "
                                                "evaluation report (report.json, report.html)."
                                                )] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Train a model: the point-in-time training set with matured labels, a split by time,
    the fit, the evaluation (with slices, fairness and the production version for comparison),
    the run's lineage recorded, and the bundle registered as a new version."""
    with _open(project) as p, _progress() as bar:
        task = bar.add_task(f"training {model}", total=None)
        run = p.training.train(model, cutoff=_when(cutoff), baseline=p.registry.baseline,
                               progress=_stepper(bar, task))
        version = p.registry.register(run.id) if register else None
        bar.update(task, completed=1, total=1, description="trained")
    folder = output or Path(project) / ".closedloop" / "reports" / run.id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(run.report.to_json())
    (folder / "report.html").write_text(run.report.to_html())
    m = run.record["metrics"]
    out.print(f"run {run.id}: {run.record['lineage']['training_set_rows']:,} rows, test AUC "
              f"{m.get('auc', float('nan')):.4f} [{m.get('auc_low', float('nan')):.4f}, "
              f"{m.get('auc_high', float('nan')):.4f}], log loss {m['log_loss']:.4f}, ECE "
              f"{m['ece']:.4f}", soft_wrap=True)
    secs = run.record["seconds"]
    out.print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in secs.items())
              + f"; cpu {run.record['cpu_seconds']:.1f}s, peak {run.record['peak_memory_mb']:.0f}"
              " MB", soft_wrap=True)
    for warning in run.warnings:
        out.print(f"[yellow]warning[/] {warning}", soft_wrap=True)
    if version is not None:
        out.print(f"registered {model} version {version.version} (bundle "
                  f"{version.bundle[:12]})")
    out.print(f"report: {folder / 'report.html'}")


@app.command()
def reproduce(
    run: Annotated[str, typer.Argument(help="The run id (closedloop runs list).")],
    project: ProjectOpt = Path("."),
) -> None:
    """Rebuild a run's training set from the sources and retrain; say whether the data and
    the model are identical, and if not, which inputs changed (data, code, environment).
    Exits 1 when they differ."""
    with _open(project) as p, _progress() as bar:
        task = bar.add_task(f"reproducing {run}", total=None)
        found = p.training.reproduce(run, progress=_stepper(bar, task))
        bar.update(task, completed=1, total=1, description="reproduced")
    out.print(found.summary(), soft_wrap=True)
    if not found.identical:
        raise typer.Exit(1)


runs_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                       help="Training runs: list, show, compare.")
app.add_typer(runs_app, name="runs")


@runs_app.command("list")
def runs_list(
    model: Annotated[str | None, typer.Argument(help="Only this model's runs.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Every run, oldest first: status, cutoff, rows, test AUC."""
    with _open(project) as p:
        runs = p.metadata.runs(model)
        if model is not None and not runs:
            p.training.model(model)             # a name with no runs must at least be defined
    view = Table()
    view.add_column("run", no_wrap=True)               # ids are copied from here: never cut
    for name in ("status", "started", "cutoff", "rows", "AUC", "error"):
        view.add_column(name)
    for r in runs:
        m = r.record.get("metrics", {})
        view.add_row(r.id, r.status, f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                     str(r.record.get("cutoff", ""))[:16],
                     f"{r.record.get('lineage', {}).get('training_set_rows', '')}",
                     f"{m['auc']:.4f}" if "auc" in m else "", escape(r.error or ""))
    out.print(view)


@runs_app.command("show")
def runs_show(
    run: Annotated[str, typer.Argument(help="The run id.")],
    project: ProjectOpt = Path("."),
) -> None:
    """One run's whole record (its lineage) as JSON."""
    with _open(project) as p:
        found = p.training.run(run)
    print(json.dumps({"id": found.id, "model": found.model, "status": found.status,
                      "error": found.error, **found.record}, indent=2, default=str))


@runs_app.command("compare")
def runs_compare(
    a: Annotated[str, typer.Argument(help="A run id.")],
    b: Annotated[str, typer.Argument(help="Another run id.")],
    all_: Annotated[bool, typer.Option("--all", help="Show equal values too.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Two runs side by side: parameters, metrics, data and code (differences marked)."""
    with _open(project) as p:
        got = p.training.compare(a, b)
    view = Table("section", "key", a, b, "")
    for section, rows in got.sections.items():
        for key, (va, vb) in rows.items():
            if va == vb and not all_:
                continue
            view.add_row(section, key, _cell(va), _cell(vb), "" if va == vb else "≠")
    out.print(view)


def _cell(value: object) -> str:
    """A value as a table shows it: whole (the table wraps it), markup escaped."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else escape(str(value))


models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The model registry: versions and aliases.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(project: ProjectOpt = Path(".")) -> None:
    """Every registered version, with its aliases and headline metrics."""
    with _open(project) as p:
        versions = p.registry.versions()
    view = Table("model", "version", "aliases", "created")
    view.add_column("run", no_wrap=True)
    view.add_column("AUC")
    view.add_column("bundle", no_wrap=True)
    for v in versions:
        auc = v.metrics.get("auc")
        view.add_row(v.model, str(v.version), ", ".join(v.aliases),
                     f"{v.created_at:%Y-%m-%d %H:%M}", v.run_id,
                     "" if auc is None else f"{auc:.4f}", v.bundle[:12])
    out.print(view)


@models_app.command("show")
def models_show(
    model: Annotated[str, typer.Argument(help="The model.")],
    version: Annotated[str, typer.Argument(help="A version number, an alias or latest.")
                       ] = "latest",
    project: ProjectOpt = Path("."),
) -> None:
    """A version's bundle manifest: features and definition hashes, lineage, metrics."""
    with _open(project) as p:
        found = p.registry.version(model, version)
    print(json.dumps({"model": found.model, "version": found.version,
                      "aliases": list(found.aliases), "bundle": found.bundle,
                      **found.manifest}, indent=2, default=str))


@models_app.command("diff")
def models_diff(
    model: Annotated[str, typer.Argument(help="The model.")],
    a: Annotated[str, typer.Argument(help="A version or alias.")],
    b: Annotated[str, typer.Argument(help="Another version or alias.")],
    project: ProjectOpt = Path("."),
) -> None:
    """What differs between two versions: features, definitions, parameters, metrics, data."""
    with _open(project) as p:
        got = p.registry.diff(model, a, b)
    out.print(f"{model}: version {got.a} -> {got.b}")
    for what, names in (("features added", got.features_added),
                        ("features removed", got.features_removed),
                        ("definitions changed", got.definitions_changed)):
        if names:
            out.print(f"  {what}: {', '.join(names)}", soft_wrap=True)
    for section, changed in (("params", got.params), ("metrics", got.metrics),
                             ("data", got.data)):
        for k, (va, vb) in changed.items():
            out.print(f"  {section}.{k}: {_cell(va)} -> {_cell(vb)}", soft_wrap=True)


@models_app.command("alias")
def models_alias(
    model: Annotated[str, typer.Argument(help="The model.")],
    alias: Annotated[str, typer.Argument(help="production, shadow, canary, or any name.")],
    version: Annotated[str | None, typer.Argument(help="The version (number or alias) to "
                                                       "point at.")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Remove the alias.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Move an alias, atomically; moving production moves previous to the version it left."""
    if (version is None) != remove:
        raise UsageError("give a VERSION, or --remove, not both or neither",
                         fix=f"closedloop models alias {model} {alias} VERSION")
    with _open(project) as p:
        if remove:
            p.registry.remove_alias(model, alias)
            out.print(f"{model}: {alias} removed")
            return
        moved = p.registry.set_alias(model, alias, version or "latest")
        aliases = p.registry.aliases(model)
    out.print(f"{model}: {alias} -> version {moved.version}; aliases now "
              + ", ".join(f"{k}={v}" for k, v in sorted(aliases.items())))
