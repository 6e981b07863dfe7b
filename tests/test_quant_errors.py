"""Error behaviour of weightprint.quant: exact one-line messages, the right exception classes."""

from __future__ import annotations

import numpy as np
import pytest

from weightprint.constants import QType
from weightprint.errors import NonFiniteError, ShapeMismatchError, UnsupportedQuantType, WeightprintError
from weightprint.quant import QUANTIZABLE, dequantize, kernel, quantize, row_bytes, supports_quantize
from weightprint.quant.base import QuantKernel


def _msg(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def test_unknown_type_id() -> None:
    with pytest.raises(UnsupportedQuantType) as e:
        quantize(np.zeros((1, 32), np.float32), 99)
    assert _msg(e) == "unknown quantization type id 99"
    with pytest.raises(UnsupportedQuantType) as e:
        dequantize(np.zeros((1, 34), np.uint8), 99)
    assert _msg(e) == "unknown quantization type id 99"


def test_unknown_type_name() -> None:
    with pytest.raises(UnsupportedQuantType) as e:
        kernel("Q9_K")
    assert _msg(e) == "unknown quantization type `Q9_K`"


def test_dequantize_only_type_refused_for_quantize() -> None:
    with pytest.raises(UnsupportedQuantType) as e:
        quantize(np.zeros((1, 256), np.float32), QType.IQ2_XS)
    assert _msg(e) == "quantization to IQ2_XS is not supported (dequantize only)"
    assert isinstance(e.value, ValueError) and isinstance(e.value, WeightprintError)
    with pytest.raises(UnsupportedQuantType) as e:
        kernel(QType.IQ2_XS).quantize_blocks(np.zeros((1, 256), np.float32))
    assert _msg(e) == "quantization to IQ2_XS is not supported (dequantize only)"


def test_type_without_kernel() -> None:
    with pytest.raises(UnsupportedQuantType) as e:
        kernel(QType.Q8_K)
    assert _msg(e) == "quantization type Q8_K is not supported"
    assert supports_quantize(QType.Q8_K) is False
    assert supports_quantize(12345) is False


def test_row_not_multiple_of_block() -> None:
    with pytest.raises(ShapeMismatchError) as e:
        quantize(np.zeros((2, 100), np.float32), QType.Q4_K)
    assert _msg(e) == "row size 100 is not a multiple of Q4_K block size 256"
    with pytest.raises(ShapeMismatchError) as e:
        quantize(np.zeros((2, 100), np.float32), "q8_0", name="blk.0.attn_q.weight")
    assert _msg(e) == "blk.0.attn_q.weight: row size 100 is not a multiple of Q8_0 block size 32"
    with pytest.raises(ShapeMismatchError) as e:
        row_bytes(QType.Q6_K, 576)
    assert _msg(e) == "row size 576 is not a multiple of Q6_K block size 256"


def test_non_finite_values_counted() -> None:
    x = np.ones((2, 256), np.float32)
    x[0, 3] = np.nan
    x[1, 7] = np.inf
    x[1, 9] = -np.inf
    with pytest.raises(NonFiniteError) as e:
        quantize(x, QType.Q4_K, name="w")
    assert _msg(e) == "w: 3 non-finite values (NaN or infinity) in a tensor of 512 weights; cannot quantize to Q4_K"
    assert isinstance(e.value, ValueError)
    # F32 stores the values as they are
    assert np.array_equal(quantize(x, QType.F32).view(np.float32), x, equal_nan=True)


def test_dequantize_partial_block() -> None:
    with pytest.raises(ShapeMismatchError) as e:
        dequantize(np.zeros((3, 100), np.uint8), QType.Q4_K)
    assert _msg(e) == "row of 100 bytes is not a multiple of Q4_K block size 144 bytes"


def test_dequantize_wrong_dtype() -> None:
    with pytest.raises(ShapeMismatchError) as e:
        dequantize(np.zeros((1, 36), np.float32), QType.Q4_0)
    assert _msg(e) == "Q4_0 data must be uint8 bytes, got dtype float32"
    with pytest.raises(ShapeMismatchError) as e:
        dequantize(np.zeros((1, 4), np.float16), QType.F32)
    assert _msg(e) == "F32 data must be uint8 bytes, got dtype float16"


def test_dequantize_shape_mismatch() -> None:
    with pytest.raises(ShapeMismatchError) as e:
        dequantize(np.zeros((2, 34), np.uint8), QType.Q8_0, shape=(3, 32))
    assert _msg(e) == "shape (3, 32) holds 96 weights, the Q8_0 data holds 64"


def test_registry_refuses_second_kernel() -> None:
    with pytest.raises(TypeError, match="already registered"):

        class Again(QuantKernel, qtype=QType.Q4_K):  # noqa: F841
            pass


def test_output_shapes_and_api() -> None:
    x = np.zeros((3, 2, 512), np.float32)
    assert quantize(x, QType.Q4_K).shape == (3, 2, 288)
    assert quantize(x[0, 0], QType.Q8_0).shape == (544,)
    assert quantize(x, QType.F16).dtype == np.uint8
    assert row_bytes("Q5_K", 512) == 352
    assert QType.Q4_K in QUANTIZABLE and QType.IQ4_NL not in QUANTIZABLE
    assert dequantize(quantize(x, QType.Q4_K), QType.Q4_K).shape == (3, 2, 512)


def test_read_only_and_strided_inputs(tmp_path) -> None:
    """Memory-mapped (read-only) bytes and non-contiguous float views are accepted."""
    x = np.random.default_rng(5).standard_normal((4, 512)).astype(np.float32)
    q = quantize(x, QType.Q6_K)
    path = tmp_path / "q6k.bin"
    q.tofile(path)
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=q.shape)
    assert np.array_equal(dequantize(mm, QType.Q6_K), dequantize(q, QType.Q6_K))
    wide = np.zeros((4, 1024), np.float32)
    wide[:, ::2] = x
    assert np.array_equal(quantize(wide[:, ::2], QType.Q4_K), quantize(x, QType.Q4_K))
    assert np.array_equal(quantize(x.astype(np.float64), QType.Q4_K), quantize(x, QType.Q4_K))


def test_dequantize_into_out_buffer() -> None:
    x = np.random.default_rng(6).standard_normal((3, 512)).astype(np.float32)
    for qt in (QType.Q4_K, QType.Q8_0, QType.BF16, QType.F16, QType.F32, QType.IQ4_NL):
        data = quantize(x, qt) if qt in QUANTIZABLE else np.zeros((3, 512 // 32 * 18), np.uint8)
        buf = np.full(x.size, np.nan, dtype=np.float32)
        got = dequantize(data, qt, out=buf)
        assert got is buf
        assert np.array_equal(buf.reshape(x.shape), dequantize(data, qt))
    with pytest.raises(ShapeMismatchError) as e:
        dequantize(quantize(x, QType.Q8_0), QType.Q8_0, out=np.empty(10, np.float32))
    assert _msg(e) == "`out` must be a writeable C-contiguous float32 array of 1536 elements, got float32 of 10 elements"
