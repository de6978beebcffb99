"""Monitoring's commands of ``closedloop``: ``monitor`` (compute a model's monitor now and
print it; ``--run`` acts on its alerts; ``--html`` writes the page) and ``alerts`` (``list``,
``approve``, ``decline``, ``release``: the audit trail and the actions waiting on a person)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from closedloop.cli.common import ProjectOpt, Table, _open, _when, app, console, out
from closedloop.cli.ladder import ActorOpt, ModelArg, _actor
from closedloop.errors import UsageError
from closedloop.monitoring.report import summary, to_html
from closedloop.monitoring.service import MonitorReport

alerts_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="Monitoring's audit trail: every alert acted on, and the actions "
                              "waiting for approval or holding (a fallback, a freeze).")
app.add_typer(alerts_app, name="alerts")

ActionArg = Annotated[int, typer.Argument(min=1, help="The action's id (closedloop alerts "
                                                      "list MODEL).")]


@app.command()
def monitor(
    model: ModelArg,
    at: Annotated[str | None, typer.Option(help="As of this instant (ISO 8601 with a zone; "
                                           "default: now on the project's clock).")] = None,
    run: Annotated[bool, typer.Option("--run", help="Act on the alerts that hold: run their "
                                                    "playbooks (or queue those that ask for "
                                                    "approval).")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write the report as "
                                                                 "an HTML page here.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Run the declared monitor every "
                                                        "Monitor.every, acting on its alerts, "
                                                        "until interrupted (for [monitoring] "
                                                        "runner = \"separate\").")] = False,
    project: ProjectOpt = Path("."),
    actor: ActorOpt = None,
) -> None:
    """Compute MODEL's monitor from the prediction log and the label store: drift of every
    feature, the score and the label against the serving version's reference over the last
    windows, constraint violations, the outcome lag, matured slices, and the alerts that
    hold. Without --run (or --watch) nothing is acted on."""
    if watch:
        with _open(project) as p:
            if model not in p.monitoring.monitors:
                raise UsageError(f"model {model!r} declares no monitor to watch",
                                 fix="declare cl.Monitor(...) in the definitions")

            def say(report: MonitorReport) -> None:
                for line in summary(report):
                    out.print(line, markup=False, highlight=False)
            try:
                p.monitoring.watch(holder=f"cli-{os.getpid()}", say=say, models=[model])
            except KeyboardInterrupt:
                raise typer.Exit(130) from None
        return
    with _open(project) as p:
        found = (p.monitoring.run(model, at=_when(at), actor=_actor(actor)) if run
                 else p.monitoring.check(model, at=_when(at)))
    for line in summary(found):
        out.print(line, markup=False, highlight=False)
    if html_out is not None:
        html_out.write_text(to_html(found))
        console.print(f"wrote {html_out}")


@alerts_app.command("list")
def list_(
    model: Annotated[str | None, typer.Argument(help="The model (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per action.")] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Every alert acted on: its evidence, the playbook, its status and outcome."""
    with _open(project) as p:
        actions = p.monitoring.audit(model)
    if as_json:
        for a in actions:
            out.print_json(json.dumps({**a.__dict__, "at": a.at.isoformat(),
                                       "updated_at": a.updated_at.isoformat()}, default=str))
        return
    table = Table("id", "model", "alert", "on", "playbook", "status", "outcome", "at")
    for a in actions:
        table.add_row(str(a.id), a.model, a.alert, a.subject, a.playbook, a.status,
                      a.outcome, a.at.isoformat(timespec="seconds"))
    out.print(table)


@alerts_app.command()
def approve(model: ModelArg, action: ActionArg, project: ProjectOpt = Path("."),
            actor: ActorOpt = None) -> None:
    """Run an action that waits for approval."""
    with _open(project) as p:
        done = p.monitoring.approve(model, action, actor=_actor(actor))
    console.print(f"action {done.id}: {done.playbook} {done.status} — {done.outcome}")


@alerts_app.command()
def decline(model: ModelArg, action: ActionArg, project: ProjectOpt = Path("."),
            actor: ActorOpt = None) -> None:
    """Close an action that waits for approval without running it."""
    with _open(project) as p:
        done = p.monitoring.decline(model, action, actor=_actor(actor))
    console.print(f"action {done.id}: {done.status}")


@alerts_app.command()
def release(model: ModelArg, action: ActionArg, project: ProjectOpt = Path("."),
            actor: ActorOpt = None) -> None:
    """Lift what a fallback or freeze action holds: the model serves again, or training
    takes the window back."""
    with _open(project) as p:
        done = p.monitoring.release(model, action, actor=_actor(actor))
    console.print(f"action {done.id}: {done.status} — {done.outcome}")
