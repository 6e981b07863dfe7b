"""`compare`, `identify`, `template`: black-box questions about models and endpoints."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import HtmlOpt, JsonOpt, app, console, emit_json, finish, handles_errors, progress_bar, say, write_report

ModelOpt = Annotated[Optional[str], typer.Option("--model", help="`model` field for an endpoint URL (default: the first one it lists).")]
KeyEnvOpt = Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the endpoint's API key (never logged).")]
PromptsOpt = Annotated[str, typer.Option("--prompts", help="A shipped prompt suite (`default`) or a JSONL file of {\"prompt\": ...} lines.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the on-disk HTTP response cache.")]


def _endpoint_options(ref: str, model: str | None, api_key_env: str, no_cache: bool) -> dict:
    if not ref.lower().startswith(("http://", "https://")):
        return {}
    opts: dict = {"api_key_env": api_key_env}
    if model:
        opts["model"] = model
    if no_cache:
        opts["cache"] = False
    return opts


def _render(result, title: str, header: tuple[str, str], rows: list[tuple[str, str]], html, as_json: bool) -> None:
    """Report (``--html``), then JSON or the summary and a two-column table, then the exit code."""
    import weightprint.report.behave_sections  # noqa: F401  (registers the report sections)

    write_report(html, title, result)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        t = Table(*header)
        for k, v in rows:
            t.add_row(k, v)
        console.print(t)
    finish(result)


@app.command("compare")
@handles_errors
def compare(
    a: Annotated[str, typer.Argument(help="Model A: a GGUF file, a Hugging Face directory or an http(s):// URL.")],
    b: Annotated[str, typer.Argument(help="Model B: a GGUF file, a Hugging Face directory or an http(s):// URL.")],
    model: ModelOpt = None,
    model_b: Annotated[Optional[str], typer.Option("--model-b", help="`model` field for B when both are URLs (default: --model).")] = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    prompts: PromptsOpt = "default",
    n_prompts: Annotated[Optional[int], typer.Option("--n-prompts", help="Use the first N prompts.")] = None,
    probes: Annotated[str, typer.Option("--probes", help="One-token probe prompts for the top-k test (greedy, "
                                        "log-probabilities on both sides) and the probe-membership test (sampled, one "
                                        "side local): a shipped suite, a JSONL file, or `none`.")] = "probes",
    sampled: Annotated[Optional[bool], typer.Option("--sampled/--greedy", help="Force the regime (default: sampled when an endpoint samples).")] = None,
    n_samples: Annotated[int, typer.Option("--samples", help="Samples per prompt and side (sampled regime).")] = 10,
    alpha: Annotated[float, typer.Option("--alpha", help="Level of the `unrelated` null below which B is `same` or `related`.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    no_cache: NoCacheOpt = False,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Are A and B the same model? `same` / `related` / `different`, a p-value (H0: unrelated) and the evidence."""
    from weightprint.behave.compare import compare_models, describe

    with progress_bar("comparing", steps=True) as progress:
        result = compare_models(
            a, b, prompts=prompts, n_prompts=n_prompts, sampled=sampled, n_samples=n_samples, alpha=alpha, seed=seed,
            probes=None if probes.lower() == "none" else probes,
            options_a=_endpoint_options(a, model, api_key_env, no_cache),
            options_b=_endpoint_options(b, model_b or model, api_key_env, no_cache), progress=progress,
        )
    _render(result, f"Compare: {result.a} vs {result.b}", ("statistic", "value"), describe(result), html, as_json)


@app.command("identify")
@handles_errors
def identify(
    target: Annotated[str, typer.Argument(help="The unknown model: an http(s):// URL, a GGUF file or a Hugging Face directory.")],
    candidates: Annotated[list[str], typer.Option("--candidates", "-c", help="A candidate model (repeat the option, or separate by commas).")],
    model: ModelOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    prompts: PromptsOpt = "default",
    max_queries: Annotated[int, typer.Option("--max-queries", help="Queries to the target at most.")] = 8,
    confidence: Annotated[float, typer.Option("--confidence", help="Stop once the best candidate has this confidence.")] = 0.99,
    no_cache: NoCacheOpt = False,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which candidate is TARGET? Adaptive queries; prints the ranking, the queries used and the confidence."""
    from weightprint.behave.identify import describe, identify_model

    refs = [c.strip() for item in candidates for c in item.split(",") if c.strip()]
    with progress_bar("identifying", steps=True) as progress:
        result = identify_model(target, refs, prompts=prompts, max_queries=max_queries, confidence=confidence,
                                target_options=_endpoint_options(target, model, api_key_env, no_cache), progress=progress)
    _render(result, f"Identify: {result.target}", ("candidate", "confidence"), describe(result), html, as_json)


@app.command("template")
@handles_errors
def template(
    ref: Annotated[str, typer.Argument(help="A GGUF file, a Hugging Face directory (metadata) or an http(s):// URL (behaviour).")],
    model: ModelOpt = None,
    api_key_env: KeyEnvOpt = "OPENAI_API_KEY",
    no_cache: NoCacheOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The chat-template family (ChatML, Llama-3, Llama-2, Mistral, Gemma, Phi-3, Zephyr, other, none)."""
    from weightprint.behave.template import detect_template

    with progress_bar("probing") as progress:
        result = detect_template(ref, model_options=_endpoint_options(ref, model, api_key_env, no_cache), progress=progress)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
        for family, score in sorted(result.scores.items(), key=lambda kv: -kv[1]):
            say(f"  {family}: {score:.3f}")
    finish(result)

