"""The one tensor abstraction: :class:`Model`.

Whatever the file format (GGUF, safetensors file, Hugging Face directory), a ``Model``
exposes metadata, tokenizer information and *lazily loaded* tensors under canonical
Hugging Face names (``model.layers.3.mlp.up_proj.weight``), one at a time, from
memory-mapped files. Shapes are numpy/PyTorch order: ``(out_features, in_features)``.

GGUF stores llama-type q/k projections with llama.cpp's rotary permutation applied;
``Model.tensor`` undoes it so that values are in Hugging Face layout, and the GGUF writer
redoes it. ``Model.raw`` gives the stored bytes as they are (no un-permutation).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from weightprint.constants import QType

if TYPE_CHECKING:
    from weightprint.io.geometry import Geometry

# Tensor types stored as plain numbers, and their numpy dtype (BF16 as raw uint16).
STORED_DTYPES: dict[QType, np.dtype] = {
    QType.F32: np.dtype("<f4"),
    QType.F16: np.dtype("<f2"),
    QType.BF16: np.dtype("<u2"),
    QType.F64: np.dtype("<f8"),
    QType.I8: np.dtype("<i1"),
    QType.I16: np.dtype("<i2"),
    QType.I32: np.dtype("<i4"),
    QType.I64: np.dtype("<i8"),
}


def dequantize_raw(raw: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> np.ndarray:
    """Stored values -> a new float32 array of ``shape``: the one decoder of stored tensor data.

    Args:
        raw (`np.ndarray`): what :meth:`Model.raw` returns (plain types in their stored dtype,
            BF16 as ``uint16``, block types as ``uint8`` rows), or the same data as ``uint8``
            bytes (e.g. rows read with ``pread``).
        qtype (`QType`): the stored type.
        shape (`tuple[int, ...]`): shape of the result; holds as many values as ``raw``.

    Returns:
        `np.ndarray`: float32 values in the stored layout (no q/k un-permutation).
    """
    plain = STORED_DTYPES.get(qtype)
    if plain is not None:
        if raw.dtype == np.uint8 and plain.itemsize > 1:
            raw = np.ascontiguousarray(raw).view(plain)
        if qtype == QType.BF16:
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        return raw.astype(np.float32).reshape(shape)
    from weightprint.quant import dequantize

    return np.asarray(dequantize(raw, qtype, shape), dtype=np.float32).reshape(shape)


def _pread_rows(path: Path, offset: int, row_bytes: int, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` of a contiguous ``(rows, row_bytes)`` block read with ``pread`` (no mapping)."""
    out = np.empty((len(ids), row_bytes), dtype=np.uint8)
    with open(path, "rb") as f:
        fd = f.fileno()
        for k, i in enumerate(ids.tolist()):
            chunk = os.pread(fd, row_bytes, offset + i * row_bytes)
            if len(chunk) != row_bytes:
                raise OSError(f"{path}: short read at byte {offset + i * row_bytes}")
            out[k] = np.frombuffer(chunk, dtype=np.uint8)
    return out


@dataclass(frozen=True)
class TensorInfo:
    """Where and how one tensor is stored.

    Attributes
    ----------
    name : str
        Canonical Hugging Face name (``model.layers.0.self_attn.q_proj.weight``).
    stored_name : str
        Name in the file (``blk.0.attn_q.weight`` in GGUF; same as ``name`` in safetensors).
    shape : tuple[int, ...]
        Logical shape in numpy order (rows, cols) = HF (out_features, in_features).
    qtype : QType
        Storage type (F32, F16, BF16, Q4_K, ...).
    offset : int
        Absolute byte offset of the data in its file.
    nbytes : int
        Number of stored bytes.
    file : Path
        The file the bytes live in (a shard, for sharded HF checkpoints).
    """

    name: str
    stored_name: str
    shape: tuple[int, ...]
    qtype: QType
    offset: int
    nbytes: int
    file: Path

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass
class TokenizerInfo:
    """Tokenizer facts, as far as the file tells them.

    Attributes
    ----------
    model : str
        ``gpt2`` (byte-level BPE), ``llama`` (SentencePiece), ``bert``... (GGUF ``tokenizer.ggml.model``)
    pre : str | None
        Pre-tokenizer name (GGUF ``tokenizer.ggml.pre``, e.g. ``smollm``).
    tokens : Sequence[str]
        The vocabulary, by id: a list, or from a GGUF file a lazy
        :class:`~weightprint.io.gguf_file.StringArray` that decodes on access.
    scores : numpy.ndarray | None
        SentencePiece scores, by id.
    token_types : numpy.ndarray | None
        GGUF token types, by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    merges : Sequence[str] | None
        BPE merges ("a b"), a list or a lazy ``StringArray`` like ``tokens``.
    bos_id, eos_id, unk_id, pad_id : int | None
        Special token ids.
    add_bos, add_eos : bool | None
        Whether the tokenizer adds BOS/EOS.
    """

    model: str
    pre: str | None = None
    tokens: Sequence[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    token_types: np.ndarray | None = None
    merges: Sequence[str] | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)


