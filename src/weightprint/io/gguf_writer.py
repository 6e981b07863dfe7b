"""Writing GGUF v3 files, streaming one tensor at a time (the reader is :mod:`gguf_file`)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from gguf import GGUFValueType

from weightprint.progress import ProgressCallback
from weightprint.constants import GGUF_MAGIC, QUANT_SIZES, QType
from weightprint.errors import ShapeMismatchError, UnsupportedQuantType, WeightprintError
from weightprint.io.files import temp_file_beside
from weightprint.io.limits import MAX_ALIGNMENT, check_output_path, clean_stale_temporaries
from weightprint.io.gguf_file import (
    _DTYPE_TO_VALUE_TYPE,
    _NUMPY_DTYPES,
    _SCALAR_STRUCTS,
    _U32,
    _U64,
    DEFAULT_ALIGNMENT,
    MAX_DIMS,
    StringArray,
    copy_metadata_for_write,
    tensor_nbytes,
)

__all__ = ["TensorSpec", "copy_metadata_for_write", "write_gguf"]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its GGUF name, numpy-order shape and storage type."""

    stored_name: str
    shape: tuple[int, ...]
    qtype: QType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.qtype)


def _infer_scalar_type(value: Any) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, np.generic):
        t = _DTYPE_TO_VALUE_TYPE.get(value.dtype.newbyteorder("="))
        if t is not None:
            return t
    if isinstance(value, (int, np.integer)):
        if -(2**31) <= value < 2**31:
            return GGUFValueType.INT32
        return GGUFValueType.INT64 if value < 0 or value < 2**63 else GGUFValueType.UINT64
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray, StringArray)):
        return GGUFValueType.ARRAY
    raise TypeError(type(value).__name__)


def _infer_element_type(value: Any) -> GGUFValueType:
    if isinstance(value, np.ndarray):
        t = _DTYPE_TO_VALUE_TYPE.get(value.dtype.newbyteorder("=") if value.dtype.byteorder != "|" else value.dtype)
        if t is None:
            if value.dtype.kind in "US":
                return GGUFValueType.STRING
            raise TypeError(f"array of dtype {value.dtype}")
        return t
    if isinstance(value, StringArray) or len(value) == 0:
        return GGUFValueType.STRING
    kinds = {_infer_scalar_type(v) for v in value}
    if kinds <= {GGUFValueType.INT32, GGUFValueType.INT64}:
        return max(kinds, key=lambda k: 0 if k == GGUFValueType.INT32 else 1)
    if len(kinds) == 1:
        return kinds.pop()
    raise TypeError(f"list of mixed types {sorted(k.name for k in kinds)}")


def _encode_string(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return _U64.pack(len(raw)) + raw


def _encode_value(key: str, value: Any, vtype: GGUFValueType, etype: GGUFValueType | None, label: str) -> bytes:
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"expected str, got {type(value).__name__}")
        return _encode_string(value)
    if vtype == GGUFValueType.ARRAY:
        if etype is None:
            etype = _infer_element_type(value)
        if etype == GGUFValueType.STRING:
            if isinstance(value, StringArray):
                body = value.encoded()
            else:
                body = b"".join(_encode_string(str(v) if not isinstance(v, (str, bytes)) else v) for v in value)
            return _U32.pack(etype) + _U64.pack(len(value)) + body
        if etype == GGUFValueType.ARRAY:
            parts = [_encode_value(key, v, GGUFValueType.ARRAY, None, label) for v in value]
            return _U32.pack(etype) + _U64.pack(len(value)) + b"".join(parts)
        dtype = _NUMPY_DTYPES[etype]
        arr = np.asarray(value)
        if arr.ndim != 1:
            raise TypeError(f"expected a 1-D array, got shape {arr.shape}")
        if arr.size and arr.dtype != dtype:
            converted = arr.astype(dtype)
            if not np.array_equal(converted.astype(arr.dtype), arr):
                raise TypeError(f"values do not fit {etype.name}")
            arr = converted
        return _U32.pack(etype) + _U64.pack(arr.size) + arr.astype(dtype, copy=False).tobytes()
    st = _SCALAR_STRUCTS[vtype]
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return st.pack(float(value))
    if vtype == GGUFValueType.BOOL:
        return st.pack(bool(value))
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise TypeError(f"{value!r} is not an integer")
    return st.pack(int(value))


def _encode_metadata(metadata: Mapping[str, Any], metadata_types: Mapping[str, Any] | None, label: str) -> bytes:
    parts = []
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise WeightprintError(f"{label}: metadata key {key!r} must be a non-empty string")
        spec = (metadata_types or {}).get(key)
        etype: GGUFValueType | None = None
        try:
            if spec is None:
                vtype = _infer_scalar_type(value)
            elif isinstance(spec, tuple):
                vtype, etype = GGUFValueType(spec[0]), GGUFValueType(spec[1])
            else:
                vtype = GGUFValueType(spec)
            body = _encode_value(key, value, vtype, etype, label)
        except (TypeError, ValueError, struct.error, OverflowError, UnicodeError) as e:
            raise WeightprintError(f"{label}: cannot write metadata key `{key}` ({e})") from e
        parts.append(_encode_string(key) + _U32.pack(vtype) + body)
    return b"".join(parts)


