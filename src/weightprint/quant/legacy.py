"""Plain float types and the legacy 32-weight block quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).

Quantizers port llama.cpp's ``quantize_row_*_ref`` (``ggml/src/ggml-quants.c``) operation by
operation in float32; they are bit-exact with ``ggml_quantize_chunk(type, ..., imatrix=NULL)``.
Dequantizers compute what ``dequantize_row_*`` and gguf-py compute, in the same float32 order.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from weightprint.constants import QType
from weightprint.quant.base import (
    F32,
    NumbaKernel,
    QuantKernel,
    c_float_to_int32,
    c_roundf,
    c_to_int8,
    keyed_level,
    _out,
    write_fp16,
)

_njit = numba.njit(cache=True, nogil=True)


# ------------------------------------------------------------------------------ plain floats


class F32Kernel(QuantKernel, qtype=QType.F32):
    """float32, little-endian, 4 bytes per weight (block of 1)."""

    supports_quantize = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, dirs: np.ndarray | None = None, delta: float = 0.0) -> np.ndarray:
        return np.ascontiguousarray(blocks, dtype="<f4").view(np.uint8).reshape(-1, 4)

    @classmethod
    def dequantize_blocks(cls, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = _out(out, data.shape[0], 1)
        y[:] = np.ascontiguousarray(data).view("<f4").reshape(-1, 1)
        return y


@_njit
def _half_bits_software(src, dst):
    """float32 ``src`` -> float16 bit patterns in ``dst`` (uint16), rounding to nearest even as
    numpy's ``astype(np.float16)`` and ``GGML_FP32_TO_FP16`` do; returns how many values were
    refused (NaN, infinity or ``|x| > 65504``), whose ``dst`` entries are left unspecified.

    One integer pass, no temporaries: several times faster than numpy's cast plus its checks.
    """
    bits = src.view(np.uint32)
    refused = 0
    for i in range(bits.size):
        f = bits[i]
        sign = np.uint16((f >> 16) & 0x8000)
        a = f & 0x7FFFFFFF
        if a > 0x477FE000:  # 65504 (largest half) < |x|, or inf/NaN
            refused += 1
            continue
        if a < 0x38800000:  # below 2**-14: subnormal half or zero
            if a < 0x33000000:  # below 2**-25: rounds to zero
                dst[i] = sign
                continue
            e = a >> 23
            sig = (a & 0x007FFFFF) | 0x00800000
            shift = 126 - e  # x = sig * 2**(e - 150) and a subnormal half is k * 2**-24
            half = sig >> shift
            rest = sig & ((np.uint32(1) << shift) - 1)
            mid = np.uint32(1) << (shift - 1)
            if rest > mid or (rest == mid and (half & 1)):
                half += 1
            dst[i] = sign | np.uint16(half)
            continue
        # normal: rebias the exponent, round the mantissa to 10 bits (a carry bumps the exponent)
        h = ((a - 0x38000000) >> 13)
        rest = a & 0x1FFF
        if rest > 0x1000 or (rest == 0x1000 and (h & 1)):
            h += 1
        dst[i] = sign | np.uint16(h)
    return refused


def _hardware_half() -> bool:
    """Whether LLVM lowers a float -> half truncation to one instruction here: F16C on x86-64
    (every CPU since 2012), native on AArch64. Elsewhere it would call a compiler-rt helper that
    the JIT may not link."""
    import platform

    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    if machine not in ("x86_64", "amd64"):
        return False
    import llvmlite.binding as llvm

    return "+f16c" in llvm.get_host_cpu_features().flatten().split(",")


@intrinsic
def _to_half_bits(typingctx, x):  # noqa: ARG001
    """float32 -> float16 bit pattern by LLVM's ``fptrunc`` (the hardware's conversion: round to
    nearest even, as numpy's ``astype(np.float16)``)."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@_njit
def _half_bits_hardware(src, dst):
    """:func:`_half_bits_software`'s contract with the hardware conversion (~3x faster)."""
    refused = 0
    for i in range(src.size):
        x = src[i]
        if not abs(x) <= np.float32(65504.0):  # NaN compares false
            refused += 1
        dst[i] = _to_half_bits(x)
    return refused


half_bits_checked = _half_bits_hardware if _hardware_half() else _half_bits_software
"""float32 ``src`` -> float16 bit patterns in ``dst`` (uint16), rounding to nearest even; returns
how many values were refused (NaN, infinity or ``|x| > 65504``), whose ``dst`` entries are
unspecified. The hardware conversion where LLVM has one, else the integer version; the tests
check both against numpy."""


