"""What the lineage graph needs beyond the fingerprint: how a model stores its values.

The fingerprint test says *whether* two models share weights (a p-value). To pick a parent
and a direction the graph also needs, per model, a few cheap facts read from one tensor (the
first layer's ``mlp.up_proj``, or the first 2-D layer weight):

- ``grid_bits`` -- the values of each block of 16 lie on a uniform grid of ``2**grid_bits``
  levels (a quantized model, or a dequantized copy of one: the miqu case), else None;
- ``mantissa_bits`` -- 24 (float32 values), 11 (every value exactly a float16), 8 (bfloat16);
- ``stored_bits`` -- bits per parameter on disk (file size * 8 / parameters);
- ``order`` -- the row norms of that tensor, in stored order (float16, base64): equal sorted but
  not in order means the hidden units were permuted.

Pairwise, :func:`compare_signatures` turns two signatures and two fingerprints into the
structural differences (permuted units, dropped layers, changed vocabulary) and the value
drift (relative L2 distance of the shared sampled embedding rows).
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any

import numpy as np

from weightprint.io.model import Model
from weightprint.lineage.fingerprint import Fingerprint

__all__ = ["compare_signatures", "model_signature", "source_rank"]

GRID_BLOCK = 16
GRID_TOLERANCE = 0.01  # of the grid step
F16_RELATIVE = 2.0 ** -11  # float16 rounding of dequantized values keeps them on their grid
MAX_GRID_BITS = 10
MAX_GRID_DIVISOR = 32
GRID_SAMPLE_BLOCKS = 256
MAX_ORDER_ROWS = 4096
EMBED_SAMPLE = 16


def _probe_tensor(model: Model) -> str | None:
    names = model.tensor_names()
    for pat in (r"model\.layers\.0\.mlp\.up_proj\.weight$", r"model\.layers\.\d+\.mlp\.up_proj\.weight$",
                r"model\.layers\.\d+\..*\.weight$"):
        for n in names:
            if re.search(pat, n) and len(model.info(n).shape) == 2:
                return n
    return None


def _block_levels(b: np.ndarray) -> float | None:
    """Levels spanned by the sorted block ``b`` on the coarsest uniform grid it lies on (None: none)."""
    d = np.diff(b)
    d = d[d > 1e-12 * max(1.0, abs(b[-1]))]
    if d.size == 0:
        return 1.0
    k0 = (b - b[0]) / d.min()
    for j in range(1, MAX_GRID_DIVISOR + 1):  # the step may be a fraction of the smallest gap (Q8 of Q4 values)
        k = np.round(k0 * j)
        if k[-1] >= 2 ** MAX_GRID_BITS:
            return None
        # refit offset and step on the integer levels (the smallest gap carries rounding error)
        km, bm = k.mean(), b.mean()
        var = float(((k - km) ** 2).sum())
        slope = float(((k - km) * (b - bm)).sum()) / var if var > 0 else 1.0
        offset = bm - slope * km
        tol = np.maximum(GRID_TOLERANCE * slope, F16_RELATIVE * np.abs(b))  # float16 rounding of the values
        if slope > 0 and np.all(np.abs(b - offset - slope * k) <= tol):
            return float(k[-1] + 1)
    return None


def grid_bits(x: np.ndarray) -> int | None:
    """Bits of the uniform grid every block of :data:`GRID_BLOCK` values lies on (None: off-grid).

    The grid of a block is found from its sorted values: a step that divides every gap
    (within :data:`GRID_TOLERANCE` of the step, or a float16 rounding of the value, so a
    float16 dequantization stays on it); the bits are ``ceil(log2(levels spanned))``, at the 99th percentile over
    blocks. Float weights lie on no grid of at most ``2**MAX_GRID_BITS`` levels.
    """
    flat = np.asarray(x, dtype=np.float64).ravel()
    n = flat.size // GRID_BLOCK * GRID_BLOCK
    if n == 0:
        return None
    blocks = np.sort(flat[:n].reshape(-1, GRID_BLOCK), axis=1)
    if blocks.shape[0] > GRID_SAMPLE_BLOCKS:
        blocks = blocks[np.linspace(0, blocks.shape[0] - 1, GRID_SAMPLE_BLOCKS).astype(int)]
    levels = []
    for b in blocks:
        lv = _block_levels(b)
        if lv is None:
            return None
        levels.append(lv)
    return int(math.ceil(math.log2(max(2.0, float(np.percentile(levels, 99))))))


def mantissa_bits(x: np.ndarray) -> int:
    x = np.asarray(x, dtype=np.float32)
    if np.array_equal(x.astype(np.float16).astype(np.float32), x):
        return 11
    bf = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    if np.array_equal(bf, x):
        return 8
    return 24


def _embedding_sample(model: Model, tokens: list[str]) -> tuple[list[str], str | None]:
    """Raw embedding rows of ``tokens`` (float16, base64), read row by row."""
    from weightprint.io.names import EMBED_NAMES

    names = set(model.tensor_names())
    embed = next((n for n in EMBED_NAMES if n in names), None)
    tok = model.tokenizer
    if embed is None or tok is None or not tokens:
        return [], None
    index: dict[str, int] = {}
    for i, t in enumerate(tok.tokens):
        index.setdefault(t, i)
    n_rows = model.info(embed).shape[0]
    kept = [t for t in tokens if index.get(t, n_rows) < n_rows]
    if not kept:
        return [], None
    rows = model.read_rows(embed, np.array([index[t] for t in kept]))
    return kept, _pack(rows)


def _pack(x: np.ndarray) -> str:
    """float16 bytes, base64: how arrays sit in the signature's JSON."""
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), -65504.0, 65504.0)  # float16's range
    return base64.b64encode(np.ascontiguousarray(x, dtype=np.float16).tobytes()).decode()