def _validate_tensor_specs(tensors: Sequence[TensorSpec], label: str) -> None:
    seen: set[str] = set()
    for spec in tensors:
        if spec.stored_name in seen:
            raise WeightprintError(f"{label}: duplicate tensor `{spec.stored_name}`")
        seen.add(spec.stored_name)
        if not 1 <= len(spec.shape) <= MAX_DIMS or any(int(d) < 0 for d in spec.shape):
            raise ShapeMismatchError(f"{label}: tensor `{spec.stored_name}` has shape {spec.shape} (1 to {MAX_DIMS} dims)")
        if spec.qtype not in QUANT_SIZES:
            raise UnsupportedQuantType(f"{label}: tensor `{spec.stored_name}` has type {spec.qtype!r} without a block size")
        block_size = QUANT_SIZES[spec.qtype][0]
        if int(spec.shape[-1]) % block_size:
            raise ShapeMismatchError(
                f"{label}: tensor `{spec.stored_name}` row length {spec.shape[-1]} is not a multiple of "
                f"{spec.qtype.name} block size {block_size}"
            )


def write_gguf(
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any],
    metadata_types: Mapping[str, Any] | None,
    tensors: Sequence[TensorSpec],
    data: Callable[[TensorSpec], np.ndarray],
    progress: ProgressCallback | None = None,
) -> Path:
    """Write a GGUF v3 file, streaming one tensor at a time.

    Everything is validated and the header encoded before the first tensor is fetched; the file
    is written to a temporary file in the same directory and renamed into place, and removed on
    any error.

    Parameters
    ----------
    path : str or Path
        Output file.
    metadata : Mapping[str, Any]
        Key/values in the order to write. Set ``general.architecture`` and ``general.file_type``.
    metadata_types : Mapping[str, GGUFValueType | tuple] | None
        Type of each value: a ``GGUFValueType``, or ``(ARRAY, element_type)`` for arrays. Keys
        without a type are inferred: numpy scalars/arrays by dtype, ``bool`` -> BOOL, ``int`` ->
        INT32 (INT64/UINT64 when out of range), ``float`` -> FLOAT32, ``str`` -> STRING, a list of
        str -> string array. llama.cpp checks the types of the keys it reads, so copy them
        (:func:`copy_metadata_for_write`).
    tensors : Sequence[TensorSpec]
        The tensors, in file order.
    data : Callable[[TensorSpec], numpy.ndarray]
        Returns the stored bytes of a tensor (quantized ``uint8 (rows, row_bytes)``, or F32/F16/...
        values); called once per tensor, in order, so peak memory is one tensor.
    progress : ProgressCallback, *optional*
        Called with ``(tensors_done, n_tensors)`` after each tensor.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    WeightprintError
        A metadata value does not fit its type, duplicate tensor names.
    ShapeMismatchError
        A shape is not a multiple of its block size, or ``data`` returned the wrong number of bytes.
    """
    path = Path(path)
    label = str(path)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, (int, np.integer)) or alignment <= 0 or int(alignment) & (int(alignment) - 1):
        raise WeightprintError(f"{label}: `general.alignment` is {alignment!r}, expected a power of two")
    alignment = int(alignment)
    if alignment > MAX_ALIGNMENT:
        raise WeightprintError(f"{label}: `general.alignment` is {alignment}, more than the {MAX_ALIGNMENT} allowed")
    check_output_path(path, "file")  # never replace a device, FIFO or directory with a file
    types = dict(metadata_types or {})
    if "general.alignment" in metadata:
        types["general.alignment"] = GGUFValueType.UINT32
    _validate_tensor_specs(tensors, label)

    kv = _encode_metadata(metadata, types, label)
    infos = []
    offset = 0
    for spec in tensors:
        ne = [int(d) for d in reversed(spec.shape)]
        infos.append(
            _encode_string(spec.stored_name)
            + _U32.pack(len(ne))
            + struct.pack(f"<{len(ne)}Q", *ne)
            + _U32.pack(int(spec.qtype))
            + _U64.pack(offset)
        )
        offset += -(-spec.nbytes // alignment) * alignment
    header = GGUF_MAGIC + _U32.pack(3) + _U64.pack(len(tensors)) + _U64.pack(len(metadata)) + kv + b"".join(infos)
    header += b"\0" * (-len(header) % alignment)

    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    fd, tmp_name = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            for i, spec in enumerate(tensors):
                arr = np.ascontiguousarray(data(spec))
                if arr.nbytes != spec.nbytes:
                    raise ShapeMismatchError(
                        f"{label}: data for tensor `{spec.stored_name}` has {arr.nbytes} bytes, expected "
                        f"{spec.nbytes} ({spec.qtype.name} {tuple(spec.shape)})"
                    )
                f.write(arr.reshape(-1).view(np.uint8).data)
                f.write(b"\0" * (-spec.nbytes % alignment))
                if progress is not None:
                    progress(i + 1, len(tensors), spec.stored_name)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return path
