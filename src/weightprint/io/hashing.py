"""Content hashes of model files: one file, or a Hugging Face directory as a whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

from weightprint.errors import WeightprintError

MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".gguf")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file, streamed.

    Args:
        path (`str` or `Path`): the file.
        chunk (`int`, *optional*, defaults to 4 MiB): bytes read at a time.

    Returns:
        `str`: 64 lowercase hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: str | Path) -> str:
    """sha256 of a model file; for a directory, of its sorted (name, file sha256) list.

    A directory's digest covers its ``.safetensors``, ``.json`` and ``.gguf`` files (searched
    recursively), one line ``relative/posix/name\\0<file sha256>\\n`` each, sorted by path.

    Raises:
        `WeightprintError`: the path does not exist, or a directory holds no model files.
    """
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        h = hashlib.sha256()
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES)
        if not files:
            raise WeightprintError(f"directory {p} holds no model files")
        for f in files:
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
        return h.hexdigest()
    raise WeightprintError(f"model {p} not found")
