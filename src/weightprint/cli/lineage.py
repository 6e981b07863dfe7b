"""`lineage compare / exact / search` and `fingerprint`: is B derived from A, white-box."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import (
    HtmlOpt, JsonOpt, app, console, emit_json, finish, handles_errors, progress_bar, say, write_report,
)
from weightprint.results import format_pvalue

lineage_app = typer.Typer(
    help="Is a model derived from another? Weight statistics, byte-exact requantization, a fingerprint database.",
    no_args_is_help=True,
)
app.add_typer(lineage_app, name="lineage")

AlphaOpt = Annotated[float, typer.Option("--alpha", help="Significance level of the `derived` verdict.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the permutation test.")]


@lineage_app.command("compare")
@handles_errors
def lineage_compare(
    a: Annotated[Path, typer.Argument(help="Reference model A (any format).")],
    b: Annotated[Path, typer.Argument(help="Suspect model B (any format).")],
    alpha: AlphaOpt = 1e-6,
    seed: SeedOpt = 0,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is B derived from A? `derived` / `no evidence` / `not comparable`, a p-value and the evidence."""
    from weightprint.lineage.compare import compare_models

    with progress_bar("comparing", steps=True) as progress:
        result = compare_models(a, b, rng=seed, alpha=alpha, progress=progress)
    write_report(html, f"Lineage: {b.name} vs {a.name}", result)
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


@lineage_app.command("exact")
@handles_errors
def lineage_exact(
    source: Annotated[Path, typer.Argument(help="The unquantized source (F16/BF16/F32 GGUF or Hugging Face).")],
    quant: Annotated[Path, typer.Argument(help="The quantized GGUF under suspicion.")],
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is QUANT exactly SOURCE quantized by llama.cpp? Compare bytes, tensor by tensor."""
    from weightprint.lineage.exact import exact_derivation

    result = exact_derivation(source, quant)
    write_report(html, f"Exact derivation: {quant.name} from {source.name}", result)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        for d in result.differing[:20]:
            say(f"  {d.name} ({d.qtype}): {d.reason}")
    finish(result)


@lineage_app.command("search")
@handles_errors
def lineage_search(
    suspect: Annotated[Path, typer.Argument(help="The model under suspicion (any format).")],
    db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL or SQLite file of the fingerprint database.")],
    alpha: AlphaOpt = 1e-6,
    seed: SeedOpt = 0,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank every reference stored in the fingerprint database (`fingerprint`) against SUSPECT."""
    from weightprint.lineage.db import search_fingerprints

    with progress_bar("searching", steps=True) as progress:
        result = search_fingerprints(suspect, db, rng=seed, alpha=alpha, progress=progress)
    write_report(html, f"Lineage search: {suspect.name}", result)
    if as_json:
        emit_json(result)
    else:
        t = Table("rank", "reference", "verdict", "p", "p (corrected)", "reason")
        for i, (r, adj) in enumerate(zip(result.ranking, result.adjusted_log10_pvalues), 1):
            t.add_row(str(i), r.a, r.verdict, format_pvalue(r.log10_pvalue), format_pvalue(adj), r.reason)
        console.print(t)
        say(result.summary())
    finish(result)


@app.command()
@handles_errors
def fingerprint(
    model: Annotated[Path, typer.Argument(help="Reference model to store.")],
    db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL or SQLite file of the fingerprint database.")],
    label: Annotated[Optional[str], typer.Option("--label", help="Name of the reference (default: file name).")] = None,
    basis_sketch: Annotated[bool, typer.Option(
        "--basis-sketch",
        help="Also store 2-bit embedding rows of 1.5 x hidden-size tokens (0.375 d^2 bytes over the budget), so that "
             "`lineage search` finds copies whose residual basis was rotated or permuted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Store a compact fingerprint of MODEL for later `lineage search SUSPECT --db`."""
    from weightprint.lineage.db import fingerprint_model

    with progress_bar("fingerprinting", steps=True) as progress:
        result = fingerprint_model(model, db, label=label, basis_sketch=basis_sketch, progress=progress)
    if as_json:
        emit_json(result)
        return
    state = "already stored" if result.already_stored else "stored"
    say(f"{state} `{result.label}`: {result.n_bytes:,} bytes (budget {result.budget_bytes:,})")
