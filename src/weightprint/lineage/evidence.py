"""Non-weight evidence: architecture/config diff, tokenizer overlap, chat-template family.

None of these is a p-value: two independent models can share a tokenizer (many fine-tunes and
many unrelated models use Llama's) and a derived one can change it. They are reported next to
the weight statistics as context and as the reason when weights are not comparable.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from weightprint.chat_templates import chat_template_family, template_sha256
from weightprint.io.model import Model

__all__ = [
    "CONFIG_KEYS",
    "config_diff",
    "config_summary",
    "jaccard",
    "minhash",
    "minhash_jaccard",
    "template_evidence",
]

CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
    "num_local_experts",
)

MINHASH_SIZE = 128


def config_summary(model: Model, *, hidden_size: int | None, n_layers: int) -> dict[str, Any]:
    """The comparable config values of a model (config first, tensor shapes as fallback)."""
    cfg = dict(model.config or {})
    out: dict[str, Any] = {"architecture": model.architecture}
    for k in CONFIG_KEYS:
        v = cfg.get(k)
        if isinstance(v, (int, float, str, bool)):
            out[k] = v
    out.setdefault("hidden_size", hidden_size)
    out.setdefault("num_hidden_layers", n_layers)
    if "vocab_size" not in out and model.tokenizer is not None:
        out["vocab_size"] = model.tokenizer.vocab_size
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``{key: [value in A, value in B]}`` for every key whose values differ, and the equal ones."""
    keys = sorted(set(a) | set(b))
    differ = {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}
    same = sorted(k for k in keys if k not in differ)
    return {"differ": differ, "same": same}


def jaccard(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (0 when both are empty)."""
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def _hash64(items: list[str]) -> np.ndarray:
    out = np.empty(len(items), dtype=np.uint64)
    for i, t in enumerate(items):
        out[i] = int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return out


def minhash(items: list[str] | None, size: int = MINHASH_SIZE) -> np.ndarray | None:
    """MinHash signature (``size`` uint64 values) of a set of strings; None for None/empty.

    Hash function ``k`` is ``a_k h + b_k (mod 2^64)`` with a fixed odd ``a_k`` over a 64-bit
    BLAKE2b hash ``h`` of the string; the fraction of equal minima estimates the Jaccard index
    with standard error about ``sqrt(J (1 - J) / size)``.
    """
    if not items:
        return None
    h = _hash64(list(set(items)))
    rng = np.random.default_rng(20250527)
    a = rng.integers(0, 2**63, size=size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=size, dtype=np.uint64)
    sig = np.empty(size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            sig[k] = (h * a[k] + b[k]).min()
    return sig


def minhash_jaccard(sig_a: np.ndarray | None, sig_b: np.ndarray | None) -> float | None:
    """Jaccard estimate from two MinHash signatures (None if either is missing)."""
    if sig_a is None or sig_b is None or len(sig_a) != len(sig_b):
        return None
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


def template_evidence(template_a: str | None, template_b: str | None) -> dict[str, Any]:
    """Chat-template families of both models and whether the texts are identical."""
    fa, fb = chat_template_family(template_a), chat_template_family(template_b)
    ha, hb = template_sha256(template_a), template_sha256(template_b)
    return {
        "family_a": fa,
        "family_b": fb,
        "same_family": fa == fb and fa != "none",
        "identical": ha is not None and ha == hb,
    }
