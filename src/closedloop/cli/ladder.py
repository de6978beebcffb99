"""The promotion ladder's commands of ``closedloop``: ``promote``, and ``ladder status``,
``approve``, ``pause``, ``resume``, ``rollback``, ``run``, ``report`` (registered on the app of
``closedloop.cli``)."""

from __future__ import annotations

import getpass
import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from closedloop.cli.common import ProjectOpt, Table, _open, app, console, out

ladder_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="A model's promotion ladder: status, approvals, rollback, the "
                              "controller and the report.")
app.add_typer(ladder_app, name="ladder")

ActorOpt = Annotated[str | None, typer.Option(
    "--actor", help="Who acts, for the audit record (default: the user name).")]
ModelArg = Annotated[str, typer.Argument(help="The model.")]


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):          # no user name in this environment
        return "cli"


def _state(record: Any) -> str:
    if record is None:
        return "no ladder"
    share = f", {record.share:.0%} of units on it" if record.share else ""
    return (f"{record.model} v{record.candidate} (against v{record.baseline}): {record.step}, "
            f"{record.status}{share}")


@app.command()
def promote(
    model: ModelArg,
    version: Annotated[int, typer.Argument(min=1, help="The registered version to promote.")],
    project: ProjectOpt = Path("."),
    actor: ActorOpt = None,
) -> None:
    """Start VERSION up the model's declared ladder (cl.Ladder): the offline gate is measured
    at once; the controller (inside `closedloop serve`, or `closedloop ladder run`) takes it
    through shadow, canary, A/B and ramp to production as the evidence comes in."""
    with _open(project) as p:
        record = p.ladder.promote(model, version, actor=_actor(actor))
        events = p.ladder.history(model)
    console.print(_state(record))
    last = events[-1]
    for reason in last.evidence.get("reasons") or []:
        console.print(f"  {reason}")


@ladder_app.command("status")
def status(
    model: ModelArg,
    project: ProjectOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    last: Annotated[int, typer.Option(min=1, help="How many transitions to show.")] = 10,
) -> None:
    """The ladder's step, status and share; the current step's evidence as measured now
    (what it waits for, or why it would move); its last transitions."""
    from closedloop.serving.controller import describe

    with _open(project) as p:
        record = p.ladder.status(model)
        evidence = (p.ladder.evidence(record) if record is not None and record.active
                    else None)
        events = p.ladder.history(model)[-last:]
    if as_json:
        out.print_json(json.dumps({
            "ladder": describe(record), "evidence": None if evidence is None
            else evidence.to_dict(),
            "transitions": [{"at": e.at.isoformat(), "action": e.action, "from": e.from_step,
                             "to": e.to_step, "status": e.status, "share": e.share,
                             "actor": e.actor, "reasons": e.evidence.get("reasons", [])}
                            for e in events]}, default=str))
        return
    out.print(_state(record))
    if evidence is not None:
        out.print(f"evidence now: {evidence.verdict}"
                  + ("" if not evidence.reasons else " — " + "; ".join(evidence.reasons)))
    table = Table(title="transitions", box=None, header_style="bold")
    for col in ("at", "action", "step", "status", "share", "by", "why"):
        table.add_column(col)
    for e in events:
        table.add_row(e.at.isoformat(timespec="seconds"), e.action,
                      f"{e.from_step or ''} -> {e.to_step}", e.status, f"{e.share:.0%}",
                      e.actor, "; ".join(e.evidence.get("reasons") or []))
    out.print(table)


@ladder_app.command("approve")
def approve(model: ModelArg, project: ProjectOpt = Path("."), actor: ActorOpt = None) -> None:
    """Let a ladder that waits for approval (or is held on its evidence) go to its next
    step."""
    with _open(project) as p:
        console.print(_state(p.ladder.approve(model, actor=_actor(actor))))


@ladder_app.command("pause")
def pause(model: ModelArg, project: ProjectOpt = Path("."), actor: ActorOpt = None) -> None:
    """Stop the controller moving the ladder; the traffic stays as it is."""
    with _open(project) as p:
        console.print(_state(p.ladder.pause(model, actor=_actor(actor))))


@ladder_app.command("resume")
def resume(model: ModelArg, project: ProjectOpt = Path("."), actor: ActorOpt = None) -> None:
    """Let the controller move a paused ladder again."""
    with _open(project) as p:
        console.print(_state(p.ladder.resume(model, actor=_actor(actor))))


@ladder_app.command("rollback")
def rollback(
    model: ModelArg,
    project: ProjectOpt = Path("."),
    actor: ActorOpt = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit record.")] = "by hand",
) -> None:
    """End the running ladder (its candidate's share to 0), or with none running, restore
    the previous version as production; every server worker serves it within [serving]
    reload_s, with no request dropped."""
    start = time.perf_counter()
    with _open(project) as p:
        record = p.ladder.rollback(model, actor=_actor(actor), reason=reason)
        aliases = p.registry.aliases(model)
    took = (time.perf_counter() - start) * 1e3
    if record is not None and record.status == "rolled_back" and record.step != "done":
        console.print(f"{_state(record)}; production stays v{aliases.get('production')} "
                      f"({took:.0f} ms)")
    else:
        console.print(f"{model}: production is v{aliases['production']} again "
                      f"(v{aliases.get('previous')} is previous) ({took:.0f} ms)")


@ladder_app.command("run")
def run(
    project: ProjectOpt = Path("."),
    every: Annotated[float | None, typer.Option(min=0.1, help="Seconds between measurements "
                                                "([ladder] every_s).")] = None,
    once: Annotated[bool, typer.Option(help="Measure once and stop.")] = False,
) -> None:
    """The controller alone: measure every running ladder's evidence, advance, hold or roll
    back; Ctrl-C stops. Only one controller moves a ladder at a time (a lease)."""
    with _open(project) as p:
        if once:
            for t in p.ladder.tick():
                out.print(t.describe())
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        interval = every or p.settings.ladder.every_s
        console.print(f"controlling {', '.join(sorted(p.serving.ladders)) or 'no ladder'} "
                      f"every {interval:g} s; Ctrl-C stops")
        try:
            p.ladder.run(every_s=interval, stop=stop.is_set,
                         say=lambda t: out.print(t.describe()))
        except KeyboardInterrupt:
            stop.set()


@ladder_app.command("report")
def report(
    model: ModelArg,
    project: ProjectOpt = Path("."),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write the "
                                                "page (default: .closedloop/reports/"
                                                "ladder-MODEL.html).")] = None,
) -> None:
    """Write an HTML page of every step's evidence: the share over the transitions, the
    shadow's score distribution against production's, each metric's effect with its
    interval, every transition's evidence."""
    with _open(project) as p:
        page = p.ladder.report(model)
        target = output or p.root / ".closedloop" / "reports" / f"ladder-{model}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page)
    console.print(f"wrote {target}")
