"""Model transforms: function-preserving permutation, calibrated noise, vocabulary extension, layer drop.

Every transform reads a source model (a GGUF file, a Hugging Face directory, or a
:class:`weightprint.io.model.Model`) and writes a new Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files), tensor by tensor (:mod:`weightprint.testing.hfdir`), and
returns the output path:

- :func:`permute_hidden_units` -- function-preserving permutation of MLP units and attention heads
- :func:`add_noise` -- Gaussian noise relative to each tensor's standard deviation
  (:func:`calibrate_noise_for_perplexity` finds the noise level for a given perplexity increase)
- :func:`extend_vocab` -- new tokens with mean-plus-noise embeddings, as ``resize_token_embeddings``
- :func:`drop_layer` -- one decoder layer removed

The cache key of a derived model includes this module's source (:mod:`weightprint.testing.cache`),
so editing a recipe rebuilds what it made.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from weightprint.behave.backends.transformers import load_causal_lm, torch_threads
from weightprint.errors import ShapeMismatchError, TensorNotFound, WeightprintError
from weightprint.io.geometry import Geometry
from weightprint.io.names import split_layer
from weightprint.results import to_jsonable
from weightprint.testing.corpus import heldout_text
from weightprint.testing.hfdir import HFSource, _Planned, _transform_dir, as_hf_dir, geometry_of
from weightprint.testing.perplexity import _encode_text, _perplexity_torch, default_threads


@dataclass(frozen=True)
class LayerPermutation:
    """The permutations applied to one decoder layer.

    Attributes
    ----------
    mlp : numpy.ndarray
        ``new_unit -> old_unit`` for the MLP intermediate units (rows of gate/up, columns of down).
    heads : numpy.ndarray
        ``new_query_head -> old_query_head``; key/value heads move with their query groups.
    kv_heads : numpy.ndarray
        ``new_kv_head -> old_kv_head``.
    """

    mlp: np.ndarray
    heads: np.ndarray
    kv_heads: np.ndarray


def hidden_unit_permutations(model_or_config: Any, seed: int) -> list[LayerPermutation]:
    """The permutations that :func:`permute_hidden_units` applies with ``seed``, layer by layer.

    The ground truth for tests of permutation-undoing alignment. Query heads are permuted
    within their key/value group and the groups are permuted as a whole, so grouped-query
    attention keeps every query head with its key/value head.

    Parameters
    ----------
    model_or_config : str, Path, Model or dict
        The source model (GGUF or Hugging Face directory), or its Hugging Face config dict.
    seed : int

    Returns
    -------
    list of LayerPermutation
    """
    if isinstance(model_or_config, (Geometry, HFSource, dict)):
        g = geometry_of(model_or_config)
    else:
        with HFSource(as_hf_dir(model_or_config)) as src:
            g = geometry_of(src)
    if g.n_heads % g.n_kv_heads:
        raise ShapeMismatchError(f"{g.n_heads} attention heads are not a multiple of {g.n_kv_heads} key/value heads")
    group = g.n_heads // g.n_kv_heads
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E37]))
    perms = []
    for _ in range(g.n_layers):
        mlp = rng.permutation(g.intermediate_size)
        kv = rng.permutation(g.n_kv_heads)
        heads = np.concatenate([kv[j] * group + rng.permutation(group) for j in range(g.n_kv_heads)])
        perms.append(LayerPermutation(mlp=mlp, heads=heads, kv_heads=kv))
    return perms


def _block_rows(perm: np.ndarray, block: int) -> np.ndarray:
    """Row indices that move blocks of ``block`` rows by ``perm`` (new block -> old block)."""
    return (perm[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def permute_hidden_units(model: Any, out: str | Path, seed: int, *, dtype: str = "float32") -> Path:
    """Write a function-preserving permutation of ``model``: same outputs, shuffled units.

    In every decoder layer: MLP intermediate units are permuted (rows of ``gate_proj`` and
    ``up_proj``, columns of ``down_proj``), and attention heads are permuted (``q_proj`` rows by
    head, ``k_proj``/``v_proj`` rows by key/value head with their query groups, ``o_proj``
    columns like ``q_proj`` rows). Biases follow their rows. Logits are unchanged up to
    floating-point reordering.

    Parameters
    ----------
    model : str, Path or Model
        Source: a Hugging Face directory or a GGUF file.
    out : str or Path
        Output directory (must not exist).
    seed : int
        Seed of the permutations (see :func:`hidden_unit_permutations`).
    dtype : {'float32', 'float16', 'bfloat16'}, *optional*, defaults to 'float32'

    Returns
    -------
    Path
        ``out``.
    """

    def plan_fn(src: HFSource) -> tuple[list[_Planned], dict[str, Any]]:
        g = geometry_of(src)
        perms = hidden_unit_permutations(g, seed)
        plan = []
        for name in src.names:
            index = _row_col_index(name, perms, g)
            plan.append(_Planned(name, src.shapes[name], _permuted_producer(src, name, index)))
        return plan, dict(src.config)

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "permute", "params": {"seed": seed}})


def _row_col_index(name: str, perms: list[LayerPermutation], g: Geometry) -> tuple[np.ndarray | None, np.ndarray | None]:
    split = split_layer(name)
    if split is None:
        return None, None
    layer, rest = split[1], "." + split[2]
    if layer >= len(perms):
        return None, None
    p = perms[layer]
    if rest in (".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.gate_proj.bias", ".mlp.up_proj.bias"):
        return p.mlp, None
    if rest == ".mlp.down_proj.weight":
        return None, p.mlp
    if rest in (".self_attn.q_proj.weight", ".self_attn.q_proj.bias"):
        return _block_rows(p.heads, g.head_dim), None
    if rest in (".self_attn.k_proj.weight", ".self_attn.k_proj.bias", ".self_attn.v_proj.weight", ".self_attn.v_proj.bias"):
        return _block_rows(p.kv_heads, g.head_dim), None
    if rest == ".self_attn.o_proj.weight":
        return None, _block_rows(p.heads, g.head_dim)
    return None, None


def _permuted_producer(src: HFSource, name: str, index: tuple[np.ndarray | None, np.ndarray | None]) -> Callable[[], np.ndarray]:
    rows, cols = index

    def produce() -> np.ndarray:
        w = src.tensor(name)
        if rows is not None:
            if w.shape[0] != rows.size:
                raise ShapeMismatchError(f"{src.path}: `{name}` has {w.shape[0]} rows, expected {rows.size}")
            w = w[rows]
        if cols is not None:
            if w.shape[1] != cols.size:
                raise ShapeMismatchError(f"{src.path}: `{name}` has {w.shape[1]} columns, expected {cols.size}")
            w = w[:, cols]
        return w

    return produce


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def _standard_noise(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float32 noise for one tensor: depends on (seed, name), not on tensor order."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))
    return rng.standard_normal(shape, dtype=np.float32)


def _noise_applies(name: str, shape: tuple[int, ...], include_1d: bool) -> bool:
    return len(shape) >= 2 or include_1d


def add_noise(
    model: Any, out: str | Path, sigma_rel: float, seed: int, *, include_1d: bool = False, dtype: str = "float32"
) -> Path:
    """Write ``model`` with Gaussian noise added: ``W + sigma_rel * std(W) * N(0, 1)`` per tensor.

    Parameters
    ----------
    model : str, Path or Model
        Source: a Hugging Face directory or a GGUF file.
    out : str or Path
        Output directory (must not exist).
    sigma_rel : float
        Noise standard deviation relative to each tensor's own standard deviation (>= 0).
    seed : int
        The noise of a tensor depends only on ``seed`` and the tensor's name.
    include_1d : bool, *optional*, defaults to False
        Also perturb 1-D tensors (norm weights, biases).
    dtype : {'float32', 'float16', 'bfloat16'}, *optional*, defaults to 'float32'

    Returns
    -------
    Path
        ``out``.
    """
    if not (isinstance(sigma_rel, (int, float)) and math.isfinite(sigma_rel) and sigma_rel >= 0):
        raise WeightprintError(f"`sigma_rel` must be a finite number >= 0, got {sigma_rel!r}")

    def plan_fn(src: HFSource) -> tuple[list[_Planned], dict[str, Any]]:
        plan = []
        for name in src.names:
            shape = src.shapes[name]

            def produce(name: str = name, shape: tuple[int, ...] = shape) -> np.ndarray:
                w = src.tensor(name)
                if sigma_rel and _noise_applies(name, shape, include_1d):
                    w = w + np.float32(sigma_rel * float(w.std())) * _standard_noise(name, shape, seed)
                return w

            plan.append(_Planned(name, shape, produce))
        return plan, dict(src.config)

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "noise", "params": {"sigma_rel": sigma_rel, "seed": seed, "include_1d": include_1d}})


@dataclass(frozen=True)
class NoiseCalibration:
    """Result of :func:`calibrate_noise_for_perplexity`.

    Attributes
    ----------
    sigma_rel : float
        The relative noise level whose perplexity increase is closest to the target.
    target_increase : float
        Requested relative perplexity increase (0.05 = +5 %).
    perplexity_base : float
        Perplexity of the unperturbed model on the held-out text.
    perplexity_noisy : float
        Perplexity at ``sigma_rel``.
    seed : int
    n_tokens : int
        Tokens scored.
    trials : list of (sigma_rel, perplexity)
    """

    sigma_rel: float
    target_increase: float
    perplexity_base: float
    perplexity_noisy: float
    seed: int
    n_tokens: int
    trials: list[tuple[float, float]] = field(default_factory=list)

    @property
    def achieved_increase(self) -> float:
        return self.perplexity_noisy / self.perplexity_base - 1.0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({**asdict(self), "achieved_increase": self.achieved_increase})


def calibrate_noise_for_perplexity(
    model: Any,
    target_increase: float = 0.05,
    *,
    seed: int = 0,
    text: str | None = None,
    max_tokens: int = 384,
    include_1d: bool = False,
    rel_tolerance: float = 0.2,
    max_trials: int = 14,
    threads: int | None = None,
) -> NoiseCalibration:
    """Find the ``sigma_rel`` of :func:`add_noise` that raises perplexity by ``target_increase``.

    Bisection on ``log(sigma_rel)`` with the same noise as :func:`add_noise` (same ``seed``),
    applied in memory to a transformers model; perplexity on ``text`` (default: the held-out
    tail of the shipped corpus). Stops when the achieved increase is within
    ``rel_tolerance * target_increase`` of the target.

    Returns
    -------
    NoiseCalibration
    """
    import torch

    if not (target_increase > 0):
        raise WeightprintError(f"`target_increase` must be > 0, got {target_increase!r}")
    path = as_hf_dir(model)
    text = heldout_text() if text is None else text
    with torch_threads(default_threads() if threads is None else threads):
        lm, tok = load_causal_lm(path)
        ids = _encode_text(tok, text, max_tokens)
        originals = {n: p.detach().clone() for n, p in lm.named_parameters()}
        noises = {}
        for n, p in lm.named_parameters():
            if _noise_applies(n, tuple(p.shape), include_1d):
                noises[n] = (float(p.detach().std(correction=0)), torch.from_numpy(_standard_noise(n, tuple(p.shape), seed)))

        def ppl_at(sigma: float) -> float:
            with torch.no_grad():
                for n, p in lm.named_parameters():
                    p.copy_(originals[n])
                    if sigma and n in noises:
                        s, z = noises[n]
                        p.add_(z, alpha=sigma * s)
                return _perplexity_torch(lm, ids)

        base = ppl_at(0.0)
        trials: list[tuple[float, float]] = []
        lo, hi = 0.0, None
        sigma = 0.02
        best = (math.inf, sigma, base)
        for _ in range(max_trials):
            ppl = ppl_at(sigma)
            trials.append((sigma, ppl))
            inc = ppl / base - 1.0
            err = abs(inc - target_increase)
            if err < best[0]:
                best = (err, sigma, ppl)
            if err <= rel_tolerance * target_increase:
                break
            if inc < target_increase:
                lo = sigma
                sigma = sigma * 2.0 if hi is None else math.sqrt(max(lo, 1e-12) * hi)
            else:
                hi = sigma
                sigma = sigma / 2.0 if lo == 0.0 else math.sqrt(lo * hi)
        with torch.no_grad():
            for n, p in lm.named_parameters():
                p.copy_(originals[n])
    return NoiseCalibration(sigma_rel=best[1], target_increase=target_increase, perplexity_base=base,
                            perplexity_noisy=best[2], seed=seed, n_tokens=int(ids.shape[1]), trials=trials)


# ----------------------------------------------------------------------------------------------
# Vocabulary extension
# ----------------------------------------------------------------------------------------------


def new_token_strings(n_new: int) -> list[str]:
    """The token strings that :func:`extend_vocab` adds: ``<|wp_extra_0|>``, ``<|wp_extra_1|>``..."""
    return [f"<|wp_extra_{i}|>" for i in range(n_new)]


def _mean_resized_rows(old: np.ndarray, n_new: int, rng: np.random.Generator) -> np.ndarray:
    """New rows ~ N(mean, 1e-5 * covariance) of the old rows, as transformers' mean resizing."""
    mean = old.mean(axis=0, dtype=np.float64)
    centered = old.astype(np.float64) - mean
    cov = centered.T @ centered / max(old.shape[0] - 1, 1)
    vals, vecs = np.linalg.eigh(1e-5 * cov)
    root = vecs * np.sqrt(np.clip(vals, 0.0, None))
    z = rng.standard_normal((n_new, old.shape[1]))
    return (mean + z @ root.T).astype(np.float32)


