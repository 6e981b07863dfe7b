"""`inspect` and `convert`: what a model file is, and turning it into another format or type."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from weightprint.cli._common import _human_bytes, JsonOpt, app, console, emit_json, handles_errors, progress_bar
from weightprint.errors import WeightprintError


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
