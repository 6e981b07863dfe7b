"""Shared pieces of the ``weightprint`` command line: the Typer app, error handling, progress, output.

Each command (one module per command group beside this one) parses its arguments, calls one
library function, renders the result (a table for people, ``--json`` for machines) and ends
with :func:`finish`, the one place that maps a result's verdict to the exit code: 0 = no
evidence / success, 1 = evidence found (a leak traced, lineage significant), 2 = error.
Errors are one line on stderr (``error: ...``, then ``hint: ...``), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from weightprint.errors import WeightprintError
from weightprint.results import EXIT_ERROR, EXIT_EVIDENCE, EXIT_OK, exit_code, to_jsonable

app = typer.Typer(
    name="weightprint",
    help="Provenance of LLM weights: convert, watermark and trace, lineage tests.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

console = Console()
err_console = Console(stderr=True)

def _fail(message: str, hint: str | None = None) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    if hint:
        err_console.print("", markup=False)
        err_console.print(f"hint: {hint}", markup=False, highlight=False, soft_wrap=True)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except WeightprintError as e:
            _fail(e.message, e.hint)
            raise typer.Exit(EXIT_ERROR) from None
        except FileNotFoundError as e:
            _fail(f"{e.filename}: no such file or directory")
            raise typer.Exit(EXIT_ERROR) from None
        except PermissionError as e:
            _fail(f"{e.filename}: permission denied")
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as e:
            _fail(f"{getattr(e, 'filename', None) or ''}: {e.strerror or e}".lstrip(": "))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _fail("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr, as a ``progress(done, total, description)`` callback."""
    quiet = os.environ.get("WEIGHTPRINT_QUIET") == "1"
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, description=f"{description} {what}"[:80])

    with bar:
        yield update


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]

HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Also write an HTML report (and a .json beside it).")]


def write_report(path: Path | None, title: str, *sections: Any) -> None:
    """Write an HTML report (and its JSON twin) of ``sections`` when ``--html`` was given."""
    if path is None:
        return
    from weightprint.report import Report

    report = Report(title)
    for section in sections:
        report.add(section)
    report.write(path, path.with_suffix(".json"))
    err_console.print(f"report: {path}", markup=False, highlight=False)


def say(text: str) -> None:
    """One plain line on stdout (no rich markup or highlighting)."""
    console.print(text, markup=False, highlight=False)


def finish(result: Any) -> None:
    """End a verdict command: the exit code follows the result's verdict (0 no evidence, 1 evidence)."""
    raise typer.Exit(exit_code(result))
