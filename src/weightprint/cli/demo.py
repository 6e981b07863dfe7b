"""`demo`: the whole story on the embedded SmolLM2."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from weightprint.cli._common import EXIT_ERROR, JsonOpt, _fail, app, emit_json, handles_errors, progress_bar, say


@app.command()
@handles_errors
def demo(
    out: Annotated[Path, typer.Option("--out", help="Working directory (recreated).")] = Path("out/demo"),
    steps: Annotated[int, typer.Option("--finetune-steps", help="Fine-tuning steps of the leaker.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The whole story on SmolLM2-135M: issue marked copies, leak one, trace it, check lineage, report."""
    from weightprint.demo import run_demo

    with progress_bar("demo", steps=True) as progress:
        result = run_demo(out, finetune_steps=steps, progress=progress)
    if as_json:
        emit_json(result)
    else:
        say(f"leak trace: {result.trace_summary}")
        say(f"lineage vs original: {result.lineage_original}")
        say(f"lineage vs Gemma 3: {result.lineage_gemma}")
        say(f"report: {result.report_html} and {result.report_json}")
    if not result.correct:
        _fail(f"the demo traced the leak to {result.accused or 'nobody'}, not `{result.leaked_recipient}`")
        raise typer.Exit(EXIT_ERROR)