def extend_vocab(model: Any, out: str | Path, n_new: int = 100, seed: int = 0, *, dtype: str = "float32") -> Path:
    """Write ``model`` with ``n_new`` tokens appended to the vocabulary.

    The tokenizer gets the tokens of :func:`new_token_strings`; ``model.embed_tokens`` (and an
    untied ``lm_head``) get ``n_new`` rows drawn from N(mean, 1e-5 * covariance) of the existing
    rows, as ``resize_token_embeddings(..., mean_resizing=True)`` does. Old rows are unchanged.

    Returns
    -------
    Path
        ``out``.
    """
    if not (isinstance(n_new, int) and n_new > 0):
        raise WeightprintError(f"`n_new` must be a positive integer, got {n_new!r}")

    def plan_fn(src: HFSource) -> tuple[list[_Planned], dict[str, Any]]:
        config = dict(src.config)
        plan = []
        rows = None
        for name in src.names:
            shape = src.shapes[name]
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                rows = shape[0]
                tag = 1 if name == "lm_head.weight" else 0

                def produce(name: str = name, tag: int = tag) -> np.ndarray:
                    w = src.tensor(name)
                    rng = np.random.default_rng(np.random.SeedSequence([int(seed), tag]))
                    return np.concatenate([w, _mean_resized_rows(w, n_new, rng)])

                plan.append(_Planned(name, (shape[0] + n_new, *shape[1:]), produce))
            else:
                plan.append(_Planned(name, shape, lambda name=name: src.tensor(name)))
        if rows is None:
            raise TensorNotFound(f"{src.path}: no tensor `model.embed_tokens.weight`")
        config["vocab_size"] = rows + n_new
        return plan, config

    def tokenizer_fn(src_dir: Path, tmp: Path) -> None:
        from transformers import AutoTokenizer

        with HFSource(src_dir) as src:
            rows = src.shapes["model.embed_tokens.weight"][0]
        tok = AutoTokenizer.from_pretrained(str(src_dir))
        if len(tok) != rows:
            raise ShapeMismatchError(
                f"{src_dir}: tokenizer has {len(tok)} tokens but embed_tokens has {rows} rows; "
                "new token ids would not match the new rows"
            )
        added = tok.add_tokens(new_token_strings(n_new))
        if added != n_new:
            raise WeightprintError(f"{src_dir}: tokenizer added {added} of {n_new} new tokens (some already exist)")
        tok.save_pretrained(str(tmp))

    return _transform_dir(model, out, plan_fn=plan_fn, tokenizer_fn=tokenizer_fn, dtype=dtype,
                          info={"recipe": "extend_vocab", "params": {"n_new": n_new, "seed": seed}})


