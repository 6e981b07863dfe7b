"""GGUF files: a fast memory-mapped reader (:class:`GGUFModel`) and a streaming writer (:func:`write_gguf`).

Layout of a GGUF v2/v3 file (little-endian)::

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv x  (key: string, value_type: u32, value)
    n_tensors x (name: string, n_dims: u32, ne: u64[n_dims], type: u32, offset: u64)
    padding to `general.alignment` (default 32)
    tensor data, each tensor at data_start + offset (offset a multiple of the alignment)

    string = length u64 + UTF-8 bytes; array = element type u32 + count u64 + elements

The header is parsed with ``struct`` and ``np.frombuffer`` on an ``mmap``: numeric arrays are read
in one call, and string arrays (the vocabulary) are scanned once for their offsets and decoded
lazily (:class:`StringArray`). Every inconsistency raises :class:`~weightprint.errors.GGUFFormatError`
naming the file and the numbers.
"""

from __future__ import annotations

import array
import mmap
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, overload

import numpy as np
from gguf import GGUFValueType

from weightprint.constants import GGUF_MAGIC, QUANT_SIZES, QType
from weightprint.errors import (
    GGUFFormatError,
    TensorNotFound,
    UnsupportedQuantType,
    WeightprintError,
)
from weightprint.io.limits import (
    MAX_ALIGNMENT,
    MAX_ARRAY_NESTING,
    MAX_ELEMENTS,
    MAX_NESTED_ITEMS,
    MAX_STRING_ITEMS,
    regular_file,
    shape_fits,
)
from weightprint.io.model import STORED_DTYPES, Model, TensorInfo, TokenizerInfo, dequantize_raw
from weightprint.io.names import (
    expert_names,
    from_stored_layout,
    gguf_to_hf_name,
    layout_config_from_gguf,
    needs_layout_change,
)

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_NESTING = MAX_ARRAY_NESTING

