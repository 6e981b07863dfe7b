"""End to end: `convert` writes the same bytes as llama.cpp's own quantizer.

H0 of each comparison: none — these are exact equality checks. Source: SmolLM2-135M
dequantized to F16 by llama.cpp (cached once per machine); reference outputs come from
llama-cpp-python's `llama_model_quantize` (byte-identical to `llama-quantize`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from weightprint.constants import FileType
from weightprint.convert import convert
from weightprint.io import open_model
from weightprint.testing.models import cache_dir

pytestmark = pytest.mark.slow

BIT_EXACT_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]


@pytest.fixture(scope="session")
def smollm2_f16(smollm2: Path, llama_cpp_module) -> Path:
    from weightprint.testing.llama_ref import llama_quantize

    out = cache_dir() / "reference" / "smollm2-f16-llamacpp.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.gguf")
        llama_quantize(smollm2, tmp, FileType.F16)
        tmp.replace(out)
    return out


def _reference(src: Path, file_type: str) -> Path:
    from weightprint.testing.llama_ref import llama_quantize

    out = cache_dir() / "reference" / f"{src.stem}-{file_type}-llamacpp.gguf"
    if not out.exists():
        tmp = out.with_suffix(".tmp.gguf")
        llama_quantize(src, tmp, FileType[file_type])
        tmp.replace(out)
    return out


def _compare_files(ours: Path, ref: Path) -> list[str]:
    """Names of tensors whose type or stored bytes differ (empty list: identical)."""
    bad = []
    with open_model(ours) as a, open_model(ref) as b:
        assert a.tensor_names() == b.tensor_names()
        for name in a.tensor_names():
            ia, ib = a.info(name), b.info(name)
            if ia.qtype != ib.qtype or ia.shape != ib.shape:
                bad.append(f"{name}: {ia.qtype.name}{ia.shape} vs {ib.qtype.name}{ib.shape}")
                continue
            ra = np.asarray(a.raw(name)).view(np.uint8).ravel()
            rb = np.asarray(b.raw(name)).view(np.uint8).ravel()
            if not np.array_equal(ra, rb):
                nd = int(np.count_nonzero(ra != rb))
                bad.append(f"{name}: {ia.qtype.name} {nd} of {ra.size} bytes differ")
    return bad


@pytest.mark.parametrize("file_type", BIT_EXACT_TYPES)
def test_convert_matches_llama_quantize(file_type: str, smollm2_f16: Path, tmp_path: Path) -> None:
    ref = _reference(smollm2_f16, file_type)
    ours = tmp_path / f"ours-{file_type}.gguf"
    result = convert(smollm2_f16, ours, to="gguf", file_type=file_type)
    assert result.n_tensors == 272
    bad = _compare_files(ours, ref)
    assert not bad, f"{len(bad)} tensors differ from llama.cpp, e.g. {bad[:5]}"


def test_hf_gguf_hf_round_trip_is_exact(smollm2_f16: Path, tmp_path: Path) -> None:
    hf1 = tmp_path / "hf1"
    convert(smollm2_f16, hf1, to="hf", dtype="float16")
    gg = tmp_path / "rt.gguf"
    convert(hf1, gg, to="gguf", file_type="F16")
    hf2 = tmp_path / "hf2"
    convert(gg, hf2, to="hf", dtype="float16")
    with open_model(hf1) as a, open_model(hf2) as b:
        assert a.tensor_names() == b.tensor_names()
        for name in a.tensor_names():
            x, y = a.raw(name), b.raw(name)
            assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)), name