# ----------------------------------------------------------------------------------------------
# Layer drop
# ----------------------------------------------------------------------------------------------


def drop_layer(model: Any, out: str | Path, layer: int, *, dtype: str = "float32") -> Path:
    """Write ``model`` without decoder layer ``layer``; later layers are renumbered.

    ``num_hidden_layers`` drops by one, and a per-layer ``layer_types`` list (if any) loses
    its entry.

    Returns
    -------
    Path
        ``out``.
    """

    def plan_fn(src: HFSource) -> tuple[list[_Planned], dict[str, Any]]:
        g = geometry_of(src)
        if not (isinstance(layer, int) and 0 <= layer < g.n_layers):
            raise WeightprintError(f"{src.path}: layer {layer!r} out of range 0..{g.n_layers - 1}")
        if g.n_layers < 2:
            raise WeightprintError(f"{src.path}: cannot drop the only layer")
        plan = []
        for name in src.names:
            split = split_layer(name)
            new = name
            if split is not None:
                prefix, i, rest = split
                if i == layer:
                    continue
                if i > layer:
                    new = f"{prefix}{i - 1}.{rest}"
            plan.append(_Planned(new, src.shapes[name], lambda name=name: src.tensor(name)))
        config = json.loads(json.dumps(src.config))
        c = config.get("text_config", config)
        c["num_hidden_layers"] = g.n_layers - 1
        if isinstance(c.get("layer_types"), list) and len(c["layer_types"]) == g.n_layers:
            del c["layer_types"][layer]
        return plan, config

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "drop_layer", "params": {"layer": layer}})


