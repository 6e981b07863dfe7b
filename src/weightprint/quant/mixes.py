"""llama.cpp's per-tensor type rules ("mixes"): which GGML type each tensor gets for a file type.

A port of ``src/llama-quant.cpp`` of the llama.cpp vendored by llama-cpp-python 0.3.36
(ggml-org/llama.cpp@0c1e57098, read from the 0.3.36 sdist's ``vendor/llama.cpp``)
(``tensor_allows_quantization``, ``llama_tensor_get_type`` / ``llama_tensor_get_type_impl``,
``tensor_type_fallback``, ``init_quantize_state_counters``), with llama.cpp's default
quantization parameters: no imatrix, no ``--pure``, no ``--tensor-type`` / ``--output-tensor-type``
/ ``--token-embedding-type`` overrides, output tensor quantized. Only the file types of
:class:`weightprint.constants.FileType` are covered (no IQ*, TQ*, Q2_K_S or MXFP4_MOE mixes).

What llama.cpp does, in short:

- **Which tensors are quantized.** Only tensors with at least two dimensions (``ggml_n_dims``:
  trailing sizes of 1 do not count, so a ``(1, n)`` tensor is 1-D) whose name ends in ``weight``,
  except norms (``*_norm.weight``), MoE router weights (``ffn_gate_inp.weight``), position and
  token-type embeddings (``position_embd.weight``, ``token_types.weight``), and a list of small
  special tensors (``altup``, ``laurel``, ``ssm_conv1d``, RWKV ``time_mix_*``, T5
  ``attn_rel_b``, vision ``.patch_embd``/``.position_embd`` ...). Every other tensor keeps its
  source type and bytes, whatever the file type: a 1-D F32 or F16 tensor (biases, norms) stays F32
  or F16, even for ``FileType.F16`` or ``FileType.F32``.
- **F32 / F16 / BF16 file types** give that type to every quantizable tensor; no other rule applies.
- **Quantized file types** start from the base type (``FILE_TYPE_BASE``) and adjust it per tensor
  category: the output tensor (and ``token_embd`` when there is no ``output.weight``, i.e. tied
  embeddings) becomes Q6_K (Q8_0 stays Q8_0; Q8_0 when its rows are not a multiple of the base
  type's block, or for Falcon); ``attn_v`` / ``attn_qkv`` / ``attn_kv_b`` and ``ffn_down`` get more
  bits in some layers (``_use_more_bits``: the first and last eighth, and every third layer in
  between) for the ``_M``/``_L`` mixes, counted with the ``i_attention_wv`` / ``i_ffn_down``
  counters in llama.cpp's tensor order (by layer number, then by name); ``attn_output`` is raised
  for Q2_K / Q3_K_M / Q3_K_L.
- **Fallback.** When a tensor's row length (``ne[0]``, the last numpy axis) is not a multiple of
  the chosen type's block size, llama.cpp falls back: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0,
  Q5_K -> Q5_1, Q6_K -> Q8_0; a 32-block type stays as it is; and if the fallback still does not
  fit (rows not a multiple of 32), F16. Each fallback is counted (``n_fallback``, reported as
  :attr:`TensorTypePlan.fallbacks`).

**Requantizing** (a source that is already quantized, with ``allow_requantize``): the chosen types
do not depend on the source types at all: the same rules run on names and shapes. A quantizable
tensor whose chosen type differs from its source type is dequantized to F32 and quantized again; a
tensor whose chosen type equals its source type is copied byte for byte (so a Q8_0 tensor in a Q8_0
request is not re-rounded); non-quantizable tensors are copied. Without ``allow_requantize``
llama.cpp refuses any quantized tensor that would change type.

Known differences from llama.cpp: none for the covered file types, as far as tested; the "70B"
model-size rule (attn_v Q3_K/Q4_K -> Q5_K) is inferred like llama.cpp's loader does (llama with
80 layers and grouped-query attention; qwen2, deci, olmo with 80 layers; jais2 with 68).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from weightprint.constants import FILE_TYPE_BASE, QUANT_SIZES, FileType, QType
from weightprint.errors import ShapeMismatchError, UnsupportedQuantType, WeightprintError

__all__ = [
    "TensorTypePlan",
    "choose_tensor_types",
    "tensor_type_plan",
    "tensor_allows_quantization",
]

_UNQUANTIZED_TYPES = frozenset({QType.F32, QType.F16, QType.BF16, QType.F64, QType.I8, QType.I16, QType.I32, QType.I64})

# fallback for a type whose block does not divide the row length (tensor_type_fallback)
_FALLBACK: dict[QType, QType] = {
    QType.Q2_K: QType.Q4_0,
    QType.Q3_K: QType.Q4_0,
    QType.TQ1_0: QType.Q4_0,
    QType.TQ2_0: QType.Q4_0,
    QType.Q4_K: QType.Q5_0,
    QType.Q5_K: QType.Q5_1,
    QType.Q6_K: QType.Q8_0,
    QType.IQ1_S: QType.IQ4_NL,
    QType.IQ1_M: QType.IQ4_NL,
    QType.IQ2_XXS: QType.IQ4_NL,
    QType.IQ2_XS: QType.IQ4_NL,
    QType.IQ2_S: QType.IQ4_NL,
    QType.IQ3_XXS: QType.IQ4_NL,
    QType.IQ3_S: QType.IQ4_NL,
    QType.IQ4_XS: QType.IQ4_NL,
}

# substrings that keep a tensor unquantized (tensor_allows_quantization), any architecture
_KEEP_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})
_GLM5_NEXT_KEEP_SUBSTRINGS = (
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
)

# architectures whose loader calls a model of this many layers "70B" (LLM_TYPE_70B)
_LAYERS_70B = {"llama": 80, "qwen2": 80, "deci": 80, "olmo": 80, "jais2": 68}

_LAYER_RE = re.compile(r"blk\.([+-]?\d+)")


class _Category(Enum):
    TOKEN_EMBD = "token_embd"
    ATTENTION_Q = "attn_q"
    ATTENTION_V = "attn_v"
    ATTENTION_K = "attn_k"
    ATTENTION_QKV = "attn_qkv"
    ATTENTION_KV_B = "attn_kv_b"
    ATTENTION_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


_ATTN_V_LIKE = frozenset({_Category.ATTENTION_V, _Category.ATTENTION_QKV, _Category.ATTENTION_KV_B})


@dataclass(frozen=True)
class TensorTypePlan:
    """The types llama.cpp would give to each tensor of a model for one file type.

    Attributes
    ----------
    file_type : FileType
        The requested file type.
    types : dict[str, QType]
        Tensor name -> chosen type, in llama.cpp's processing order (layer number, then name).
    quantizable : frozenset[str]
        Names that pass llama.cpp's "may be quantized" checks; the others keep their source type.
    fallbacks : tuple[str, ...]
        Names whose row length forced a fallback type (llama.cpp's ``n_fallback`` counter).
    """

    file_type: FileType
    types: dict[str, QType] = field(default_factory=dict)
    quantizable: frozenset[str] = frozenset()
    fallbacks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form: type names instead of enums."""
        return {
            "file_type": self.file_type.name,
            "types": {name: qtype.name for name, qtype in self.types.items()},
            "quantizable": sorted(self.quantizable),
            "fallbacks": list(self.fallbacks),
        }


def _ne(shape: Sequence[int]) -> list[int]:
    """ggml's ``ne`` (fastest axis first, padded to 4) from a numpy-order shape."""
    ne = [int(d) for d in reversed(tuple(shape))]
    return ne + [1] * (4 - len(ne))


def _n_dims(shape: Sequence[int]) -> int:
    """``ggml_n_dims``: trailing sizes of 1 (in ``ne`` order) do not count; at least 1."""
    ne = _ne(shape)
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def _layer_of(name: str) -> int | None:
    """The layer number as C's ``sscanf(name, "blk.%d.", &i)`` reads it, or None."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def _order_key(name: str) -> tuple[int, bytes]:
    """llama.cpp's ``weight_name_comparer``: by layer (-1 when none), then bytewise by name."""
    layer = _layer_of(name)
    return (-1 if layer is None else layer, name.encode("utf-8"))


def _category(name: str) -> _Category:
    """``tensor_get_category``: broad categories by (sub)string, first match wins."""
    if name == "output.weight":
        return _Category.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _Category.TOKEN_EMBD
    for needle, category in (
        ("attn_qkv.weight", _Category.ATTENTION_QKV),
        ("attn_kv_b.weight", _Category.ATTENTION_KV_B),
        ("attn_v.weight", _Category.ATTENTION_V),
        ("attn_k.weight", _Category.ATTENTION_K),
        ("attn_q.weight", _Category.ATTENTION_Q),
        ("attn_output.weight", _Category.ATTENTION_OUTPUT),
        ("ffn_up", _Category.FFN_UP),
        ("ffn_gate", _Category.FFN_GATE),
        ("ffn_down", _Category.FFN_DOWN),
    ):
        if needle in name:
            return category
    return _Category.OTHER


def tensor_allows_quantization(
    arch: str, name: str, shape: Sequence[int], *, quantize_output_tensor: bool = True
) -> bool:
    """Whether llama.cpp's ``llama_model_quantize`` may change this tensor's type.

    Parameters
    ----------
    arch : `str`
        ``general.architecture`` (e.g. ``"llama"``, ``"gemma3"``).
    name : `str`
        GGUF tensor name, e.g. ``blk.3.attn_v.weight``.
    shape : `Sequence[int]`
        Logical shape in numpy order (rows, cols); ``cols`` is ggml's ``ne[0]``.
    quantize_output_tensor : `bool`, *optional*, defaults to True
        llama.cpp's ``--leave-output-tensor`` is ``False`` here.

    Returns
    -------
    bool
        False for 1-D tensors, norms, router weights, position embeddings and the other
        exceptions listed in the module docstring.
    """
    if _n_dims(shape) < 2:
        return False
    # llama.cpp: name.rfind("weight") == name.size() - 6, which is also true (npos == size_t(-1))
    # for every 5-character name
    if not (name.endswith("weight") or len(name.encode("utf-8")) == 5):
        return False
    if not quantize_output_tensor and name == "output.weight":
        return False
    if name in _KEEP_NAMES:
        return False
    if any(s in name for s in _KEEP_SUBSTRINGS):
        return False
    if arch == "glm5-next" and any(s in name for s in _GLM5_NEXT_KEEP_SUBSTRINGS):
        return False
    return True


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    eighth = n_layers // 8
    d = i_layer - eighth
    c_mod = d - 3 * int(d / 3)  # C's % (truncating) for negative d
    return i_layer < eighth or i_layer >= 7 * n_layers // 8 or c_mod == 2


def _block_size(qtype: QType) -> int:
    return QUANT_SIZES[qtype][0]


@dataclass
class _State:
    arch: str
    file_type: FileType
    n_layers: int
    n_expert: int
    n_gqa: int | None
    is_70b: bool
    has_tied_embeddings: bool
    n_attention_wv: int
    i_attention_wv: int = 0
    i_ffn_down: int = 0
    i_ffn_gate: int = 0
    i_ffn_up: int = 0


def _layer_info(state: _State, counter: int, name: str) -> tuple[int, int]:
    """``layer_info``: the counter for dense models, the layer in the name for MoE models."""
    if max(1, state.n_expert) > 1:
        layer = _layer_of(name)
        if layer is None:
            raise WeightprintError(f"tensor `{name}`: cannot determine its layer (MoE model, n_expert={state.n_expert})")
        if not 0 <= layer < state.n_layers:
            raise WeightprintError(f"tensor `{name}`: layer {layer} is outside [0, {state.n_layers})")
        return layer, state.n_layers
    return counter, state.n_layers


def _require_gqa(state: _State, name: str) -> int:
    if state.n_gqa is None:
        raise WeightprintError(
            f"tensor `{name}`: file type {state.file_type.name} needs the head counts "
            "(pass n_head and n_head_kv)"
        )
    return state.n_gqa


def _type_for_category(state: _State, new_type: QType, name: str, shape: Sequence[int], category: _Category) -> QType:
    """``llama_tensor_get_type_impl`` for the covered (non-IQ) file types, no imatrix."""
    ft = state.file_type
    falcon = state.arch == "falcon"

    if state.arch == "glm5-next" and any(s in name for s in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        return QType.Q8_0  # new_type is quantized here: never below Q8_0

    if category is _Category.OUTPUT or (state.has_tied_embeddings and category is _Category.TOKEN_EMBD):
        nx = _ne(shape)[0]
        if falcon or nx % _block_size(new_type) != 0:
            return QType.Q8_0
        if new_type != QType.Q8_0:
            return QType.Q6_K
        return new_type

    if category is _Category.TOKEN_EMBD:
        return new_type  # only IQ/TQ file types change an untied token_embd

    if category in _ATTN_V_LIKE:  # attn_qkv too: llama.cpp's own attn_qkv branch comes after this one, dead
        i, n = state.i_attention_wv, state.n_attention_wv
        if ft == FileType.Q2_K:
            new_type = QType.Q4_K if _require_gqa(state, name) >= 4 else QType.Q3_K
        elif ft == FileType.Q3_K_M:
            new_type = QType.Q5_K if i < 2 else QType.Q4_K
        elif ft == FileType.Q3_K_L:
            new_type = QType.Q5_K
        elif ft in (FileType.Q4_K_M, FileType.Q5_K_M) and _use_more_bits(i, n):
            new_type = QType.Q6_K
        elif ft == FileType.Q4_K_S and i < 4:
            new_type = QType.Q5_K
        if state.is_70b and new_type in (QType.Q3_K, QType.Q4_K):
            new_type = QType.Q5_K
        if state.n_expert == 8:
            new_type = QType.Q8_0
        state.i_attention_wv += 1
        return new_type

    if category is _Category.ATTENTION_K:
        return QType.Q8_0 if state.n_expert == 8 else new_type

    if category is _Category.ATTENTION_Q:
        return new_type  # only IQ3 mixes change attn_q

    if category is _Category.FFN_DOWN:
        i_layer, n_layer = _layer_info(state, state.i_ffn_down, name)
        more = _use_more_bits(i_layer, n_layer)
        if ft == FileType.Q2_K:
            new_type = QType.Q3_K
        elif ft == FileType.Q3_K_M:
            if i_layer < n_layer // 16:
                new_type = QType.Q5_K
            elif not falcon or more:
                new_type = QType.Q4_K
            else:
                new_type = QType.Q3_K
        elif ft == FileType.Q3_K_L:
            new_type = QType.Q4_K if falcon else QType.Q5_K
        elif ft == FileType.Q4_K_M:
            if falcon:
                new_type = QType.Q6_K if i_layer < n_layer // 16 else QType.Q5_K if more else QType.Q4_K
            elif more:
                new_type = QType.Q6_K
        elif ft == FileType.Q5_K_M and more:
            new_type = QType.Q6_K
        elif ft == FileType.Q4_K_S and not falcon and i_layer < n_layer // 8:
            new_type = QType.Q5_K
        state.i_ffn_down += 1
        return new_type

    if category is _Category.ATTENTION_OUTPUT:
        if not falcon:
            if state.n_expert == 8:
                if ft in (FileType.Q2_K, FileType.Q3_K_S, FileType.Q3_K_M, FileType.Q4_K_S, FileType.Q4_K_M):
                    new_type = QType.Q5_K
            elif ft == FileType.Q2_K:
                new_type = QType.Q3_K
            elif ft == FileType.Q3_K_M:
                new_type = QType.Q4_K
            elif ft == FileType.Q3_K_L:
                new_type = QType.Q5_K
        elif ft == FileType.Q3_K_L:
            new_type = QType.Q4_K
        return new_type

    if category is _Category.FFN_GATE:
        _layer_info(state, state.i_ffn_gate, name)  # raises for MoE names without a valid layer
        state.i_ffn_gate += 1
        return new_type

    if category is _Category.FFN_UP:
        _layer_info(state, state.i_ffn_up, name)
        state.i_ffn_up += 1
        return new_type

    return new_type


def _fallback(qtype: QType, shape: Sequence[int]) -> tuple[QType, bool]:
    """``tensor_type_fallback``: a type whose block divides the row length; (type, fell_back)."""
    ncols = _ne(shape)[0]
    block = _block_size(qtype)
    if ncols % block == 0:
        return qtype, False
    if qtype in _FALLBACK:
        result = _FALLBACK[qtype]
    elif block <= 32:
        result = qtype
    else:
        raise UnsupportedQuantType(f"no tensor type fallback is defined for type {qtype.name}")
    if ncols % _block_size(result) != 0:
        result = QType.F16
    return result, True


def _is_70b(arch: str, n_layers: int, n_head: int | None, n_head_kv: int | None) -> bool:
    if _LAYERS_70B.get(arch) != n_layers:
        return False
    if arch == "llama":
        return n_head is not None and n_head_kv is not None and n_head != n_head_kv
    return True


def _validate_tensor_type_plan(
    tensors: Iterable[Sequence[Any]],
    file_type: FileType | int,
    n_layers: int,
    n_expert: int,
    source_types: Mapping[str, QType] | None,
) -> tuple[FileType, list[tuple[str, tuple[int, ...], QType]]]:
    try:
        ft = FileType(int(file_type))
    except ValueError:
        known = ", ".join(f.name for f in FileType)
        raise UnsupportedQuantType(f"file type {int(file_type)} is not covered by the mixes; known: {known}") from None
    if isinstance(n_layers, bool) or int(n_layers) != n_layers or n_layers <= 0:
        raise WeightprintError(f"`n_layers` must be a positive integer, got {n_layers!r}")
    if isinstance(n_expert, bool) or int(n_expert) != n_expert or n_expert < 0:
        raise WeightprintError(f"`n_expert` must be a non-negative integer, got {n_expert!r}")
    source_types = dict(source_types or {})
    rows: list[tuple[str, tuple[int, ...], QType]] = []
    seen: set[str] = set()
    for item in tensors:
        if len(item) not in (2, 3):
            raise WeightprintError(f"tensor entry {item!r}: expected (name, shape) or (name, shape, source type)")
        name, shape = str(item[0]), tuple(int(d) for d in item[1])
        if name in seen:
            raise WeightprintError(f"tensor `{name}` is listed twice")
        seen.add(name)
        if not 1 <= len(shape) <= 4 or any(d <= 0 for d in shape):
            raise ShapeMismatchError(f"tensor `{name}`: shape {shape} must have 1 to 4 positive sizes")
        if len(item) == 3:
            src = QType(item[2])
        else:
            src = QType(source_types.get(name, QType.F32))
        rows.append((name, shape, src))
    return ft, rows


def tensor_type_plan(
    arch: str,
    tensors: Iterable[Sequence[Any]],
    file_type: FileType | int,
    *,
    n_layers: int,
    n_expert: int = 0,
    n_head: int | None = None,
    n_head_kv: int | None = None,
    source_types: Mapping[str, QType] | None = None,
    quantize_output_tensor: bool = True,
) -> TensorTypePlan:
    """The type llama.cpp's ``llama_model_quantize`` gives each tensor, with the fallbacks.

    Same parameters as :func:`choose_tensor_types`; returns the whole :class:`TensorTypePlan`.
    """
    ft, rows = _validate_tensor_type_plan(tensors, file_type, n_layers, n_expert, source_types)
    n_gqa = None
    if n_head is not None:
        kv = n_head if n_head_kv is None else n_head_kv
        n_gqa = 0 if kv == 0 else int(n_head) // int(kv)
    names = [name for name, _, _ in rows]
    state = _State(
        arch=arch,
        file_type=ft,
        n_layers=int(n_layers),
        n_expert=int(n_expert),
        n_gqa=n_gqa,
        is_70b=_is_70b(arch, int(n_layers), n_head, n_head_kv),
        has_tied_embeddings=not any(_category(n) is _Category.OUTPUT for n in names),
        n_attention_wv=sum(1 for n in names if _category(n) in _ATTN_V_LIKE),
    )
    default_type = FILE_TYPE_BASE[ft]
    types: dict[str, QType] = {}
    quantizable: set[str] = set()
    fallbacks: list[str] = []
    for name, shape, src in sorted(rows, key=lambda r: _order_key(r[0])):
        if not tensor_allows_quantization(arch, name, shape, quantize_output_tensor=quantize_output_tensor):
            types[name] = src
            continue
        quantizable.add(name)
        new_type = default_type
        if new_type not in _UNQUANTIZED_TYPES:
            new_type = _type_for_category(state, new_type, name, shape, _category(name))
            new_type, fell_back = _fallback(new_type, shape)
            if fell_back:
                fallbacks.append(name)
        types[name] = new_type
    return TensorTypePlan(file_type=ft, types=types, quantizable=frozenset(quantizable), fallbacks=tuple(fallbacks))


def choose_tensor_types(
    arch: str,
    tensors: Iterable[Sequence[Any]],
    file_type: FileType | int,
    *,
    n_layers: int,
    n_expert: int = 0,
    n_head: int | None = None,
    n_head_kv: int | None = None,
    source_types: Mapping[str, QType] | None = None,
    quantize_output_tensor: bool = True,
) -> dict[str, QType]:
    """The type llama.cpp's ``llama_model_quantize`` gives each tensor for ``file_type``.

    Parameters
    ----------
    arch : `str`
        ``general.architecture`` of the model (``"llama"``, ``"gemma3"``, ``"falcon"``, ...).
    tensors : `Iterable[tuple[str, tuple[int, ...]]]`
        Every tensor of the model as ``(name, shape)`` or ``(name, shape, source_type)``: GGUF
        names (``blk.N.attn_v.weight``, ``output.weight``, ``token_embd.weight``) and logical
        shapes in numpy order (rows, cols; cols = ggml ``ne[0]``). The whole list is needed: the
        tied-embedding rule and the ``attn_v`` counters look at all names.
    file_type : `FileType | int`
        The requested llama.cpp file type.
    n_layers : `int`
        ``{arch}.block_count``.
    n_expert : `int`, *optional*, defaults to 0
        ``{arch}.expert_count`` (0 for dense models). With more than one expert the layer of
        ``ffn_*`` tensors is read from their names; with exactly 8, ``attn_v``/``attn_k`` become
        Q8_0 and ``attn_output`` Q5_K for the low-bit mixes.
    n_head, n_head_kv : `int`, *optional*
        Head counts of layer 0 (``{arch}.attention.head_count`` / ``head_count_kv``). Needed
        for ``FileType.Q2_K`` (``attn_v`` is Q4_K when ``n_head // n_head_kv >= 4``) and for the
        70B rule of llama models; ``n_head_kv`` defaults to ``n_head``.
    source_types : `Mapping[str, QType]`, *optional*
        Source types of tensors given as 2-tuples. Only tensors that llama.cpp does not quantize
        use them (they keep their type); a missing one is taken as F32, the type converters write
        for 1-D tensors.
    quantize_output_tensor : `bool`, *optional*, defaults to True
        False mirrors ``llama-quantize --leave-output-tensor``.

    Returns
    -------
    dict[str, QType]
        Tensor name -> type, in llama.cpp's processing order (layer number, then name).

    Raises
    ------
    UnsupportedQuantType
        ``file_type`` is not a :class:`FileType`.
    ShapeMismatchError
        A shape is empty, has more than 4 axes or a non-positive size.
    WeightprintError
        Bad ``n_layers``/``n_expert``, a duplicate name, a MoE ``ffn_*`` tensor without a valid
        ``blk.N.`` layer, or Q2_K without head counts when an ``attn_v`` tensor needs them.

    Examples
    --------
    >>> types = choose_tensor_types(
    ...     "llama",
    ...     [("token_embd.weight", (512, 256)), ("blk.0.attn_v.weight", (256, 256)),
    ...      ("blk.0.attn_norm.weight", (256,))],
    ...     FileType.Q4_K_M, n_layers=1)
    >>> {name: t.name for name, t in types.items()}
    {'token_embd.weight': 'Q6_K', 'blk.0.attn_norm.weight': 'F32', 'blk.0.attn_v.weight': 'Q6_K'}
    """
    return tensor_type_plan(
        arch,
        tensors,
        file_type,
        n_layers=n_layers,
        n_expert=n_expert,
        n_head=n_head,
        n_head_kv=n_head_kv,
        source_types=source_types,
        quantize_output_tensor=quantize_output_tensor,
    ).types
