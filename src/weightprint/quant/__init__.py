"""Quantization kernels, one class per GGML type, registered in one table.

Public API
----------
``quantize(data, qtype)``
    float array ``(..., cols)`` -> ``uint8`` bytes ``(..., row_bytes)``, bit-exact with llama.cpp's
    ``ggml_quantize_chunk`` without an importance matrix. Always bytes, also for F32/F16/BF16.
``dequantize(data, qtype, shape=None, dtype=np.float32)``
    bytes ``(..., row_bytes)`` -> float ``(..., cols)``, equal to llama.cpp / gguf-py.
``kernel(qtype)``, ``supports_quantize(qtype)``, ``row_bytes(qtype, cols)``, ``QUANTIZABLE``.

Types with quantize and dequantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K. Dequantize only: the IQ*, TQ*, MXFP4 and NVFP4 types that gguf-py can read.

Examples
--------
>>> import numpy as np
>>> from weightprint.quant import quantize, dequantize
>>> w = np.random.default_rng(0).standard_normal((4, 256), dtype=np.float32)
>>> q = quantize(w, "Q4_K")
>>> q.shape, q.dtype
((4, 144), dtype('uint8'))
>>> dequantize(q, "Q4_K").shape
(4, 256)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from weightprint.constants import QUANT_SIZES, QType
from weightprint.errors import NonFiniteError, ShapeMismatchError, UnsupportedQuantType
from weightprint.quant import iquants as _iquants  # noqa: F401  (registers the dequantize-only types)
from weightprint.quant import kquants as _kquants  # noqa: F401
from weightprint.quant import legacy as _legacy  # noqa: F401
from weightprint.quant.base import QuantKernel, registry

__all__ = [
    "QUANTIZABLE",
    "KeyedRounding",
    "QuantKernel",
    "dequantize",
    "for_each_chunk",
    "kernel",
    "num_threads",
    "quantize",
    "row_bytes",
    "set_num_threads",
    "supports_quantize",
]

_KERNELS = registry()


@dataclass(frozen=True)
class KeyedRounding:
    """Values to quantize with steered rounding: what a tensor transform returns to mark a tensor.

    ``rounding`` (int8 -1/0/+1) has the shape of ``values``; see :func:`quantize`.
    """

    values: np.ndarray
    rounding: np.ndarray
    delta: float

#: Every type that :func:`quantize` accepts.
QUANTIZABLE: frozenset[QType] = frozenset(q for q, k in _KERNELS.items() if k.supports_quantize)

# weights converted to float32 per step; bounds the temporary memory of quantize()
_CHUNK_WEIGHTS = 1 << 20
# below this many weights per chunk, handing work to another thread costs more than it saves
_MIN_THREAD_WEIGHTS = 1 << 15

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_worker = threading.local()


def _forget_pool_in_child() -> None:
    """A forked child has none of the parent's pool threads (work sent there would wait forever): start afresh."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def num_threads() -> int:
    """Threads that :func:`quantize` and :func:`dequantize` use for one tensor.

    :func:`set_num_threads`, else the environment variable ``WEIGHTPRINT_THREADS``, else the
    CPUs this process may run on.
    """
    if _threads is not None:
        return _threads
    env = os.environ.get("WEIGHTPRINT_THREADS", "").strip()
    if env:
        if not (env.isdigit() and 0 < int(env) <= 4096):
            from weightprint.errors import WeightprintError

            raise WeightprintError(f"WEIGHTPRINT_THREADS={env!r}: expected a number of threads from 1 to 4096")
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Use ``n`` threads per tensor from now on (None: back to the default of :func:`num_threads`).

    The kernels release the GIL, so the threads run truly in parallel; the results do not depend
    on the number of threads (each block is computed the same way whichever thread does it).
    """
    global _threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    _threads = n


def _run_chunks(work: Callable[[int], None], starts: list[int]) -> None:
    """``work(start)`` for every start, on the shared pool when there is more than one."""
    global _pool
    n = num_threads()
    if n == 1 or len(starts) == 1 or getattr(_in_worker, "active", False):
        for start in starts:
            work(start)
        return

    def task(start: int) -> None:
        _in_worker.active = True  # a nested call runs inline instead of waiting on its own pool
        work(start)

    with _pool_lock:
        if _pool is None or _pool._max_workers != n:  # noqa: SLF001
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="weightprint-quant")
        pool = _pool
    # list(): wait for all, re-raise the first failure (in chunk order)
    list(pool.map(task, starts))


def for_each_chunk(n: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, stop)`` over ``[0, n)`` in chunks, on :func:`num_threads` threads.

    For elementwise numpy work on one tensor (numpy releases the GIL): chunks of at most a
    million elements, at least 32k, each thread getting some when ``n`` is large enough. The
    first exception is raised after every chunk has finished.
    """
    starts, step = _chunk_starts(n, 1)
    if n > 0:
        _run_chunks(lambda start: work(start, min(start + step, n)), starts)