_DENSE_TO_EXPERT = {"mlp.gate_proj.weight": "w1", "mlp.down_proj.weight": "w2", "mlp.up_proj.weight": "w3"}


def upcycle_moe(model: Any, out: str | Path, n_experts: int = 4, top_k: int = 2, *, noise: float = 0.0,
                seed: int = 0, dtype: str = "float32") -> Path:
    """Dense llama -> Mixtral-style mixture of experts by sparse upcycling (Komatsuzaki et al. 2023):
    every expert of a layer starts as a copy of that layer's MLP (``w1`` = gate, ``w3`` = up,
    ``w2`` = down), the router (``block_sparse_moe.gate``, ``n_experts x hidden``) is new
    (normal, std 0.02); everything else is kept.

    With ``noise = 0`` the upcycled model computes exactly the dense model's function (Mixtral
    renormalises its top-k router weights to sum to 1 and every expert is the same MLP);
    ``noise`` adds Gaussian noise of that size relative to each expert tensor's standard
    deviation, expert by expert, as training would make the experts diverge.

    Returns
    -------
    Path
        ``out``.
    """
    if not (isinstance(n_experts, int) and 2 <= n_experts <= 64 and isinstance(top_k, int) and 1 <= top_k <= n_experts):
        raise WeightprintError(f"upcycle_moe: need 2 <= n_experts <= 64 and 1 <= top_k <= n_experts, got {n_experts}, {top_k}")

    def plan_fn(src: HFSource) -> tuple[list[_Planned], dict[str, Any]]:
        g = geometry_of(src)
        config = json.loads(json.dumps(src.config))
        if config.get("model_type") != "llama":
            raise WeightprintError(f"{src.path}: upcycling needs a llama model, not `{config.get('model_type')}`")
        plan: list[_Planned] = []
        for name in src.names:
            split = split_layer(name)
            rest = split[2] if split is not None else ""
            if rest not in _DENSE_TO_EXPERT:
                plan.append(_Planned(name, src.shapes[name], lambda name=name: src.tensor(name)))
                continue
            prefix, layer, _ = split
            if rest == "mlp.gate_proj.weight":
                plan.append(_Planned(f"{prefix}{layer}.block_sparse_moe.gate.weight", (n_experts, g.hidden_size),
                                     lambda layer=layer: (np.random.default_rng([seed, layer, 7])
                                                          .standard_normal((n_experts, g.hidden_size)) * 0.02).astype(np.float32)))
            for e in range(n_experts):
                def produce(name: str = name, e: int = e, layer: int = layer) -> np.ndarray:
                    x = np.asarray(src.tensor(name), dtype=np.float32)
                    if noise > 0:
                        rng = np.random.default_rng([seed, layer, e, zlib.crc32(name.encode())])
                        x = x + (rng.standard_normal(x.shape) * noise * float(x.std())).astype(np.float32)
                    return x
                plan.append(_Planned(f"{prefix}{layer}.block_sparse_moe.experts.{e}.{_DENSE_TO_EXPERT[rest]}.weight",
                                     src.shapes[name], produce))
        config.update(model_type="mixtral", architectures=["MixtralForCausalLM"], num_local_experts=n_experts,
                      num_experts_per_tok=top_k, router_aux_loss_coef=0.02, output_router_logits=False)
        for key in ("mlp_bias", "pretraining_tp", "head_dim"):
            config.pop(key, None)
        return plan, config

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "upcycle_moe", "params": {"n_experts": n_experts, "top_k": top_k,
                                                                    "noise": noise, "seed": seed}})
