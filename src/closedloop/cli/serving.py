"""The serving commands of ``closedloop``: ``serve``, ``budget``, ``score`` (registered on the
app of ``closedloop.cli``)."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pyarrow.parquet as pq
import typer

from closedloop.cli.common import (
    ProjectOpt,
    Table,
    _open,
    _progress,
    _stepper,
    _when,
    app,
    console,
    out,
)
from closedloop.data.clock import Clock, clock_text
from closedloop.data.instants import instant_micros
from closedloop.errors import ServingError
from closedloop.serving.budget import BudgetReport


@app.command()
def serve(
    project: ProjectOpt = Path("."),
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="Model(s) to serve (default: every model with a production "
        "version).")] = None,
    host: Annotated[str | None, typer.Option(help="Address ([serving] host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port ([serving] port).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes ([serving] "
                                                "workers).")] = None,
    at: Annotated[str | None, typer.Option(help="Serve features as of this instant (ISO 8601 "
                                           "with a zone; default: [clock] at, else now).")
                  ] = None,
    replay: Annotated[bool, typer.Option(help="Replay history: each instance carries its own "
                                         "instant ([clock] field; default: the model's rows "
                                         "source's timestamp column) and is served as of "
                                         "it ([clock] replay).")] = False,
) -> None:
    """Serve models over HTTP: POST /v1/models/NAME:predict, GET /healthz, /readyz, /metrics,
    /openapi.json. Every prediction is in the prediction log before its response is sent;
    a moved alias is picked up without dropping a request. Features are read as of now on
    the project's clock: --at fixes it, --replay reads each request's own instant."""
    import os

    import uvicorn

    when = _when(at)
    with _open(project) as p:
        clock = p.clock
        if when is not None or replay:
            clock = Clock(clock.at if when is None else instant_micros(when),
                          replay or clock.replay, clock.field)
            p.serving.features.clock = clock
        settings = p.settings.serving
        for name in model or []:
            p.serving.predictor(name)                # refuse an unservable model now
        names = model or [m for m in p.serving.models if "production" in p.registry.aliases(m)]
    if not names:
        raise ServingError("no model has a production version", fix="train, register and "
                           "alias one (closedloop models alias NAME production V)")
    os.environ["CLOSEDLOOP_PROJECT"] = str(project.resolve())
    os.environ["CLOSEDLOOP_MODELS"] = ",".join(names)
    os.environ["CLOSEDLOOP_CLOCK"] = clock_text(clock)
    count = workers or settings.workers
    if count > 1:
        metrics = Path(tempfile.mkdtemp(prefix="closedloop-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    bind_host, bind_port = host or settings.host, settings.port if port is None else port
    console.print(f"serving {', '.join(names)} on http://{bind_host}:{bind_port} "
                  f"({count} worker{'s' if count > 1 else ''}; clock: {clock.describe()}); "
                  "Ctrl-C stops")
    uvicorn.run("closedloop.server.app:create_app", factory=True, host=bind_host,
                port=bind_port, workers=count, loop="uvloop" if sys.platform != "win32"
                else "asyncio", http="httptools", log_level="warning", access_log=False)


@app.command()
def budget(
    model: Annotated[str, typer.Argument(help="The model.")],
    project: ProjectOpt = Path("."),
    last: Annotated[int, typer.Option(min=1, help="How many recent predictions.")] = 10_000,
) -> None:
    """The measured latency of each serving stage (p50, p99 over the last predictions in the
    prediction log) against the model's budget, naming the stage over it; the queue (a
    request's wait behind the batch ahead) and the total (a request's whole time on the
    server, arrival to the log), named when over p99_ms."""
    with _open(project) as p:
        report = p.serving.budget(model, last=last)
    render_budget(report)


def render_budget(report: BudgetReport) -> None:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    table = Table(title=f"latency budget of {report.model}: {report.predictions:,} "
                  "predictions", box=None, header_style="bold")
    for col in ("stage", "p50 ms", "p99 ms", "budget ms", ""):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, row in [*report.stages.items(), ("queue", report.queue), ("total", report.total)]:
        verdict = ("" if row.p99_ms is None or name == "queue" else "[red]over[/]" if row.over
                   else "[green]ok[/]" if row.declared else "[dim]not declared[/]")
        table.add_row(name, ms(row.p50_ms), ms(row.p99_ms), ms(row.budget_ms), verdict)
    out.print(table)
    if report.over:
        out.print(f"over budget: {', '.join(report.over)}")
    elif report.predictions:
        out.print("every stage is within its budget")
    if report.served < report.predictions:
        out.print(f"{report.predictions - report.served:,} predictions were made in process: "
                  "their total is the stages added up (no queue)")
    if report.fallbacks:
        out.print(f"{report.fallbacks:,} predictions were answered by the fallback")


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="The model (its production version scores).")],
    project: ProjectOpt = Path("."),
    at: Annotated[str | None, typer.Option(help="Features as of this instant (ISO 8601, "
                                           "with a zone; default: now).")] = None,
    keys: Annotated[Path | None, typer.Option(help="A Parquet file whose first column holds "
                                              "the entity keys to score (default: all).")
                    ] = None,
    restart: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
) -> None:
    """Batch inference: score every entity (or --keys) from point-in-time features into the
    online store, served by GET /v1/models/MODEL/scores/KEY. A stopped run resumes after its
    last written chunk."""
    when: datetime | None = _when(at)
    wanted = None
    if keys is not None:
        wanted = pq.read_table(keys).column(0).to_pylist()
    with _open(project) as p, _progress() as bar:
        task = bar.add_task("scoring", total=None)
        report = p.serving.score(model, at=when, keys=wanted, restart=restart,
                                 progress=_stepper(bar, task))
    resumed = f" ({report.skipped:,} done before, resumed)" if report.skipped else ""
    out.print(f"{model} version {report.version}: scored {report.scored:,} entities{resumed} "
              f"in {report.seconds:.1f} s ({report.per_s:,.0f}/s)")


@app.command()
def stream(
    model: Annotated[str, typer.Argument(help="The model to score the events with.")],
    project: ProjectOpt = Path("."),
    source: Annotated[str | None, typer.Option(help="The event source (default: the model's "
                                               "rows source).")] = None,
    group: Annotated[str, typer.Option(help="Consumer group: scorers in one group share the "
                                       "stream, each event going to one.")] = "closedloop",
    consumer: Annotated[str, typer.Option(help="This scorer's name in the group.")] = "scorer-1",
    max_events: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
    idle_exit: Annotated[float | None, typer.Option(min=0, help="Stop after this many seconds "
                                                    "with no event.")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Export the lag and event count to Prometheus on "
        "http://127.0.0.1:PORT/metrics.")] = None,
) -> None:
    """Streaming inference: consume events from the project's stream (the embedded log, or
    Redis Streams when [stream] url is set), fold them into the online features, score them,
    write the predictions to the online store, the prediction log and the predictions
    stream, with the lag from event time to prediction written. Scorers of one group share
    the stream; records a dead scorer left unacknowledged are claimed and scored."""
    with _open(project) as p, _progress() as bar:
        task = bar.add_task("waiting for events", total=None)
        scorer = p.serving.scorer(model, source=source, group=group, consumer=consumer)
        if metrics_port is not None:
            from closedloop.server.metrics import StreamMetrics

            metrics = StreamMetrics(model)
            metrics.serve(metrics_port)
            scorer.observe = metrics.observe
        stop = threading.Event()
        watcher = None
        if model in p.monitoring.monitors and p.settings.monitoring.runner == "serve":
            watcher = threading.Thread(target=p.monitoring.watch, daemon=True,
                                       name="closedloop-monitor", kwargs={
                                           "holder": f"stream-{consumer}-{os.getpid()}",
                                           "stop": stop.is_set, "models": [model]})
            watcher.start()
        try:
            report = scorer.run(max_events=max_events, idle_s=idle_exit,
                                progress=_stepper(bar, task))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=30)
    p50, p99 = report.lag(50), report.lag(99)
    lag = "" if p50 is None else f"; lag p50 {p50:.0f} ms, p99 {p99:.0f} ms"
    out.print(f"{consumer}: scored {report.events:,} events in {report.batches:,} batches "
              f"({report.per_s:,.0f}/s){lag}")


@app.command()
def cost(
    model: Annotated[list[str] | None, typer.Argument(help="Models (default: all).")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """What each model costs, from measurement: CPU seconds per 1,000 predictions (online,
    batch, stream), predictions and prediction-log bytes per day, training CPU; priced with
    [cost] cpu_hour and gb_month: training vs serving vs data, and the day serving overtakes
    training."""
    with _open(project) as p:
        prices = p.settings.cost.model_dump()
        names = model or list(p.serving.models)
        reports = [p.serving.cost(name, prices) for name in names]
    render_cost(reports)


def _money(value: float | None, currency: str) -> str:
    """An amount with its currency and three significant digits, never in e-notation:
    ``6.83e-05`` is ``0.0000683 USD``, ``1234.5`` is ``1,234.50 USD``."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 1:
        return f"{value:,.2f} {currency}"
    digits = min(12, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{digits}f} {currency}"


