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
    rows = [
        ("format", result.format),
        ("architecture", result.architecture),
        ("name", result.name or "-"),
        ("parameters", f"{result.n_parameters:,}"),
        ("tensors", str(result.n_tensors)),
        ("file type", result.file_type or "-"),
        ("layers / hidden", f"{result.n_layers} / {result.hidden_size}"),
        ("context length", str(result.context_length)),
        ("tokenizer", f"{result.tokenizer_model} (pre={result.tokenizer_pre}), vocab {result.vocab_size}"),
        ("vocab sha256", result.tokenizer_sha256 or "-"),
        ("chat template", f"{result.chat_template_family} ({len(result.chat_template or '')} chars)"),
        ("size", _human_bytes(result.file_bytes)),
    ]
    if result.file_sha256:
        rows.append(("file sha256", result.file_sha256))
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
