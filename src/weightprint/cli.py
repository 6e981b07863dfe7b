"""The ``weightprint`` command line: a thin Typer layer over the library.

Each command parses its arguments, calls one library function, renders the result (a table
for people, ``--json`` for machines) and sets the exit code: 0 = no evidence / success,
1 = evidence found (a leak traced, lineage significant), 2 = error. Errors are one line on
stderr (``error: ...``, then ``hint: ...``), never a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from weightprint.constants import DEFAULT_MARK_DELTA
from weightprint.errors import WeightprintError
from weightprint.results import to_jsonable

app = typer.Typer(
    name="weightprint",
    help="Provenance of LLM weights: convert, watermark and trace, lineage tests.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
mark_app = typer.Typer(help="Issue watermarked copies to recipients and trace leaks.", no_args_is_help=True)
app.add_typer(mark_app, name="mark")

console = Console()
err_console = Console(stderr=True)

EXIT_OK, EXIT_EVIDENCE, EXIT_ERROR = 0, 1, 2


def _fail(message: str, hint: str | None = None) -> None:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    if hint:
        err_console.print("", markup=False)
        err_console.print(f"hint: {hint}", markup=False, highlight=False, soft_wrap=True)


def handles_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into one stderr line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except WeightprintError as e:
            _fail(e.message, e.hint)
            raise typer.Exit(EXIT_ERROR) from None
        except FileNotFoundError as e:
            _fail(f"{e.filename}: no such file or directory")
            raise typer.Exit(EXIT_ERROR) from None
        except PermissionError as e:
            _fail(f"{e.filename}: permission denied")
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as e:
            _fail(f"{getattr(e, 'filename', None) or ''}: {e.strerror or e}".lstrip(": "))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            _fail("interrupted")
            raise typer.Exit(130) from None

    return wrapper


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr, as a ``progress(done, total, description)`` callback."""
    quiet = os.environ.get("WEIGHTPRINT_QUIET") == "1"
    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, description=f"{description} {what}"[:80])

    with bar:
        yield update


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