class F16Kernel(QuantKernel, qtype=QType.F16):
    """IEEE half, little-endian, 2 bytes per weight; rounding to nearest even as ``GGML_FP32_TO_FP16``."""

    supports_quantize = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, dirs: np.ndarray | None = None, delta: float = 0.0) -> np.ndarray:
        with np.errstate(over="ignore"):  # |x| > 65504 becomes inf, as in GGML_FP32_TO_FP16
            half = np.ascontiguousarray(blocks, dtype=np.float32).astype("<f2")
        return half.view(np.uint8).reshape(-1, 2)

    @classmethod
    def dequantize_blocks(cls, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = _out(out, data.shape[0], 1)
        y[:] = np.ascontiguousarray(data).view("<f2").reshape(-1, 1)
        return y


class BF16Kernel(QuantKernel, qtype=QType.BF16):
    """bfloat16 (high half of a float32), little-endian, 2 bytes per weight.

    Rounding as llama.cpp's ``ggml_compute_fp32_to_bf16``: nearest even, NaN forced quiet.
    """

    supports_quantize = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, dirs: np.ndarray | None = None, delta: float = 0.0) -> np.ndarray:
        u = np.ascontiguousarray(blocks, dtype=np.float32).view(np.uint32)
        rounded = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype("<u2")
        nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
        if nan.any():
            rounded[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(64)).astype("<u2")
        return rounded.view(np.uint8).reshape(-1, 2)

    @classmethod
    def dequantize_blocks(cls, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = _out(out, data.shape[0], 1)
        y.view(np.uint32)[:] = np.ascontiguousarray(data).view("<u2").reshape(-1, 1)
        y.view(np.uint32)[:] <<= np.uint32(16)
        return y


# ------------------------------------------------------------------------------ shared


@_njit
def _signed_absmax(row):
    """The value of largest magnitude (the first one, on ties), as ggml's ``quantize_row_q*_0_ref``."""
    amax = F32(0.0)
    vmax = F32(0.0)
    for j in range(row.shape[0]):
        v = row[j]
        if amax < abs(v):
            amax = abs(v)
            vmax = v
    return vmax


@_njit
def _min_max(row):
    """``(min, max)`` of a block, as ggml's ``quantize_row_q*_1_ref``."""
    vmin = F32(3.4028234663852886e38)
    vmax = F32(-3.4028234663852886e38)
    for j in range(row.shape[0]):
        v = row[j]
        if v < vmin:
            vmin = v
        if v > vmax:
            vmax = v
    return vmin, vmax


@_njit
def _scales(data, H, off):
    """The fp16 at byte ``off`` of every block, as float32 (a separate pass vectorizes the rest)."""
    nb = data.shape[0]
    ds = np.empty(nb, dtype=np.float32)
    for i in range(nb):
        ds[i] = H[np.int64(data[i, off]) | (np.int64(data[i, off + 1]) << 8)]
    return ds


@_njit
def _high_bits(data, off):
    """The little-endian uint32 at byte ``off`` of every block (Q5_0/Q5_1 ``qh``)."""
    nb = data.shape[0]
    qh = np.empty(nb, dtype=np.int64)
    for i in range(nb):
        qh[i] = (
            np.int64(data[i, off])
            | (np.int64(data[i, off + 1]) << 8)
            | (np.int64(data[i, off + 2]) << 16)
            | (np.int64(data[i, off + 3]) << 24)
        )
    return qh


# ------------------------------------------------------------------------------ Q4_0


@_njit
def _quantize_q4_0(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 18), dtype=np.uint8)
    for i in range(nb):
        vmax = _signed_absmax(x[i])
        d = F32(vmax / F32(-8.0))
        idv = F32(F32(1.0) / d) if d != 0 else F32(0.0)
        write_fp16(out, i, 0, d)
        for j in range(16):
            x0 = F32(x[i, j] * idv)
            x1 = F32(x[i, j + 16] * idv)
            xi0 = min(15, c_to_int8(c_float_to_int32(F32(x0 + F32(8.5))))) & 0xFF
            xi1 = min(15, c_to_int8(c_float_to_int32(F32(x1 + F32(8.5))))) & 0xFF
            if keyed:
                xi0 = keyed_level(float(x0) + 8.0, xi0, 0, 15, dirs[i, j], delta)
                xi1 = keyed_level(float(x1) + 8.0, xi1, 0, 15, dirs[i, j + 16], delta)
            out[i, 2 + j] = (xi0 | (xi1 << 4)) & 0xFF
    return out


