"""Test data for the quantization kernels (imported by tests/test_quant*.py; no conftest).

- ``synthetic_cases()``: named float32 tensors whose rows are multiples of 256 (normal, all-zero
  blocks, huge outliers, tiny values with subnormal scales, constant, negative-only, ...).
- ``real_tensors(path, picks)``: raw bytes of a few tensors of a real GGUF, read once with gguf-py's
  ``GGUFReader`` (slow on big vocabularies) and cached on disk under ``cache_dir()/quant-fixtures``,
  keyed by a recipe hash.
- ``compare_blocks``: bit-for-bit comparison that reports the bad-block count and the worst block,
  like gguf-py's ``tests/test_quants.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from weightprint.constants import QType

RECIPE_VERSION = 1

SMOLLM2_PICKS = {
    "blk.0.attn_q.weight": None,
    "blk.0.ffn_down.weight": None,
    "blk.3.ffn_gate.weight": 256,
    "token_embd.weight": 256,  # Q8_0; first 256 rows
    "blk.0.attn_norm.weight": None,  # F32
}

GEMMA_TYPES = ("Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32")


def synthetic_cases(seed: int = 20241127) -> dict[str, np.ndarray]:
    """Named float32 test tensors, each of shape (rows, 512) or (rows, 1024)."""
    rng = np.random.default_rng(seed)
    cases: dict[str, np.ndarray] = {}
    cases["normal"] = rng.standard_normal((32, 1024)).astype(np.float32)
    zeros = rng.standard_normal((8, 512)).astype(np.float32)
    zeros[:, 256:288] = 0.0  # one all-zero 32-block in every row
    zeros[2] = 0.0  # a whole zero super-block row
    cases["zero_blocks"] = zeros
    outl = (rng.standard_normal((8, 512)) * 0.02).astype(np.float32)
    outl[np.arange(8), rng.integers(0, 512, 8)] = rng.choice([-1, 1], 8) * 1e4
    cases["outliers"] = outl
    cases["tiny"] = (rng.standard_normal((8, 512)) * 1e-6).astype(np.float32)
    cases["subnormal_scales"] = (rng.standard_normal((8, 512)) * 1e-9).astype(np.float32)
    cases["subnormal_values"] = (rng.standard_normal((4, 512)) * 1e-40).astype(np.float32)
    cases["constant"] = np.full((4, 512), 0.3125, dtype=np.float32)
    cases["constant_negative"] = np.full((4, 512), -2.75, dtype=np.float32)
    cases["negative_only"] = -np.abs(rng.standard_normal((8, 512))).astype(np.float32)
    cases["positive_only"] = np.abs(rng.standard_normal((8, 512))).astype(np.float32)
    cases["large"] = (rng.standard_normal((4, 512)) * 3e4).astype(np.float32)
    cases["heavy_tailed"] = rng.standard_t(2, (8, 1024)).astype(np.float32)
    cases["uniform_grid"] = (rng.integers(-8, 8, (8, 512)) * 0.125).astype(np.float32)
    return cases


def compare_blocks(ours: np.ndarray, ref: np.ndarray, type_size: int, label: str) -> str | None:
    """``None`` when the bytes are equal, else a report: bad blocks, differing bits, worst block."""
    a = np.ascontiguousarray(ours).reshape(-1, type_size)
    b = np.ascontiguousarray(ref).reshape(-1, type_size)
    if a.shape != b.shape:
        return f"{label}: shape {a.shape} != reference {b.shape}"
    diff_bits = np.unpackbits(a ^ b, axis=1).sum(axis=1)
    bad = np.flatnonzero(diff_bits)
    if bad.size == 0:
        return None
    worst = int(bad[np.argmax(diff_bits[bad])])
    cols = np.flatnonzero(a[worst] != b[worst])
    return (
        f"{label}: {bad.size} of {a.shape[0]} blocks differ ({int(diff_bits.sum())} bits);"
        f" worst block {worst} ({int(diff_bits[worst])} bits) at bytes {cols[:16].tolist()}:"
        f" ours {a[worst][cols[:16]].tolist()} reference {b[worst][cols[:16]].tolist()}"
    )


def _cache_root() -> Path:
    from weightprint.testing.models import cache_dir

    root = cache_dir() / "quant-fixtures"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _recipe_key(path: Path, what: object) -> str:
    st = path.stat()
    blob = json.dumps([RECIPE_VERSION, path.name, st.st_size, what], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def real_tensors(path: Path, picks: dict[str, int | None] | None = None, *, types: tuple[str, ...] = ()) -> dict:
    """Raw tensors ``{name: (qtype, uint8[rows, row_bytes], shape)}`` of a GGUF, cached on disk.

    ``picks`` maps tensor names to a row limit (None = all rows). With ``types``, the first
    tensor (fewest-rows order of the file) of each listed type is added, limited to 512 rows.
    """
    picks = dict(picks or {})
    key = _recipe_key(path, [sorted(picks.items()), list(types)])
    cache = _cache_root() / f"{path.stem}-{key}.npz"
    if not cache.exists():
        from gguf import GGUFReader

        reader = GGUFReader(path)
        chosen: dict[str, int | None] = dict(picks)
        seen: set[str] = set()
        for t in reader.tensors:
            tname = QType(int(t.tensor_type)).name
            if tname in types and tname not in seen and t.name not in chosen:
                chosen[t.name] = 512
                seen.add(tname)
        arrays = {}
        meta = {}
        for t in reader.tensors:
            if t.name not in chosen:
                continue
            data = np.asarray(t.data)
            qt = QType(int(t.tensor_type))
            raw = data.view(np.uint8)
            rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
            raw = raw.reshape(rows, -1)
            limit = chosen[t.name]
            if limit is not None:
                raw = raw[:limit]
            arrays[t.name] = np.ascontiguousarray(raw)
            meta[t.name] = [int(qt), [int(s) for s in t.shape]]
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, cache)
    with np.load(cache) as z:
        meta = json.loads(bytes(z["__meta__"]).decode())
        return {name: (QType(qt), z[name], tuple(shape)) for name, (qt, shape) in meta.items()}