# ---------------------------------------------------------------- inspect
@app.command()
@handles_errors
def inspect(
    path: Annotated[Path, typer.Argument(help="GGUF file, safetensors file or Hugging Face directory.")],
    sha256: Annotated[bool, typer.Option("--sha256", help="Also hash the whole file.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Architecture, parameters, tensor types, tokenizer and chat template of a model."""
    from weightprint.inspect_model import inspect_model

    result = inspect_model(path, sha256=sha256)
    if as_json:
        emit_json(result)
        return
    t = Table(title=str(path), show_header=False, box=None)
    rows = [(k, v) for k, v in result.facts() if k != "path"]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    tt = Table("type", "tensors", "elements", "bytes")
    for name, s in result.types.items():
        tt.add_row(name, str(s.count), f"{s.n_elements:,}", _human_bytes(s.nbytes))
    console.print(tt)


# ---------------------------------------------------------------- convert
class OutFormat(str, Enum):
    gguf = "gguf"
    hf = "hf"


class DType(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


@app.command()
@handles_errors
def convert(
    source: Annotated[Path, typer.Argument(help="GGUF file, safetensors file or Hugging Face directory.")],
    out: Annotated[Path, typer.Argument(help="Output GGUF file or Hugging Face directory.")],
    to: Annotated[OutFormat, typer.Option("--to", help="Output format.")] = OutFormat.gguf,
    type_: Annotated[
        Optional[str], typer.Option("--type", help="GGUF type: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K.")
    ] = None,
    dtype: Annotated[DType, typer.Option("--dtype", help="Weight dtype of a Hugging Face directory.")] = DType.float16,
    as_json: JsonOpt = False,
) -> None:
    """Convert between GGUF and Hugging Face safetensors, quantizing or dequantizing."""
    from weightprint.constants import parse_file_type
    from weightprint.convert import convert as do_convert

    if to is OutFormat.hf and type_ is not None:
        raise WeightprintError("`--type` applies to GGUF output; use `--dtype` with `--to hf`")
    file_type = parse_file_type(type_) if type_ else None
    with progress_bar("converting") as progress:
        result = do_convert(source, out, to=to.value, file_type=file_type, dtype=dtype.value, progress=progress)
    if as_json:
        emit_json(result)
        return
    counts = ", ".join(f"{k}×{v}" for k, v in sorted(result.type_counts.items()))
    console.print(
        f"wrote {result.output} ({result.to}{', ' + result.file_type if result.file_type else ''}): "
        f"{result.n_tensors} tensors, {result.n_parameters:,} parameters, {_human_bytes(result.output_bytes)}"
        + (f" [{counts}]" if counts else ""),
        markup=False,
        highlight=False,
    )


# ---------------------------------------------------------------- mark
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
DEFAULT_DELTA = DEFAULT_MARK_DELTA
HtmlOpt = Annotated[Optional[Path], typer.Option("--html", help="Also write an HTML report (and a .json beside it).")]


def _write_report(path: Path | None, title: str, *sections: Any) -> None:
    if path is None:
        return
    from weightprint.report import Report

    report = Report(title)
    for section in sections:
        report.add(section)
    report.write(path, path.with_suffix(".json"))
    err_console.print(f"report: {path}", markup=False, highlight=False)


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
                        "to the unmarked copy; larger survives heavier attacks. See docs/watermark.md.")] = DEFAULT_DELTA,
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
    from weightprint.report.sections import trace_section

    with progress_bar("tracing") as progress:
        verdict = trace_leak(leaked, source=source, registry_url=registry, key_file=key_file, alpha=alpha, progress=progress)
    _write_report(html, f"Leak trace: {leaked.name}", trace_section(verdict))
    if as_json:
        emit_json(verdict)
    else:
        t = Table("recipient", "issue", "z", "p", "p (corrected)", "")
        for test in sorted(verdict.tests, key=lambda x: x.result.log10_pvalue):
            from weightprint.results import format_pvalue

            t.add_row(test.recipient, test.issue_id, f"{test.result.statistic:.2f}", test.result.pvalue_text(),
                      format_pvalue(test.log10_pvalue_bonferroni), "ACCUSED" if test.accused else "")
        console.print(t)
        console.print(verdict.summary(), markup=False, highlight=False)
    raise typer.Exit(EXIT_EVIDENCE if verdict.accused else EXIT_OK)


@mark_app.command("verify")
@handles_errors
def mark_verify(
    path: Annotated[Path, typer.Argument(help="A model file to check against the registry.")],
    source: Annotated[Optional[Path], typer.Option("--source", help="The original (default: the path recorded at issue time).")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key_file: KeyFileOpt = DEFAULT_KEY_FILE,
    alpha: Annotated[float, typer.Option("--alpha", help="False-accusation probability bound.")] = 1e-9,
    as_json: JsonOpt = False,
) -> None:
    """Is FILE an issued copy? By sha256 first (exact copy), then by watermark."""
    from weightprint.mark.api import verify_file

    result = verify_file(path, registry_url=registry, key_file=key_file, source=source, alpha=alpha)
    if as_json:
        emit_json(result)
    else:
        if result.match == "exact" and result.record is not None:
            console.print(f"exact copy issued to `{result.record.recipient}` (issue {result.record.issue_id})", markup=False)
        elif result.match == "watermark" and result.verdict is not None:
            console.print(f"watermark: {result.verdict.summary()}", markup=False, highlight=False)
        else:
            console.print(f"no registered copy matches {path}" + (f" ({result.note})" if result.note else ""), markup=False)
    raise typer.Exit(EXIT_OK if result.match == "none" else EXIT_EVIDENCE)


# ---------------------------------------------------------------- lineage
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
        _write_report(html, f"Lineage search: {a.name}", *[lineage_section(r) for r in ranked[:10]])
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
        raise typer.Exit(EXIT_EVIDENCE if result.exact else EXIT_OK)
    from weightprint.lineage.compare import compare_models
    from weightprint.report.sections import lineage_section

    with progress_bar("comparing"):
        result = compare_models(a, b, rng=seed, alpha=alpha)
    _write_report(html, f"Lineage: {b.name} vs {a.name}", lineage_section(result))
    if as_json:
        emit_json(result)
    else:
        console.print(f"{result.verdict} ({format_pvalue(result.log10_pvalue)}): {result.reason}", markup=False, highlight=False)
        if result.components:
            t = Table("component", "statistic", "p", "method")
            for c in result.components:
                t.add_row(c.name, f"{c.statistic:.3g}", c.pvalue_text(), c.method)
            console.print(t)
    raise typer.Exit(EXIT_EVIDENCE if result.verdict == "derived" else EXIT_OK)


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


# ---------------------------------------------------------------- demo
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