# Fixed-size value types: struct format and numpy dtype.
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALAR_FORMATS.items()}
_NUMPY_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("?"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_DTYPE_TO_VALUE_TYPE: dict[np.dtype, GGUFValueType] = {
    dt.newbyteorder("="): t for t, dt in _NUMPY_DTYPES.items()
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def tensor_nbytes(shape: Sequence[int], qtype: QType) -> int:
    """Stored size in bytes of a tensor of numpy-order ``shape`` and type ``qtype``."""
    block_size, type_size = QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= int(d)
    return n // block_size * type_size


# --------------------------------------------------------------------------- strings


DECODE_ONCE_STRINGS = 1 << 19
"""A tokenizer's string array up to this size is decoded once and kept (every real model's:
Gemma 3 has 262k tokens, ~20 MB of strings); a larger, crafted one stays lazy."""


class StringArray(Sequence[str]):
    """A GGUF string array that decodes its items on access.

    Holds the offsets of each string in the memory-mapped file; ``list(arr)`` or
    :meth:`tolist` materialises it. Compares equal to any sequence of the same strings.
    """

    def __init__(self, buffer: Any, starts: np.ndarray, ends: np.ndarray, region: tuple[int, int],
                 label: str, keepalive: Any = None) -> None:
        self._buffer = buffer
        self._keepalive = keepalive  # a memoryview of the map: close() cannot unmap it under us
        self._starts = starts
        self._ends = ends
        self._region = region  # byte range of the encoded array (length prefixes included)
        self._label = label
        self._cache: list[str] | None = None

    def __len__(self) -> int:
        return len(self._starts)

    def _decode(self, i: int) -> str:
        raw = self._buffer[int(self._starts[i]):int(self._ends[i])]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"{self._label}: item {i} is not valid UTF-8 ({e.reason})") from e

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if self._cache is not None:
            return self._cache[index]
        if isinstance(index, slice):
            return self.take(np.arange(*index.indices(len(self))))
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self._label}: index {index} out of range for {n} strings")
        return self._decode(i)

    def take(self, ids: Any) -> list[str]:
        """The strings at ``ids`` (an integer array), decoded in one pass."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._cache is not None:
            cache = self._cache
            return [cache[i] for i in ids.tolist()]
        if len(ids) and (int(ids.min()) < -len(self) or int(ids.max()) >= len(self)):
            raise IndexError(f"{self._label}: index out of range for {len(self)} strings")
        buf, out = self._buffer, []
        try:
            for a, b in zip(self._starts[ids].tolist(), self._ends[ids].tolist()):
                out.append(buf[a:b].decode("utf-8"))
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"{self._label}: item {int(ids[len(out)])} is not valid UTF-8 ({e.reason})") from e
        return out

    def __iter__(self) -> Iterator[str]:
        if self._cache is None and len(self) <= DECODE_ONCE_STRINGS:
            self.tolist()  # a real vocabulary is decoded once, by the first pass over it
        if self._cache is not None:
            return iter(self._cache)
        return self._iter_decoded()

    def utf8(self) -> tuple[np.ndarray, np.ndarray]:
        """``(bytes, offsets)``: every string's UTF-8 bytes end to end (uint8, without the length
        prefixes), string ``i`` being ``bytes[offsets[i]:offsets[i + 1]]``; for compiled passes
        over a vocabulary that need no Python strings."""
        r0, r1 = self._region
        region = np.frombuffer(self._buffer, dtype=np.uint8, count=r1 - r0, offset=r0)
        keep = np.ones(r1 - r0, dtype=bool)
        keep[((self._starts - 8 - r0)[:, None] + np.arange(8)).reshape(-1)] = False  # the u64 lengths
        off = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(self._ends - self._starts, out=off[1:])
        return region[keep], off

    def validate(self) -> None:
        """Refuse an item that is not valid UTF-8 (:class:`GGUFFormatError` naming it), without
        keeping the strings: one decode of all the bytes, item by item only to name a bad one.

        The joined bytes being valid UTF-8 with every item starting at a character makes each
        item valid on its own: a UTF-8 sequence cannot straddle an item's start."""
        data, off = self.utf8()
        nonempty = off[:-1][off[1:] > off[:-1]]
        try:
            if not ((data[nonempty] & 0xC0) == 0x80).any():
                data.tobytes().decode("utf-8")
                return
        except UnicodeDecodeError:
            pass
        for _ in self._iter_decoded():  # raises, naming the first bad item
            pass

    def _iter_decoded(self) -> Iterator[str]:
        # decoded a chunk at a time and not kept: a pass over a million-token vocabulary costs
        # one chunk of strings, not the whole list (see :meth:`tolist` to keep them)
        for c in range(0, len(self._starts), 1 << 16):
            yield from self[c:c + (1 << 16)]

    def tolist(self) -> list[str]:
        """All strings, decoded once and cached."""
        if self._cache is None:
            # offsets as Python ints a chunk at a time: a million-string array would otherwise
            # hold two million int objects (~64 MB) beside its strings
            self._cache = [s for s in self._iter_decoded()]
        return self._cache

    def encoded(self) -> bytes:
        """The array's strings exactly as stored (each a u64 length + bytes), for copying."""
        return bytes(self._buffer[self._region[0]:self._region[1]])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and self.tolist() == list(other)
        return NotImplemented

    def __hash__(self) -> int:  # pragma: no cover - unhashable like list
        raise TypeError("unhashable type: 'StringArray'")

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[: min(3, len(self))])
        return f"StringArray([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


# --------------------------------------------------------------------------- header parser


