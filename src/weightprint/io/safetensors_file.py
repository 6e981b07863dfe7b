"""safetensors files: a validating memory-mapped reader and a streaming, sharding writer.

Layout of a ``.safetensors`` file: an 8-byte little-endian header length ``N``, ``N`` bytes of
JSON (``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}``,
padded with spaces), then the data; offsets are relative to the start of the data.

The reader parses and checks the header itself (so that a lying file gives one precise line,
not a crash) and memory-maps each tensor. The writer takes the list of tensors up front and a
callback that produces one tensor at a time, so peak memory is one tensor whatever the model
size. Its output is what the ``safetensors`` library writes for the same tensors (same
ordering, compact JSON, header padded to 8 bytes).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from weightprint.constants import QType
from weightprint.errors import (
    ModelFormatError,
    NonFiniteError,
    SafetensorsFormatError,
    ShapeMismatchError,
    TensorNotFound,
    WeightprintError,
)
from weightprint.io.model import Model, TensorInfo
from weightprint.io.files import temp_file_beside
from weightprint.io.limits import MAX_ELEMENTS, check_json_budget, regular_file, shape_fits
from weightprint.io.values import describe

__all__ = [
    "SafetensorsModel",
    "write_safetensors_shards",
    "float32_to_bfloat16",
    "bfloat16_to_float32",
    "normalize_dtype",
    "SAFETENSORS_DTYPES",
]

MAX_HEADER_BYTES = 100_000_000  # the safetensors library refuses larger headers too
# A tensor's entry holds 3 containers and ~8 values: these allow ~500,000 tensors per file.
HEADER_MAX_CONTAINERS = 1 << 21
HEADER_MAX_VALUES = 1 << 22
MAX_RANK = 8


@dataclass(frozen=True)
class _DType:
    name: str  # safetensors spelling
    numpy: np.dtype  # storage dtype (BF16 as uint16)
    qtype: QType  # closest GGML type (U8/BOOL are stored as I8: same bytes, no GGML type)
    rank: int  # the safetensors library's Dtype enum order (used to order tensors in a file)


def _dt(name: str, np_dtype: str, qtype: QType, rank: int) -> _DType:
    return _DType(name, np.dtype(np_dtype), qtype, rank)


# rank = position in safetensors' Rust `Dtype` enum, which orders tensors (larger first)
SAFETENSORS_DTYPES: dict[str, _DType] = {
    d.name: d
    for d in [
        _dt("BOOL", "|b1", QType.I8, 0),
        _dt("U8", "|u1", QType.I8, 4),
        _dt("I8", "|i1", QType.I8, 5),
        _dt("I16", "<i2", QType.I16, 9),
        _dt("F16", "<f2", QType.F16, 11),
        _dt("BF16", "<u2", QType.BF16, 12),
        _dt("I32", "<i4", QType.I32, 13),
        _dt("F32", "<f4", QType.F32, 15),
        _dt("F64", "<f8", QType.F64, 16),
        _dt("I64", "<i8", QType.I64, 17),
    ]
}

_ALIASES = {
    "float32": "F32",
    "fp32": "F32",
    "f32": "F32",
    "float16": "F16",
    "fp16": "F16",
    "half": "F16",
    "f16": "F16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def normalize_dtype(dtype: str | np.dtype | type) -> str:
    """The safetensors spelling (``F16``, ``BF16``...) of a dtype name or numpy dtype.

    Raises
    ------
    WeightprintError
        For a dtype that safetensors cannot store.
    """
    if isinstance(dtype, str):
        key = dtype.strip()
        if key.upper() in SAFETENSORS_DTYPES:
            return key.upper()
        if key.lower() in _ALIASES:
            return _ALIASES[key.lower()]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
        if name in _ALIASES:
            return _ALIASES[name]
    known = ", ".join(SAFETENSORS_DTYPES)
    raise WeightprintError(f"unsupported safetensors dtype `{dtype}`; known: {known}")


# --------------------------------------------------------------------------- bfloat16


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 bit patterns (``uint16``), round-to-nearest-even.

    This is what ``torch.Tensor.to(torch.bfloat16)`` does: NaN becomes the quiet NaN
    ``0x7FC0`` (sign kept), everything else rounds to nearest with ties to even
    (overflow rounds to infinity).
    """
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x) if x.dtype == np.float32 else np.isnan(u.view(np.float32))
    if nan.any():
        rounded[nan] = ((u[nan] >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)) | np.uint16(0x7FC0)
    return rounded


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (``uint16``) to float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