def render_cost(reports: list[Any]) -> None:
    table = Table(title="cost per model, measured", box=None, header_style="bold")
    for col in ("model", "train CPU s", "CPU s/1k online", "batch", "stream", "predictions/day",
                "log MB/day"):
        table.add_column(col, justify="left" if col == "model" else "right")
    priced = any(r.training_cost is not None for r in reports)
    if priced:
        for col in ("training", "serving/day", "data/day", "serving overtakes"):
            table.add_column(col, justify="right")
    for r in reports:
        cells = [r.model, f"{r.training_cpu_s:,.1f}",
                 *(f"{r.cpu_s_per_1000[m]:.3f}" if m in r.cpu_s_per_1000 else "-"
                   for m in ("online", "batch", "stream")),
                 f"{r.predictions_per_day:,.0f}", f"{r.log_bytes_per_day / 1e6:,.2f}"]
        if priced:
            day = r.overtakes_on_day
            cells += [_money(v, r.currency) for v in (r.training_cost, r.serving_cost_per_day,
                                                      r.data_cost_per_day)]
            cells.append("-" if day is None else f"day {day:,}")
        table.add_row(*cells)
    out.print(table)
    if not priced:
        out.print("set \\[cost] cpu_hour and gb_month in closedloop.toml to price these")
