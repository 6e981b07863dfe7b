"""`eval eqbench` and `contamination`: evaluations through any backend (GGUF, HF directory, URL)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import HtmlOpt, JsonOpt, app, console, emit_json, finish, handles_errors, progress_bar, say, write_report

eval_app = typer.Typer(help="Run benchmarks on a model through any backend (EQ-Bench v2).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

ModelArg = Annotated[str, typer.Argument(help="A GGUF file, a Hugging Face directory or an OpenAI-compatible http(s):// URL.")]
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="Force a backend by name (llama.cpp, transformers, openai).")]


def _open(model: str, backend: str | None):
    from weightprint.behave.backends import open_backend

    return open_backend(model, backend=backend)


@eval_app.command("eqbench")
@handles_errors
def eval_eqbench(
    model: ModelArg,
    questions: Annotated[Optional[Path], typer.Option("--questions", help="EQ-Bench v2 question JSON (default: the small shipped sample).")] = None,
    results: Annotated[Optional[Path], typer.Option("--results", help="Append-only JSON Lines of answers; rerun with it to resume.")] = None,
    revise: Annotated[bool, typer.Option("--revise", help="Keep the first-pass/critique/revised answer format.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Parse answers with the official regex only.")] = False,
    chat: Annotated[bool, typer.Option("--chat/--no-chat", help="Wrap prompts in the model's chat template.")] = True,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Answer length (default 60, 1000 with --revise).")] = None,
    backend: BackendOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """EQ-Bench v2 score and parse-failure rate of MODEL."""
    from weightprint.evals.eqbench import load_questions, run_eqbench, sample_questions
    import weightprint.report.evals  # noqa: F401  (registers the report sections)

    qs = load_questions(questions) if questions is not None else sample_questions()
    with _open(model, backend) as b, progress_bar("EQ-Bench") as progress:
        result = run_eqbench(b, qs, results_path=results, revise=revise, strict=strict, chat=chat,
                             max_tokens=max_tokens, progress=progress)
    write_report(html, f"EQ-Bench v2: {Path(model).name}", result)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        say(f"score {result.score:.2f}  parse failures {100 * result.parse_failure_rate:.1f}%  "
            f"(unparseable as 0: {result.score_unparseable_as_zero:.2f})")
    finish(result)


@app.command("contamination")
@handles_errors
def contamination(
    model: ModelArg,
    benchmark: Annotated[Path, typer.Option("--benchmark", help="Benchmark in canonical order: JSON, JSONL, CSV or Parquet.")],
    field: Annotated[str, typer.Option("--field", help="The text field of each record.")] = "text",
    unseen: Annotated[Optional[Path], typer.Option("--unseen", help="Items known not to be in training (same style), for the Min-K%++ AUROC.")] = None,
    unseen_field: Annotated[Optional[str], typer.Option("--unseen-field", help="Text field of --unseen (default: --field).")] = None,
    shards: Annotated[int, typer.Option("--shards", help="Shards of the exchangeability test.")] = 50,
    permutations: Annotated[int, typer.Option("--permutations", help="Random orders per shard.")] = 250,
    k: Annotated[float, typer.Option("--k", help="Fraction of lowest-scoring tokens in Min-K% / Min-K%++.")] = 0.2,
    separator: Annotated[str, typer.Option("--separator", help=r"Joins items into one text (escapes like \n allowed).")] = r"\n",
    alpha: Annotated[float, typer.Option("--alpha", help="Level of the `contaminated` verdict (Bonferroni over the tests).")] = 0.01,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random orders.")] = 0,
    exchangeability: Annotated[bool, typer.Option("--exchangeability/--no-exchangeability", help="Run the exchangeability test.")] = True,
    backend: BackendOpt = None,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Was BENCHMARK in MODEL's training data? Exchangeability test (Oren et al.) and Min-K%++."""
    from weightprint.evals.contamination import check_contamination
    from weightprint.evals.data import load_benchmark
    import weightprint.report.evals  # noqa: F401  (registers the report sections)

    items = load_benchmark(benchmark, field=field)
    unseen_items = load_benchmark(unseen, field=unseen_field or field) if unseen is not None else None
    sep = codecs.decode(separator, "unicode_escape")
    with _open(model, backend) as b, progress_bar("contamination", steps=True) as progress:
        result = check_contamination(b, items, unseen=unseen_items, n_shards=shards, n_permutations=permutations, k=k,
                                     separator=sep, alpha=alpha, exchangeability=exchangeability, seed=seed,
                                     benchmark=benchmark.name, progress=progress)
    write_report(html, f"Contamination: {benchmark.name} in {Path(model).name}", result)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        if result.evidence:
            t = Table("test", "statistic", "p", "method")
            for r in result.evidence:
                t.add_row(r.name, f"{r.statistic:.4g}", r.pvalue_text(), r.method)
            console.print(t)
        for note in result.notes:
            say(f"note: {note}")
    finish(result)
