"""`lineage` and `fingerprint`: is B derived from A, white-box."""

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
def lineage(
    a: Annotated[Path, typer.Argument(help="Reference model A (or the suspect, with --db).")],
    b: Annotated[Optional[Path], typer.Argument(help="Suspect model B.")] = None,
    db: Annotated[Optional[str], typer.Option("--db", help="Rank A against every fingerprint in this database.")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Is B exactly A quantized by llama.cpp? Compare bytes.")] = False,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level of the `derived` verdict.")] = 1e-6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutation test.")] = 0,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is B derived from A? A verdict with a p-value and the evidence."""
    from weightprint.results import format_pvalue

    if db is not None:
        if b is not None or exact:
            raise WeightprintError("`--db` takes one model (the suspect); drop B and `--exact`")
        from weightprint.lineage.db import search_fingerprints
        from weightprint.report.sections import lineage_section

        ranked = search_fingerprints(a, db, rng=seed, alpha=alpha)
        write_report(html, f"Lineage search: {a.name}", *[lineage_section(r) for r in ranked[:10]])
        if as_json:
            emit_json({"suspect": str(a), "db": db, "ranking": ranked})
        else:
            t = Table("rank", "reference", "verdict", "p", "reason")
            for i, r in enumerate(ranked, 1):
                t.add_row(str(i), r.a, r.verdict, format_pvalue(r.log10_pvalue), r.reason)
            console.print(t)
        raise typer.Exit(EXIT_EVIDENCE if any(r.verdict == "derived" for r in ranked) else EXIT_OK)
    if b is None:
        raise WeightprintError("lineage needs two models A and B, or one model with `--db`")
    if exact:
        from weightprint.lineage.exact import exact_derivation

        result = exact_derivation(a, b)
        if as_json:
            emit_json(result)
        else:
            console.print(result.reason, markup=False, highlight=False)
            for d in result.differing[:20]:
                console.print(f"  {d.name} ({d.qtype}): {d.reason}", markup=False, highlight=False)
        finish(result)
    from weightprint.lineage.compare import compare_models
    from weightprint.report.sections import lineage_section

    with progress_bar("comparing"):
        result = compare_models(a, b, rng=seed, alpha=alpha)
    write_report(html, f"Lineage: {b.name} vs {a.name}", lineage_section(result))
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        if result.components:
            t = Table("component", "statistic", "p", "method")
            for c in result.components:
                t.add_row(c.name, f"{c.statistic:.3g}", c.pvalue_text(), c.method)
            console.print(t)
    finish(result)


@app.command()
@handles_errors
def fingerprint(
    model: Annotated[Path, typer.Argument(help="Reference model to store.")],
    db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL or SQLite file of the fingerprint database.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Name of the reference (default: file name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Store a compact fingerprint of MODEL for later `lineage SUSPECT --db`."""
    from weightprint.lineage.db import fingerprint_model

    with progress_bar("fingerprinting"):
        result = fingerprint_model(model, db, label=label)
    if as_json:
        emit_json(result)
        return
    state = "already stored" if result.already_stored else "stored"
    console.print(f"{state} `{result.label}`: {result.n_bytes:,} bytes (budget {result.budget_bytes:,})", markup=False)