class _HeaderParser:
    """Bounds-checked cursor over the file bytes; every error names the file."""

    def __init__(self, buffer: Any, size: int, label: str) -> None:
        self.buf = buffer
        self.size = size
        self.label = label
        self.pos = 0
        self.view: memoryview | None = None
        self.string_items = 0  # strings in string arrays so far (capped: MAX_STRING_ITEMS)
        self.nested_items = 0  # arrays inside arrays so far (capped: MAX_NESTED_ITEMS)

    def fail(self, message: str) -> GGUFFormatError:
        return GGUFFormatError(f"{self.label}: {message}")

    def need(self, n: int) -> None:
        if self.pos + n > self.size:
            raise self.fail(f"truncated GGUF header at byte {self.pos + n} (file is {self.size} bytes)")

    def u32(self) -> int:
        self.need(4)
        v = _U32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def u64(self) -> int:
        self.need(8)
        v = _U64.unpack_from(self.buf, self.pos)[0]
        self.pos += 8
        return v

    def string(self, what: str) -> str:
        start = self.pos
        n = self.u64()
        if self.pos + n > self.size:
            raise self.fail(
                f"{what} of {n} bytes at byte {start} runs past end of file ({self.size} bytes)"
            )
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at byte {start} is not valid UTF-8 ({e.reason})") from e

    def value_type(self, key: str) -> GGUFValueType:
        at = self.pos
        t = self.u32()
        try:
            return GGUFValueType(t)
        except ValueError:
            raise self.fail(f"metadata key `{key}` has unknown value type {t} at byte {at}") from None

    def value(self, vtype: GGUFValueType, key: str, depth: int = 0) -> tuple[Any, GGUFValueType | None]:
        """Read one value; returns ``(value, element type for arrays else None)``."""
        if vtype == GGUFValueType.STRING:
            return self.string(f"metadata value `{key}`"), None
        if vtype == GGUFValueType.ARRAY:
            return self.array(key, depth)
        st = _SCALAR_STRUCTS[vtype]
        self.need(st.size)
        v = st.unpack_from(self.buf, self.pos)[0]
        self.pos += st.size
        return v, None

    def array(self, key: str, depth: int) -> tuple[Any, GGUFValueType]:
        if depth >= _MAX_ARRAY_NESTING:
            raise self.fail(f"metadata key `{key}` nests arrays deeper than {_MAX_ARRAY_NESTING}")
        etype = self.value_type(key)
        at = self.pos
        count = self.u64()
        remaining = self.size - self.pos
        min_item = _NUMPY_DTYPES[etype].itemsize if etype in _NUMPY_DTYPES else (8 if etype == GGUFValueType.STRING else 12)
        if count * min_item > remaining:
            raise self.fail(
                f"array `{key}` of {count} {etype.name} at byte {at} runs past end of file ({self.size} bytes)"
            )
        if etype in _NUMPY_DTYPES:
            dtype = _NUMPY_DTYPES[etype]
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            return arr, etype
        if etype == GGUFValueType.STRING:
            self.string_items += count
            if self.string_items > MAX_STRING_ITEMS:
                raise self.fail(
                    f"array `{key}` at byte {at} brings the strings in arrays to {self.string_items:,}, "
                    f"more than the {MAX_STRING_ITEMS:,} allowed"
                )
            return self.string_array(key, count), etype
        self.nested_items += count
        if self.nested_items > MAX_NESTED_ITEMS:
            raise self.fail(
                f"array `{key}` at byte {at} brings the arrays nested in arrays to {self.nested_items:,}, "
                f"more than the {MAX_NESTED_ITEMS:,} allowed"
            )
        items = []  # nested arrays
        for _ in range(count):  # each item is an array body: element type, count, elements
            items.append(self.array(key, depth + 1)[0])
        return items, etype

    def string_array(self, key: str, count: int) -> StringArray:
        region_start = pos = self.pos
        buf, size = self.buf, self.size
        unpack = _U64.unpack_from
        starts = array.array("q", bytes(8 * count))  # 8 bytes a string: no Python int kept per item
        try:  # a length past the end makes the next unpack raise; the last one is checked below
            for i in range(count):
                n = unpack(buf, pos)[0]
                pos += 8
                starts[i] = pos
                pos += n
        except (struct.error, OverflowError):
            raise self.fail(
                f"string array `{key}` of {count} items runs past end of file ({size} bytes)"
            ) from None
        if pos > size:
            raise self.fail(f"string array `{key}` of {count} items runs past end of file ({size} bytes)")
        start_arr = np.frombuffer(starts, dtype=np.int64) if count else np.zeros(0, np.int64)
        end_arr = np.empty_like(start_arr)
        if count:
            end_arr[:-1] = start_arr[1:] - 8
            end_arr[-1] = pos
        self.pos = pos
        if self.view is None:
            # A memoryview keeps the map alive (close() cannot unmap it) while string arrays live.
            self.view = memoryview(buf)
        return StringArray(buf, start_arr, end_arr, (region_start, pos), f"{self.label}: `{key}`", self.view)


