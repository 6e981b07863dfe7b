"""The one GGUF <-> Hugging Face tensor-name map, and the stored-layout transforms.

GGUF files use llama.cpp names (``blk.3.attn_q.weight``); every :class:`~weightprint.io.model.Model`
exposes Hugging Face names (``model.layers.3.self_attn.q_proj.weight``). The tables below are ours;
the tests check them against gguf-py's ``TensorNameMap`` for every supported architecture.

Besides names, llama.cpp's converter (``convert_hf_to_gguf.py``) changes some *values*:

- ``LlamaModel.modify_tensors`` (used by the ``llama`` and ``mistral`` converters) permutes the rows
  of ``q_proj``/``k_proj`` weights and biases so that rotary pairs are interleaved
  (:func:`permute_qk`; ``k`` uses the number of key/value heads). Qwen2/Qwen3 and Gemma are not permuted.
- ``GemmaModel``/``Gemma2Model``/``Gemma3Model`` store every ``*norm.weight`` as ``weight + 1``
  (Gemma's RMSNorm multiplies by ``1 + weight``).

:func:`from_stored_layout` undoes both (reading a GGUF), :func:`to_stored_layout` redoes them (writing).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from weightprint.errors import ShapeMismatchError

# Canonical names of the tensors outside the blocks, and the aliases other checkpoints use.
EMBED_NAME = "model.embed_tokens.weight"
HEAD_NAME = "lm_head.weight"
FINAL_NORM_NAME = "model.norm.weight"
EMBED_NAMES: tuple[str, ...] = (EMBED_NAME, "embed_tokens.weight", "transformer.wte.weight")
HEAD_NAMES: tuple[str, ...] = (HEAD_NAME,)
FINAL_NORM_NAMES: tuple[str, ...] = (FINAL_NORM_NAME, "norm.weight", "transformer.ln_f.weight")

# ``<prefix>layers.N.<rest>`` (also GPT-2's ``h.N.`` and ``blocks.N.``/``block.N.``).
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|block)\.(\d+)\.")


def split_layer(name: str) -> tuple[str, int, str] | None:
    """``(prefix, layer, rest)`` of a block tensor's canonical name, or None outside the blocks.

    Examples
    --------
    >>> split_layer("model.layers.3.mlp.up_proj.weight")
    ('model.layers.', 3, 'mlp.up_proj.weight')
    >>> split_layer("model.norm.weight") is None
    True
    """
    m = _LAYER_RE.search(name)
    if m is None:
        return None
    return name[: m.start(1)], int(m.group(1)), name[m.end():]


def layer_of(name: str) -> int | None:
    """The decoder-block number of a canonical tensor name (``model.layers.3.…`` -> 3), or None."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


# Tensors outside the blocks.
_GLOBAL_GGUF_TO_HF: dict[str, str] = {
    "token_embd": EMBED_NAME.removesuffix(".weight"),
    "output_norm": FINAL_NORM_NAME.removesuffix(".weight"),
    "output": HEAD_NAME.removesuffix(".weight"),
}

# Inside block N: ``blk.N.<gguf>`` <-> ``model.layers.N.<hf>``.
_BLOCK_COMMON: dict[str, str] = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# One norm between attention and MLP (llama, mistral, qwen2, qwen3, gemma 1); llama.cpp stores
# Mixtral as ``llama`` with ``expert_count``: its router is ``ffn_gate_inp`` (experts: below).
_BLOCK_LLAMA: dict[str, str] = {**_BLOCK_COMMON, "ffn_norm": "post_attention_layernorm",
                                "ffn_gate_inp": "block_sparse_moe.gate"}
