"""Hugging Face ``config.json`` <-> GGUF hyperparameter metadata.

``hf_config_from_gguf`` rebuilds the ``config.json`` of a llama / mistral / qwen2 / gemma3
checkpoint from the ``{arch}.*`` keys of a GGUF file; ``gguf_metadata_from_hf`` goes the
other way and also emits the ``tokenizer.ggml.*`` keys llama.cpp needs. Values that GGUF does
not store are llama.cpp's own hard-coded assumptions for the architecture (e.g. Gemma 3's
local rope base 10000 and its 5-sliding-1-global layer pattern).

Both write rope settings in the transformers 5 form (``rope_parameters``) and in the legacy
form (``rope_theta``, ``rope_local_base_freq``) so that older readers work too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from weightprint.errors import MissingTokenizerError, ModelFormatError, WeightprintError
from weightprint.io.model import TokenizerInfo
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

__all__ = [
    "HF_TO_GGUF_ARCH",
    "GGUF_TO_HF_ARCH",
    "architecture_from_hf",
    "hf_config_from_gguf",
    "gguf_metadata_from_hf",
]

# transformers architecture class -> llama.cpp architecture name
HF_TO_GGUF_ARCH: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",  # llama.cpp converts Mistral checkpoints to the llama arch
    "MixtralForCausalLM": "llama",  # ... and Mixtral's, with `llama.expert_count`
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}
# Our own names (the Model.architecture of an HF directory) distinguish mistral.
_HF_ARCH_NAME: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "llama",  # a llama whose MLPs are mixtures of experts (as llama.cpp has it)
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}
GGUF_TO_HF_ARCH: dict[str, tuple[str, str]] = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}

GEMMA3_SLIDING_WINDOW_PATTERN = 6  # llama.cpp: hparams.set_swa_pattern(6)
GEMMA3_LOCAL_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa for gemma3


def architecture_from_hf(config: dict[str, Any]) -> str:
    """llama.cpp-style architecture name of a ``config.json`` (``"unknown"`` if not known)."""
    classes = config.get("architectures") or []
    for cls in classes if isinstance(classes, list) else []:
        if isinstance(cls, str) and cls in _HF_ARCH_NAME:
            return _HF_ARCH_NAME[cls]
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        return "unknown"
    return {"llama": "llama", "mistral": "mistral", "mixtral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3",
            "gemma3": "gemma3"}.get(
        model_type, "unknown"
    )


def _scalar(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x.item()
    return x


def _float32_clean(x: float) -> float:
    """A float32 value read from GGUF, printed as its shortest float32 decimal (1e-05, not 9.99e-06)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-")) if x else 0.0


