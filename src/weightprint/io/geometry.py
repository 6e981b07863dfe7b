"""A model's shape, computed once: :class:`Geometry` (``Model.geometry``).

Layers, widths, head counts, vocabulary and which of the embedding/head/final-norm tensors exist,
read from the format's own description (GGUF metadata, Hugging Face ``config.json``) and from the
tensor list. Code above ``io/`` asks ``model.geometry`` instead of reading config keys or
metadata keys itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.io.model import TensorInfo
from weightprint.io.names import EMBED_NAMES, FINAL_NORM_NAMES, HEAD_NAMES, layer_of
from weightprint.io.values import (
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    Values,
    check_heads,
    describe,
)

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
    v = Values({key: value}, "metadata")
    if isinstance(value, (list, tuple, np.ndarray)):
        return v.int(key, lo=0, per_layer=True) if len(value) else None
    return v.int(key, lo=None)


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


def _highest_layer(infos: Iterable[TensorInfo]) -> int | None:
    layers = [n for n in (layer_of(t.name) for t in infos) if n is not None]
    return max(layers) if layers else None


def _check_layers(v: Values, key: str, n_layers: int | None, highest: int | None) -> None:
    """The declared block count must match the layer tensors present (when there are any)."""
    if n_layers is None or highest is None:
        return
    if n_layers > highest + 1:
        raise v.fail(key, f"is {n_layers}, but the tensors stop at layer {highest}")
    if highest >= n_layers:
        raise v.fail(key, f"is {n_layers}, but there are tensors of layer {highest}")


def _heads(v: Values, key: str) -> int | None:
    """A head count: at least 1, or per-layer (0 allowed for attention-free layers, layer 0 returned)."""
    if isinstance(v.raw(key), (np.ndarray, list, tuple)):
        return v.int(key, lo=0, hi=MAX_HEADS, per_layer=True) or None
    return v.int(key, lo=1, hi=MAX_HEADS)


def geometry_from_gguf(metadata: Mapping[str, Any], infos: Iterable[TensorInfo], label: str = "GGUF") -> Geometry:
    """:class:`Geometry` of a GGUF file from its metadata and (canonical-name) tensor list.

    Every hyperparameter is type- and range-checked and checked against the tensors present
    (``block_count`` may not exceed the highest layer index + 1).

    Raises
    ------
    ModelFormatError
        A hyperparameter of the wrong type, out of range or inconsistent (names ``label`` and the key).
    """
    infos = list(infos)
    arch = Values(metadata, label).str("general.architecture") or "unknown"
    v = Values(metadata, label, prefix=f"{arch}.")
    facts = _tensor_facts(infos)
    n_layers = v.int("block_count", lo=1, hi=MAX_LAYERS)
    _check_layers(v, "block_count", n_layers, _highest_layer(infos))
    hidden = _width(v.int("embedding_length", lo=1, hi=MAX_WIDTH), facts)
    n_heads = _heads(v, "attention.head_count")
    kv = _heads(v, "attention.head_count_kv")
    head_dim = v.int("attention.key_length", lo=1, hi=MAX_WIDTH)
    check_heads(v, hidden, n_heads, kv, head_dim, ("embedding_length", "attention.head_count", "attention.head_count_kv"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is not None and (isinstance(tokens, (str, bytes, np.ndarray)) or not isinstance(tokens, Sequence)):
        raise Values(metadata, label).fail("tokenizer.ggml.tokens", f"is {describe(tokens)}, expected a string array")
    return Geometry(
        architecture=arch,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=kv if kv is not None else n_heads,
        head_dim=_head_dim(head_dim, hidden, n_heads),
        intermediate_size=v.int("feed_forward_length", lo=0, hi=MAX_WIDTH, per_layer=True),
        vocab_size=len(tokens) if tokens is not None else v.int("vocab_size", lo=1, hi=MAX_VOCAB),
        context_length=v.int("context_length", lo=0, hi=MAX_CONTEXT),
        n_experts=v.int("expert_count", lo=0, hi=MAX_EXPERTS) or 0,
        norm_shifted=_gemma_norm(arch),
        **facts,
    )


_CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "num_hidden_layers": (1, MAX_LAYERS), "n_layer": (1, MAX_LAYERS),
    "hidden_size": (1, MAX_WIDTH), "n_embd": (1, MAX_WIDTH), "d_model": (1, MAX_WIDTH),
    "num_attention_heads": (1, MAX_HEADS), "n_head": (1, MAX_HEADS), "num_key_value_heads": (1, MAX_HEADS),
    "head_dim": (1, MAX_WIDTH), "intermediate_size": (1, MAX_WIDTH), "n_inner": (1, MAX_WIDTH),
    "vocab_size": (1, MAX_VOCAB), "max_position_embeddings": (1, MAX_CONTEXT), "n_positions": (1, MAX_CONTEXT),
    "num_local_experts": (0, MAX_EXPERTS), "num_experts": (0, MAX_EXPERTS),
}


def config_label(config: Mapping[str, Any]) -> str:
    """``<dir>/config.json`` of a config read by :class:`~weightprint.io.hf.HFModel`, for messages."""
    name = config.get("_name_or_path")
    return f"{name}/config.json" if isinstance(name, str) and name else "config.json"


def _config_int(config: Mapping[str, Any], label: str, *keys: str) -> int | None:
    """The first of ``keys`` set in ``config`` (then in its ``text_config``), type- and range-checked.

    Per-layer lists give their layer-0 value, as llama.cpp does.
    """
    sub = config.get("text_config")
    for c, prefix in ((config, ""), (sub if isinstance(sub, Mapping) else {}, "text_config.")):
        v = Values(c, label, kind="config key", within=prefix)
        for key in keys:
            if not v.has(key):
                continue
            lo, hi = _CONFIG_LIMITS.get(key, (0, None))
            if isinstance(v.raw(key), list):
                value = v.int(key, lo=0, hi=hi, per_layer=True)
            else:
                value = v.int(key, lo=lo, hi=hi)
            if value:
                return int(value)
    return None


def geometry_from_config(config: Mapping[str, Any], architecture: str, infos: Iterable[TensorInfo],
                         label: str | None = None) -> Geometry:
    """:class:`Geometry` from a Hugging Face ``config.json`` and the (canonical-name) tensor list.

    Raises
    ------
    ModelFormatError
        A value of the wrong type, out of range or inconsistent with the tensors (names the key).
    """
    config = config or {}
    infos = list(infos)
    facts = _tensor_facts(infos)
    label = label or config_label(config)
    n_layers = _config_int(config, label, "num_hidden_layers", "n_layer")
    v = Values(config, label, kind="config key")
    _check_layers(v, "num_hidden_layers", n_layers, _highest_layer(infos))
    hidden = _width(_config_int(config, label, "hidden_size", "n_embd", "d_model"), facts)
    n_heads = _config_int(config, label, "num_attention_heads", "n_head")
    kv = _config_int(config, label, "num_key_value_heads")
    head_dim = _config_int(config, label, "head_dim")
    check_heads(v, hidden, n_heads, kv, head_dim, ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    model_type = config.get("model_type", "")
    return Geometry(
        architecture=architecture,
        n_layers=n_layers,
        hidden_size=hidden,
        n_heads=n_heads,
        n_kv_heads=kv if kv is not None else n_heads,
        head_dim=_head_dim(head_dim, hidden, n_heads),
        intermediate_size=_config_int(config, label, "intermediate_size", "n_inner"),
        vocab_size=_config_int(config, label, "vocab_size"),
        context_length=_config_int(config, label, "max_position_embeddings", "n_positions"),
        n_experts=_config_int(config, label, "num_local_experts", "num_experts") or 0,
        norm_shifted=_gemma_norm(architecture, model_type if isinstance(model_type, str) else ""),
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
