"""The ``closedloop`` command line: one Typer app (``common.app``, with the one error handler
and the shared helpers) and the commands of each stage, registered on it by their modules:
``features`` (init, apply, features, training sets, materialize, push, online, consistency,
demo), ``data`` (ingest, quarantine, backfillable, labels), ``training`` (train, reproduce,
runs, models), ``serving`` (serve, budget, score, stream, cost), ``ladder`` (promote, and
the ladder's status, approve, pause, resume, rollback, run, report) and ``monitoring``
(monitor, and alerts list, approve, decline, release)."""

from closedloop.cli import (  # noqa: F401 - they register
    data,
    features,
    ladder,
    monitoring,
    serving,
    training,
)
from closedloop.cli.common import Table, app, main, report_error

__all__ = ["Table", "app", "main", "report_error"]
