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
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, NoReturn, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, ProgressLog, no_progress
from weightprint.results import EXIT_ERROR, EXIT_EVIDENCE, EXIT_OK, VerdictResult, exit_code, to_jsonable  # noqa: F401  (EXIT_* for command modules)

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


def debug_enabled() -> bool:
    """Whether tracebacks are shown: the global ``--debug`` option or ``WEIGHTPRINT_DEBUG=1``."""
    return _debug["on"] or os.environ.get("WEIGHTPRINT_DEBUG", "") not in ("", "0")


_debug = {"on": False}


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show the Python traceback of an internal error (also WEIGHTPRINT_DEBUG=1).")] = False,
) -> None:
    _debug["on"] = debug


_MAX_INTERNAL_MESSAGE = 300


def _subject(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The file(s) a command works on, for an error without a file of its own: its Path arguments."""
    paths = [str(v) for v in (*args, *kwargs.values()) if isinstance(v, Path)]
    return ", ".join(dict.fromkeys(paths))


def _with_subject(filename: Any, subject: str) -> str:
    name = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else ""
    return name or subject or "<unknown file>"


def internal_error_message(e: BaseException, subject: str = "") -> str:
    """``<file>: internal error (<type>): <message>``, one line (the last-resort error of the CLI)."""
    if isinstance(e, MemoryError):
        text = str(e) or "out of memory"
    elif isinstance(e, RecursionError):
        text = str(e) or "maximum recursion depth exceeded"
    else:
        text = str(e)
    text = " ".join(text.split()) or "(no message)"
    if len(text) > _MAX_INTERNAL_MESSAGE:
        text = text[: _MAX_INTERNAL_MESSAGE - 3] + "..."
    where = _with_subject(getattr(e, "filename", None), subject)
    return f"{where}: internal error ({type(e).__name__}): {text}"


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors into one stderr line and exit code 2.

    Expected errors (:class:`WeightprintError`, OS errors) print their message; anything else
    is a bug or an input nothing checked, and gets the last-resort line
    ``error: <file>: internal error (<type>): <message>`` (the traceback too under ``--debug``).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except WeightprintError as e:
            _show_traceback()
            _fail(e.message, e.hint)
            raise typer.Exit(EXIT_ERROR) from None
        except FileNotFoundError as e:
            _show_traceback()
            _fail(f"{_with_subject(e.filename, _subject(args, kwargs))}: no such file or directory")
            raise typer.Exit(EXIT_ERROR) from None
        except PermissionError as e:
            _show_traceback()
            _fail(f"{_with_subject(e.filename, _subject(args, kwargs))}: permission denied")
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as e:
            _show_traceback()
            _fail(f"{_with_subject(e.filename, _subject(args, kwargs))}: {e.strerror or e}")
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _fail("interrupted")
            raise typer.Exit(130) from None
        except (Exception, RecursionError, MemoryError) as e:  # the last resort: a bug, or input nothing checked
            _show_traceback()
            _fail(internal_error_message(e, _subject(args, kwargs)),
                  "rerun with --debug for the traceback, and please report it" if not debug_enabled() else None)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _show_traceback() -> None:
    if debug_enabled():
        import traceback

        traceback.print_exc(file=sys.stderr)


PROGRESS_LOG_INTERVAL = 5.0
"""Seconds between two progress lines of the same step when stderr is not a terminal."""
PROGRESS_HEARTBEAT = 30.0
"""Seconds of silence after which the log repeats the current step (``still running``)."""


@contextmanager
def progress_bar(description: str, *, steps: bool = False) -> Iterator[ProgressCallback]:
    """Show a library call's progress on stderr, as a :data:`~weightprint.progress.ProgressCallback`.

    On a terminal (stdout and stderr): a rich bar (colourless under ``NO_COLOR``). Otherwise (piped, CI): one log
    line per step with the elapsed time, ``[12.3s] demo: issue Q4_K_M copy to globex (3/12)``,
    at most one line every few seconds within a step (see :class:`~weightprint.progress.ProgressLog`).
    ``WEIGHTPRINT_QUIET=1``: nothing. ``steps``: each description the library reports is a step
    of the job (the demo); otherwise it is a detail of one step (a tensor name).
    """
    if os.environ.get("WEIGHTPRINT_QUIET") == "1":
        yield no_progress
        return
    # A bar only when the user watches both streams: `weightprint demo | cat` or `| tee run.log` is
    # being recorded, and a transient bar would leave nothing behind.
    if err_console.is_terminal and console.is_terminal and not err_console.is_dumb_terminal:
        bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total or None, description=f"{description} {what}"[:80])

        with bar:
            yield update
        return
    lock = threading.Lock()
    log = ProgressLog(description, _log_line, interval=PROGRESS_LOG_INTERVAL, steps=steps)

    def update(done: int, total: int, what: str) -> None:
        with lock:
            log(done, total, what)

    stop = threading.Event()

    def beat() -> None:  # a step with no inner progress still shows a line every HEARTBEAT seconds
        while not stop.wait(PROGRESS_HEARTBEAT / 4):
            with lock:
                log.heartbeat(PROGRESS_HEARTBEAT)

    beater = threading.Thread(target=beat, name="weightprint-progress", daemon=True)
    beater.start()
    ok = False
    try:
        yield update
        ok = True
    finally:
        stop.set()
        beater.join()
        log.close(done=ok)


def _log_line(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


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


def write_report(path: Path | None, title: str, *results: object) -> None:
    """Write an HTML report (and its JSON twin) of ``results`` when ``--html`` was given.

    Each result becomes its section by type (:func:`weightprint.report.sections.section`).
    """
    if path is None:
        return
    from weightprint.report import Report
    from weightprint.report.sections import section

    report = Report(title)
    for result in results:
        report.add(section(result))
    report.write(path, path.with_suffix(".json"))
    err_console.print(f"report: {path}", markup=False, highlight=False)


def say(text: str) -> None:
    """One plain line on stdout (no rich markup or highlighting)."""
    console.print(text, markup=False, highlight=False)


def finish(result: VerdictResult) -> NoReturn:
    """End a verdict command: the exit code follows the result's verdict (0 no evidence, 1 evidence)."""
    raise typer.Exit(exit_code(result))
