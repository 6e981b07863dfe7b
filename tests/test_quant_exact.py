"""Bit-exactness of weightprint.quant against llama.cpp's own ggml (ctypes, from the llama_cpp wheel).

H0 (what each test checks): our bytes equal ``ggml_quantize_chunk(type, x, imatrix=NULL)`` and our
floats equal ggml's ``to_float``, for every quantizable type. Alternative: at least one block
differs; the failure message names the bad-block count and the worst block.
"""

from __future__ import annotations

import numpy as np
import pytest

from _fixtures_quant import SMOLLM2_PICKS, compare_blocks, real_tensors, synthetic_cases
from weightprint.constants import QType
from weightprint.quant import QUANTIZABLE, dequantize, kernel, quantize
from weightprint.testing import ggml_ref

_reason = ggml_ref.unavailable_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"llama.cpp reference unavailable: {_reason}")

TYPES = sorted(QUANTIZABLE, key=int)
CASES = synthetic_cases()


def _check(x: np.ndarray, qt: QType, label: str) -> None:
    k = kernel(qt)
    ours = quantize(x, qt)
    ref = ggml_ref.quantize(x, qt)
    report = compare_blocks(ours, ref, k.type_size, f"{label} {qt.name} quantize")
    assert report is None, report
    ours_f = dequantize(ours, qt)
    ref_f = ggml_ref.dequantize(ref, qt)
    same = ours_f.view(np.uint32) == ref_f.view(np.uint32)
    assert same.all(), (
        f"{label} {qt.name} dequantize: {int((~same).sum())} of {same.size} values differ;"
        f" first at {np.argwhere(~same)[0].tolist()}"
    )


def test_all_thirteen_types_are_quantizable():
    names = {q.name for q in TYPES}
    assert names == {
        "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    }


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("qt", TYPES, ids=lambda q: q.name)
def test_synthetic_bit_exact(qt: QType, case: str) -> None:
    _check(CASES[case], qt, case)


@pytest.mark.parametrize("qt", TYPES, ids=lambda q: q.name)
def test_reference_can_disagree(qt: QType) -> None:
    """The comparison is able to fail: one flipped quant bit is reported with its block."""
    x = CASES["normal"][:2]
    k = kernel(qt)
    ref = ggml_ref.quantize(x, qt)
    tampered = ref.copy()
    tampered.reshape(-1, k.type_size)[1, k.type_size - 1] ^= 1
    report = compare_blocks(tampered, ref, k.type_size, "tampered")
    assert report is not None and "1 of" in report and "worst block 1" in report


@pytest.fixture(scope="module")
def smollm2_weights(smollm2) -> dict[str, np.ndarray]:
    """SmolLM2 tensors dequantized by gguf-py (Q4_1, Q8_0, F32), as float32 rows of 256."""
    import gguf.quants

    out = {}
    for name, (qt, raw, _shape) in real_tensors(smollm2, SMOLLM2_PICKS).items():
        vals = np.asarray(gguf.quants.dequantize(raw, qt), dtype=np.float32).reshape(-1)
        out[name] = vals[: vals.size // 256 * 256].reshape(-1, 256)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("qt", TYPES, ids=lambda q: q.name)
def test_smollm2_tensors_bit_exact(smollm2_weights, qt: QType) -> None:
    for name, x in smollm2_weights.items():
        _check(x[:1024], qt, f"SmolLM2 {name}")


@pytest.mark.slow
def test_smollm2_requantize_is_identity(smollm2) -> None:
    """Dequantize -> quantize of the stored Q4_1 / Q8_0 tensors gives back the stored bytes."""
    for name, (qt, raw, _shape) in real_tensors(smollm2, SMOLLM2_PICKS).items():
        if qt not in (QType.Q4_1, QType.Q8_0):
            continue
        again = quantize(dequantize(raw, qt), qt)
        report = compare_blocks(again, raw, kernel(qt).type_size, f"SmolLM2 {name} requantize")
        assert report is None, report
