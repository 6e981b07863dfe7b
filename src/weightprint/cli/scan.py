"""`scan`: fingerprint every model under some targets and draw their lineage graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from weightprint.cli._common import app, emit_json, err_console, finish, handles_errors, progress_bar, say, JsonOpt


@app.command("scan")
@handles_errors
def scan(
    targets: Annotated[list[str], typer.Argument(
        help="Directories, `hf-cache` (the Hugging Face cache), `ollama` (the ollama store), or hf:/ollama: references.")],
    db: Annotated[str, typer.Option("--db", help="Fingerprint database: SQLite path or SQLAlchemy URL (postgresql://...).")] = "weightprint-scan.db",
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run on Ray: `auto`, a cluster address, or `local` (a private cluster).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="Local processes (default: CPU count).")] = None,
    worker_memory: Annotated[Optional[int], typer.Option("--worker-memory-mb", min=1, help="Ray memory reservation per task, MiB.")] = None,
    fdr: Annotated[float, typer.Option("--fdr", help="False-discovery rate of the reported edges (Benjamini-Yekutieli).")] = 0.01,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the pair tests.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the graph as JSON (nodes, edges) to this file.")] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write the graph as a self-contained HTML page (SVG).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fingerprint every model (once per content) into --db and link each to its most likely parent."""
    from weightprint.report.html import write_atomic
    from weightprint.scan import scan_html, scan_models
    import json

    with progress_bar("scanning", steps=True) as progress:
        result = scan_models(targets, db, ray_address=ray, workers=workers,
                             worker_memory_bytes=worker_memory * 2**20 if worker_memory else None, fdr=fdr, seed=seed,
                             progress=progress)
    if out is not None:
        write_atomic(out, json.dumps(result.to_dict(), indent=1))
    if html is not None:
        write_atomic(html, scan_html(result))
        err_console.print(f"report: {html}", markup=False, highlight=False)
    for f in result.errors:
        err_console.print(f"skipped: {f['error']}", markup=False, highlight=False)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        for e in result.edges:
            say(f"{e['child_name']} <- {e['parent_name']}: {e['kind']} ({e['pvalue_text']}, {e['qvalue_text']})")
    finish(result)