def hf_config_from_gguf(metadata: dict[str, Any], *, tie_word_embeddings: bool | None = None,
                        label: str = "GGUF metadata") -> dict[str, Any]:
    """Rebuild a Hugging Face ``config.json`` from GGUF metadata.

    Parameters
    ----------
    metadata : dict
        GGUF key/values (``general.architecture``, ``{arch}.block_count``, ...,
        ``tokenizer.ggml.tokens`` for the vocabulary size).
    tie_word_embeddings : bool, optional
        Whether the output projection is the token embedding (GGUF: no ``output.weight``).
        Defaults to False for llama/mistral/qwen2 and True for gemma3.

    Returns
    -------
    dict
        The config, ready for ``json.dump``.

    Raises
    ------
    ModelFormatError
        If ``general.architecture`` is missing, or a required hyperparameter is absent, of the
        wrong type or out of range (the message names ``label`` and the key).
    WeightprintError
        If the architecture is not one of llama, mistral, qwen2, gemma3.
    """
    arch = Values(metadata, label).str("general.architecture", required="for config.json")
    if arch not in GGUF_TO_HF_ARCH:
        known = ", ".join(GGUF_TO_HF_ARCH)
        raise WeightprintError(f"cannot build a config.json for architecture `{arch}`; supported: {known}")
    cls, model_type = GGUF_TO_HF_ARCH[arch]

    v = Values(metadata, label, prefix=f"{arch}.")
    need = "for config.json"

    n_embd = v.int("embedding_length", lo=1, hi=MAX_WIDTH, required=need)
    n_head = v.int("attention.head_count", lo=1, hi=MAX_HEADS, required=need, per_layer=True)
    n_head_kv = v.int("attention.head_count_kv", lo=1, hi=MAX_HEADS, default=n_head, per_layer=True)
    declared_head_dim = v.int("attention.key_length", lo=1, hi=MAX_WIDTH)
    check_heads(v, n_embd, n_head, n_head_kv, declared_head_dim,
                ("embedding_length", "attention.head_count", "attention.head_count_kv"))
    head_dim = declared_head_dim or n_embd // n_head
    vocab = metadata.get("tokenizer.ggml.tokens")
    vocab_size = len(vocab) if vocab is not None else v.int("vocab_size", lo=1, hi=MAX_VOCAB, required=need)
    rope_theta = _float32_clean(v.float("rope.freq_base", default=10000.0, positive=True))
    eps = _float32_clean(v.float("attention.layer_norm_rms_epsilon", lo=0.0, hi=1.0, required=need))
    n_layer = v.int("block_count", lo=1, hi=MAX_LAYERS, required=need)
    ffn = v.int("feed_forward_length", lo=1, hi=MAX_WIDTH, required=need, per_layer=True)
    ctx = v.int("context_length", lo=1, hi=MAX_CONTEXT, required=need)

    config: dict[str, Any] = {
        "architectures": [cls],
        "model_type": model_type,
        "vocab_size": int(vocab_size),
        "hidden_size": n_embd,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": head_dim,
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "initializer_range": 0.02,
        "use_cache": True,
        "attention_dropout": 0.0,
    }
    for key, hf_key in (
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ):
        if key in metadata:
            config[hf_key] = Values(metadata, label).token_id(key, vocab_size)

    rope_scaling = None
    scaling_type = v.str("rope.scaling.type")
    factor = v.float("rope.scaling.factor", positive=True) if scaling_type in ("linear", "yarn") else None
    if scaling_type in ("linear", "yarn") and factor:
        rope_scaling = {"rope_type": scaling_type, "factor": _float32_clean(factor)}
        if scaling_type == "yarn":
            orig = v.int("rope.scaling.original_context_length", lo=1, hi=MAX_CONTEXT)
            if orig:
                rope_scaling["original_max_position_embeddings"] = orig

    if arch in ("llama", "mistral", "qwen2"):
        config["hidden_act"] = "silu"
        config["tie_word_embeddings"] = bool(tie_word_embeddings) if tie_word_embeddings is not None else False
        config["rope_theta"] = rope_theta
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})}
        if rope_scaling:
            config["rope_scaling"] = rope_scaling
        n_expert = v.int("expert_count", lo=0, hi=MAX_EXPERTS) or 0
        if arch == "llama" and n_expert > 1:
            # llama.cpp's llama with experts is Mixtral
            config.update(architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=n_expert,
                          num_experts_per_tok=v.int("expert_used_count", lo=1, hi=n_expert, default=2),
                          router_aux_loss_coef=0.02, output_router_logits=False, sliding_window=None)
        elif arch == "llama":
            config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        elif arch == "mistral":
            window = v.int("attention.sliding_window", lo=0, hi=MAX_CONTEXT)
            config["sliding_window"] = window or None
        else:  # qwen2: q/k/v biases are part of the architecture
            window = v.int("attention.sliding_window", lo=0, hi=MAX_CONTEXT)
            config.update(use_sliding_window=False, sliding_window=window or None, max_window_layers=config["num_hidden_layers"])
    else:  # gemma3
        n_layer = config["num_hidden_layers"]
        pattern = GEMMA3_SLIDING_WINDOW_PATTERN
        config.update(
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=bool(tie_word_embeddings) if tie_word_embeddings is not None else True,
            query_pre_attn_scalar=head_dim,
            sliding_window=v.int("attention.sliding_window", lo=0, hi=MAX_CONTEXT, default=4096),
            layer_types=[
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layer)
            ],
            sliding_window_pattern=pattern,
            final_logit_softcapping=v.float("final_logit_softcapping", positive=True),
            attn_logit_softcapping=v.float("attn_logit_softcapping", positive=True),
            attention_bias=False,
            rope_theta=rope_theta,
            rope_local_base_freq=GEMMA3_LOCAL_ROPE_BASE,
            rope_scaling=rope_scaling,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})},
                "sliding_attention": {"rope_type": "default", "rope_theta": GEMMA3_LOCAL_ROPE_BASE},
            },
        )
    return config


def _rope_theta(config: dict[str, Any], layer_type: str | None = None, label: str = "config.json") -> float | None:
    params = config.get("rope_parameters")
    if isinstance(params, dict):
        if layer_type and isinstance(params.get(layer_type), dict):
            params = params[layer_type]
        if "rope_theta" in params:
            return Values(params, label, kind="config key", within="rope_parameters.").float("rope_theta", positive=True)
    c = Values(config, label, kind="config key")
    if layer_type == "sliding_attention" and "rope_local_base_freq" in config:
        return c.float("rope_local_base_freq", positive=True)
    if "rope_theta" in config:
        return c.float("rope_theta", positive=True)
    return None