def _unpack(s: str | list) -> np.ndarray:
    if isinstance(s, list):  # signatures written before the base64 packing
        return np.asarray(s, dtype=np.float64)
    return np.frombuffer(base64.b64decode(s), dtype=np.float16).astype(np.float64)


def model_signature(model: Model, *, total_bytes: int, tokens: list[str] | None = None) -> dict[str, Any]:
    """The signature of an opened model (reads one tensor and the embedding rows of ``tokens``)."""
    n_params = max(1, int(model.n_parameters()))
    sig: dict[str, Any] = {"stored_bits": round(total_bytes * 8 / n_params, 3), "probe": None,
                           "grid_bits": None, "mantissa_bits": None, "order": None}
    sig["emb_tokens"], sig["emb_rows"] = _embedding_sample(model, list(tokens or [])[:EMBED_SAMPLE])
    name = _probe_tensor(model)
    if name is None:
        return sig
    w = model.tensor(name)
    rows = w[:MAX_ORDER_ROWS]
    sig.update(probe=name, grid_bits=grid_bits(rows), mantissa_bits=mantissa_bits(rows),
               order=_pack(np.linalg.norm(rows.astype(np.float64), axis=1)))
    return sig


def source_rank(sig: dict[str, Any]) -> tuple:
    """Order of "more likely the source" among models holding the same weights (smaller first).

    Only used between re-encodings of the same values, where the weights alone cannot say who
    came first. Information is lost, never gained, by a re-encoding: a float model (off any
    grid) comes before its quantizations, more mantissa bits before fewer; between
    grid-valued models the coarser grid comes first (a finer requantization or a dequantized
    float copy keeps the coarse grid: the miqu case), then the more compact file.
    """
    g = sig.get("grid_bits")
    if g is None:
        return (0, -(sig.get("mantissa_bits") or 24), sig.get("stored_bits") or 0.0)
    return (1, g, sig.get("stored_bits") or 0.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    d = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / d) if d > 0 else 0.0


def _rows(sig: dict[str, Any]) -> dict[str, np.ndarray]:
    toks, blob = sig.get("emb_tokens") or [], sig.get("emb_rows")
    if not toks or not blob:
        return {}
    rows = _unpack(blob).reshape(len(toks), -1)
    return dict(zip(toks, rows))


def embedding_drift(fa: Fingerprint, fb: Fingerprint, sa: dict[str, Any] | None = None,
                    sb: dict[str, Any] | None = None) -> float | None:
    """Median relative L2 distance between the embedding rows of the tokens both samples hold.

    The raw rows of the signatures (:data:`EMBED_SAMPLE` tokens, float16) when both have at
    least 4 tokens in common, else the fingerprints' standardized rows (whose stored precision
    depends on the fingerprint's size budget, so they resolve drift less finely).
    """
    ra, rb = _rows(sa or {}), _rows(sb or {})
    shared = [t for t in ra if t in rb]
    if len(shared) >= 4 and all(ra[t].shape == rb[t].shape for t in shared):
        d = [np.linalg.norm(ra[t] - rb[t]) / max(np.linalg.norm(ra[t]), 1e-12) for t in shared]
        return float(np.median(d))
    if fa.embedding is None or fb.embedding is None or fa.hidden_size != fb.hidden_size:
        return None
    ib = {t: i for i, t in enumerate(fb.tokens)}
    pairs = [(i, ib[t]) for i, t in enumerate(fa.tokens) if t in ib]
    if len(pairs) < 8:
        return None
    ia, jb = np.array(pairs).T
    ea, eb = fa.embedding[ia].astype(np.float64), fb.embedding[jb].astype(np.float64)
    d = np.linalg.norm(ea - eb, axis=1) / np.maximum(np.linalg.norm(ea, axis=1), 1e-12)
    return float(np.median(d))


def compare_signatures(fa: Fingerprint, fb: Fingerprint, sa: dict[str, Any], sb: dict[str, Any],
                       alignment: dict[str, Any]) -> dict[str, Any]:
    """Structural differences and value drift between two related models.

    Returns ``{"drift", "permuted", "layers_dropped", "vocab_changed", "reencoded"}``:
    ``permuted`` is None when the probe tensors cannot be compared.
    """
    permuted = None
    oa, ob = sa.get("order"), sb.get("order")
    a, b = (_unpack(oa), _unpack(ob)) if oa and ob else (None, None)
    if a is not None and b is not None and len(a) == len(b) and sa.get("probe") == sb.get("probe"):
        same_sorted = _corr(np.sort(a), np.sort(b))
        same_order = _corr(a, b)
        permuted = bool(same_sorted > 0.9 and same_order < 0.5 * same_sorted)
    unmatched = len(alignment.get("unmatched_a") or []) + len(alignment.get("unmatched_b") or [])
    vocab_changed = fa.vocab_size != fb.vocab_size or (
        fa.vocab_minhash is not None and fb.vocab_minhash is not None
        and not np.array_equal(fa.vocab_minhash, fb.vocab_minhash))
    return {
        "drift": embedding_drift(fa, fb, sa, sb),
        "permuted": permuted,
        "layers_dropped": unmatched,
        "layers_a": fa.n_layers,
        "layers_b": fb.n_layers,
        "vocab_changed": bool(vocab_changed),
        "vocab_a": fa.vocab_size,
        "vocab_b": fb.vocab_size,
    }
