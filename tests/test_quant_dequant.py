"""Dequantization equals gguf-py's ``gguf.quants.dequantize`` (and llama.cpp's ``to_float``) exactly.

H0: for every type weightprint can read, our float32 values are bit-identical to gguf-py's on the
same bytes (random blocks, and real tensors of SmolLM2 Q4_1 and Gemma 3 Q4_K_M). Alternative: some
value differs (the message names how many and where).
"""

from __future__ import annotations

import gguf.quants
import numpy as np
import pytest

from _fixtures_quant import GEMMA_TYPES, SMOLLM2_PICKS, real_tensors
from weightprint.constants import QType
from weightprint.quant import QUANTIZABLE, dequantize, kernel
from weightprint.quant.base import registry
from weightprint.testing import ggml_ref

ALL_TYPES = sorted(registry(), key=int)


def _random_blocks(qt: QType, n_blocks: int = 96, seed: int = 7) -> np.ndarray:
    """Random bytes, with every fp16 scale field forced finite (top exponent bits cleared)."""
    k = kernel(qt)
    rng = np.random.default_rng(seed + int(qt))
    data = rng.integers(0, 256, (n_blocks, k.type_size), dtype=np.uint8)
    if qt == QType.F32:
        data.view(np.uint32)[:] &= np.uint32(0xBFFFFFFF)  # exponent < 255: finite
    elif qt in (QType.F16, QType.BF16):
        data[:, 1] &= 0xBF
    else:
        # scales sit in the first or last 2-4 bytes depending on the type: clear bit 6 of all
        # high bytes there so no scale is inf/NaN (payload bytes keep all 8 random bits)
        for off in (1, 3, k.type_size - 1, k.type_size - 3):
            data[:, off] &= 0xBF
    return data


def _assert_same(ours: np.ndarray, ref: np.ndarray, label: str) -> None:
    ours = np.asarray(ours, dtype=np.float32).reshape(-1)
    ref = np.asarray(ref, dtype=np.float32).reshape(-1)
    assert ours.shape == ref.shape, f"{label}: shape {ours.shape} != {ref.shape}"
    both_nan = np.isnan(ours) & np.isnan(ref)
    same = (ours.view(np.uint32) == ref.view(np.uint32)) | both_nan
    assert same.all(), (
        f"{label}: {int((~same).sum())} of {same.size} values differ; first at {int(np.argmin(same))}:"
        f" ours {ours[~same][:4].tolist()} reference {ref[~same][:4].tolist()}"
    )


@pytest.mark.parametrize("qt", ALL_TYPES, ids=lambda q: q.name)
def test_random_blocks_equal_gguf_py(qt: QType) -> None:
    data = _random_blocks(qt)
    ours = dequantize(data, qt)
    assert ours.dtype == np.float32 and ours.shape == (data.shape[0], kernel(qt).block_size)
    _assert_same(ours, gguf.quants.dequantize(data, qt), f"{qt.name} random")


@pytest.mark.skipif(not ggml_ref.available(), reason=f"llama.cpp reference unavailable: {ggml_ref.unavailable_reason()}")
@pytest.mark.parametrize("qt", sorted(QUANTIZABLE, key=int), ids=lambda q: q.name)
def test_random_blocks_equal_ggml(qt: QType) -> None:
    data = _random_blocks(qt)
    _assert_same(dequantize(data, qt), ggml_ref.dequantize(data.reshape(1, -1), qt), f"{qt.name} random vs ggml")


def test_comparison_can_fail() -> None:
    data = _random_blocks(QType.Q4_K)
    ours = dequantize(data, QType.Q4_K)
    ref = np.array(gguf.quants.dequantize(data, QType.Q4_K), dtype=np.float32).reshape(-1)
    ref[5] = np.nextafter(ref[5], np.float32(np.inf))
    with pytest.raises(AssertionError, match="1 of"):
        _assert_same(ours, ref, "tampered")


@pytest.mark.slow
def test_smollm2_tensors_equal_gguf_py(smollm2) -> None:
    tensors = real_tensors(smollm2, SMOLLM2_PICKS)
    assert {qt.name for qt, _, _ in tensors.values()} >= {"Q4_1", "Q8_0", "F32"}
    for name, (qt, raw, _shape) in tensors.items():
        _assert_same(dequantize(raw, qt), gguf.quants.dequantize(raw, qt), f"SmolLM2 {name} {qt.name}")


@pytest.mark.slow
def test_gemma3_tensors_equal_gguf_py(gemma3) -> None:
    tensors = real_tensors(gemma3, types=GEMMA_TYPES)
    assert {qt.name for qt, _, _ in tensors.values()} == set(GEMMA_TYPES)
    for name, (qt, raw, _shape) in tensors.items():
        _assert_same(dequantize(raw, qt), gguf.quants.dequantize(raw, qt), f"Gemma3 {name} {qt.name}")


def test_native_float_views_accepted() -> None:
    x = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32)
    assert np.array_equal(dequantize(x, QType.F32), x)
    assert np.array_equal(dequantize(x.astype(np.float16), QType.F16), x.astype(np.float16).astype(np.float32))
    bf = (x.view(np.uint32) >> 16).astype(np.uint16)
    assert np.array_equal(dequantize(bf, QType.BF16), (bf.astype(np.uint32) << 16).view(np.float32))


def test_shape_and_dtype_arguments() -> None:
    data = _random_blocks(QType.Q8_0, n_blocks=8)
    out = dequantize(data.reshape(2, -1), QType.Q8_0, shape=(4, 64), dtype=np.float16)
    assert out.shape == (4, 64) and out.dtype == np.float16
