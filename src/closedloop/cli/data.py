"""The data and label commands of ``closedloop``: ``ingest``, ``quarantine``,
``backfillable`` and ``labels`` (registered on the app of ``closedloop.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow.parquet as pq
import typer
from rich.markup import escape

from closedloop.cli.common import ProjectOpt, Table, _open, _progress, _stepper, _when, app, out
from closedloop.errors import UsageError


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="The source the rows belong to.")],
    files: Annotated[list[Path], typer.Argument(help="Parquet, CSV or JSON-lines files "
                                                     "(one batch: all of them or none).")],
    fmt: Annotated[str | None, typer.Option("--format", help="parquet, csv or jsonl (default: "
                                                             "from each file's name).")] = None,
    at: Annotated[str | None, typer.Option(help="The arrival instant to stamp (default: "
                                                "now).")] = None,
    max_quarantined: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Refuse the batch (exit 2, nothing appended) when more than "
        "this share of its rows is quarantined (default: when every row is).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Ingest files into a source's store: each row checked against the declared schema,
    stamped with its arrival, deduplicated by the source's id (or the whole row) against the
    batch and everything held, so ingesting a file twice changes nothing. Rows that fail go to
    the quarantine with their reason and payload (`closedloop quarantine SOURCE`); a file that
    cannot be read, or lacks a required column, stops the batch with nothing written, and so
    does a batch with too much quarantined (--max-quarantined)."""
    if fmt is not None and fmt not in ("parquet", "csv", "jsonl"):
        raise UsageError(f"--format {fmt!r} is not a format closedloop reads",
                         fix="use parquet, csv or jsonl")
    with _open(project) as p, _progress() as bar:
        task = bar.add_task(f"ingesting into {source}", total=None)
        report = p.data.ingest(source, files, at=_when(at), format=fmt,
                               max_quarantined=max_quarantined, progress=_stepper(bar, task))
    out.print(report.summary(), soft_wrap=True)
    if report.ignored_columns:
        out.print(f"not declared by {source}, so not kept: {', '.join(report.ignored_columns)}")
    if report.quarantined:
        out.print(f"see them with: closedloop quarantine {source}")


@app.command()
def quarantine(
    source: Annotated[str | None, typer.Argument(help="The source (default: all).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show.")] = 20,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write every row to this Parquet file.")
                      ] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Show the rows ingestion refused: source, file, row, reason and the original payload."""
    with _open(project) as p:
        table = p.data.quarantine(source)
    if output is not None:
        pq.write_table(table, output)
        out.print(f"{table.num_rows:,} quarantined rows written to {output}")
        return
    view = Table("source", "file", "row", "reason", "payload", title=f"{table.num_rows:,} "
                 "quarantined rows")
    for r in table.slice(0, limit).to_pylist():
        view.add_row(r["source"], Path(r["file"]).name, str(r["row"]), escape(r["reason"]),
                     escape(r["payload"]))          # whole: the table wraps it
    out.print(view)


@app.command()
def backfillable(
    feature: Annotated[list[str], typer.Argument(help="Feature references or transforms.")],
    labels: Annotated[str | None, typer.Option(help="A label source: also say from which "
                                               "cutoff a model labelled by it could train "
                                               "on the feature (its max delay later).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Say, for each feature, whether its history can be computed from the raw sources (and
    from when: training rows before then get nothing of it), or only forward from when rows
    carrying its columns arrive."""
    with _open(project) as p:
        found = [p.features.backfillability(f, labels=labels) for f in feature]
    for b in found:
        out.print(b.summary(), soft_wrap=True)
        for reason in b.reasons:
            out.print(f"  {reason}", soft_wrap=True)


labels_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="The label store: import human labels, "
                         "report label delay.")
app.add_typer(labels_app, name="labels")


@labels_app.command("delay")
def label_delay(
    source: Annotated[str, typer.Argument(help="The label source.")],
    population: Annotated[str | None, typer.Option(help="The source whose rows the labels "
                                                        "are for, to report how many are "
                                                        "still maturing.")] = None,
    at: Annotated[str | None, typer.Option(help="As of this instant (default: now).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """The label-delay report: how long labels take to settle, how many came later than the
    declared maximum, the share of rows still maturing, and when a feature added now can
    first be trained on."""
    with _open(project) as p:
        report = p.data.label_delay(source, population=population, at=_when(at))
    for line in report.lines():
        out.print(line, soft_wrap=True)


@labels_app.command("import")
def label_import(
    source: Annotated[str, typer.Argument(help="The label source.")],
    annotations: Annotated[Path, typer.Argument(help="Parquet, CSV or JSON-lines file: "
                                                     "subject, timestamp, label, annotator, "
                                                     "annotated_at.")],
    rule: Annotated[str, typer.Option(help="majority or most_trusted.")] = "majority",
    trust: Annotated[list[str] | None, typer.Option(help="annotator=weight, repeatable.")
                     ] = None,
    annotator: Annotated[str, typer.Option(help="The annotator id column.")] = "annotator",
    annotated_at: Annotated[str, typer.Option(help="The annotation time column.")
                            ] = "annotated_at",
    project: ProjectOpt = Path("."),
) -> None:
    """Import human labels: disagreements resolved by the declared rule, the agreement rate
    reported, the labels written to the label store with provenance human:<rule>."""
    weights: dict[str, float] = {}
    for item in trust or []:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value) if sep else float("nan")
        except ValueError:
            weights[name] = float("nan")
        if not sep or weights[name] != weights[name]:
            raise UsageError(f"--trust {item!r} is not annotator=weight",
                             fix="write e.g. --trust alice=2.0")
    with _open(project) as p:
        resolved, report = p.data.label_by_humans(source, annotations, rule=rule,
                                                  trust=weights or None, annotator=annotator,
                                                  annotated_at=annotated_at)
    out.print(f"{resolved.labels.num_rows:,} items resolved by {rule}: agreement rate "
              f"{resolved.agreement_rate:.1%} (pairwise {resolved.pairwise_agreement:.1%}), "
              f"{resolved.conflicts:,} with disagreement", soft_wrap=True)
    out.print(report.summary(), soft_wrap=True)