# --------------------------------------------------------------------------- reader


class GGUFModel(Model):
    """A GGUF file opened for streaming (memory-mapped; nothing is read until asked).

    Parameters
    ----------
    path : str or Path
        The ``.gguf`` file.

    Attributes
    ----------
    version : int
        GGUF version (2 or 3).
    metadata : dict[str, Any]
        Key/values in file order. Scalars as Python values, numeric arrays as numpy arrays of
        their exact stored dtype, string arrays as :class:`StringArray` (a lazy sequence of str).
    metadata_types : dict[str, GGUFValueType]
        The stored type of each value (``ARRAY`` for arrays).
    metadata_element_types : dict[str, GGUFValueType]
        The element type of each array value.
    alignment : int
        ``general.alignment`` (32 by default).
    data_offset : int
        Absolute byte offset where tensor data starts.

    Raises
    ------
    GGUFFormatError
        The file is not a well-formed GGUF (message names the file and the byte position).
    UnsupportedQuantType
        A tensor has a type id that gguf-py does not know.

    Examples
    --------
    >>> with GGUFModel("SmolLM2-135M-Instruct.Q4_1.gguf") as m:   # doctest: +SKIP
    ...     q = m.tensor("model.layers.0.self_attn.q_proj.weight")
    """

    format = "gguf"
    ggml_types = True
    rows_from_file = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._label = str(self.path)
        regular_file(self.path, "GGUF file")  # before open(): a FIFO would block forever
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFFormatError(f"{self._label}: empty file, not a GGUF")
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFFormatError(f"{self._label}: cannot open ({e.strerror or e})") from e
        self.file_size = size
        self._parse()

    # -- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        p = _HeaderParser(self._mmap, self.file_size, self._label)
        p.need(4)
        magic = bytes(self._mmap[0:4])
        if magic != GGUF_MAGIC:
            raise p.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        p.pos = 4
        version = p.u32()
        if version not in SUPPORTED_VERSIONS:
            extra = " (big-endian GGUF is not supported)" if version & 0xFFFF == 0 and version else ""
            raise p.fail(f"unsupported GGUF version {version}{extra}; supported: 2, 3")
        self.version = version
        n_tensors = p.u64()
        n_kv = p.u64()
        # Each key/value takes at least 8 + 4 + 1 bytes, each tensor info at least 8 + 4 + 4 + 8.
        if n_kv * 13 > self.file_size or n_tensors * 24 > self.file_size:
            raise p.fail(
                f"header claims {n_kv} metadata keys and {n_tensors} tensors but file is only "
                f"{self.file_size} bytes"
            )

        metadata: dict[str, Any] = {}
        types: dict[str, GGUFValueType] = {}
        element_types: dict[str, GGUFValueType] = {}
        for _ in range(n_kv):
            at = p.pos
            key = p.string("metadata key")
            if key in metadata:
                raise p.fail(f"duplicate metadata key `{key}` at byte {at}")
            vtype = p.value_type(key)
            value, etype = p.value(vtype, key)
            metadata[key] = value
            types[key] = vtype
            if etype is not None:
                element_types[key] = etype
        self.metadata = metadata
        self.metadata_types = types
        self.metadata_element_types = element_types

        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if "general.alignment" in metadata and types["general.alignment"] != GGUFValueType.UINT32:
            raise p.fail(f"`general.alignment` has type {types['general.alignment'].name}, expected UINT32")
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise p.fail(f"`general.alignment` is {alignment}, expected a power of two")
        if alignment > MAX_ALIGNMENT:
            raise p.fail(f"`general.alignment` is {alignment}, more than the {MAX_ALIGNMENT} allowed")
        self.alignment = alignment
        self.architecture = str(metadata.get("general.architecture", "unknown"))

        raw_infos = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            at = p.pos
            name = p.string("tensor name")
            if name in seen:
                raise p.fail(f"duplicate tensor `{name}` at byte {at}")
            seen.add(name)
            n_dims = p.u32()
            if n_dims > MAX_DIMS:
                raise p.fail(f"tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})")
            p.need(8 * n_dims)
            ne = struct.unpack_from(f"<{n_dims}Q", self._mmap, p.pos)
            p.pos += 8 * n_dims
            if not shape_fits(ne):
                raise p.fail(f"tensor `{name}` has dimensions {list(ne)}, more than {MAX_ELEMENTS} elements")
            type_id = p.u32()
            offset = p.u64()
            try:
                qtype = QType(type_id)
            except ValueError:
                raise UnsupportedQuantType(
                    f"{self._label}: tensor `{name}` has unknown GGML type id {type_id}"
                ) from None
            if qtype not in QUANT_SIZES:
                raise UnsupportedQuantType(f"{self._label}: tensor `{name}` has type {qtype.name} without a known block size")
            raw_infos.append((name, ne, qtype, offset))

        data_offset = -(-p.pos // alignment) * alignment
        self.data_offset = data_offset
        infos: list[TensorInfo] = []
        by_name: dict[str, TensorInfo] = {}
        for name, ne, qtype, offset in raw_infos:
            block_size, type_size = QUANT_SIZES[qtype]
            if ne and ne[0] % block_size:
                raise p.fail(
                    f"tensor `{name}` row length {ne[0]} is not a multiple of {qtype.name} block size {block_size}"
                )
            if offset % alignment:
                raise p.fail(f"tensor `{name}` offset {offset} is not a multiple of alignment {alignment}")
            shape = tuple(int(d) for d in reversed(ne))
            nbytes = tensor_nbytes(shape, qtype)
            start = data_offset + offset
            if start + nbytes > self.file_size:
                raise p.fail(
                    f"tensor `{name}` data [{start}, {start + nbytes}) runs past end of file "
                    f"({self.file_size} bytes)"
                )
            experts = expert_names(name, shape[0]) if len(shape) == 3 else None
            if experts is not None:
                # one stacked tensor of n_expert experts: each a contiguous run of its rows
                step = nbytes // shape[0]
                parts = [TensorInfo(name=hf, stored_name=f"{name}[{e}]", shape=shape[1:], qtype=qtype,
                                    offset=start + e * step, nbytes=step, file=self.path)
                         for e, hf in enumerate(experts)]
            else:
                parts = [TensorInfo(name=gguf_to_hf_name(name, self.architecture), stored_name=name, shape=shape,
                                    qtype=qtype, offset=start, nbytes=nbytes, file=self.path)]
            for info in parts:
                if info.name in by_name:
                    raise p.fail(f"tensors `{by_name[info.name].stored_name}` and `{name}` both map to `{info.name}`")
                infos.append(info)
                by_name[info.name] = info
        _check_no_overlap(infos, p)
        self._infos = infos
        self._by_name = by_name
        self._by_stored = {i.stored_name: i for i in infos}
        self._layout_config = layout_config_from_gguf(metadata, self.architecture)

    # -- Model API -------------------------------------------------------------------------

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        """The :class:`TensorInfo` of a canonical (HF) name; GGUF names are accepted too."""
        info = self._by_name.get(name) or self._by_stored.get(name)
        if info is None:
            raise TensorNotFound(f"{self._label}: no tensor `{name}`")
        return info

    def raw(self, name: str) -> np.ndarray:
        info = self.info(name)
        buf = self._buffer()
        plain = STORED_DTYPES.get(info.qtype)
        if plain is not None:
            return np.frombuffer(buf, dtype=plain, count=info.n_elements, offset=info.offset).reshape(info.shape)
        rows, row_bytes = _byte_shape(info.shape, info.qtype)
        return np.frombuffer(buf, dtype=np.uint8, count=info.nbytes, offset=info.offset).reshape(rows, row_bytes)

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        info = self.info(name)
        values = dequantize_raw(self.raw(name), info.qtype, info.shape)
        self.release(name)
        values = from_stored_layout(info.name, values, self.architecture, self._layout_config)
        return values.astype(dtype, copy=False)

    def gguf_layout_tensor(self, name: str, arch: str, layout_config: Any) -> np.ndarray:
        if arch == self.architecture:
            return self.stored_tensor(name)  # already stored as a GGUF of this architecture
        return super().gguf_layout_tensor(name, arch, layout_config)

    def _rows_as_stored(self, name: str) -> bool:
        return not needs_layout_change(self.info(name).name, self.architecture)

    def release(self, name: str) -> None:
        """Drop the tensor's mapped pages from this process's resident set (page cache keeps them).

        Streaming over a whole file would otherwise leave every touched page resident, so peak
        RSS would grow with model size. Views of the tensor stay valid: pages fault back in.
        """
        info = self.info(name)
        mm = self._mmap
        if mm is None or not hasattr(mm, "madvise"):
            return
        start = info.offset - info.offset % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)
        except (OSError, ValueError):
            pass

    @cached_property
    def tokenizer(self) -> TokenizerInfo | None:  # type: ignore[override]
        return tokenizer_from_gguf_metadata(self.metadata, self._label)

    @cached_property
    def chat_template(self) -> str | None:  # type: ignore[override]
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @cached_property
    def config(self) -> dict[str, Any]:  # type: ignore[override]
        from weightprint.io.hf_config import hf_config_from_gguf

        _ = self.geometry  # checks the hyperparameters against the tensors before building lists from them
        tied = "output.weight" not in self._by_stored  # no lm_head: llama.cpp reuses token_embd
        return hf_config_from_gguf(self.metadata, tie_word_embeddings=tied, label=self._label)

    def _read_geometry(self) -> Any:
        from weightprint.io.geometry import geometry_from_gguf

        return geometry_from_gguf(self.metadata, self.tensor_infos(), self._label)

    def gguf_metadata(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return copy_metadata_for_write(self)

    def _buffer(self) -> Any:
        if self._mmap is None:
            raise WeightprintError(f"{self._label}: model is closed")
        return self._mmap

    def close(self) -> None:
        """Release the memory map (views already handed out keep it alive until dropped)."""
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # numpy views still export the buffer; the map dies with them

    def __repr__(self) -> str:
        arch = getattr(self, "architecture", "?")
        return f"GGUFModel({str(self.path)!r}, arch={arch!r}, tensors={len(getattr(self, '_infos', ()))})"


def _check_no_overlap(infos: list[TensorInfo], p: _HeaderParser) -> None:
    """Tensor data ranges must not overlap (llama.cpp refuses such files too)."""
    spans = sorted((i.offset, i.offset + i.nbytes, i.stored_name) for i in infos if i.nbytes)
    for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
        if b0 < a1:
            raise p.fail(f"tensors `{a}` [{a0}, {a1}) and `{b}` [{b0}, {b1}) overlap")


def _byte_shape(shape: tuple[int, ...], qtype: QType) -> tuple[int, int]:
    block_size, type_size = QUANT_SIZES[qtype]
    cols = shape[-1] if shape else 1
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows, cols // block_size * type_size


def tokenizer_from_gguf_metadata(metadata: Mapping[str, Any], label: str = "GGUF") -> TokenizerInfo | None:
    """:class:`TokenizerInfo` from ``tokenizer.ggml.*`` keys, or None when there are none.

    Raises
    ------
    GGUFFormatError
        A tokenizer key has the wrong kind of value (e.g. a string token id), a special token id
        is not one of the tokens present, or the per-token arrays do not match the vocabulary.
    """
    from weightprint.io.values import Values, describe

    if metadata.get("tokenizer.ggml.model") is None:
        return None
    v = Values(metadata, label)

    def fail(key: str, message: str) -> GGUFFormatError:
        return GGUFFormatError(f"{label}: metadata key `{key}` {message}")

    def strings(key: str) -> Sequence[str] | None:
        value = metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, (StringArray, list)) or (isinstance(value, list) and not all(isinstance(t, str) for t in value)):
            raise fail(key, f"is {describe(value)}, expected a string array")
        # a GGUF array stays lazy (decoded on access, from the map): a million-token vocabulary
        # as Python strings would cost ~100 MB for as long as the model is open
        if isinstance(value, StringArray):
            # bad UTF-8 is refused now, not at some later access; the strings are decoded by the
            # first pass over them (the tokenizer.json writer needs none: it reads the bytes)
            if len(value) <= DECODE_ONCE_STRINGS:
                value.validate()
            else:
                for _ in value:
                    pass
            return value
        return list(value)

    def numbers(key: str, n: int) -> np.ndarray | None:
        value = metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.ndim != 1:
            raise fail(key, f"is {describe(value)}, expected a numeric array")
        if len(value) != n:
            raise fail(key, f"has {len(value)} entries for {n} tokens")
        return value

    try:
        model = v.str("tokenizer.ggml.model")
        pre = v.str("tokenizer.ggml.pre")
        tokens = strings("tokenizer.ggml.tokens") or []
        merges = strings("tokenizer.ggml.merges")
        n = len(tokens)
        return TokenizerInfo(
            model=model,
            pre=pre,
            tokens=tokens,
            scores=numbers("tokenizer.ggml.scores", n),
            token_types=numbers("tokenizer.ggml.token_type", n),
            merges=merges,
            bos_id=v.token_id("tokenizer.ggml.bos_token_id", n),
            eos_id=v.token_id("tokenizer.ggml.eos_token_id", n),
            unk_id=v.token_id("tokenizer.ggml.unknown_token_id", n),
            pad_id=v.token_id("tokenizer.ggml.padding_token_id", n),
            add_bos=v.bool("tokenizer.ggml.add_bos_token"),
            add_eos=v.bool("tokenizer.ggml.add_eos_token"),
        )
    except GGUFFormatError:
        raise
    except WeightprintError as e:  # the checked accessor's ModelFormatError: same message, GGUF family
        raise GGUFFormatError(e.message) from None


def copy_metadata_for_write(model: GGUFModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(metadata, metadata_types)`` of ``model``, ready to edit and pass to :func:`write_gguf`.

    Array types are given as ``(GGUFValueType.ARRAY, element_type)`` so that even empty arrays
    are written back with their exact element type.
    """
    metadata = dict(model.metadata)
    types: dict[str, Any] = {}
    for key, vtype in model.metadata_types.items():
        if vtype == GGUFValueType.ARRAY:
            types[key] = (GGUFValueType.ARRAY, model.metadata_element_types[key])
        else:
            types[key] = vtype
    return metadata, types


def __getattr__(name: str) -> Any:
    # the writer moved to gguf_writer.py; ``from weightprint.io.gguf_file import write_gguf`` still works
    if name in ("TensorSpec", "write_gguf"):
        from weightprint.io import gguf_writer

        return getattr(gguf_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
