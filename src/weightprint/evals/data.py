"""Loading benchmarks and question files, and the data shipped with the package.

:func:`load_benchmark` reads the items of a benchmark from JSON (a list, or an object holding
one list), JSON Lines, CSV or Parquet (Parquet needs ``pyarrow``), taking one text field of each
record. Errors name the file and the problem in one line.
"""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path
from typing import Any

from weightprint.errors import WeightprintError

__all__ = ["BenchmarkFormatError", "load_benchmark", "load_records", "shipped_benchmark", "shipped_path"]

FORMATS = ("json", "jsonl", "csv", "parquet")


class BenchmarkFormatError(WeightprintError, ValueError):
    """A benchmark or question file cannot be read as the expected format."""


def shipped_path(name: str) -> Path:
    """Path of a data file shipped in ``weightprint/evals/data``."""
    path = Path(str(resources.files("weightprint.evals") / "data" / name))
    if not path.is_file():
        raise WeightprintError(f"{path}: shipped data file missing")
    return path


def shipped_benchmark(split: str) -> list[str]:
    """The shipped contamination benchmark: ``split`` = ``"seen"`` (canonical order) or ``"unseen"``."""
    if split not in ("seen", "unseen"):
        raise WeightprintError(f"unknown split `{split}` (seen, unseen)")
    return load_benchmark(shipped_path(f"contamination_{split}.jsonl"), field="text")


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise BenchmarkFormatError(f"unknown benchmark format `{fmt}` (known: {', '.join(FORMATS)})")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise BenchmarkFormatError(f"{path}: cannot tell the format from the extension `{path.suffix}`",
                               hint=f"name it .json, .jsonl, .csv or .parquet, or pass the format ({', '.join(FORMATS)})")


def load_records(path: str | Path, *, fmt: str | None = None) -> list[Any]:
    """The records of a benchmark file, in file order (dicts, or strings for a JSON list of strings)."""
    path = Path(path)
    kind = _format_of(path, fmt)
    if kind == "parquet":
        try:
            import pyarrow.parquet as pq
        except ModuleNotFoundError as e:
            raise BenchmarkFormatError(f"{path}: reading Parquet needs `pyarrow`, which is not installed",
                                       hint="pip install pyarrow, or convert the file to JSON Lines") from e
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:
            raise BenchmarkFormatError(f"{path}: not a readable Parquet file: {e}") from e
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(f"{path}: not UTF-8 text (byte {e.start})") from e
    if kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise BenchmarkFormatError(f"{path}: a JSON object must hold exactly one list of records, found {len(lists)}")
            data = lists[0]
        if not isinstance(data, list):
            raise BenchmarkFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return data
    if kind == "jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkFormatError(f"{path}: invalid JSON on line {lineno}: {e.msg}") from e
        return records
    try:
        return list(csv.DictReader(text.splitlines()))
    except csv.Error as e:
        raise BenchmarkFormatError(f"{path}: invalid CSV: {e}") from e


def load_benchmark(path: str | Path, *, field: str = "text", fmt: str | None = None) -> list[str]:
    """The items of a benchmark: field ``field`` of every record, in file (canonical) order.

    Parameters
    ----------
    path : str or Path
        JSON (a list of records, or an object with one such list), JSON Lines, CSV or Parquet.
    field : str, *optional*, defaults to "text"
        The text field; a JSON list of plain strings needs none.
    fmt : {'json', 'jsonl', 'csv', 'parquet'}, *optional*
        The format; by default from the file extension.

    Returns
    -------
    list of str
        May be empty (callers decide whether that is an error).

    Raises
    ------
    BenchmarkFormatError
        Unreadable file, a record without ``field``, or a non-text value.
    """
    path = Path(path)
    items = []
    for i, rec in enumerate(load_records(path, fmt=fmt), 1):
        if isinstance(rec, str):
            items.append(rec)
            continue
        if not isinstance(rec, dict):
            raise BenchmarkFormatError(f"{path}: record {i} is a {type(rec).__name__}, not an object")
        if field not in rec:
            known = ", ".join(sorted(map(str, rec))[:8])
            raise BenchmarkFormatError(f"{path}: record {i} has no field `{field}` (fields: {known})",
                                       hint="choose the text field with --field")
        value = rec[field]
        if not isinstance(value, str):
            raise BenchmarkFormatError(f"{path}: record {i} field `{field}` is a {type(value).__name__}, not text")
        items.append(value)
    return items
