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

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from weightprint.constants import QType

if TYPE_CHECKING:
    from weightprint.io.geometry import Geometry


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
    tokens : list[str]
        The vocabulary, by id.
    scores : numpy.ndarray | None
        SentencePiece scores, by id.
    token_types : numpy.ndarray | None
        GGUF token types, by id (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    merges : list[str] | None
        BPE merges ("a b").
    bos_id, eos_id, unk_id, pad_id : int | None
        Special token ids.
    add_bos, add_eos : bool | None
        Whether the tokenizer adds BOS/EOS.
    """

    model: str
    pre: str | None = None
    tokens: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None
    token_types: np.ndarray | None = None
    merges: list[str] | None = None
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

        return geometry_from_config(self.config, self.architecture, self.tensor_infos())

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

    def release(self, name: str) -> None:
        """Let the OS drop the memory-mapped pages of ``name`` from the resident set.

        Readers call it after copying a tensor out; callers of :meth:`raw` call it when they
        are done with the view. A no-op where the format has nothing to release.
        """

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
