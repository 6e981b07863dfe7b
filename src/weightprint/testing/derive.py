"""Derived and attacked models, reproducible and cached: the test material of lineage and tracing.

Every transform reads a source model (a GGUF file, a Hugging Face directory, or a
:class:`weightprint.io.model.Model`) and writes a new Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files), tensor by tensor, and returns the output path:

- :func:`permute_hidden_units` -- function-preserving permutation of MLP units and attention heads
- :func:`add_noise` -- Gaussian noise relative to each tensor's standard deviation
  (:func:`calibrate_noise_for_perplexity` finds the noise level for a given perplexity increase)
- :func:`extend_vocab` -- new tokens with mean-plus-noise embeddings, as ``resize_token_embeddings``
- :func:`drop_layer` -- one decoder layer removed
- :func:`finetune` -- a full AdamW fine-tune of all weights on CPU, on the shipped public-domain text
- :func:`train_tiny_llama` / :func:`tiny_llama_pair` -- tiny independently seeded llama models

:func:`derived` caches any of them under ``cache_dir()/derived/<key>``, where the key is the
SHA-256 of the recipe, its parameters and the source's content hash; two processes that race
build it once (a file lock) and the result appears atomically (build in a temp dir, then rename).
Every output directory holds ``weightprint_derive.json`` with the recipe, parameters and measured
facts (:func:`read_derive_info`).

torch and transformers are imported inside the functions that need them.

Examples
--------
>>> from weightprint.testing.models import smollm2_path
>>> from weightprint.testing.derive import derived
>>> permuted = derived("permute", smollm2_path(), seed=1)          # doctest: +SKIP
>>> tuned = derived("finetune", smollm2_path(), steps=200, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from weightprint.errors import ModelFormatError, ShapeMismatchError, TensorNotFound, WeightprintError
from weightprint.testing.models import cache_dir

INFO_FILE = "weightprint_derive.json"
CORPUS_FILES = ("corpus_prose.txt", "corpus_verse.txt", "corpus_documents.txt")
TINY_TOKENIZER_FILE = "tiny_tokenizer.json"

_LAYER_RE = re.compile(r"^(model\.layers\.)(\d+)(\..*)$")

# ----------------------------------------------------------------------------------------------
# Shipped text
# ----------------------------------------------------------------------------------------------


def corpus_text(names: tuple[str, ...] = CORPUS_FILES) -> str:
    """The shipped public-domain English text (``weightprint/data/corpus_*.txt``), joined.

    Parameters
    ----------
    names : tuple of str, *optional*
        File names inside ``weightprint/data``; defaults to all shipped corpora.

    Returns
    -------
    str
        The texts joined by blank lines (about 100 KB).
    """
    root = resources.files("weightprint") / "data"
    parts = []
    for name in names:
        try:
            parts.append((root / name).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise WeightprintError(f"shipped corpus `{name}` is missing from weightprint/data") from e
    return "\n\n".join(parts)


def heldout_text(n_chars: int = 6000) -> str:
    """The last ``n_chars`` characters of the shipped corpus, which :func:`finetune` never trains on."""
    text = corpus_text()
    return text[-n_chars:]


def _training_text(n_heldout_chars: int = 6000) -> str:
    text = corpus_text()
    return text[:-n_heldout_chars]


# ----------------------------------------------------------------------------------------------
# Reading a source: Hugging Face directory (safetensors), GGUF converted once into one
# ----------------------------------------------------------------------------------------------


def _source_path(model: Any) -> Path:
    """Path of a source given as a path or as a :class:`~weightprint.io.model.Model`."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
    elif hasattr(model, "path"):
        path = Path(model.path)
    else:
        raise WeightprintError(f"expected a model path or a weightprint Model, got {type(model).__name__}")
    if not path.exists():
        raise FileNotFoundError(f"No such file or directory: {path}")
    return path


