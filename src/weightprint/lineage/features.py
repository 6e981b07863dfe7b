"""Per-residual-coordinate features of a model, read one tensor at a time.

For every decoder layer and every weight that touches the residual stream, one number per
residual coordinate ``i``:

- matrices that *read* the residual stream (``q/k/v_proj``, ``gate/up_proj``; HF shape
  ``(out, d)``): the norm of column ``i`` times the weight ``g_i`` of the RMSNorm that feeds
  them (``|1 + g_i|`` for Gemma) -- what the matrix effectively applies, unchanged by the
  function-preserving rescaling ``g_i c_i``, ``W[:, i] / c_i``;
- matrices that *write* it (``o_proj``, ``down_proj``; shape ``(d, in)``): the norm of row ``i``;
- norm weights of length ``d``: the weight itself.

A norm over the other axis does not change when hidden units, attention heads or experts are
permuted or when q/k rows are reordered (llama.cpp's rotary layout), so these features survive
every function-preserving permutation except one of the residual stream itself. Each layer
also gets a *descriptor* (quantiles of each feature) that does not depend on the order of the
residual coordinates at all; layers are aligned on descriptors, so the alignment cannot leak
information about the residual order that the permutation test relies on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from weightprint.io.model import Model
from weightprint.io.names import split_layer

__all__ = [
    "ModelFeatures",
    "extract_features",
    "token_hashes",
]

_EXPERT_RE = re.compile(r"\.experts\.(\d+)\.")

# Tensors whose columns (HF (out, in) layout) are residual coordinates.
_READS_RESIDUAL = (
    "q_proj.weight", "k_proj.weight", "v_proj.weight", "qkv_proj.weight", "query_key_value.weight",
    "gate_proj.weight", "up_proj.weight", "gate_up_proj.weight", "w1.weight", "w3.weight",
    "mlp.gate.weight", "router.weight",
)
# Tensors whose rows are residual coordinates.
_WRITES_RESIDUAL = ("o_proj.weight", "down_proj.weight", "w2.weight", "dense.weight")


DESCRIPTOR_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class ModelFeatures:
    """What the white-box tests need from one model (no weights beyond these).

    Attributes
    ----------
    hidden_size : int
        Residual-stream width ``d``.
    layers : list[dict[str, numpy.ndarray]]
        Per decoder layer, ``role -> (d,) float32`` feature.
    descriptors : list[dict[str, numpy.ndarray]]
        Per layer, ``role -> (len(DESCRIPTOR_QUANTILES) + 1,)``: order-free summary of the feature.
    global_features : dict[str, numpy.ndarray]
        ``final_norm`` (``(d,)``) when present.
    embed_name, head_name : str | None
        Tensor names of the input embedding and of an untied output head.
    n_parameters : int
    """

    hidden_size: int
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)
    descriptors: list[dict[str, np.ndarray]] = field(default_factory=list)
    global_features: dict[str, np.ndarray] = field(default_factory=dict)
    embed_name: str | None = None
    head_name: str | None = None
    n_parameters: int = 0


def _role(name: str) -> tuple[int | None, str]:
    parts = split_layer(name)
    if parts is None:
        return None, name
    _, layer, role = parts
    role = _EXPERT_RE.sub(".experts.*.", "." + role)[1:]
    return layer, role


def _residual_axis(role: str, shape: tuple[int, ...], d: int) -> int | None:
    """Axis of ``shape`` that indexes residual coordinates, or None when the tensor has none."""
    if len(shape) == 1:
        return 0 if shape[0] == d and "norm" in role else None
    if len(shape) != 2:
        return None
    if role.endswith(_READS_RESIDUAL) and shape[1] == d:
        return 1
    if role.endswith(_WRITES_RESIDUAL) and shape[0] == d:
        return 0
    if shape[1] == d and shape[0] != d:
        return 1
    if shape[0] == d and shape[1] != d:
        return 0
    return None


def _input_norm(role: str, slot: dict[str, np.ndarray]) -> np.ndarray | None:
    """The norm weight applied to the input of a residual-reading matrix, if the layer has it."""
    if role.startswith(("self_attn.", "attention.", "attn.")):
        key = "input_layernorm.weight"
    elif role.startswith(("mlp.", "block_sparse_moe.", "feed_forward.")):
        key = "pre_feedforward_layernorm.weight" if "pre_feedforward_layernorm.weight" in slot else "post_attention_layernorm.weight"
        if "pre_feedforward_layernorm.weight" not in slot and "post_feedforward_layernorm.weight" in slot:
            return None  # sandwich norms without a pre-norm: the input scale is not one vector
    else:
        return None
    v = slot.get(key)
    return None if v is None or v.ndim != 1 else v


def _layer_prefix(infos: list, layer: int) -> str:
    """``model.layers.N.`` as this model spells it (from the first tensor of block ``layer``)."""
    for info in infos:
        parts = split_layer(info.name)
        if parts is not None and parts[1] == layer:
            return f"{parts[0]}{layer}."
    return ""


def descriptor(feature: np.ndarray) -> np.ndarray:
    """Order-free summary of one feature: quantiles and mean of ``log(|x| + eps)``."""
    lf = np.log(np.abs(feature.astype(np.float64)) + 1e-8)
    return np.concatenate([np.quantile(lf, DESCRIPTOR_QUANTILES), [lf.mean()]]).astype(np.float32)


def hidden_size_of(model: Model) -> int | None:
    """Residual width (``model.geometry``: config, else the embedding's shape)."""
    return model.geometry.hidden_size


def _squared_norms(model: Model, name: str, axis: int) -> np.ndarray:
    """Squared norms (float64) of the columns (``axis`` 1) or rows (``axis`` 0) of a 2-D tensor,
    a block of rows at a time (never the whole tensor, let alone as float64)."""
    rows, cols = (int(d) for d in model.info(name).shape)
    out = np.zeros(cols if axis == 1 else rows, dtype=np.float64)
    at = 0
    for block in model.row_blocks(name):
        b64 = block.astype(np.float64)
        if axis == 1:
            out += np.einsum("ij,ij->j", b64, b64)
        else:
            out[at:at + len(b64)] = np.einsum("ij,ij->i", b64, b64)
        at += len(b64)
    return out


def extract_features(
    model: Model,
    *,
    gains: dict[str, np.ndarray] | None = None,
    norm_features: bool = True,
) -> ModelFeatures:
    """Stream ``model`` tensor by tensor and compute its per-coordinate features.

    Peak memory is one dequantized tensor (the embedding matrix is not read here; see
    :func:`embedding_rows`).

    Parameters
    ----------
    model : Model
        The model (or a view of it, e.g. a suspect mapped into a reference's residual basis).
    gains : dict[str, numpy.ndarray], *optional*
        Effective RMSNorm gains (already ``1 + w`` for Gemma) by full norm tensor name, used
        instead of the model's own norm weights to weight the readers' column norms. A suspect
        mapped into A's basis with its norms folded comes back unfolded with *A's* gains
        (``W_B diag(g_B) R^T diag(1 / g_A)``); weighting by ``g_A`` again gives
        ``W_B diag(g_B) R^T``, B's own effective reader, with nothing of A left in it.
    norm_features : bool, *optional*, defaults to True
        False leaves out the norm weights (per layer and final) -- they carry no information
        once folded into the readers -- and does not read them: readers are then weighted by
        ``gains`` when given, else taken as they come (already effective).
    """
    infos = model.tensor_infos()
    d = hidden_size_of(model)
    if d is None:
        from weightprint.errors import NotComparableError

        raise NotComparableError(f"{model.path}: cannot tell the hidden size (no config and no embedding)")
    geo = model.geometry
    feats = ModelFeatures(hidden_size=d, n_parameters=sum(i.n_elements for i in infos))
    feats.embed_name = geo.embed_name
    feats.head_name = geo.head_name
    per_layer: dict[int, dict[str, np.ndarray]] = {}
    vector_roles: set[str] = set()
    for info in infos:
        layer, role = _role(info.name)
        if layer is None:
            if norm_features and info.name == geo.final_norm_name and tuple(info.shape) == (d,):
                feats.global_features["final_norm"] = model.tensor(info.name).astype(np.float32).reshape(-1)
            continue
        axis = _residual_axis(role, tuple(info.shape), d)
        if axis is None:
            continue
        if len(info.shape) == 1 and not norm_features:
            per_layer.setdefault(layer, {})  # readers' gains from ``gains``, or already in the readers
            continue
        if len(info.shape) == 1:
            per_layer.setdefault(layer, {})[role] = model.tensor(info.name).astype(np.float64).reshape(-1)
            vector_roles.add(role)
            continue
        sq = _squared_norms(model, info.name, axis)
        slot = per_layer.setdefault(layer, {})
        if role in slot:  # experts of one layer: add their squared norms (order-free)
            slot[role] = slot[role] + sq
        else:
            slot[role] = sq
    shifted = geo.norm_shifted
    prefixes = {layer: _layer_prefix(infos, layer) for layer in per_layer} if gains is not None else {}
    for layer in sorted(per_layer):
        out: dict[str, np.ndarray] = {}
        slot = per_layer[layer]
        if gains is not None:
            lookup = {**slot, **{k[len(prefixes[layer]):]: v for k, v in gains.items() if k.startswith(prefixes[layer])}}
        else:
            lookup = slot
        for role, v in slot.items():
            if not norm_features and role in vector_roles:
                continue
            value = v if role in vector_roles else np.sqrt(v)
            if role not in vector_roles and role.endswith(_READS_RESIDUAL):
                norm = _input_norm(role, lookup)
                if norm is not None:
                    # what the matrix effectively sees: its column norm times the norm weight
                    effective = norm if gains is not None or not shifted else norm + 1.0
                    value = value * np.abs(effective)
            out[role] = value.astype(np.float32)
        feats.layers.append(out)
        feats.descriptors.append({r: descriptor(v) for r, v in out.items()})
    return feats


def token_hashes(tokens: list[str]) -> np.ndarray:
    """A 64-bit hash of each token string (BLAKE2b), as ``uint64``: the order used to pick tokens."""
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, t in enumerate(tokens):
        out[i] = int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return out
