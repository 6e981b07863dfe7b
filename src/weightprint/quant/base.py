"""The kernel base class, its registry, and the scalar helpers that the numba kernels share.

A kernel is a class with two classmethods on whole blocks::

    class Q8_0(QuantKernel, qtype=QType.Q8_0):
        supports_quantize = True
        @classmethod
        def quantize_blocks(cls, blocks): ...    # float32[n, block_size] -> uint8[n, type_size]
        @classmethod
        def dequantize_blocks(cls, data): ...    # uint8[n, type_size] -> float32[n, block_size]

``block_size`` and ``type_size`` come from :data:`weightprint.constants.QUANT_SIZES`; a second
class for the same type is refused. What a type supports is declared (``supports_quantize``),
never found out by catching exceptions.

The helpers below reproduce llama.cpp's scalar semantics exactly: ``nearest_int`` (the
``+12582912.f`` trick), ``GGML_FP32_TO_FP16`` / ``GGML_FP16_TO_FP32`` (round to nearest even,
subnormals kept, ``-0.0`` keeps its sign) and C's float -> small-int casts on x86.

Numba caches compiled kernels on disk (``cache=True``) keyed on each kernel's own source file:
after editing a helper here, delete ``quant/__pycache__/*.nbi`` / ``*.nbc`` so the kernels in
``legacy.py`` / ``kquants.py`` that call it are recompiled.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.extending import intrinsic

from weightprint.constants import QUANT_SIZES, QType
from weightprint.errors import UnsupportedQuantType

__all__ = ["QuantKernel", "registry"]

_REGISTRY: dict[QType, type[QuantKernel]] = {}


def registry() -> dict[QType, type[QuantKernel]]:
    """A copy of the table ``QType -> kernel class`` (every registered type)."""
    return dict(_REGISTRY)


class QuantKernel:
    """One GGML tensor type: its block layout and its block (de)quantizer.

    Attributes
    ----------
    qtype : QType
        The on-disk type id.
    block_size : int
        Weights per block.
    type_size : int
        Bytes per block.
    supports_quantize : bool
        Whether :meth:`quantize_blocks` is implemented (bit-exact with llama.cpp's reference path).
    """

    qtype: ClassVar[QType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    supports_quantize: ClassVar[bool] = False

    def __init__(self) -> None:
        raise TypeError("quantization kernels are used through their classmethods, not instances")

    def __init_subclass__(cls, qtype: QType | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if qtype is None:  # an intermediate base class, not a type of its own
            return
        if qtype in _REGISTRY:
            raise TypeError(f"a kernel for {qtype.name} is already registered ({_REGISTRY[qtype].__name__})")
        cls.qtype = QType(qtype)
        cls.block_size, cls.type_size = QUANT_SIZES[cls.qtype]
        _REGISTRY[cls.qtype] = cls

    #: whether :meth:`quantize_blocks` takes keyed rounding directions (the grid types)
    supports_rounding: ClassVar[bool] = False

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, dirs: np.ndarray | None = None, delta: float = 0.0) -> np.ndarray:
        """Quantize ``float32[n, block_size]`` (C-contiguous) to ``uint8[n, type_size]``.

        ``dirs`` (``int8[n, block_size]``, values -1, 0, +1) and ``delta`` steer llama.cpp's final
        rounding (see :func:`keyed_level`); without them the bytes are llama.cpp's own.
        """
        raise UnsupportedQuantType(f"quantization to {cls.qtype.name} is not supported (dequantize only)")

    @classmethod
    def dequantize_blocks(cls, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Dequantize ``uint8[n, type_size]`` (C-contiguous) to ``float32[n, block_size]``.

        ``out``, when given, is a C-contiguous ``float32[n, block_size]`` array that receives the
        values (reusing a buffer avoids the page faults of a fresh allocation) and is returned.
        """
        raise NotImplementedError  # every registered kernel overrides this


def _out(out: np.ndarray | None, n_blocks: int, block_size: int) -> np.ndarray:
    """The output buffer of a dequantizer: ``out`` (checked by the caller) or a new array."""
    if out is None:
        return np.empty((n_blocks, block_size), dtype=np.float32)
    return out


class NumbaKernel(QuantKernel):
    """A kernel whose block math is two numba functions, named by the subclass.

    ``quantize_fn(blocks float32[n, block_size], dirs int8[n, block_size] or int8[0, 0], delta)
    -> uint8[n, type_size]`` and
    ``dequantize_fn(data uint8[n, type_size], FP16_TABLE, out float32[n, block_size])``.
    """

    quantize_fn: ClassVar[Any]
    dequantize_fn: ClassVar[Any]
    supports_quantize = True
    supports_rounding = True

    @classmethod
    def quantize_blocks(cls, blocks: np.ndarray, dirs: np.ndarray | None = None, delta: float = 0.0) -> np.ndarray:
        if dirs is None:
            return cls.quantize_fn(blocks, NO_DIRS, 0.0)
        if dirs.shape != blocks.shape or dirs.dtype != np.int8:
            raise ValueError(f"rounding directions must be int8{list(blocks.shape)}, got {dirs.dtype}{list(dirs.shape)}")
        return cls.quantize_fn(blocks, np.ascontiguousarray(dirs), float(delta))

    @classmethod
    def dequantize_blocks(cls, data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        y = _out(out, data.shape[0], cls.block_size)
        cls.dequantize_fn(data, FP16_TABLE, y)
        return y


# --------------------------------------------------------------------------------------------
# scalar helpers for the numba kernels (no fastmath anywhere: llama.cpp's float32 order matters)
# --------------------------------------------------------------------------------------------

_jit = numba.njit(cache=True, nogil=True)

F32 = np.float32


@intrinsic
def _f32_bits(typingctx, x):
    """Bit pattern of a float32 as int32 (C's ``memcpy(&i, &f, 4)``)."""
    if x != numba.types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(32))

    return numba.types.int32(numba.types.float32), codegen


@_jit
def nearest_int(fval):
    """llama.cpp ``nearest_int``: float32 ``fval + 12582912.f``, then the low 23 mantissa bits - 2**22.

    Equals round-half-even for ``|fval| <= 4194303``; outside that range (and for inf/NaN) it
    gives the same values as the C code, which only asserts the range in debug builds.
    """
    v = F32(F32(fval) + F32(12582912.0))
    return (np.int64(_f32_bits(v)) & 0x007FFFFF) - 0x00400000


@_jit
def fp32_to_fp16_bits(f):
    """``GGML_FP32_TO_FP16`` as an int (0..65535): round to nearest even, subnormals, -0.0."""
    x = float(F32(f))
    sign = 0x8000 if math.copysign(1.0, x) < 0.0 else 0
    a = abs(x)
    if a != a:
        return sign | 0x7E00
    if a >= 65520.0:
        return sign | 0x7C00
    if a < 6.103515625e-05:  # 2**-14: subnormal half
        return sign | int(np.rint(a * 16777216.0))
    m, e = math.frexp(a)  # a = m * 2**e; half exponent E = e - 1
    mant = int(np.rint((m * 2.0 - 1.0) * 1024.0))
    return sign | (((e - 1 + 15) << 10) + mant)


@_jit
def fp16_bits_to_fp32(h):
    """``GGML_FP16_TO_FP32`` of a half given as an int (0..65535)."""
    sign = -1.0 if (h & 0x8000) else 1.0
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        return F32(sign * mant * 5.9604644775390625e-08)
    if exp == 31:
        if mant == 0:
            return F32(sign * np.inf)
        return F32(np.nan)
    return F32(sign * (1024 + mant) * math.ldexp(1.0, exp - 25))


@_jit
def c_float_to_int32(v):
    """C's ``(int)v`` on x86 (``cvttss2si``): truncation; NaN and out-of-range give INT_MIN."""
    x = float(v)
    if x != x or x >= 2147483648.0 or x < -2147483648.0:
        return -2147483648
    return int(x)


@_jit
def c_to_int8(i):
    """Wrap an int to int8 as a C conversion does on two's-complement targets."""
    return ((i + 128) & 0xFF) - 128


@_jit
def c_roundf(v):
    """C ``roundf``: half away from zero (exact for float32 inputs)."""
    x = float(v)
    r = np.floor(abs(x) + 0.5)
    return F32(-r if x < 0.0 else r)


@_jit
def write_fp16(out, i, off, f):
    """Store ``GGML_FP32_TO_FP16(f)`` little-endian at ``out[i, off:off+2]``; return its float32 value."""
    h = fp32_to_fp16_bits(f)
    out[i, off] = h & 0xFF
    out[i, off + 1] = (h >> 8) & 0xFF
    return fp16_bits_to_fp32(h)


#: "no keyed rounding": the ``dirs`` argument of an unmarked quantization
NO_DIRS: np.ndarray = np.zeros((0, 0), dtype=np.int8)
NO_DIRS.setflags(write=False)

#: level coordinates closer than this to a rounding tie keep llama.cpp's own rounding
TIE_EPS = 1e-4


@_jit
def keyed_level(v, level, lo, hi, dirv, delta):
    """The level of a weight under keyed rounding.

    ``v`` is the weight's level coordinate (the float that llama.cpp rounds to ``level``; levels
    run ``lo..hi``). When ``v`` lies within ``delta`` of a rounding boundary, strictly off the
    tie (``TIE_EPS < |frac(v) - 1/2| < delta``), and both neighbouring levels exist, ``dirv``
    picks the level: ``floor(v) + 1`` for +1, ``floor(v)`` for -1. Otherwise, and for
    ``dirv == 0``, llama.cpp's ``level`` stands. Only the last rounding step of a quantizer is
    steered, so scales and minimums (and every weight away from a boundary) are llama.cpp's.
    """
    if dirv == 0:
        return level
    fv = float(v)
    fl = math.floor(fv)
    dist = abs(fv - fl - 0.5)
    if dist >= delta or dist < TIE_EPS:
        return level
    low = int(fl)
    if low < lo or low + 1 > hi:
        return level
    return low + 1 if dirv > 0 else low


#: float32 value of every half bit pattern (index = bits); numpy's conversion is exact, like ggml's
FP16_TABLE: np.ndarray = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
FP16_TABLE.setflags(write=False)