# Gemma 2/3 "sandwich" norms: after attention, before and after the MLP.
_BLOCK_GEMMA2: dict[str, str] = {
    **_BLOCK_COMMON,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

BLOCK_MAPS: dict[str, dict[str, str]] = {
    "llama": _BLOCK_LLAMA,
    "mistral": _BLOCK_LLAMA,
    "qwen2": _BLOCK_LLAMA,
    "qwen3": _BLOCK_LLAMA,
    "gemma": _BLOCK_LLAMA,
    "gemma2": _BLOCK_GEMMA2,
    "gemma3": _BLOCK_GEMMA2,
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(BLOCK_MAPS)

# Architectures whose q/k projections llama.cpp stores with the rotary permutation.
QK_PERMUTED_ARCHITECTURES: frozenset[str] = frozenset({"llama", "mistral"})
# Architectures whose ``*norm.weight`` llama.cpp stores as ``weight + 1``.
NORM_SHIFT_ARCHITECTURES: frozenset[str] = frozenset({"gemma", "gemma2", "gemma3"})

_BLOCK_INVERSE: dict[int, dict[str, str]] = {}


def _block_map(arch: str) -> dict[str, str]:
    # Unknown architectures get the llama map: most llama.cpp architectures share it.
    return BLOCK_MAPS.get(arch, _BLOCK_LLAMA)


def _block_inverse(arch: str) -> dict[str, str]:
    forward = _block_map(arch)
    inverse = _BLOCK_INVERSE.get(id(forward))
    if inverse is None:
        inverse = {hf: gg for gg, hf in forward.items()}
        _BLOCK_INVERSE[id(forward)] = inverse
    return inverse


def _split_suffix(name: str) -> tuple[str, str]:
    """``"a.b.weight"`` -> ``("a.b", ".weight")``; names without a suffix keep ``""``."""
    base, dot, suffix = name.rpartition(".")
    if not dot or suffix.isdigit():
        return name, ""
    return base, "." + suffix


def gguf_to_hf_name(gguf_name: str, arch: str) -> str:
    """Hugging Face name of a GGUF tensor name.

    Parameters
    ----------
    gguf_name : str
        llama.cpp name, e.g. ``blk.3.attn_q.weight``.
    arch : str
        llama.cpp architecture (``general.architecture``), e.g. ``llama``, ``gemma3``.

    Returns
    -------
    str
        e.g. ``model.layers.3.self_attn.q_proj.weight``. Names the map does not know
        (``rope_freqs.weight``, vision tensors...) are returned unchanged, so that the map is a
        bijection on every file.

    Examples
    --------
    >>> gguf_to_hf_name("blk.0.ffn_norm.weight", "gemma3")
    'model.layers.0.pre_feedforward_layernorm.weight'
    """
    base, suffix = _split_suffix(gguf_name)
    if base.startswith("blk."):
        block, dot, part = base[4:].partition(".")
        if dot and block.isdigit():
            hf_part = _block_map(arch).get(part)
            if hf_part is not None:
                return f"model.layers.{block}.{hf_part}{suffix}"
        return gguf_name
    hf = _GLOBAL_GGUF_TO_HF.get(base)
    return gguf_name if hf is None else hf + suffix


_GLOBAL_HF_TO_GGUF = {hf: gg for gg, hf in _GLOBAL_GGUF_TO_HF.items()}


def hf_to_gguf_name(hf_name: str, arch: str) -> str:
    """GGUF name of a Hugging Face tensor name; the inverse of :func:`gguf_to_hf_name`.

    Names the map does not know are returned unchanged.

    Examples
    --------
    >>> hf_to_gguf_name("model.layers.0.self_attn.q_proj.weight", "llama")
    'blk.0.attn_q.weight'
    """
    base, suffix = _split_suffix(hf_name)
    if base.startswith("model.layers."):
        block, dot, part = base[len("model.layers."):].partition(".")
        if dot and block.isdigit():
            gg_part = _block_inverse(arch).get(part)
            if gg_part is not None:
                return f"blk.{block}.{gg_part}{suffix}"
        return hf_name
    gg = _GLOBAL_HF_TO_GGUF.get(base)
    return hf_name if gg is None else gg + suffix


# --------------------------------------------------------------------------- experts

# llama.cpp stacks a layer's experts into one 3-D tensor ``blk.N.ffn_{gate,up,down}_exps.weight``
# of numpy shape ``(n_expert, rows, cols)``; Mixtral's checkpoints keep one 2-D tensor per expert,
# ``model.layers.N.block_sparse_moe.experts.E.w{1,3,2}.weight`` (w1 = gate, w3 = up, w2 = down).
# Each expert is a contiguous run of rows of the stacked tensor, so a reader exposes the experts
# as views and a writer stacks their quantized bytes.
EXPERT_STACKS: dict[str, str] = {"ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}
_EXPERT_HF_RE = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_EXPERT_GGUF_RE = re.compile(r"^blk\.(\d+)\.(ffn_gate_exps|ffn_up_exps|ffn_down_exps)\.weight$")
_STACK_OF = {hf: gg for gg, hf in EXPERT_STACKS.items()}


def expert_stack_of(hf_name: str) -> tuple[str, int] | None:
    """``(stacked GGUF name, expert index)`` of one expert's tensor, or None for other names.

    Examples
    --------
    >>> expert_stack_of("model.layers.2.block_sparse_moe.experts.5.w2.weight")
    ('blk.2.ffn_down_exps.weight', 5)
    """
    m = _EXPERT_HF_RE.match(hf_name)
    if m is None:
        return None
    return f"blk.{m.group(1)}.{_STACK_OF[m.group(3)]}.weight", int(m.group(2))


def expert_names(gguf_name: str, n_expert: int) -> list[str] | None:
    """The per-expert Hugging Face names of a stacked GGUF expert tensor, or None for other names.

    Examples
    --------
    >>> expert_names("blk.0.ffn_gate_exps.weight", 2)
    ['model.layers.0.block_sparse_moe.experts.0.w1.weight', 'model.layers.0.block_sparse_moe.experts.1.w1.weight']
    """
    m = _EXPERT_GGUF_RE.match(gguf_name)
    if m is None:
        return None
    layer, part = m.group(1), EXPERT_STACKS[m.group(2)]
    return [f"model.layers.{layer}.block_sparse_moe.experts.{e}.{part}.weight" for e in range(n_expert)]


# --------------------------------------------------------------------------- layout


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary permutation of q/k rows (Hugging Face -> GGUF order).

    As ``LlamaModel.permute`` in ``convert_hf_to_gguf.py``: within each head, the first half and
    the second half of the rows are interleaved. Works on weights ``(rows, cols)`` and biases
    ``(rows,)``; pass the number of key/value heads for ``k_proj``.

    Raises
    ------
    ShapeMismatchError
        When the row count is not a multiple of ``2 * n_head``.
    """
    rows = _check_qk_rows(w, n_head)
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk` (GGUF -> Hugging Face order)."""
    rows = _check_qk_rows(w, n_head)
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_qk_rows(w: np.ndarray, n_head: int) -> int:
    rows = int(w.shape[0]) if w.ndim else 0
    if n_head <= 0 or rows % (2 * n_head) != 0:
        raise ShapeMismatchError(
            f"q/k tensor of shape {tuple(w.shape)}: {rows} rows is not a multiple of 2 x {n_head} heads"
        )
    return rows


def _head_count(config: Mapping[str, Any], key: str, hf_name: str) -> int:
    value = config.get(key)
    if value is None and key == "num_key_value_heads":
        value = config.get("num_attention_heads")
    if value is None:
        raise ShapeMismatchError(f"tensor `{hf_name}`: config has no `{key}` to undo the q/k permutation")
    if isinstance(value, (list, tuple, np.ndarray)):  # per-layer head counts
        layer = layer_of(hf_name)
        if layer is None or layer >= len(value):
            raise ShapeMismatchError(f"tensor `{hf_name}`: no per-layer `{key}` for it")
        value = value[layer]
    return int(value)


def _qk_kind(hf_name: str) -> str | None:
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return "q"
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return "k"
    return None


def needs_layout_change(hf_name: str, arch: str) -> bool:
    """True when the stored values of ``hf_name`` differ from the Hugging Face values in ``arch``."""
    if arch in QK_PERMUTED_ARCHITECTURES and _qk_kind(hf_name) is not None:
        return True
    return arch in NORM_SHIFT_ARCHITECTURES and hf_name.endswith("norm.weight")


def from_stored_layout(hf_name: str, array: np.ndarray, arch: str, config: Mapping[str, Any]) -> np.ndarray:
    """GGUF stored values -> Hugging Face values (undo q/k permutation, Gemma's norm + 1).

    Parameters
    ----------
    hf_name : str
        Canonical (Hugging Face) tensor name.
    array : numpy.ndarray
        Dequantized values as stored in the GGUF file, numpy order.
    arch : str
        llama.cpp architecture.
    config : Mapping
        Needs ``num_attention_heads`` and (for GQA) ``num_key_value_heads`` for permuted archs;
        per-layer lists are accepted.

    Returns
    -------
    numpy.ndarray
        A new array when anything changed, else ``array`` itself.
    """
    if arch in QK_PERMUTED_ARCHITECTURES:
        kind = _qk_kind(hf_name)
        if kind is not None:
            key = "num_attention_heads" if kind == "q" else "num_key_value_heads"
            return unpermute_qk(array, _head_count(config, key, hf_name))
    if arch in NORM_SHIFT_ARCHITECTURES and hf_name.endswith("norm.weight"):
        return (array.astype(np.float64) - 1.0).astype(array.dtype)
    return array


def to_stored_layout(hf_name: str, array: np.ndarray, arch: str, config: Mapping[str, Any]) -> np.ndarray:
    """Hugging Face values -> GGUF stored values; the inverse of :func:`from_stored_layout`."""
    if arch in QK_PERMUTED_ARCHITECTURES:
        kind = _qk_kind(hf_name)
        if kind is not None:
            key = "num_attention_heads" if kind == "q" else "num_key_value_heads"
            return permute_qk(array, _head_count(config, key, hf_name))
    if arch in NORM_SHIFT_ARCHITECTURES and hf_name.endswith("norm.weight"):
        return (array.astype(np.float64) + 1.0).astype(array.dtype)
    return array


def layout_config_from_gguf(metadata: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """The head counts :func:`from_stored_layout` needs, from GGUF metadata."""
    config: dict[str, Any] = {}
    for gguf_key, hf_key in (("attention.head_count", "num_attention_heads"),
                             ("attention.head_count_kv", "num_key_value_heads")):
        value = metadata.get(f"{arch}.{gguf_key}")
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
            config[hf_key] = [int(v) for v in value]
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            config[hf_key] = int(value)
        # other types: leave it out; from_stored_layout then names the missing key
    return config
