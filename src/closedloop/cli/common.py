"""The ``closedloop`` command: each command parses, makes one call into the package, renders."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich import table as _rich_table
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from closedloop.errors import ClosedLoopError, DataError


class _App(typer.Typer):
    """The ``closedloop`` command group: every command's errors go through ``report_error``,
    so a bad input anywhere (an argument parsed before the project opens, a file that is not
    there, a name that is not defined) ends in the same one-line error and exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit:
            raise
        except BaseException as exc:
            code = report_error(exc)
            if code is None:
                raise
            sys.exit(code)


app = _App(
    name="closedloop", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="closedloop: features, training, serving and feedback for production ML. "
         "Start with `closedloop demo`, or `closedloop init` for a project of your own.")
console = Console(stderr=True)
# A terminal gets its own width; a pipe or file gets a wide page, so tables keep their ids.
out = Console(width=None if sys.stdout.isatty() else 160)

class Table(_rich_table.Table):
    """A Rich table whose cells wrap onto more lines when the terminal is narrow, never cut
    with an ellipsis (an id, a payload, a diffed value is only useful whole)."""

    def add_column(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("overflow", "fold")
        super().add_column(*args, **kwargs)


ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="The project folder.")]


_FILE_ERRORS: dict[type[OSError], str] = {
    FileNotFoundError: "No such file or directory", IsADirectoryError: "Is a directory",
    NotADirectoryError: "Not a directory", PermissionError: "Permission denied",
    FileExistsError: "File exists"}


def report_error(exc: BaseException) -> int | None:
    """Print ``exc`` as the CLI's one-line error (and its fix), and return the exit code: 2
    for a refused input. None for an exception closedloop did not
    expect (a bug): its traceback is shown, since it is the only thing that explains it."""
    if isinstance(exc, ClosedLoopError):
        code, message, fix = exc.code, exc.message, exc.fix
    elif type(exc) in _FILE_ERRORS:
        what = exc.strerror or _FILE_ERRORS[type(exc)]  # type: ignore[attr-defined,index]
        code, message = "CL-102", f"{what}: {exc.filename or exc}"  # type: ignore[attr-defined]
        fix = "check the path (and that you may read and write it)"
    elif isinstance(exc, pa.ArrowException):
        code, message = "CL-300", f"the data could not be read: {exc}"
        fix = "check the file is what its name or --format says (Parquet, CSV, JSON lines)"
    else:
        return None
    console.print(f"[bold red]error[/] [dim]{code}[/] {escape(message)}", soft_wrap=True)
    if fix:
        console.print(f"[bold]fix:[/] {escape(fix)}", soft_wrap=True)
    return 2


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not console.is_terminal) as bar:  # a pipe gets no spinner residue
        yield bar


def _stepper(bar: Progress, task: TaskID):  # type: ignore[no-untyped-def]  # a Progress callback
    def step(done: int, total: int, description: str) -> None:
        bar.update(task, completed=done, total=total, description=description)
    return step


def _open(project: Path):  # type: ignore[no-untyped-def]  # the façade is imported lazily
    from closedloop.project import Project

    return Project(project)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise DataError(f"time {text!r} does not parse",
                        fix="write an ISO 8601 instant with its zone, e.g. 2026-03-01T12:00Z"
                        ) from None
    if value.tzinfo is None:
        raise DataError(f"time {text!r} has no time zone; closedloop does not guess it",
                        fix="add Z or an offset, e.g. 2026-03-01T12:00Z")
    return value




def _read_rows(path: Path, what: str = "entity rows",
               holding: str = "the entity keys and a timestamp column") -> pa.Table:
    if not path.exists():
        raise DataError(f"{what} file {str(path)!r} does not exist",
                        fix=f"give a Parquet file with {holding}")
    try:
        return pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{str(path)!r} is not a readable Parquet file: {exc}",
                        fix=f"write the {what} as Parquet") from exc


def _number(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    """Entry point of the console script."""
    app()
