"""`mark init / issue / trace / verify`: watermarked copies for recipients, and tracing a leak."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import (
    HtmlOpt, JsonOpt, app, console, emit_json, finish, handles_errors, progress_bar, say, write_report,
)
from weightprint.constants import DEFAULT_MARK_DELTA
from weightprint.results import format_pvalue

mark_app = typer.Typer(help="Issue watermarked copies to recipients and trace leaks.", no_args_is_help=True)
app.add_typer(mark_app, name="mark")

RegistryOpt = Annotated[
    str,
    typer.Option("--registry", envvar="WEIGHTPRINT_REGISTRY", help="SQLAlchemy URL of the registry (sqlite:///..., postgresql+psycopg://...)."),
]
KeyFileOpt = Annotated[
    Path,
    typer.Option("--key-file", envvar="WEIGHTPRINT_KEY_FILE", help="Master secret file (created by `mark init`, mode 0600)."),
]
DEFAULT_REGISTRY = "sqlite:///weightprint-registry.db"
DEFAULT_KEY_FILE = Path("weightprint-master.key")

@mark_app.command("init")
@handles_errors
def mark_init(
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key_file: KeyFileOpt = DEFAULT_KEY_FILE,
    as_json: JsonOpt = False,
) -> None:
    """Create a registry of issued copies and a master secret (key file, mode 0600)."""
    from weightprint.mark.api import init_registry

    info = init_registry(registry, key_file)
    if as_json:
        emit_json(info)
        return
    what = "created" if info.created_registry else "reused"
    console.print(
        f"{what} registry {info.to_dict()['url']} (id {info.registry_id}, scheme {info.scheme_version}); "
        f"key file {info.key_file} ({'new' if info.created_key else 'existing'}, fingerprint {info.key_fingerprint})",
        markup=False,
        highlight=False,
    )


@mark_app.command("issue")
@handles_errors
def mark_issue(
    source: Annotated[Path, typer.Argument(help="The original model (any format).")],
    recipient: Annotated[str, typer.Option("--recipient", help="Who receives this copy.")],
    out: Annotated[Path, typer.Option("--out", help="Output GGUF file.")],
    type_: Annotated[str, typer.Option("--type", help="GGUF type of the copy (Q4_K_M, Q8_0, ...).")] = "Q4_K_M",
    delta: Annotated[float, typer.Option(
        "--delta", help="Mark strength: the band around rounding boundaries the key steers, in levels "
                        "(about this fraction of weights change level). Smaller keeps greedy outputs closer "
                        "to the unmarked copy; larger survives heavier attacks. See docs/watermark.md.")] = DEFAULT_MARK_DELTA,
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key_file: KeyFileOpt = DEFAULT_KEY_FILE,
    as_json: JsonOpt = False,
) -> None:
    """Write RECIPIENT's own watermarked, quantized copy of SOURCE and record it."""
    from weightprint.mark.api import issue_copy

    with progress_bar(f"issuing {recipient}") as progress:
        result = issue_copy(source, recipient, type_, out, registry_url=registry, key_file=key_file, delta=delta,
                            progress=progress)
    if as_json:
        emit_json(result)
        return
    console.print(
        f"issued {result.output} to `{result.recipient}` ({result.file_type}, issue {result.issue_id}, "
        f"{result.n_marked_weights:,} weights in {result.n_marked_tensors} tensors carry the mark)",
        markup=False,
        highlight=False,
    )


@mark_app.command("trace")
@handles_errors
def mark_trace(
    leaked: Annotated[Path, typer.Argument(help="The leaked model (GGUF of any type, safetensors, HF directory).")],
    source: Annotated[Path, typer.Option("--source", help="The original model the copies were issued from.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key_file: KeyFileOpt = DEFAULT_KEY_FILE,
    alpha: Annotated[float, typer.Option("--alpha", help="False-accusation probability bound.")] = 1e-9,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Name the recipient whose copy LEAKED came from, with a false-accusation bound."""
    from weightprint.mark.api import trace_leak

    with progress_bar("tracing") as progress:
        verdict = trace_leak(leaked, source=source, registry_url=registry, key_file=key_file, alpha=alpha, progress=progress)
    write_report(html, f"Leak trace: {leaked.name}", verdict)
    if as_json:
        emit_json(verdict)
    else:
        t = Table("recipient", "issue", "z", "p", "p (corrected)", "")
        for test in sorted(verdict.tests, key=lambda x: x.result.log10_pvalue):
            t.add_row(test.recipient, test.issue_id, f"{test.result.statistic:.2f}", test.result.pvalue_text(),
                      format_pvalue(test.log10_pvalue_bonferroni), "ACCUSED" if test.accused else "")
        console.print(t)
        console.print(verdict.summary(), markup=False, highlight=False)
    finish(verdict)


@mark_app.command("verify")
@handles_errors
def mark_verify(
    path: Annotated[Path, typer.Argument(help="A model file to check against the registry.")],
    source: Annotated[Optional[Path], typer.Option("--source", help="The original (default: the path recorded at issue time).")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key_file: KeyFileOpt = DEFAULT_KEY_FILE,
    alpha: Annotated[float, typer.Option("--alpha", help="False-accusation probability bound.")] = 1e-9,
    html: HtmlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Is FILE an issued copy? By sha256 first (exact copy), then by watermark."""
    from weightprint.mark.api import verify_file

    result = verify_file(path, registry_url=registry, key_file=key_file, source=source, alpha=alpha)
    write_report(html, f"Verify: {path.name}", result)
    if as_json:
        emit_json(result)
    else:
        say(result.summary())
    finish(result)
