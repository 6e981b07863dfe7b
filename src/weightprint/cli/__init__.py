"""The ``weightprint`` command line: a thin Typer layer over the library.

Layout: ``_common.py`` holds the app, error handling, progress bars and :func:`finish` (the one
verdict -> exit code map); each command group is a module that registers its commands on
import. A new command group is a new module here, imported below.
"""

from __future__ import annotations

import sys

from weightprint.cli._common import app
from weightprint.cli import model as _model  # noqa: F401  (registers commands, in --help order)
from weightprint.cli import mark as _mark  # noqa: F401
from weightprint.cli import lineage as _lineage  # noqa: F401
from weightprint.cli import behave as _behave  # noqa: F401
from weightprint.cli import evals as _evals  # noqa: F401
from weightprint.cli import scan as _scan  # noqa: F401
from weightprint.cli import demo as _demo  # noqa: F401

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point.

    Commands turn every error into one line themselves (:func:`~weightprint.cli._common.handles_errors`);
    this catches what escapes outside a command (argument parsing, start-up) the same way. Usage
    errors (an unknown option, `--to onnx`) are one ``error:`` line and exit 2 too, not Click's box.
    """
    import typer

    from weightprint.cli._common import _fail, _show_traceback, debug_enabled, internal_error_message

    try:
        code = app(prog_name="weightprint", standalone_mode=False)
    except typer.Abort:
        _fail("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # Click's usage errors (typer vendors Click; this is their public base)
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx is not None else "weightprint"
        _fail(f"`{command}`: " + " ".join(e.format_message().split()).rstrip("."),
              hint=f"`{command} --help` lists the arguments and options")
        sys.exit(2)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - the last resort: one line and exit 2, never a traceback
        if debug_enabled():
            _show_traceback()
        _fail(internal_error_message(e))
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
