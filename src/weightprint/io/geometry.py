"""A model's shape, computed once: :class:`Geometry` (``Model.geometry``).

Layers, widths, head counts, vocabulary and which of the embedding/head/final-norm tensors exist,
read from the format's own description (GGUF metadata, Hugging Face ``config.json``) and from the
tensor list. Code above ``io/`` asks ``model.geometry`` instead of reading config keys or
metadata keys itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.io.model import TensorInfo
from weightprint.io.names import EMBED_NAMES, FINAL_NORM_NAMES, HEAD_NAMES

__all__ = ["Geometry", "geometry_from_config", "geometry_from_gguf", "mix_hyperparameters"]


@dataclass(frozen=True)
class Geometry:
    """The shape of a decoder-only transformer, as its file declares it.

    Attributes
    ----------
    architecture : str
        llama.cpp architecture name (``llama``, ``gemma3``...) or ``"unknown"``.
    n_layers : int | None
        Decoder blocks (GGUF ``{arch}.block_count``; HF ``num_hidden_layers``).
    hidden_size : int | None
        Residual width (GGUF ``{arch}.embedding_length``; HF ``hidden_size``/``n_embd``/``d_model``),
        else the embedding's column count.
    n_heads, n_kv_heads : int | None
        Attention heads and key/value heads of layer 0 (per-layer lists: llama.cpp takes layer
        0); ``n_kv_heads`` defaults to ``n_heads``.
    head_dim : int | None
        GGUF ``attention.key_length`` / HF ``head_dim``, else ``hidden_size // n_heads``.
    intermediate_size : int | None
        MLP width of layer 0 (GGUF ``feed_forward_length``; HF ``intermediate_size``).
    vocab_size : int | None
        Declared vocabulary (GGUF: length of ``tokenizer.ggml.tokens``, else
        ``{arch}.vocab_size``; HF ``vocab_size``). The embedding may have more (padded) rows.
    context_length : int | None
        GGUF ``{arch}.context_length`` / HF ``max_position_embeddings``.
    n_experts : int
        Experts per MoE layer; 0 for dense models.
    embed_name, head_name, final_norm_name : str | None
        Canonical names of the input embedding, of a separate output head (``lm_head.weight``)
        and of the final norm, when the model has them.
    embedding_shape : tuple[int, ...] | None
        Shape of the input embedding, ``(rows, hidden)``.
    norm_shifted : bool
        Gemma-family RMSNorm, which multiplies by ``1 + w`` (Hugging Face layout stores ``w``).
    """

    architecture: str
    n_layers: int | None = None
    hidden_size: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    n_experts: int = 0
    embed_name: str | None = None
    head_name: str | None = None
    final_norm_name: str | None = None
    embedding_shape: tuple[int, ...] | None = None
    norm_shifted: bool = False

    @property
    def has_lm_head(self) -> bool:
        """A separate output projection is stored."""
        return self.head_name is not None

    @property
    def tied_embeddings(self) -> bool:
        """No separate output head is stored: the output projection reuses the embedding."""
        return self.head_name is None

    def mix_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`weightprint.quant.mixes.choose_tensor_types` (``n_layers`` 0 when unknown)."""
        return {
            "n_layers": self.n_layers or 0,
            "n_expert": self.n_experts,
            "n_head": self.n_heads,
            "n_head_kv": self.n_kv_heads,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["embedding_shape"] = list(self.embedding_shape) if self.embedding_shape is not None else None
        return out


# --------------------------------------------------------------------------- helpers


def _layer0_int(value: Any, key: str) -> int | None:
    """An integer hyperparameter; per-layer arrays give their layer-0 value (llama.cpp's hparams)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise WeightprintError(f"metadata key `{key}`: expected an integer, got {value!r}") from e


def _tensor_facts(infos: Iterable[TensorInfo]) -> dict[str, Any]:
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in infos}
    embed = next((n for n in EMBED_NAMES if n in shapes), None)
    return {
        "embed_name": embed,
        "head_name": next((n for n in HEAD_NAMES if n in shapes), None),
        "final_norm_name": next((n for n in FINAL_NORM_NAMES if n in shapes), None),
        "embedding_shape": shapes[embed] if embed is not None else None,
    }


def _width(declared: int | None, facts: Mapping[str, Any]) -> int | None:
    if declared is not None:
        return declared
    shape = facts["embedding_shape"]
    return int(shape[1]) if shape is not None and len(shape) == 2 else None


def _gemma_norm(*names: str) -> bool:
    """Gemma-family RMSNorm (``x * (1 + w)``) by architecture or model type (``gemma``, ``gemma3_text``...)."""
    return any(n.lower().startswith("gemma") for n in names)


def _head_dim(declared: int | None, hidden: int | None, n_heads: int | None) -> int | None:
    if declared:
        return declared
    return hidden // n_heads if hidden and n_heads else None


# --------------------------------------------------------------------------- per format


def geometry_from_gguf(metadata: Mapping[str, Any], infos: Iterable[TensorInfo]) -> Geometry:
    """:class:`Geometry` of a GGUF file from its metadata and (canonical-name) tensor list."""
    arch = str(metadata.get("general.architecture") or "unknown")

    def get(key: str) -> int | None:
        full = f"{arch}.{key}"
        return _layer0_int(metadata.get(full), full)

    facts = _tensor_facts(infos)
    hidden = _width(get("embedding_length"), facts)
    n_heads = get("attention.head_count")
    kv = get("attention.head_count_kv")
    tokens = metadata.get("tokenizer.ggml.tokens")
    return Geometry(
        architecture=arch,
        n_layers=get("block_count"),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=kv if kv is not None else n_heads,
        head_dim=_head_dim(get("attention.key_length"), hidden, n_heads),
        intermediate_size=get("feed_forward_length"),
        vocab_size=len(tokens) if tokens is not None else get("vocab_size"),
        context_length=get("context_length"),
        n_experts=get("expert_count") or 0,
        norm_shifted=_gemma_norm(arch),
        **facts,
    )


def _config_int(config: Mapping[str, Any], *keys: str) -> int | None:
    """The first positive integer among ``keys`` of ``config`` (then of its ``text_config``)."""
    sub = config.get("text_config")
    for c in (config, sub if isinstance(sub, Mapping) else {}):
        for key in keys:
            v = c.get(key)
            if isinstance(v, (list, tuple)):  # per-layer lists: layer 0, as llama.cpp does
                v = v[0] if v else None
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
                return int(v)
    return None


def geometry_from_config(config: Mapping[str, Any], architecture: str, infos: Iterable[TensorInfo]) -> Geometry:
    """:class:`Geometry` from a Hugging Face ``config.json`` and the (canonical-name) tensor list."""
    config = config or {}
    facts = _tensor_facts(infos)
    hidden = _width(_config_int(config, "hidden_size", "n_embd", "d_model"), facts)
    n_heads = _config_int(config, "num_attention_heads", "n_head")
    kv = _config_int(config, "num_key_value_heads")
    model_type = str(config.get("model_type", ""))
    return Geometry(
        architecture=architecture,
        n_layers=_config_int(config, "num_hidden_layers", "n_layer"),
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=kv if kv is not None else n_heads,
        head_dim=_head_dim(_config_int(config, "head_dim"), hidden, n_heads),
        intermediate_size=_config_int(config, "intermediate_size", "n_inner"),
        vocab_size=_config_int(config, "vocab_size"),
        context_length=_config_int(config, "max_position_embeddings", "n_positions"),
        n_experts=_config_int(config, "num_local_experts", "num_experts") or 0,
        norm_shifted=_gemma_norm(architecture, model_type),
        **facts,
    )


def mix_hyperparameters(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :func:`weightprint.quant.mixes.choose_tensor_types` from GGUF metadata.

    Parameters
    ----------
    metadata : `Mapping[str, Any]`
        GGUF key -> value (``general.architecture``, ``{arch}.block_count``, ...).

    Returns
    -------
    dict
        ``{"arch", "n_layers", "n_expert", "n_head", "n_head_kv"}``.

    Raises
    ------
    WeightprintError
        ``general.architecture`` or ``{arch}.block_count`` is missing.
    """
    arch = metadata.get("general.architecture")
    if not arch:
        raise WeightprintError("metadata has no `general.architecture`")
    arch = str(arch)
    g = geometry_from_gguf(metadata, ())
    if g.n_layers is None:
        raise WeightprintError(f"metadata has no `{arch}.block_count`")

    def declared(key: str) -> int | None:  # head_count_kv is not defaulted here: llama.cpp's mix code does that
        full = f"{arch}.{key}"
        return _layer0_int(metadata.get(full), full)

    return {
        "arch": arch,
        "n_layers": g.n_layers,
        "n_expert": g.n_experts,
        "n_head": g.n_heads,
        "n_head_kv": declared("attention.head_count_kv"),
    }