class _HFDir:
    """A Hugging Face directory opened for streaming: config, tensor names/shapes, one tensor at a time."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelFormatError(f"{path}: not a Hugging Face directory (no config.json)")
        self.config: dict[str, Any] = json.loads(cfg.read_text())
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in path.glob("*.safetensors"))
            if not files:
                raise ModelFormatError(f"{path}: no .safetensors file")
        self._handles = {f: safe_open(str(path / f), framework="pt") for f in files}
        self._where: dict[str, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.names: list[str] = []
        for f, h in self._handles.items():
            for name in h.keys():
                if name in self._where:
                    raise ModelFormatError(f"{path}: tensor `{name}` appears twice ({self._where[name]}, {f})")
                self._where[name] = f
                self.shapes[name] = tuple(h.get_slice(name).get_shape())
                self.names.append(name)
        self.names.sort(key=_tensor_sort_key)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise TensorNotFound(f"{self.path}: no tensor `{name}`")
        t = self._handles[self._where[name]].get_tensor(name)
        return t.float().numpy()


def _tensor_sort_key(name: str) -> tuple:
    m = _LAYER_RE.match(name)
    if name.startswith("model.embed"):
        return (0, 0, name)
    if m:
        return (1, int(m.group(2)), m.group(3))
    return (2, 0, name)


def as_hf_dir(model: Any) -> Path:
    """A Hugging Face directory for ``model``: the directory itself, or a cached F32 conversion of a GGUF.

    Parameters
    ----------
    model : str, Path or Model
        A Hugging Face directory, or a GGUF file (llama-family architectures that transformers reads).

    Returns
    -------
    Path
        The directory (``config.json``, ``model.safetensors``, tokenizer files).
    """
    path = _source_path(model)
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf":
        return derived("hf", path)
    raise ModelFormatError(f"{path}: expected a GGUF file or a Hugging Face directory")


def _gguf_to_hf(source: Path, out: Path) -> Path:
    """Convert a GGUF to an F32 Hugging Face directory with weightprint's own streaming converter."""
    from weightprint.convert import convert

    convert(source, out, to="hf", dtype="float32")
    return out


# ----------------------------------------------------------------------------------------------
# Writing: a streaming safetensors writer (header first, then one tensor at a time)
# ----------------------------------------------------------------------------------------------

_ST_DTYPES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}


@dataclass
class _Planned:
    """One output tensor: its name and shape, known before writing, and a function producing it."""

    name: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]


def _write_safetensors(path: Path, plan: list[_Planned], *, dtype: str = "float32") -> None:
    """Write ``plan`` into ``path`` (``model.safetensors``) tensor by tensor, via the io layer's writer."""
    from weightprint.io.safetensors_file import write_safetensors_shards

    if dtype not in _ST_DTYPES:
        raise WeightprintError(f"unsupported output dtype `{dtype}`; known: {', '.join(_ST_DTYPES)}")
    if path.name != "model.safetensors":
        raise WeightprintError(f"{path}: derived models are written as `model.safetensors`")
    producers = {p.name: p.produce for p in plan}
    if len(producers) != len(plan):
        raise WeightprintError(f"{path}: a tensor is planned twice")
    write_safetensors_shards(
        path.parent,
        [(p.name, p.shape, _ST_DTYPES[dtype][0]) for p in plan],
        lambda name: np.asarray(producers[name](), dtype=np.float32),
        max_shard_bytes=1 << 62,
    )