# --------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: _DType
    shape: tuple[int, ...]
    begin: int  # relative to the data section
    end: int


def _parse_header(path: Path) -> tuple[int, dict[str, Any], list[_Entry]]:
    """Parse and validate the header of ``path``; return (data_start, metadata, entries)."""
    fname = path.name
    size = regular_file(path, "safetensors file").st_size  # before open(): a FIFO would block forever
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SafetensorsFormatError(f"{fname}: file is {size} bytes, too short for the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise SafetensorsFormatError(f"{fname}: header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
            if 8 + n > size:
                raise SafetensorsFormatError(f"{fname}: header length {n} runs past the end of the file ({size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise SafetensorsFormatError(f"{fname}: cannot read: {e.strerror or e}") from e

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise SafetensorsFormatError(f"{fname}: header declares `{k}` twice")
            out[k] = v
        return out

    try:
        # counts brackets first: 32M `[]` would otherwise build 2.5 GB of lists
        check_json_budget(raw, f"{fname}: header", max_containers=HEADER_MAX_CONTAINERS, max_values=HEADER_MAX_VALUES)
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except ModelFormatError as e:
        raise SafetensorsFormatError(e.message) from None
    except UnicodeDecodeError as e:
        raise SafetensorsFormatError(f"{fname}: header is not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise SafetensorsFormatError(f"{fname}: header is not valid JSON ({e.msg} at byte {e.pos})") from None
    except RecursionError:
        raise SafetensorsFormatError(f"{fname}: header JSON is nested too deeply") from None
    except ValueError as e:  # an integer with too many digits
        raise SafetensorsFormatError(f"{fname}: header is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{fname}: header is a JSON {type(header).__name__}, expected an object")

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsFormatError(f"{fname}: `__metadata__` must map strings to strings")

    data_start = 8 + n
    data_size = size - data_start
    entries: list[_Entry] = []
    for name, spec in header.items():
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` needs `dtype`, `shape` and `data_offsets`")
        dname = spec["dtype"]
        if not isinstance(dname, str) or dname not in SAFETENSORS_DTYPES:
            shown = f"`{dname}`" if isinstance(dname, str) and len(dname) <= 40 else describe(dname)
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` has unknown dtype {shown}")
        dtype = SAFETENSORS_DTYPES[dname]
        shape = spec["shape"]
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            shown = repr(shape) if len(repr(shape)) <= 60 else describe(shape)
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` has invalid shape {shown}")
        if not shape_fits(shape):
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` has shape {shape}, more than {MAX_ELEMENTS} elements")
        offsets = spec["data_offsets"]
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        ):
            shown = repr(offsets) if len(repr(offsets)) <= 60 else describe(offsets)
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` has invalid data_offsets {shown}")
        begin, end = offsets
        if end < begin:
            raise SafetensorsFormatError(f"{fname}: tensor `{name}` has data_offsets out of order [{begin}, {end}]")
        expected = math.prod(shape) * dtype.numpy.itemsize
        if end - begin != expected:
            raise SafetensorsFormatError(
                f"{fname}: tensor `{name}` declares shape {shape} ({expected} bytes as {dname}) "
                f"but data_offsets span {end - begin} bytes"
            )
        if end > data_size:
            raise SafetensorsFormatError(
                f"{fname}: tensor `{name}` data_offsets [{begin}, {end}] run past the end of the data ({data_size} bytes)"
            )
        entries.append(_Entry(name, dtype, tuple(shape), begin, end))

    by_offset = sorted(entries, key=lambda e: (e.begin, e.end))
    for prev, cur in zip(by_offset, by_offset[1:]):
        if cur.begin < prev.end:
            raise SafetensorsFormatError(
                f"{fname}: tensors `{prev.name}` [{prev.begin}, {prev.end}] and `{cur.name}` "
                f"[{cur.begin}, {cur.end}] overlap"
            )
    return data_start, metadata, entries


class SafetensorsModel(Model):
    """One ``.safetensors`` file opened for streaming (tensors are memory-mapped lazily).

    Tensor names are taken as Hugging Face names as they are. ``metadata`` is the
    ``__metadata__`` dict; ``config`` is empty and ``tokenizer``/``chat_template`` are None
    (see :class:`weightprint.io.hf.HFModel` for a full directory).

    Parameters
    ----------
    path : `str` or `Path`
        The ``.safetensors`` file.

    Raises
    ------
    ModelFormatError
        If the file does not exist or is not a regular file.
    SafetensorsFormatError
        If the header is malformed (one line naming the file and the numbers).

    Examples
    --------
    >>> with SafetensorsModel("model.safetensors") as m:  # doctest: +SKIP
    ...     w = m.tensor("model.embed_tokens.weight")
    """

    format = "safetensors"
    rows_from_file = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data_start, self.metadata, entries = _parse_header(self.path)
        self._entries: dict[str, _Entry] = {e.name: e for e in sorted(entries, key=lambda e: e.begin)}
        self._map: np.memmap | None = None
        self.architecture = "unknown"
        self.config = {}
        self.tokenizer = None
        self.chat_template = None

    # -- Model contract ------------------------------------------------------------

    def tensor_infos(self) -> list[TensorInfo]:
        return [self._info(e) for e in self._entries.values()]

    def tensor_names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._info(self._entry(name))

    def dtype_name(self, name: str) -> str:
        """The stored safetensors dtype (``F32``, ``BF16``, ``U8``...) of a tensor."""
        return self._entry(name).dtype.name

    def raw(self, name: str) -> np.ndarray:
        e = self._entry(name)
        mm = self._mmap()
        view = mm[self._data_start + e.begin : self._data_start + e.end]
        return view.view(e.dtype.numpy).reshape(e.shape)

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The tensor as a new array of ``dtype`` (BF16 widened to float32 exactly first).

        Integer and boolean tensors are returned as stored when ``dtype`` is None.
        """
        e = self._entry(name)
        stored = self.raw(name)
        if e.dtype.name == "BF16":
            values = bfloat16_to_float32(stored)
            if dtype is not None and np.dtype(dtype) != np.float32:
                values = values.astype(dtype)
        else:
            values = np.array(stored, dtype=dtype)
        del stored
        self.release(name)
        return values

    def release(self, name: str) -> None:
        """Drop the tensor's mapped pages from this process's resident set (the page cache keeps
        them), so that streaming over a large file keeps RSS flat; views stay valid."""
        e = self._entry(name)
        mm = getattr(self._map, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        offset = self._data_start + e.begin
        start = offset - offset % mmap.PAGESIZE
        length = self._data_start + e.end - start
        if length > 0:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, length)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self._map is not None:
            mm = self._map
            self._map = None
            mmap_obj = getattr(mm, "_mmap", None)
            del mm
            if mmap_obj is not None:
                try:
                    mmap_obj.close()
                except BufferError:  # a view is still alive; the GC will close it
                    pass

    # -- helpers -------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise TensorNotFound(f"{self.path.name}: no tensor `{name}` ({len(self._entries)} tensors)") from None

    def _info(self, e: _Entry) -> TensorInfo:
        return TensorInfo(
            name=e.name,
            stored_name=e.name,
            shape=e.shape,
            qtype=e.dtype.qtype,
            offset=self._data_start + e.begin,
            nbytes=e.end - e.begin,
            file=self.path,
        )

    def _mmap(self) -> np.memmap:
        if self._map is None:
            if self.path.stat().st_size == 0:
                self._map = np.zeros(0, dtype=np.uint8)  # type: ignore[assignment]
            else:
                self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def __repr__(self) -> str:
        return f"SafetensorsModel({str(self.path)!r}, {len(self._entries)} tensors)"


# --------------------------------------------------------------------------- writer


def _header_bytes(metadata: dict[str, str] | None, entries: Sequence[_Entry]) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for e in entries:
        header[e.name] = {"dtype": e.dtype.name, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text


def _layout(tensors: Iterable[tuple[str, Sequence[int], _DType]]) -> list[_Entry]:
    """Order tensors as the safetensors library does (larger dtypes first, then by name)."""
    ordered = sorted(tensors, key=lambda t: (-t[2].rank, t[0]))
    out: list[_Entry] = []
    pos = 0
    for name, shape, dtype in ordered:
        n = math.prod(shape) * dtype.numpy.itemsize
        out.append(_Entry(name, dtype, tuple(int(d) for d in shape), pos, pos + n))
        pos += n
    return out


_CHUNK_ELEMENTS = 1 << 22  # conversions run on 4M-element pieces: transient memory stays small
_HALF_MAX = {"F16": 65504.0, "BF16": float(np.float32(3.3895313892515355e38))}  # largest finite values


def check_representable(name: str, values: np.ndarray, dtype: str) -> None:
    """Refuse float values that ``F16``/``BF16`` storage would turn into infinity or that are not finite.

    GGUF output refuses the same values (:func:`weightprint.quant.quantize` and ``convert``), so
    both targets agree instead of one of them writing infinities.

    Raises
    ------
    NonFiniteError
        One line naming the tensor, the count and the largest magnitude.
    """
    limit = _HALF_MAX.get(dtype)
    if limit is None or values.dtype.kind != "f" or values.size == 0:
        return
    if dtype == "F16" and values.dtype == np.float16:
        # already half: nothing can overflow; non-finite = exponent bits all ones (integer test,
        # several times faster than numpy's float16 ufuncs)
        special = (values.view(np.uint16) & np.uint16(0x7C00)) == np.uint16(0x7C00)
        if special.any():
            raise NonFiniteError(
                f"tensor `{name}`: {int(np.count_nonzero(special))} non-finite values (NaN or infinity); cannot store as {dtype}"
            )
        return
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - np.count_nonzero(finite))
        raise NonFiniteError(f"tensor `{name}`: {bad} non-finite values (NaN or infinity); cannot store as {dtype}")
    big = np.abs(values) > limit
    if big.any():
        raise NonFiniteError(
            f"tensor `{name}`: {int(np.count_nonzero(big))} values overflow {dtype} "
            f"(largest magnitude {float(np.abs(values).max()):.6g} > {limit:.6g}); cannot store as {dtype}"
        )


class TensorChunks:
    """A tensor handed to :func:`write_safetensors_shards` as consecutive pieces of its
    row-major values (each a flat array of any length), so that no step holds the whole tensor:
    a streaming reader dequantizes a few rows at a time into one reused buffer.

    A piece is read before the next one is requested. With ``ready=True`` the pieces are
    already in the stored dtype and checked (:func:`check_representable`), and each stays
    valid until the piece after the next is requested (two alternating buffers): the writer
    then writes a piece on another thread while the next one is computed."""

    def __init__(self, shape: Sequence[int], pieces: Iterable[np.ndarray], *, ready: bool = False) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.pieces = pieces
        self.ready = ready


class _Writer:
    """Appends to one open file, either at once or, for a ready piece, on a background thread
    while the caller computes the next one; writes stay in order (each waits for the one
    before). :meth:`wait` before the file is closed."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[Any] | None = None

    def write(self, data: np.ndarray, *, background: bool = False) -> None:
        self.wait()
        view = data.view(np.uint8).data
        if not background:
            self.f.write(view)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="weightprint-write")
        self._pending = self._pool.submit(self.f.write, view)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last write (its error, if any, is raised) and stop the thread."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _write_tensor(f: _Writer, name: str, arr: np.ndarray | TensorChunks, entry: _Entry) -> None:
    """Convert ``arr`` to the stored dtype piece by piece and append it to ``f``."""
    chunked = isinstance(arr, TensorChunks)
    if not chunked:
        arr = np.asarray(arr)
    if tuple(arr.shape) != entry.shape:
        raise ShapeMismatchError(
            f"tensor `{name}`: data has shape {list(arr.shape)} but was declared as {list(entry.shape)}"
        )
    if not chunked:
        flat = arr.reshape(-1)  # a view when contiguous
        for start in range(0, flat.size, _CHUNK_ELEMENTS):
            _write_piece(f, name, flat[start : start + _CHUNK_ELEMENTS], entry)
        return
    ready = arr.ready
    written, expected = 0, math.prod(entry.shape)
    for piece in arr.pieces:
        piece = np.asarray(piece).reshape(-1)
        if written + piece.size > expected:
            break
        if ready:
            if piece.dtype != entry.dtype.numpy or not piece.flags.c_contiguous:
                raise ShapeMismatchError(f"tensor `{name}`: a ready piece must be C-contiguous {entry.dtype.name}, got {piece.dtype}")
            f.write(piece, background=True)
        else:
            for start in range(0, piece.size, _CHUNK_ELEMENTS):
                _write_piece(f, name, piece[start : start + _CHUNK_ELEMENTS], entry)
        written += piece.size
    else:
        if written == expected:
            return
    raise ShapeMismatchError(f"tensor `{name}`: data holds another number of values than its shape {list(entry.shape)}")


def _write_piece(f: Any, name: str, piece: np.ndarray, entry: _Entry) -> None:
    bf16 = entry.dtype.name == "BF16" and piece.dtype != np.uint16  # uint16 input = raw bfloat16 bits
    if not (bf16 is False and entry.dtype.name == "BF16"):  # raw bfloat16 bits are copied as they are
        check_representable(name, piece, entry.dtype.name)
    if bf16:
        out = float32_to_bfloat16(piece.astype(np.float32, copy=False))
    else:
        out = np.ascontiguousarray(piece, dtype=entry.dtype.numpy)
    f.write(out)


def _shard_groups(
    tensors: list[tuple[str, tuple[int, ...], _DType]], max_shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...], _DType]]]:
    groups: list[list[tuple[str, tuple[int, ...], _DType]]] = [[]]
    size = 0
    for t in tensors:
        n = math.prod(t[1]) * t[2].numpy.itemsize
        if groups[-1] and size + n > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += n
    return groups


def write_safetensors_shards(
    out_dir: str | os.PathLike[str],
    tensors: Sequence[tuple[str, Sequence[int], str | np.dtype | type]],
    data: Callable[[str], "np.ndarray | TensorChunks"],
    *,
    max_shard_bytes: int = 5 * 10**9,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write tensors into ``out_dir`` as safetensors, one tensor in memory at a time.

    One shard is ``model.safetensors``; more are ``model-00001-of-0000N.safetensors`` plus
    ``model.safetensors.index.json`` (``{"metadata": {"total_size"}, "weight_map"}``), split
    in the given tensor order whenever a shard would exceed ``max_shard_bytes`` (a tensor
    larger than that gets a shard of its own). Each file is written to a temporary file in
    ``out_dir`` and renamed into place; on error no output file is left behind.

    Args:
        out_dir (`str` or `os.PathLike`):
            The directory to write into (created if missing).
        tensors (`Sequence[tuple[str, Sequence[int], dtype]]`):
            ``(name, shape, dtype)`` for every tensor; dtype as ``"F32"``/``"F16"``/``"BF16"``,
            ``"float16"``, ``"bfloat16"`` or a numpy dtype.
        data (`Callable[[str], np.ndarray | TensorChunks]`):
            Returns the values of one tensor by name, whole or as :class:`TensorChunks`
            (float32 input is rounded to BF16 with round-to-nearest-even; a ``uint16`` array for
            a BF16 tensor is taken as raw bits).
        max_shard_bytes (`int`, *optional*, defaults to 5e9):
            Largest shard size, in tensor bytes.
        metadata (`dict[str, str]`, *optional*, defaults to `{"format": "pt"}`):
            The ``__metadata__`` of every shard.

    Returns:
        `list[Path]`: the files written (shards, then the index if any).

    Raises:
        WeightprintError: duplicate name, unknown dtype, bad ``max_shard_bytes``.
        ShapeMismatchError: ``data(name)`` has another shape than declared.

    Example:

    ```python
    write_safetensors_shards("out", [("w", (2, 3), "F16")], lambda name: np.ones((2, 3)))
    ```
    """
    out = Path(out_dir)
    if metadata is None:
        metadata = {"format": "pt"}
    if max_shard_bytes <= 0:
        raise WeightprintError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    specs: list[tuple[str, tuple[int, ...], _DType]] = []
    seen: set[str] = set()
    for name, shape, dtype in tensors:
        if name in seen:
            raise WeightprintError(f"{out}: tensor `{name}` is listed twice")
        if name == "__metadata__":
            raise WeightprintError(f"{out}: `__metadata__` is reserved and cannot name a tensor")
        seen.add(name)
        shape_t = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape_t):
            raise ShapeMismatchError(f"tensor `{name}`: negative dimension in shape {list(shape_t)}")
        specs.append((name, shape_t, SAFETENSORS_DTYPES[normalize_dtype(dtype)]))

    groups = _shard_groups(specs, max_shard_bytes)
    n = len(groups)
    names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    out.mkdir(parents=True, exist_ok=True)

    temps: list[tuple[Path, Path]] = []
    try:
        weight_map: dict[str, str] = {}
        total = 0
        for fname, group in zip(names, groups):
            entries = _layout(group)
            fd, tmp = temp_file_beside(out / fname)
            temps.append((Path(tmp), out / fname))
            with os.fdopen(fd, "wb") as f:
                f.write(_header_bytes(metadata, entries))
                writer = _Writer(f)
                try:
                    for e in entries:
                        _write_tensor(writer, e.name, data(e.name), e)
                        weight_map[e.name] = fname
                        total += e.end - e.begin
                finally:
                    writer.close()
        if n > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            fd, tmp = temp_file_beside(out / "model.safetensors.index.json")
            temps.append((Path(tmp), out / "model.safetensors.index.json"))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in temps:
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    return [final for _, final in temps]
