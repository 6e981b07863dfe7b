"""`demo`: the whole story on the embedded SmolLM2."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import (
    EXIT_ERROR, EXIT_EVIDENCE, EXIT_OK, HtmlOpt, JsonOpt, _fail, _human_bytes, app, console, emit_json, err_console,
    finish, handles_errors, progress_bar, say, write_report,
)
from weightprint.errors import WeightprintError


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Working directory (recreated).")] = Path("out/demo"),
    steps: Annotated[int, typer.Option("--finetune-steps", help="Fine-tuning steps of the leaker.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The whole story on SmolLM2-135M: issue marked copies, leak one, trace it, check lineage, report."""
    from weightprint.demo import run_demo

    with progress_bar("demo") as progress:
        result = run_demo(out, finetune_steps=steps, progress=progress)
    if as_json:
        emit_json(result)
    else:
        console.print(f"leak trace: {result.trace_summary}", markup=False, highlight=False)
        console.print(f"lineage vs original: {result.lineage_original}", markup=False, highlight=False)
        console.print(f"lineage vs Gemma 3: {result.lineage_gemma}", markup=False, highlight=False)
        console.print(f"report: {result.report_html} and {result.report_json}", markup=False, highlight=False)
    if not result.correct:
        _fail(f"the demo traced the leak to {result.accused or 'nobody'}, not `{result.leaked_recipient}`")
        raise typer.Exit(EXIT_ERROR)