def _rope_scaling(config: dict[str, Any], layer_type: str | None = None, label: str = "config.json") -> dict[str, Any] | None:
    scaling = config.get("rope_scaling")
    if not scaling:
        params = config.get("rope_parameters")
        if isinstance(params, dict) and layer_type and isinstance(params.get(layer_type), dict):
            params = params[layer_type]
        if isinstance(params, dict) and params.get("rope_type", "default") != "default":
            scaling = params
    if scaling and not isinstance(scaling, dict):
        raise ModelFormatError(f"{label}: config key `rope_scaling` is {describe(scaling)}, expected an object")
    if scaling:
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind and not isinstance(kind, str):
            raise ModelFormatError(f"{label}: config key `rope_scaling.rope_type` is {describe(kind)}, expected a string")
        if kind and kind != "default":
            v = Values(scaling, label, kind="config key", within="rope_scaling.")
            out = {"type": kind, **{k: val for k, val in scaling.items() if k not in ("type", "rope_type")}}
            if "factor" in scaling:
                out["factor"] = v.float("factor", positive=True)
            if "original_max_position_embeddings" in scaling:
                out["original_max_position_embeddings"] = v.int("original_max_position_embeddings", lo=1, hi=MAX_CONTEXT)
            return out
    return None


def gguf_metadata_from_hf(
    config: dict[str, Any],
    tokenizer: TokenizerInfo | None,
    chat_template: str | None = None,
    *,
    name: str | None = None,
    require_tokenizer: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """GGUF key/values (and their GGUF types) for a Hugging Face ``config.json``.

    Parameters
    ----------
    config : dict
        The ``config.json`` values.
    tokenizer : TokenizerInfo or None
        Tokenizer facts (see :func:`weightprint.io.tokenizer.tokenizer_info_from_hf`). llama.cpp
        cannot load a model without one, so None raises unless ``require_tokenizer=False``
        (then the ``tokenizer.ggml.*`` keys are left out).
    chat_template : str, optional
        Stored as ``tokenizer.chat_template``.
    name : str, optional
        ``general.name``; defaults to the last part of the config's ``_name_or_path`` or the
        model type.
    require_tokenizer : bool, *optional*, defaults to True
        Raise :class:`MissingTokenizerError` when ``tokenizer`` is None.

    Returns
    -------
    (dict, dict)
        ``metadata`` (key -> value; arrays as lists or numpy arrays) and ``types``
        (key -> :class:`gguf.GGUFValueType`; arrays as ``(ARRAY, element type)``), the form
        :func:`weightprint.io.gguf_file.write_gguf` takes.

    Raises
    ------
    MissingTokenizerError
        ``tokenizer`` is None and ``require_tokenizer`` is True (names ``_name_or_path``).
    WeightprintError
        For an architecture other than llama, mistral, qwen2, gemma3.
    ModelFormatError
        If a required config key is missing.
    """
    arch = architecture_from_hf(config)
    if arch == "unknown":
        raise WeightprintError(
            f"cannot convert architecture {config.get('architectures')} (model_type `{config.get('model_type')}`); "
            f"supported: {', '.join(sorted(HF_TO_GGUF_ARCH))}"
        )
    gguf_arch = "llama" if arch == "mistral" else arch
    source = str(config.get("_name_or_path") or "model")
    if tokenizer is None and require_tokenizer:
        raise MissingTokenizerError(
            f"{source}: no tokenizer (tokenizer.json), which a GGUF file needs",
            hint="copy the tokenizer files of the base model into the directory",
        )

    label = f"{source}/config.json" if config.get("_name_or_path") else "config.json"
    c = Values(config, label, kind="config key")
    need = "for GGUF metadata"

    ARR = GGUFValueType.ARRAY
    U32, F32, STR, BOOL, I32 = (
        GGUFValueType.UINT32,
        GGUFValueType.FLOAT32,
        GGUFValueType.STRING,
        GGUFValueType.BOOL,
        GGUFValueType.INT32,
    )
    meta: dict[str, Any] = {}
    types: dict[str, Any] = {}

    def put(key: str, value: Any, kind: Any) -> None:
        meta[key] = value
        types[key] = kind

    n_embd = c.int("hidden_size", lo=1, hi=MAX_WIDTH, required=need)
    n_head = c.int("num_attention_heads", lo=1, hi=MAX_HEADS, required=need)
    n_head_kv = c.int("num_key_value_heads", lo=1, hi=MAX_HEADS) or n_head
    declared_head_dim = c.int("head_dim", lo=1, hi=MAX_WIDTH)
    check_heads(c, n_embd, n_head, n_head_kv, declared_head_dim, ("hidden_size", "num_attention_heads", "num_key_value_heads"))
    head_dim = declared_head_dim or n_embd // n_head
    put("general.architecture", gguf_arch, STR)
    default_name = Path(str(config["_name_or_path"])).name if config.get("_name_or_path") else None
    put("general.name", name or default_name or str(config.get("model_type") or gguf_arch), STR)
    a = gguf_arch
    ctx = c.int("max_position_embeddings", lo=1, hi=min(MAX_CONTEXT, 2**32 - 1)) or 4096
    put(f"{a}.context_length", ctx, U32)
    put(f"{a}.embedding_length", n_embd, U32)
    put(f"{a}.block_count", c.int("num_hidden_layers", lo=1, hi=MAX_LAYERS, required=need), U32)
    put(f"{a}.feed_forward_length", c.int("intermediate_size", lo=1, hi=MAX_WIDTH, required=need), U32)
    put(f"{a}.attention.head_count", n_head, U32)
    put(f"{a}.attention.head_count_kv", n_head_kv, U32)
    put(f"{a}.attention.layer_norm_rms_epsilon", c.float("rms_norm_eps", lo=0.0, hi=1.0, required=need), F32)
    if gguf_arch == "gemma3":
        theta = _rope_theta(config, "full_attention", label)
        put(f"{a}.attention.key_length", head_dim, U32)
        put(f"{a}.attention.value_length", head_dim, U32)
        if theta is not None:
            put(f"{a}.rope.freq_base", theta, F32)
        window = c.int("sliding_window", lo=0, hi=min(MAX_CONTEXT, 2**32 - 1))
        if window:
            put(f"{a}.attention.sliding_window", window, U32)
        scaling = _rope_scaling(config, "full_attention", label)
    else:
        theta = _rope_theta(config, label=label)
        if theta is not None:
            put(f"{a}.rope.freq_base", theta, F32)
        put(f"{a}.rope.dimension_count", head_dim, U32)
        if head_dim != n_embd // n_head:
            put(f"{a}.attention.key_length", head_dim, U32)
            put(f"{a}.attention.value_length", head_dim, U32)
        if c.has("vocab_size"):
            put(f"{a}.vocab_size", c.int("vocab_size", lo=1, hi=MAX_VOCAB), U32)
        n_expert = c.int("num_local_experts", lo=0, hi=MAX_EXPERTS) or 0
        if n_expert > 1:  # Mixtral: convert_hf_to_gguf's add_expert_count / add_expert_used_count
            put(f"{a}.expert_count", n_expert, U32)
            put(f"{a}.expert_used_count", c.int("num_experts_per_tok", lo=1, hi=n_expert, required=need), U32)
        scaling = _rope_scaling(config, label=label)
    if scaling and scaling.get("type") in ("linear", "yarn") and scaling.get("factor"):
        put(f"{a}.rope.scaling.type", scaling["type"], STR)
        put(f"{a}.rope.scaling.factor", scaling["factor"], F32)
        if scaling.get("original_max_position_embeddings"):
            put(f"{a}.rope.scaling.original_context_length", scaling["original_max_position_embeddings"], U32)

    if tokenizer is not None:
        put("tokenizer.ggml.model", tokenizer.model, STR)
        if tokenizer.pre is not None:
            put("tokenizer.ggml.pre", tokenizer.pre, STR)
        put("tokenizer.ggml.tokens", list(tokenizer.tokens), (ARR, STR))
        if tokenizer.scores is not None:
            put("tokenizer.ggml.scores", np.asarray(tokenizer.scores, dtype=np.float32), (ARR, F32))
        if tokenizer.token_types is not None:
            put("tokenizer.ggml.token_type", np.asarray(tokenizer.token_types, dtype=np.int32), (ARR, I32))
        if tokenizer.merges is not None:
            put("tokenizer.ggml.merges", list(tokenizer.merges), (ARR, STR))
        for attr, key in (
            ("bos_id", "bos_token_id"),
            ("eos_id", "eos_token_id"),
            ("unk_id", "unknown_token_id"),
            ("pad_id", "padding_token_id"),
        ):
            value = getattr(tokenizer, attr)
            if value is not None:
                put(f"tokenizer.ggml.{key}", int(value), U32)
        if tokenizer.add_bos is not None:
            put("tokenizer.ggml.add_bos_token", bool(tokenizer.add_bos), BOOL)
        if tokenizer.add_eos is not None:
            put("tokenizer.ggml.add_eos_token", bool(tokenizer.add_eos), BOOL)
        if tokenizer.model == "llama":
            put("tokenizer.ggml.add_space_prefix", False if gguf_arch == "gemma3" else True, BOOL)
        elif tokenizer.model == "gpt2":
            put("tokenizer.ggml.add_space_prefix", False, BOOL)
    if chat_template:
        put("tokenizer.chat_template", chat_template, STR)
    return meta, types