class Model(ABC):
    """A model checkpoint opened for streaming. Use as a context manager.

    Attributes
    ----------
    path : Path
        The file or directory that was opened.
    format : str
        ``"gguf"``, ``"safetensors"`` or ``"hf"``.
    architecture : str
        llama.cpp architecture name (``llama``, ``mistral``, ``qwen2``, ``gemma3``...) or
        ``"unknown"``.
    metadata : dict[str, Any]
        GGUF key/values (for GGUF files; arrays as numpy arrays or lists), or the safetensors
        ``__metadata__`` strings.
    config : dict[str, Any]
        Hugging Face ``config.json`` values (read, or reconstructed from GGUF metadata).
    tokenizer : TokenizerInfo | None
    chat_template : str | None
    """

    path: Path
    format: str
    architecture: str
    metadata: dict[str, Any]
    config: dict[str, Any]
    tokenizer: TokenizerInfo | None
    chat_template: str | None

    ggml_types: bool = False
    """True when ``TensorInfo.qtype`` are the GGML types a llama.cpp quantizer sees in this file
    (GGUF): a GGUF writer keeps the type of tensors it does not quantize and may copy their
    stored bytes unchanged. Otherwise 1-D tensors are written as F32, as llama.cpp's converter does."""

    @cached_property
    def geometry(self) -> "Geometry":
        """Layers, widths, head counts, vocabulary and embedding/head names (computed once)."""
        return self._read_geometry()

    def _read_geometry(self) -> "Geometry":
        from weightprint.io.geometry import geometry_from_config

        label = f"{self.path}/config.json" if self.format == "hf" else str(self.path)
        return geometry_from_config(self.config, self.architecture, self.tensor_infos(), label)

    def gguf_metadata(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``(metadata, value types)`` a GGUF file of this model starts from (no file type yet).

        From the Hugging Face config, tokenizer and chat template; a GGUF model copies its own.
        Value types are None where the writer infers them.
        """
        from weightprint.io.hf_config import gguf_metadata_from_hf

        return gguf_metadata_from_hf(self.config, self.tokenizer, self.chat_template)

    @abstractmethod
    def tensor_infos(self) -> list[TensorInfo]:
        """All tensors in file order."""

    def tensor_names(self) -> list[str]:
        """Canonical names of all tensors, in file order."""
        return [t.name for t in self.tensor_infos()]

    @abstractmethod
    def info(self, name: str) -> TensorInfo:
        """The :class:`TensorInfo` of a canonical name; raises ``TensorNotFound``."""

    @abstractmethod
    def raw(self, name: str) -> np.ndarray:
        """The stored bytes/values as a read-only memory-mapped view, no conversion.

        Quantized types: ``uint8`` array of shape ``(rows, row_bytes)``; F32/F16/BF16: the
        stored dtype (BF16 as ``uint16``) in the stored layout (GGUF q/k still permuted).
        """

    @abstractmethod
    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The tensor dequantized to ``dtype`` in Hugging Face layout (a new array)."""

    def stored_tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The tensor dequantized but in the file's stored layout (GGUF: q/k still permuted,
        Gemma norms + 1; other formats store Hugging Face layout)."""
        info = self.info(name)
        values = dequantize_raw(self.raw(name), info.qtype, info.shape).astype(dtype, copy=False)
        self.release(name)
        return values

    def gguf_layout_tensor(self, name: str, arch: str, layout_config: Any) -> np.ndarray:
        """float32 values of ``name`` in the layout a GGUF file of ``arch`` stores them.

        ``layout_config`` holds the head counts of the q/k permutation
        (:func:`weightprint.io.names.layout_config_from_gguf`).
        """
        from weightprint.io.names import to_stored_layout

        values = self.tensor(name, np.float32)
        return np.asarray(to_stored_layout(name, values, arch, layout_config), dtype=np.float32)

    rows_from_file: bool = False
    """True when the bytes of a 2-D tensor are one contiguous block of ``TensorInfo.file`` that
    :meth:`read_rows` may read row by row (wrappers that change values leave it False)."""

    def read_rows(self, name: str, ids: Any) -> np.ndarray:
        """Rows ``ids`` of a 2-D tensor as float32 (Hugging Face layout), reading only those rows.

        File-backed rows are read with ``pread`` rather than through the memory map, so a sample
        of a few thousand rows of a large embedding does not fault most of it into the resident
        set. Tensors whose stored rows differ from Hugging Face rows are read whole.
        """
        ids = np.asarray(ids, dtype=np.int64)
        info = self.info(name)
        if self.rows_from_file and len(info.shape) == 2 and info.file is not None and self._rows_as_stored(name):
            rows, cols = int(info.shape[0]), int(info.shape[1])
            path = Path(str(info.file))
            if path.is_file() and info.nbytes % rows == 0:
                raw = _pread_rows(path, info.offset, info.nbytes // rows, ids)
                return dequantize_raw(raw, info.qtype, (len(ids), cols))
        return np.asarray(self.tensor(name), dtype=np.float32)[ids]

    def _rows_as_stored(self, name: str) -> bool:
        """The stored rows of ``name`` are its Hugging Face rows (no layout change)."""
        return True

    def release(self, name: str) -> None:
        """Let the OS drop the memory-mapped pages of ``name`` from the resident set.

        Readers call it after copying a tensor out; callers of :meth:`raw` call it when they
        are done with the view. A no-op where the format has nothing to release.
        """

    def row_blocks(self, name: str, max_elements: int = 1 << 22) -> Iterator[np.ndarray]:
        """Consecutive float32 blocks of whole rows of ``name`` (Hugging Face layout, as
        ``tensor(name).reshape(-1, cols)``; a 1-D tensor is one row), at most about
        ``max_elements`` values each.

        Where :meth:`streams_rows`, each block is dequantized from the file on its own
        (:meth:`stored_row_blocks`), so a tensor never sits whole in memory (a 7B model's
        11008 x 4096 projection is 180 MB as float32, its embedding 512 MB); otherwise the
        blocks are slices of :meth:`tensor`.
        """
        info = self.info(name)
        cols = int(info.shape[-1]) if len(info.shape) else 1
        if self.streams_rows(name):
            for raw in self.stored_row_blocks(name, max_elements):
                yield dequantize_raw(raw, info.qtype, (len(raw), cols))
            return
        values = np.asarray(self.tensor(name, np.float32)).reshape(info.n_elements // cols if cols else 0, cols)
        step = max(1, max_elements // max(cols, 1))
        for start in range(0, len(values), step):
            yield values[start:start + step]

    def streams_rows(self, name: str) -> bool:
        """Whether :meth:`stored_row_blocks` can read ``name``: a non-empty tensor whose stored
        rows, in the file, are its Hugging Face rows."""
        return self.rows_from_file and self._rows_as_stored(name) and self.info(name).n_elements > 0

    def stored_row_blocks(self, name: str, max_elements: int = 1 << 22) -> Iterator[np.ndarray]:
        """The stored data of ``name`` (as :meth:`raw`, one row per tensor row) a block of about
        ``max_elements`` values at a time; the mapped pages are released after each block is
        used. Only where :meth:`streams_rows`."""
        info = self.info(name)
        cols = int(info.shape[-1]) if len(info.shape) else 1
        rows = info.n_elements // cols
        raw = self.raw(name).reshape(rows, -1)
        step = max(1, max_elements // cols)
        try:
            for start in range(0, rows, step):
                yield raw[start:start + step]
                self.release(name)
        finally:
            self.release(name)

    def iter_tensors(self, dtype: np.dtype | type = np.float32) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(name, array)`` one tensor at a time; peak memory is one tensor."""
        for info in self.tensor_infos():
            yield info.name, self.tensor(info.name, dtype)

    def n_parameters(self) -> int:
        return sum(t.n_elements for t in self.tensor_infos())

    def close(self) -> None:  # pragma: no cover - subclasses release their maps
        pass

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