def _copy_tokenizer_files(src: Path, out: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and (
            p.name.startswith("tokenizer")
            or p.name in ("special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
                          "generation_config.json", "added_tokens.json")
        ):
            shutil.copy2(p, out / p.name)


def _write_config(out: Path, config: dict[str, Any]) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_info(out: Path, info: dict[str, Any]) -> None:
    (out / INFO_FILE).write_text(json.dumps(_jsonable(info), indent=2, sort_keys=True) + "\n")


def read_derive_info(path: str | Path) -> dict[str, Any]:
    """The ``weightprint_derive.json`` record of a derived model directory (recipe, params, measurements)."""
    p = Path(path) / INFO_FILE
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as e:
        raise WeightprintError(f"{path}: not a derived model (no {INFO_FILE})") from e


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


@contextlib.contextmanager
def _output_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temp directory next to ``out``; on success it is renamed to ``out`` (which must not exist)."""
    out = Path(out)
    if out.exists():
        raise WeightprintError(f"{out}: output already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _transform_dir(
    model: Any,
    out: str | Path,
    *,
    plan_fn: Callable[[_HFDir], tuple[list[_Planned], dict[str, Any]]],
    info: dict[str, Any],
    dtype: str = "float32",
    tokenizer_fn: Callable[[Path, Path], None] | None = None,
) -> Path:
    src = _HFDir(as_hf_dir(model))
    out = Path(out)
    with _output_dir(out) as tmp:
        plan, config = plan_fn(src)
        _write_safetensors(tmp / "model.safetensors", plan, dtype=dtype)
        _copy_tokenizer_files(src.path, tmp)
        if tokenizer_fn is not None:
            tokenizer_fn(src.path, tmp)
        _write_config(tmp, config)
        _write_info(tmp, {**info, "source": str(src.path), "dtype": dtype})
    return out


# ----------------------------------------------------------------------------------------------
# Architecture facts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int


def _geometry(src: _HFDir | dict[str, Any], where: str = "config") -> _Geometry:
    if isinstance(src, _HFDir):
        config, where = src.config, f"{src.path}/config.json"
    else:
        config = src
    c = config.get("text_config", config)
    try:
        n_heads = int(c["num_attention_heads"])
        n_kv = int(c.get("num_key_value_heads") or n_heads)
        hidden = int(c["hidden_size"])
        head_dim = int(c.get("head_dim") or hidden // n_heads)
        return _Geometry(int(c["num_hidden_layers"]), n_heads, n_kv, head_dim, int(c["intermediate_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFormatError(f"{where}: missing or bad attention/MLP sizes ({e})") from e


# ----------------------------------------------------------------------------------------------
# Permutation of hidden units and heads (function-preserving)
# ----------------------------------------------------------------------------------------------


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
    if isinstance(model_or_config, (_Geometry, _HFDir, dict)):
        g = model_or_config if isinstance(model_or_config, _Geometry) else _geometry(model_or_config)
    else:
        g = _geometry(_HFDir(as_hf_dir(model_or_config)))
    if g.n_heads % g.n_kv_heads:
        raise ShapeMismatchError(f"{g.n_heads} attention heads are not a multiple of {g.n_kv_heads} key/value heads")
    group = g.n_heads // g.n_kv_heads
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E37]))
    perms = []
    for _ in range(g.n_layers):
        mlp = rng.permutation(g.intermediate)
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

    def plan_fn(src: _HFDir) -> tuple[list[_Planned], dict[str, Any]]:
        g = _geometry(src)
        perms = hidden_unit_permutations(g, seed)
        plan = []
        for name in src.names:
            index = _row_col_index(name, perms, g)
            plan.append(_Planned(name, src.shapes[name], _permuted_producer(src, name, index)))
        return plan, dict(src.config)

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "permute", "params": {"seed": seed}})


def _row_col_index(name: str, perms: list[LayerPermutation], g: _Geometry) -> tuple[np.ndarray | None, np.ndarray | None]:
    m = _LAYER_RE.match(name)
    if not m:
        return None, None
    layer, rest = int(m.group(2)), m.group(3)
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


def _permuted_producer(src: _HFDir, name: str, index: tuple[np.ndarray | None, np.ndarray | None]) -> Callable[[], np.ndarray]:
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

    def plan_fn(src: _HFDir) -> tuple[list[_Planned], dict[str, Any]]:
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
        return _jsonable({**asdict(self), "achieved_increase": self.achieved_increase})


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
    hf = _HFDir(as_hf_dir(model))
    text = heldout_text() if text is None else text
    with _torch_threads(threads):
        lm, tok = _load_transformers(hf.path)
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

    def plan_fn(src: _HFDir) -> tuple[list[_Planned], dict[str, Any]]:
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

        src = _HFDir(src_dir)
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

    def plan_fn(src: _HFDir) -> tuple[list[_Planned], dict[str, Any]]:
        g = _geometry(src)
        if not (isinstance(layer, int) and 0 <= layer < g.n_layers):
            raise WeightprintError(f"{src.path}: layer {layer!r} out of range 0..{g.n_layers - 1}")
        if g.n_layers < 2:
            raise WeightprintError(f"{src.path}: cannot drop the only layer")
        plan = []
        for name in src.names:
            m = _LAYER_RE.match(name)
            new = name
            if m:
                i = int(m.group(2))
                if i == layer:
                    continue
                if i > layer:
                    new = f"{m.group(1)}{i - 1}{m.group(3)}"
            plan.append(_Planned(new, src.shapes[name], lambda name=name: src.tensor(name)))
        config = json.loads(json.dumps(src.config))
        c = config.get("text_config", config)
        c["num_hidden_layers"] = g.n_layers - 1
        if isinstance(c.get("layer_types"), list) and len(c["layer_types"]) == g.n_layers:
            del c["layer_types"][layer]
        return plan, config

    return _transform_dir(model, out, plan_fn=plan_fn, dtype=dtype,
                          info={"recipe": "drop_layer", "params": {"layer": layer}})


# ----------------------------------------------------------------------------------------------
# torch helpers
# ----------------------------------------------------------------------------------------------


def default_threads(max_threads: int = 2) -> int:
    """Threads for torch: up to ``max_threads``, but 1 when the machine is already busy.

    On a shared 2-core machine, 2 OpenMP threads competing with other processes run 10x slower
    than 1 thread (measured: 60-85 s against 2.5 s per SmolLM2 training step at load 10).
    """
    n = min(max_threads, os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return 1
    return n if load < (os.cpu_count() or 1) else 1


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(default_threads() if n is None else max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _load_transformers(path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our callers own the terminal (rich progress on stderr)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"{path}: transformers cannot load this directory: {e}") from e
    lm.eval()
    return lm, tok


def _encode_text(tok: Any, text: str, max_tokens: int) -> Any:
    import torch

    ids = tok(text)["input_ids"][:max_tokens]  # the tokenizer's own BOS convention
    if len(ids) < 2:
        raise WeightprintError(f"text has {len(ids)} tokens; perplexity needs at least 2")
    return torch.tensor([ids], dtype=torch.long)


def _perplexity_torch(lm: Any, ids: Any) -> float:
    import torch

    with torch.no_grad():
        out = lm(input_ids=ids, labels=ids)
    return float(torch.exp(out.loss))


# ----------------------------------------------------------------------------------------------
# Perplexity
# ----------------------------------------------------------------------------------------------


def perplexity(
    model_path: str | Path, text: str | None = None, *, max_tokens: int = 512, threads: int | None = None
) -> float:
    """Perplexity of ``text`` under a model: llama.cpp for a GGUF, transformers for a Hugging Face directory.

    Parameters
    ----------
    model_path : str or Path
        A GGUF file (scored with llama-cpp-python) or a Hugging Face directory (transformers, F32).
    text : str, *optional*
        Defaults to :func:`heldout_text`.
    max_tokens : int, *optional*, defaults to 512
        The text is cut to this many tokens (one context window, including a BOS token where
        the tokenizer adds one, as Gemma's does).
    threads : int, *optional*
        Defaults to :func:`default_threads`.

    Returns
    -------
    float
        ``exp(mean negative log-likelihood)`` of tokens 2..n given their prefix.
    """
    path = _source_path(model_path)
    text = heldout_text() if text is None else text
    if path.is_dir():
        with _torch_threads(threads):
            lm, tok = _load_transformers(path)
            return _perplexity_torch(lm, _encode_text(tok, text, max_tokens))
    return _perplexity_llama_cpp(path, text, max_tokens=max_tokens,
                                 threads=default_threads() if threads is None else threads)


def _perplexity_llama_cpp(path: Path, text: str, *, max_tokens: int, threads: int) -> float:
    try:
        import llama_cpp
    except ImportError as e:
        raise WeightprintError(f"{path}: llama-cpp-python is needed to score a GGUF",
                               hint="pip install --no-deps llama-cpp-python==0.3.36") from e
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=max_tokens + 8, n_batch=max_tokens + 8,
                              logits_all=True, n_threads=threads, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise ModelFormatError(f"{path}: llama.cpp cannot load this GGUF: {e}") from e
    try:
        # add_bos=True means "add what the vocabulary asks for" (tokenizer.ggml.add_bos_token)
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)[:max_tokens]
        if len(tokens) < 2:
            raise WeightprintError(f"text has {len(tokens)} tokens; perplexity needs at least 2")
        llm.reset()
        llm.eval(tokens)
        logits = np.asarray(llm.scores[: len(tokens) - 1], dtype=np.float64)
    finally:
        llm.close()
    m = logits.max(axis=1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
    target = np.asarray(tokens[1:])
    nll = logz - logits[np.arange(target.size), target]
    return float(np.exp(nll.mean()))


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetuneResult:
    """Result of :func:`finetune`.

    Attributes
    ----------
    path : Path
        The fine-tuned Hugging Face directory.
    relative_drift : float
        ``sqrt(sum ||W' - W||^2) / sqrt(sum ||W||^2)`` over all tensors.
    loss_before, loss_after : float
        Mean cross-entropy on fixed held-out windows before and after training.
    train_loss_first, train_loss_last : float
        Mean training loss over the first and last 10 % of steps.
    steps, batch, seq_len : int
    lr : float
    seed : int
    seconds : float
        Wall time of the training loop.
    cpu_seconds : float
        CPU time of this process during the training loop (all threads); on a busy machine the
        better measure of cost.
    threads : int
        torch threads used.
    """

    path: Path
    relative_drift: float
    loss_before: float
    loss_after: float
    train_loss_first: float
    train_loss_last: float
    steps: int
    batch: int
    seq_len: int
    lr: float
    seed: int
    seconds: float
    cpu_seconds: float = float("nan")
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _windows(ids: np.ndarray, seq_len: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if ids.size <= seq_len + 1:
        raise WeightprintError(f"training text has {ids.size} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    starts = rng.integers(0, ids.size - seq_len, size=n)
    return np.stack([ids[s:s + seq_len] for s in starts])


def _train(lm: Any, ids: np.ndarray, *, steps: int, lr: float, seq_len: int, batch: int, seed: int,
           weight_decay: float = 0.0) -> list[float]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF1]))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    lm.train()
    losses = []
    for _ in range(steps):
        x = torch.from_numpy(_windows(ids, seq_len, batch, rng)).long()
        loss = lm(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    lm.eval()
    return losses


def _eval_loss(lm: Any, windows: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(windows).long()
        return float(lm(input_ids=x, labels=x).loss)


def relative_drift(a: Any, b: Any) -> float:
    """``sqrt(sum ||B - A||^2) / sqrt(sum ||A||^2)`` over the tensors the two models share, streamed."""
    A, B = _HFDir(as_hf_dir(a)), _HFDir(as_hf_dir(b))
    num = den = 0.0
    for name in A.names:
        if name not in B or A.shapes[name] != B.shapes[name]:
            continue
        wa = A.tensor(name).astype(np.float64)
        wb = B.tensor(name).astype(np.float64)
        num += float(((wb - wa) ** 2).sum())
        den += float((wa ** 2).sum())
    if den == 0.0:
        raise WeightprintError(f"{A.path}: no shared nonzero tensors with {B.path}")
    return math.sqrt(num / den)


def finetune(
    model: Any,
    out: str | Path,
    *,
    steps: int = 200,
    lr: float = 1e-4,
    seq_len: int = 64,
    batch: int = 1,
    seed: int = 0,
    threads: int | None = None,
    text: str | None = None,
    eval_windows: int = 8,
) -> FinetuneResult:
    """Fine-tune ALL weights of ``model`` with AdamW on CPU and write the result.

    Training windows of ``seq_len`` tokens are drawn (``seed``) from the shipped public-domain
    corpus minus its held-out tail; ``loss_before``/``loss_after`` are measured on fixed windows
    of the held-out tail. Gradients are clipped to norm 1; no weight decay; float32 throughout.
    The result is also written to ``weightprint_derive.json`` in ``out``.

    Parameters
    ----------
    model : str, Path or Model
        Source: a Hugging Face directory or a GGUF file (converted once, cached).
    out : str or Path
        Output directory (must not exist).
    steps, lr, seq_len, batch, seed : *optional*
        Training knobs (fused AdamW, betas (0.9, 0.999), no weight decay, gradient clip 1).
    threads : int, *optional*
        ``torch.set_num_threads`` during training; default :func:`default_threads` (2, or 1
        when the machine is busy). Not part of the :func:`derived` cache key.
    text : str, *optional*
        Training text instead of the shipped corpus.
    eval_windows : int, *optional*, defaults to 8

    Returns
    -------
    FinetuneResult
    """
    import torch

    for knob, value in (("steps", steps), ("seq_len", seq_len), ("batch", batch)):
        if not (isinstance(value, int) and value > 0):
            raise WeightprintError(f"`{knob}` must be a positive integer, got {value!r}")
    src = as_hf_dir(model)
    out = Path(out)
    with _torch_threads(threads), _output_dir(out) as tmp:
        torch.manual_seed(seed)
        lm, tok = _load_transformers(src)
        train_ids = np.asarray(tok(text if text is not None else _training_text(),
                                   add_special_tokens=False)["input_ids"], dtype=np.int64)
        held = np.asarray(tok(heldout_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
        evals = _windows(held, seq_len, eval_windows, np.random.default_rng(12345))
        loss_before = _eval_loss(lm, evals)
        t0, c0 = time.perf_counter(), time.process_time()
        losses = _train(lm, train_ids, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        loss_after = _eval_loss(lm, evals)
        lm.save_pretrained(str(tmp))
        _copy_tokenizer_files(src, tmp)
        del lm
        drift = relative_drift(src, tmp)
        k = max(1, steps // 10)
        result = FinetuneResult(
            path=out, relative_drift=drift, loss_before=loss_before, loss_after=loss_after,
            train_loss_first=float(np.mean(losses[:k])), train_loss_last=float(np.mean(losses[-k:])),
            steps=steps, batch=batch, seq_len=seq_len, lr=lr, seed=seed, seconds=seconds,
            cpu_seconds=cpu_seconds, threads=torch.get_num_threads(),
        )
        _write_info(tmp, {"recipe": "finetune", "source": str(src),
                          "params": {"steps": steps, "lr": lr, "seq_len": seq_len, "batch": batch, "seed": seed},
                          "result": {k: v for k, v in result.to_dict().items() if k != "path"},
                          "train_losses": losses})
    return result


# ----------------------------------------------------------------------------------------------
# Tiny llama models
# ----------------------------------------------------------------------------------------------


def tiny_tokenizer_path() -> Path:
    """The shipped byte-level BPE tokenizer (1024 tokens, trained on the shipped corpus)."""
    path = Path(str(resources.files("weightprint") / "data" / TINY_TOKENIZER_FILE))
    if not path.is_file():
        raise WeightprintError(f"shipped tokenizer `{TINY_TOKENIZER_FILE}` is missing from weightprint/data")
    return path


def build_tiny_tokenizer(out: str | Path, vocab_size: int = 1024) -> Path:
    """Train the byte-level BPE tokenizer that ships as ``data/tiny_tokenizer.json`` (maintainers only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    out = Path(out)
    tok.save(str(out))
    return out


def _save_tiny_tokenizer(tokenizer_file: Path, out: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.save_pretrained(str(out))
    return tok


def train_tiny_llama(
    out: str | Path,
    seed: int,
    steps: int = 60,
    *,
    hidden_size: int = 64,
    n_layers: int = 2,
    intermediate_size: int = 128,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    tie_embeddings: bool = False,
    lr: float = 3e-3,
    seq_len: int = 64,
    batch: int = 8,
    tokenizer: str | Path | None = None,
    threads: int = 1,
) -> Path:
    """Initialise a tiny llama-architecture model with ``seed`` and train it briefly on the shipped text.

    Two calls with different seeds give independent models (the null of lineage tests); the
    same seed gives the same weights. With the default shipped 1024-token tokenizer a model
    has about 0.2 M parameters and trains in about a second.

    Parameters
    ----------
    out : str or Path
        Output directory (must not exist).
    seed : int
        Seed of the initialisation and of the training windows.
    steps : int, *optional*, defaults to 60
        AdamW steps (0 = initialisation only).
    hidden_size, n_layers, intermediate_size, n_heads, n_kv_heads, tie_embeddings : *optional*
        Architecture.
    lr, seq_len, batch : *optional*
        Training knobs (fused AdamW, no weight decay, gradient clip 1).
    threads : int, *optional*, defaults to 1
        Tiny matrices gain nothing from more threads. Not part of the :func:`derived` key.
    tokenizer : str or Path, *optional*
        A ``tokenizer.json``; defaults to :func:`tiny_tokenizer_path`.

    Returns
    -------
    Path
        ``out``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_file = Path(tokenizer) if tokenizer is not None else tiny_tokenizer_path()
    out = Path(out)
    with _torch_threads(threads), _output_dir(out) as tmp:
        tok = _save_tiny_tokenizer(tok_file, tmp)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
            max_position_embeddings=max(256, seq_len), rms_norm_eps=1e-5, tie_word_embeddings=tie_embeddings,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(config)
        losses: list[float] = []
        if steps:
            ids = np.asarray(tok(_training_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
            losses = _train(lm, ids, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
        lm.save_pretrained(str(tmp))
        _write_info(tmp, {"recipe": "tiny_llama", "params": {
            "seed": seed, "steps": steps, "hidden_size": hidden_size, "n_layers": n_layers,
            "intermediate_size": intermediate_size, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "tie_embeddings": tie_embeddings, "lr": lr, "seq_len": seq_len, "batch": batch,
            "tokenizer": str(tok_file)}, "train_losses": losses})
    return out


def tiny_llama_pair(seed: int, steps: int = 60, **params: Any) -> tuple[Path, Path]:
    """Two independently seeded tiny llama models (seeds ``2*seed`` and ``2*seed + 1``), cached.

    Parameters
    ----------
    seed : int
        Pair index; pairs with different ``seed`` share no model.
    steps, **params
        Passed to :func:`train_tiny_llama`.

    Returns
    -------
    tuple of Path
    """
    return (derived("tiny_llama", None, seed=2 * seed, steps=steps, **params),
            derived("tiny_llama", None, seed=2 * seed + 1, steps=steps, **params))


# ----------------------------------------------------------------------------------------------
# GGUF output
# ----------------------------------------------------------------------------------------------

GGUF_FILE = "model.gguf"


def to_gguf(model: Any, out: str | Path, file_type: str = "F16") -> Path:
    """Write ``model`` (typically a derived Hugging Face directory) as a GGUF with weightprint's converter.

    Parameters
    ----------
    model : str, Path or Model
    out : str or Path
        Output GGUF file.
    file_type : str, *optional*, defaults to "F16"
        ``F32``, ``F16``, ``Q8_0``, ``Q4_K_M``... (see :func:`weightprint.constants.parse_file_type`).

    Returns
    -------
    Path
        ``out``.
    """
    from weightprint.convert import convert

    convert(_source_path(model), out, to="gguf", file_type=file_type)
    return Path(out)


def _gguf_recipe(source: Path, out: Path, file_type: str = "F16") -> Path:
    out.mkdir(parents=True)
    to_gguf(source, out / GGUF_FILE, file_type=file_type)
    _write_info(out, {"recipe": "gguf", "source": str(source), "params": {"file_type": file_type}})
    return out / GGUF_FILE


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------

_RECIPES: dict[str, Callable[..., Any]] = {
    "hf": lambda source, out: _gguf_to_hf(source, out),
    "permute": lambda source, out, **kw: permute_hidden_units(source, out, **kw),
    "noise": lambda source, out, **kw: add_noise(source, out, **kw),
    "extend_vocab": lambda source, out, **kw: extend_vocab(source, out, **kw),
    "drop_layer": lambda source, out, **kw: drop_layer(source, out, **kw),
    "finetune": lambda source, out, **kw: finetune(source, out, **kw),
    "tiny_llama": lambda source, out, **kw: train_tiny_llama(out, **kw),
    "gguf": _gguf_recipe,
}
RECIPES = tuple(_RECIPES)

_RECIPE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "permute": permute_hidden_units,
    "noise": add_noise,
    "extend_vocab": extend_vocab,
    "drop_layer": drop_layer,
    "finetune": finetune,
    "tiny_llama": train_tiny_llama,
    "gguf": _gguf_recipe,
}
_NOT_IN_KEY = {"model", "out", "threads", "source"}


def _resolved_params(recipe: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the recipe function's defaults, so a changed default changes the key."""
    fn = _RECIPE_FUNCTIONS.get(recipe)
    if fn is None:
        if params:
            raise WeightprintError(f"recipe `{recipe}` takes no parameters, got {', '.join(sorted(params))}")
        return {}
    try:
        bound = inspect.signature(fn).bind_partial(**params)
    except TypeError as e:
        raise WeightprintError(f"recipe `{recipe}`: {e}") from e
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in _NOT_IN_KEY}


# Bump a recipe's version when its output changes for the same parameters.
_RECIPE_VERSIONS = {"gguf": 1, "hf": 1, "permute": 1, "noise": 1, "extend_vocab": 1, "drop_layer": 1, "finetune": 1, "tiny_llama": 1}

_sha_memo: dict[tuple[str, int, int], str] = {}


def source_fingerprint(source: str | Path) -> str:
    """Content identity of a source: SHA-256 of a file, or of a directory's model files (memoised).

    A directory made by :func:`derived` is identified by its cache key (its name).
    """
    path = Path(source)
    if path.is_dir():
        root = cache_dir() / "derived"
        if path.parent.resolve() == root.resolve() and (path / INFO_FILE).is_file():
            return "derived:" + path.name
        h = hashlib.sha256()
        for p in sorted(path.iterdir()):
            if p.is_file() and (p.suffix in (".safetensors", ".json", ".gguf", ".model", ".txt", ".jinja")):
                h.update(p.name.encode() + b"\0" + _file_sha(p).encode())
        return h.hexdigest()
    return _file_sha(path)


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _sha_memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        _sha_memo[key] = f"{h.hexdigest()}:{st.st_size}"
    return _sha_memo[key]


def derived_key(recipe: str, source: str | Path | None, **params: Any) -> str:
    """The cache key of ``derived(recipe, source, **params)``: a SHA-256 hex digest."""
    if recipe not in _RECIPES:
        raise WeightprintError(f"unknown recipe `{recipe}`; known: {', '.join(RECIPES)}")
    ident = {
        "recipe": recipe,
        "version": _RECIPE_VERSIONS[recipe],
        "params": _jsonable(_resolved_params(recipe, params)),
        "source": None if source is None else source_fingerprint(_source_path(source)),
    }
    if recipe in ("finetune", "tiny_llama"):  # trained on the shipped text
        ident["corpus"] = hashlib.sha256(corpus_text().encode()).hexdigest()
        ident["tokenizer"] = _file_sha(tiny_tokenizer_path()) if recipe == "tiny_llama" else None
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def derived(recipe: str, source: str | Path | Any | None, **params: Any) -> Path:
    """Build (once per machine) and return a derived model, cached under ``cache_dir()/derived``.

    Parameters
    ----------
    recipe : {'hf', 'gguf', 'permute', 'noise', 'extend_vocab', 'drop_layer', 'finetune', 'tiny_llama'}
        ``hf`` converts a GGUF into an F32 Hugging Face directory (transformers' GGUF reader);
        ``gguf`` writes a GGUF with :func:`to_gguf` (``file_type=``); the others call
        :func:`permute_hidden_units`, :func:`add_noise`, :func:`extend_vocab`, :func:`drop_layer`,
        :func:`finetune`, :func:`train_tiny_llama` with ``**params``.
    source : str, Path, Model or None
        The source model (``None`` for ``tiny_llama``).
    **params
        Keyword arguments of the recipe's function (all part of the cache key).

    Returns
    -------
    Path
        The cached output directory (for ``gguf``: the ``model.gguf`` file inside it). Concurrent callers (threads or processes) wait for one
        build; a failed build leaves nothing behind.
    """
    if source is not None:
        source = _source_path(source)
    key = derived_key(recipe, source, **params)
    root = cache_dir() / "derived"
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    result = final / GGUF_FILE if recipe == "gguf" else final
    if (final / INFO_FILE).is_file():
        return result
    with open(root / f".{key}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if final.exists():
                return result
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".build", dir=root))
            try:
                built = staging / "out"
                _RECIPES[recipe](source, built, **params)
                if recipe == "hf":
                    _write_info(built, {"recipe": "hf", "source": str(source), "params": {}})
                os.replace(built, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return result