def _chunk_starts(n_weights: int, block_size: int) -> tuple[list[int], int]:
    """Chunk starts and length (whole blocks): at most ``_CHUNK_WEIGHTS`` each, and enough
    chunks for every thread when the tensor is big enough to share."""
    blocks = max(1, n_weights // block_size)
    per = max(1, _CHUNK_WEIGHTS // block_size)
    threads = num_threads()
    if threads > 1:
        min_blocks = max(1, _MIN_THREAD_WEIGHTS // block_size)
        per = max(min(per, -(-blocks // threads)), min_blocks)
    step = per * block_size
    return list(range(0, n_weights, step)) or [0], step

# native (non-byte) dtypes accepted by dequantize() for the plain float types
_NATIVE_DTYPES = {
    QType.F32: np.dtype(np.float32),
    QType.F16: np.dtype(np.float16),
    QType.BF16: np.dtype(np.uint16),
}


def _resolve(qtype: QType | int | str) -> QType:
    if isinstance(qtype, QType):
        return qtype
    if isinstance(qtype, (int, np.integer)) and not isinstance(qtype, bool):
        try:
            return QType(int(qtype))
        except ValueError:
            raise UnsupportedQuantType(f"unknown quantization type id {int(qtype)}") from None
    if isinstance(qtype, str):
        try:
            return QType[qtype.strip().upper()]
        except KeyError:
            raise UnsupportedQuantType(f"unknown quantization type `{qtype}`") from None
    raise UnsupportedQuantType(f"unknown quantization type {qtype!r}")


def kernel(qtype: QType | int | str) -> type[QuantKernel]:
    """The kernel class of a type.

    Parameters
    ----------
    qtype : `QType`, `int` or `str`
        The type, by enum, on-disk id (``12``) or name (``"Q4_K"``).

    Returns
    -------
    type[QuantKernel]

    Raises
    ------
    UnsupportedQuantType
        The id or name is unknown, or weightprint has no kernel for the type (e.g. ``Q8_K``).
    """
    qt = _resolve(qtype)
    try:
        return _KERNELS[qt]
    except KeyError:
        raise UnsupportedQuantType(f"quantization type {qt.name} is not supported") from None


def supports_quantize(qtype: QType | int | str) -> bool:
    """Whether :func:`quantize` accepts the type (``False`` for unknown and dequantize-only types)."""
    try:
        return kernel(qtype).supports_quantize
    except UnsupportedQuantType:
        return False


def _prefix(name: str | None) -> str:
    return f"{name}: " if name else ""


def row_bytes(qtype: QType | int | str, cols: int, *, name: str | None = None) -> int:
    """Bytes of one row of ``cols`` weights.

    Raises
    ------
    ShapeMismatchError
        ``cols`` is not a multiple of the type's block size.
    """
    qt = _resolve(qtype)
    if qt not in QUANT_SIZES:
        raise UnsupportedQuantType(f"quantization type {qt.name} has no known block size")
    block_size, type_size = QUANT_SIZES[qt]
    if cols % block_size != 0:
        raise ShapeMismatchError(
            f"{_prefix(name)}row size {cols} is not a multiple of {qt.name} block size {block_size}"
        )
    return cols // block_size * type_size


def quantize(
    data: np.ndarray,
    qtype: QType | int | str,
    *,
    name: str | None = None,
    rounding: np.ndarray | None = None,
    delta: float = 0.0,
) -> np.ndarray:
    """Quantize a float tensor row by row, bit-exact with llama.cpp (no importance matrix).

    Parameters
    ----------
    data : `np.ndarray`
        Floats of shape ``(..., cols)`` (a 1-D array is one row); converted to float32 first.
    qtype : `QType`, `int` or `str`
        Target type; must be in :data:`QUANTIZABLE`.
    name : `str`, *optional*, defaults to None
        Tensor name used in error messages.
    rounding : `np.ndarray`, *optional*, defaults to None
        Keyed rounding directions (int8 -1/0/+1, the shape of ``data``) for the grid types: a
        weight whose level coordinate lies within ``delta`` of a rounding boundary (strictly off
        the tie) takes the neighbouring level its direction names; scales and every other
        weight stay llama.cpp's (:func:`weightprint.quant.base.keyed_level`). The watermark uses it.
    delta : `float`, *optional*, defaults to 0.0
        Width of the steered band, in level units (0 < delta < 0.5 when ``rounding`` is given).

    Returns
    -------
    np.ndarray
        ``uint8`` of shape ``(..., cols // block_size * type_size)``: the bytes as stored in GGUF.

    Raises
    ------
    UnsupportedQuantType
        Unknown type, or a dequantize-only type.
    ShapeMismatchError
        ``cols`` is not a multiple of the block size, or ``data`` is a scalar.
    NonFiniteError
        ``data`` holds NaN or infinity (all types except F32, which stores them as they are).
    """
    k = kernel(qtype)
    if not k.supports_quantize:
        raise UnsupportedQuantType(f"{_prefix(name)}quantization to {k.qtype.name} is not supported (dequantize only)")
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ShapeMismatchError(f"{_prefix(name)}cannot quantize a scalar to {k.qtype.name}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ShapeMismatchError(f"{_prefix(name)}cannot quantize an array of dtype {arr.dtype} to {k.qtype.name}")
    cols = arr.shape[-1]
    nbytes = row_bytes(k.qtype, cols, name=name)
    dirs_flat = None
    if rounding is not None:
        if not k.supports_rounding:
            raise UnsupportedQuantType(f"{_prefix(name)}{k.qtype.name} has no rounding grid to steer")
        if np.shape(rounding) != arr.shape:
            raise ShapeMismatchError(
                f"{_prefix(name)}rounding directions of shape {np.shape(rounding)} for data of shape {arr.shape}"
            )
        if not 0.0 < float(delta) < 0.5:
            raise ValueError(f"keyed rounding band delta = {delta} is outside (0, 0.5)")
        dirs_flat = np.asarray(rounding, dtype=np.int8).reshape(-1)
    out_shape = (*arr.shape[:-1], nbytes)
    flat = arr.reshape(-1)
    n = flat.size
    out = np.empty(n // k.block_size * k.type_size, dtype=np.uint8)
    check_finite = k.qtype != QType.F32
    starts, step = _chunk_starts(n, k.block_size)

    def work(start: int) -> None:
        chunk = np.ascontiguousarray(flat[start : start + step], dtype=np.float32)
        if check_finite and not np.isfinite(chunk).all():
            bad = int(np.count_nonzero(~np.isfinite(np.asarray(arr, dtype=np.float32))))
            raise NonFiniteError(
                f"{_prefix(name)}{bad} non-finite values (NaN or infinity) in a tensor of {n} weights;"
                f" cannot quantize to {k.qtype.name}"
            )
        blocks = chunk.reshape(-1, k.block_size)
        if dirs_flat is None:
            q = k.quantize_blocks(blocks)
        else:
            dirs = np.ascontiguousarray(dirs_flat[start : start + step]).reshape(-1, k.block_size)
            q = k.quantize_blocks(blocks, dirs, float(delta))
        b0 = start // k.block_size * k.type_size
        out[b0 : b0 + q.size] = q.reshape(-1)

    if n:
        _run_chunks(work, starts)
    return out.reshape(out_shape)


def _stored_bytes(k: type[QuantKernel], data: np.ndarray, name: str | None) -> np.ndarray:
    """``data`` as C-contiguous uint8 rows of whole blocks (a native float32/float16/bfloat16
    view of a plain float type is taken as its bytes)."""
    arr = np.asarray(data)
    if arr.ndim == 0:
        raise ShapeMismatchError(f"{_prefix(name)}cannot dequantize a scalar as {k.qtype.name}")
    if arr.dtype != np.uint8:
        native = _NATIVE_DTYPES.get(k.qtype)
        if native is None or arr.dtype.newbyteorder("=") != native or arr.dtype.byteorder == ">":
            raise ShapeMismatchError(
                f"{_prefix(name)}{k.qtype.name} data must be uint8 bytes, got dtype {arr.dtype}"
            )
        arr = np.ascontiguousarray(arr).view(np.uint8)
    nbytes = arr.shape[-1]
    if nbytes % k.type_size != 0:
        raise ShapeMismatchError(
            f"{_prefix(name)}row of {nbytes} bytes is not a multiple of {k.qtype.name} block size {k.type_size} bytes"
        )
    return np.ascontiguousarray(arr)


def dequantize(
    data: np.ndarray,
    qtype: QType | int | str,
    shape: tuple[int, ...] | None = None,
    dtype: np.typing.DTypeLike = np.float32,
    *,
    name: str | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Dequantize GGUF tensor bytes, with the values llama.cpp and gguf-py compute.

    Parameters
    ----------
    data : `np.ndarray`
        ``uint8`` bytes of shape ``(..., row_bytes)`` (1-D: one row). For F32/F16/BF16 the native
        views (float32, float16, uint16) are accepted too.
    qtype : `QType`, `int` or `str`
        Stored type.
    shape : `tuple[int, ...]`, *optional*, defaults to None
        Shape of the result (e.g. the tensor's logical shape); must hold the same number of weights.
    dtype : numpy dtype, *optional*, defaults to ``np.float32``
        Dtype of the result.
    name : `str`, *optional*, defaults to None
        Tensor name used in error messages.
    out : `np.ndarray`, *optional*, defaults to None
        A C-contiguous float32 array with as many elements as the data holds weights; the values
        are written into it and it is returned (any shape; ``shape`` and ``dtype`` must be left
        at their defaults). Reusing one buffer while streaming tensors avoids the page faults of a
        fresh allocation, which cost more than the dequantization itself.

    Returns
    -------
    np.ndarray
        Floats of shape ``(..., cols)`` or ``shape`` (or ``out``).

    Raises
    ------
    UnsupportedQuantType
        Unknown type or no kernel for it.
    ShapeMismatchError
        The bytes are not whole blocks, the dtype is wrong, or ``shape`` does not fit.
    """
    k = kernel(qtype)
    arr = _stored_bytes(k, data, name)
    cols = arr.shape[-1] // k.type_size * k.block_size
    blocks = arr.reshape(-1, k.type_size)
    if out is not None:
        n = blocks.shape[0] * k.block_size
        if out.dtype != np.float32 or not out.flags.c_contiguous or out.size != n or not out.flags.writeable:
            raise ShapeMismatchError(
                f"{_prefix(name)}`out` must be a writeable C-contiguous float32 array of {n} elements,"
                f" got {out.dtype} of {out.size} elements"
            )
        if shape is not None or np.dtype(dtype) != np.float32:
            raise ShapeMismatchError(f"{_prefix(name)}`out` cannot be combined with `shape` or `dtype`")
        _dequantize_into(k, blocks, out.reshape(-1, k.block_size))
        return out
    values = _dequantize_into(k, blocks, np.empty((blocks.shape[0], k.block_size), dtype=np.float32))
    values = values.reshape(*arr.shape[:-1], cols)
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape, dtype=np.int64)) != values.size:
            raise ShapeMismatchError(
                f"{_prefix(name)}shape {shape} holds {int(np.prod(shape, dtype=np.int64))} weights,"
                f" the {k.qtype.name} data holds {values.size}"
            )
        values = values.reshape(shape)
    return values.astype(dtype, copy=False)


_FUSED_WEIGHTS = 1 << 15
"""Weights dequantized at a time by :func:`dequantize_to_float16` (128 KB of float32: stays in cache)."""
_scratch = threading.local()


def dequantize_to_float16(data: np.ndarray, qtype: QType | int | str, out: np.ndarray, *, name: str | None = None) -> int:
    """Dequantize GGUF tensor bytes straight to float16 bit patterns in ``out``.

    The values of ``dequantize(data, qtype).astype(np.float16)``, without the float32 array: each
    thread dequantizes a cache-sized piece into its own scratch buffer and rounds it to half
    there (one pass over memory instead of three).

    Parameters
    ----------
    data : `np.ndarray`
        ``uint8`` bytes of shape ``(..., row_bytes)`` (or a native float view), as for :func:`dequantize`.
    qtype : `QType`, `int` or `str`
        Stored type.
    out : `np.ndarray`
        A writeable C-contiguous ``uint16`` array with as many elements as the data holds weights.
    name : `str`, *optional*
        Tensor name used in error messages.

    Returns
    -------
    int
        How many values float16 cannot hold (NaN, infinity, ``|x| > 65504``); their entries of
        ``out`` are unspecified. The caller decides what to do (refuse, naming the tensor).
    """
    from weightprint.quant.legacy import half_bits_checked

    k = kernel(qtype)
    blocks = _stored_bytes(k, data, name).reshape(-1, k.type_size)
    n = blocks.shape[0] * k.block_size
    if out.dtype != np.uint16 or not out.flags.c_contiguous or out.size != n or not out.flags.writeable:
        raise ShapeMismatchError(
            f"{_prefix(name)}`out` must be a writeable C-contiguous uint16 array of {n} elements, got {out.dtype} of {out.size}"
        )
    flat = out.reshape(-1)
    starts, step = _chunk_starts(n, k.block_size)
    sub = max(1, _FUSED_WEIGHTS // k.block_size)  # blocks per piece
    refused = [0] * len(starts)

    def work(start: int) -> None:
        scratch = getattr(_scratch, "buf", None)
        if scratch is None or scratch.size < sub * k.block_size:
            scratch = _scratch.buf = np.empty(sub * k.block_size, dtype=np.float32)
        b0, b1 = start // k.block_size, min((start + step) // k.block_size, blocks.shape[0])
        bad = 0
        for b in range(b0, b1, sub):
            m = min(sub, b1 - b)
            values = scratch[: m * k.block_size]
            k.dequantize_blocks(blocks[b : b + m], values.reshape(m, k.block_size))
            bad += half_bits_checked(values, flat[b * k.block_size : (b + m) * k.block_size])
        refused[start // step] = bad

    if n:
        _run_chunks(work, starts)
    return sum(refused)


def _dequantize_into(k: type[QuantKernel], blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Dequantize ``blocks`` (uint8 ``[n, type_size]``) into ``out`` (float32 ``[n, block_size]``), in
    chunks of blocks over the threads."""
    n_blocks = blocks.shape[0]
    starts, step = _chunk_starts(n_blocks * k.block_size, k.block_size)
    per = step // k.block_size

    def work(start: int) -> None:
        b0 = start // k.block_size
        k.dequantize_blocks(blocks[b0 : b0 + per], out[b0 : b0 + per])

    if n_blocks:
        _run_chunks(work, starts)
    return out
