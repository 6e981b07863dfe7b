"""llama.cpp's own quantizers and dequantizers, loaded through ctypes from the ``llama_cpp`` wheel.

The reference for bit-exact tests and for benchmarks. ``ggml_quantize_chunk(type, src, dst,
start, nrows, n_per_row, imatrix=NULL)`` is the function ``llama-quantize`` calls, and
``ggml_get_type_traits(type)->to_float`` is ggml's dequantizer. Both live in ``libggml-base``
inside the installed ``llama_cpp`` package (no build needed).

Examples
--------
>>> from weightprint.testing import ggml_ref
>>> if ggml_ref.available():
...     q = ggml_ref.quantize(x, QType.Q4_K)
"""

from __future__ import annotations

import ctypes
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from weightprint.constants import QUANT_SIZES, QType
from weightprint.errors import BackendError

__all__ = ["available", "dequantize", "library_path", "quantize", "unavailable_reason"]


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


def library_path() -> Path:
    """Path of ``libggml-base.so`` inside the installed ``llama_cpp`` package.

    Raises
    ------
    BackendError
        ``llama-cpp-python`` is not installed or ships no ggml-base library.
    """
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("package `llama-cpp-python` is not installed", hint="pip install llama-cpp-python==0.3.36")
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    for candidate in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll"):
        if (lib_dir / candidate).exists():
            return lib_dir / candidate
    raise BackendError(f"{lib_dir}: no libggml-base library in the llama_cpp package")


@lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise BackendError(f"{path}: cannot load: {e}") from e
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
    ]
    lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def unavailable_reason() -> str | None:
    """``None`` when the reference library loads, else why not (for ``pytest.skip``)."""
    try:
        _lib()
    except BackendError as e:
        return str(e)
    return None


def available() -> bool:
    """Whether llama.cpp's ggml-base can be loaded."""
    return unavailable_reason() is None


def quantize(data: np.ndarray, qtype: QType) -> np.ndarray:
    """``ggml_quantize_chunk(qtype, data, ..., imatrix=NULL)`` on a 2-D float32 array.

    Returns ``uint8[rows, row_bytes]``.
    """
    x = np.ascontiguousarray(data, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    rows, cols = x.shape
    block_size, type_size = QUANT_SIZES[QType(qtype)]
    out = np.zeros((rows, cols // block_size * type_size), dtype=np.uint8)
    lib = _lib()
    written = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    if written != out.size:
        raise BackendError(f"ggml_quantize_chunk({QType(qtype).name}) wrote {written} bytes, expected {out.size}")
    return out


def dequantize(data: np.ndarray, qtype: QType) -> np.ndarray:
    """ggml's ``to_float`` for ``qtype`` on ``uint8[rows, row_bytes]``; returns ``float32[rows, cols]``."""
    q = np.ascontiguousarray(data, dtype=np.uint8)
    if q.ndim == 1:
        q = q.reshape(1, -1)
    block_size, type_size = QUANT_SIZES[QType(qtype)]
    rows, nbytes = q.shape
    cols = nbytes // type_size * block_size
    if QType(qtype) == QType.F32:  # ggml has no to_float for F32: the bytes are the values
        return q.view(np.float32).reshape(rows, cols).copy()
    traits = _lib().ggml_get_type_traits(int(qtype)).contents
    if not traits.to_float:
        raise BackendError(f"ggml has no to_float for {QType(qtype).name}")
    fn = _TO_FLOAT(traits.to_float)
    out = np.empty((rows, cols), dtype=np.float32)
    fn(q.ctypes.data, out.ctypes.data, rows * cols)
    return out