@_njit
def _dequantize_q4_0(data, H, y):
    nb = data.shape[0]
    ds = _scales(data, H, 0)
    qs = data[:, 2:18]
    for i in range(nb):
        d = ds[i]
        for j in range(16):
            q = np.int32(qs[i, j])
            y[i, j] = F32(F32((q & 0xF) - 8) * d)
            y[i, j + 16] = F32(F32((q >> 4) - 8) * d)
    return y


class Q4_0(NumbaKernel, qtype=QType.Q4_0):
    """4-bit, symmetric, 32 weights in 18 bytes.

    Block layout: ``d: fp16`` (bytes 0-1), ``qs: uint8[16]`` (bytes 2-17); weight ``j < 16`` is the
    low nibble of ``qs[j]``, weight ``j + 16`` the high nibble; ``w = (q - 8) * d``.
    """

    quantize_fn = staticmethod(_quantize_q4_0)
    dequantize_fn = staticmethod(_dequantize_q4_0)


# ------------------------------------------------------------------------------ Q4_1


@_njit
def _quantize_q4_1(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 20), dtype=np.uint8)
    for i in range(nb):
        vmin, vmax = _min_max(x[i])
        d = F32(F32(vmax - vmin) / F32(15.0))
        idv = F32(F32(1.0) / d) if d != 0 else F32(0.0)
        write_fp16(out, i, 0, d)
        write_fp16(out, i, 2, vmin)
        for j in range(16):
            x0 = F32(F32(x[i, j] - vmin) * idv)
            x1 = F32(F32(x[i, j + 16] - vmin) * idv)
            xi0 = min(15, c_to_int8(c_float_to_int32(F32(x0 + F32(0.5))))) & 0xFF
            xi1 = min(15, c_to_int8(c_float_to_int32(F32(x1 + F32(0.5))))) & 0xFF
            if keyed:
                xi0 = keyed_level(x0, xi0, 0, 15, dirs[i, j], delta)
                xi1 = keyed_level(x1, xi1, 0, 15, dirs[i, j + 16], delta)
            out[i, 4 + j] = (xi0 | (xi1 << 4)) & 0xFF
    return out


@_njit
def _dequantize_q4_1(data, H, y):
    nb = data.shape[0]
    ds = _scales(data, H, 0)
    ms = _scales(data, H, 2)
    qs = data[:, 4:20]
    for i in range(nb):
        d = ds[i]
        m = ms[i]
        for j in range(16):
            q = np.int32(qs[i, j])
            y[i, j] = F32(F32(F32(q & 0xF) * d) + m)
            y[i, j + 16] = F32(F32(F32(q >> 4) * d) + m)
    return y


class Q4_1(NumbaKernel, qtype=QType.Q4_1):
    """4-bit with offset, 32 weights in 20 bytes.

    Block layout: ``d: fp16`` (0-1), ``m: fp16`` (2-3), ``qs: uint8[16]`` (4-19), nibbles as in
    Q4_0; ``w = q * d + m``.
    """

    quantize_fn = staticmethod(_quantize_q4_1)
    dequantize_fn = staticmethod(_dequantize_q4_1)


# ------------------------------------------------------------------------------ Q5_0


@_njit
def _quantize_q5_0(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 22), dtype=np.uint8)
    for i in range(nb):
        vmax = _signed_absmax(x[i])
        d = F32(vmax / F32(-16.0))
        idv = F32(F32(1.0) / d) if d != 0 else F32(0.0)
        write_fp16(out, i, 0, d)
        qh = 0
        for j in range(16):
            x0 = F32(x[i, j] * idv)
            x1 = F32(x[i, j + 16] * idv)
            xi0 = min(31, c_to_int8(c_float_to_int32(F32(x0 + F32(16.5))))) & 0xFF
            xi1 = min(31, c_to_int8(c_float_to_int32(F32(x1 + F32(16.5))))) & 0xFF
            if keyed:
                xi0 = keyed_level(float(x0) + 16.0, xi0, 0, 31, dirs[i, j], delta)
                xi1 = keyed_level(float(x1) + 16.0, xi1, 0, 31, dirs[i, j + 16], delta)
            out[i, 6 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + 16)
        for b in range(4):
            out[i, 2 + b] = (qh >> (8 * b)) & 0xFF
    return out


@_njit
def _dequantize_q5_0(data, H, y):
    nb = data.shape[0]
    ds = _scales(data, H, 0)
    qhs = _high_bits(data, 2)
    qs = data[:, 6:22]
    for i in range(nb):
        d = ds[i]
        qh = qhs[i]
        for j in range(16):
            q = np.int32(qs[i, j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            y[i, j] = F32(F32(((q & 0xF) | h0) - 16) * d)
            y[i, j + 16] = F32(F32(((q >> 4) | h1) - 16) * d)
    return y


class Q5_0(NumbaKernel, qtype=QType.Q5_0):
    """5-bit, symmetric, 32 weights in 22 bytes.

    Block layout: ``d: fp16`` (0-1), ``qh: uint32`` little-endian (2-5; bit ``j`` = 5th bit of
    weight ``j``), ``qs: uint8[16]`` (6-21, nibbles as in Q4_0); ``w = (q - 16) * d``.
    """

    quantize_fn = staticmethod(_quantize_q5_0)
    dequantize_fn = staticmethod(_dequantize_q5_0)


# ------------------------------------------------------------------------------ Q5_1


@_njit
def _quantize_q5_1(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 24), dtype=np.uint8)
    for i in range(nb):
        vmin, vmax = _min_max(x[i])
        d = F32(F32(vmax - vmin) / F32(31.0))
        idv = F32(F32(1.0) / d) if d != 0 else F32(0.0)
        write_fp16(out, i, 0, d)
        write_fp16(out, i, 2, vmin)
        qh = 0
        for j in range(16):
            x0 = F32(F32(x[i, j] - vmin) * idv)
            x1 = F32(F32(x[i, j + 16] - vmin) * idv)
            xi0 = c_float_to_int32(F32(x0 + F32(0.5))) & 0xFF
            xi1 = c_float_to_int32(F32(x1 + F32(0.5))) & 0xFF
            if keyed:
                xi0 = keyed_level(x0, xi0, 0, 31, dirs[i, j], delta)
                xi1 = keyed_level(x1, xi1, 0, 31, dirs[i, j + 16], delta)
            out[i, 8 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
            qh |= ((xi0 & 0x10) >> 4) << j
            qh |= ((xi1 & 0x10) >> 4) << (j + 16)
        for b in range(4):
            out[i, 4 + b] = (qh >> (8 * b)) & 0xFF
    return out


@_njit
def _dequantize_q5_1(data, H, y):
    nb = data.shape[0]
    ds = _scales(data, H, 0)
    ms = _scales(data, H, 2)
    qhs = _high_bits(data, 4)
    qs = data[:, 8:24]
    for i in range(nb):
        d = ds[i]
        m = ms[i]
        qh = qhs[i]
        for j in range(16):
            q = np.int32(qs[i, j])
            h0 = ((qh >> j) << 4) & 0x10
            h1 = (qh >> (j + 12)) & 0x10
            y[i, j] = F32(F32(F32((q & 0xF) | h0) * d) + m)
            y[i, j + 16] = F32(F32(F32((q >> 4) | h1) * d) + m)
    return y


class Q5_1(NumbaKernel, qtype=QType.Q5_1):
    """5-bit with offset, 32 weights in 24 bytes.

    Block layout: ``d: fp16`` (0-1), ``m: fp16`` (2-3), ``qh: uint32`` LE (4-7), ``qs: uint8[16]``
    (8-23); ``w = q * d + m``.
    """

    quantize_fn = staticmethod(_quantize_q5_1)
    dequantize_fn = staticmethod(_dequantize_q5_1)


# ------------------------------------------------------------------------------ Q8_0


@_njit
def _quantize_q8_0(x, dirs, delta):
    nb = x.shape[0]
    keyed = dirs.shape[0] != 0
    out = np.zeros((nb, 34), dtype=np.uint8)
    for i in range(nb):
        amax = F32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[i, j]))
        d = F32(amax / F32(127.0))
        idv = F32(F32(1.0) / d) if d != 0 else F32(0.0)
        write_fp16(out, i, 0, d)
        for j in range(32):
            x0 = F32(x[i, j] * idv)
            q = c_float_to_int32(c_roundf(x0))
            if keyed:
                q = keyed_level(x0, q, -127, 127, dirs[i, j], delta)
            out[i, 2 + j] = q & 0xFF
    return out


@_njit
def _dequantize_q8_0(data, H, y):
    nb = data.shape[0]
    ds = _scales(data, H, 0)
    qs = data[:, 2:34]
    for i in range(nb):
        d = ds[i]
        for j in range(32):
            q = np.int32(qs[i, j])
            q = q - ((q & 0x80) << 1)  # int8 value of the byte
            y[i, j] = F32(F32(q) * d)
    return y


class Q8_0(NumbaKernel, qtype=QType.Q8_0):
    """8-bit, symmetric, 32 weights in 34 bytes.

    Block layout: ``d: fp16`` (0-1), ``qs: int8[32]`` (2-33); ``w = q * d``.
    """

    quantize_fn = staticmethod(_quantize_q8_0)
    dequantize_fn = staticmethod(_dequantize_q8_0)
