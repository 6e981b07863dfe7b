"""Fixtures for the mark tests: a tiny llama GGUF, registries, and cached real-model copies.

Imported by tests/test_mark*.py (no conftest edits). Real-model artefacts are cached under
``cache_dir()/mark/<recipe hash>/`` and built once per machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

TINY_DIM = 256
TINY_HEADS = 4
TINY_KV = 2
TINY_FFN = 512
TINY_LAYERS = 2
TINY_VOCAB = 512


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF name -> float32 values (stored layout) of a tiny llama model."""
    rng = np.random.default_rng(seed)
    d, hd = TINY_DIM, TINY_DIM // TINY_HEADS

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"token_embd.weight": w(TINY_VOCAB, d)}
    for i in range(TINY_LAYERS):
        t[f"blk.{i}.attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[f"blk.{i}.attn_q.weight"] = w(d, d)
        t[f"blk.{i}.attn_k.weight"] = w(TINY_KV * hd, d)
        t[f"blk.{i}.attn_v.weight"] = w(TINY_KV * hd, d)
        t[f"blk.{i}.attn_output.weight"] = w(d, d)
        t[f"blk.{i}.ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[f"blk.{i}.ffn_gate.weight"] = w(TINY_FFN, d)
        t[f"blk.{i}.ffn_up.weight"] = w(TINY_FFN, d)
        t[f"blk.{i}.ffn_down.weight"] = w(d, TINY_FFN)
    t["output_norm.weight"] = np.ones(d, np.float32)
    return t


def write_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """A tiny llama GGUF (F16 matrices, F32 norms) that `open_model` and `convert` accept."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny mark test model {seed}")
    writer.add_uint32("llama.block_count", TINY_LAYERS)
    writer.add_uint32("llama.context_length", 256)
    writer.add_uint32("llama.embedding_length", TINY_DIM)
    writer.add_uint32("llama.feed_forward_length", TINY_FFN)
    writer.add_uint32("llama.attention.head_count", TINY_HEADS)
    writer.add_uint32("llama.attention.head_count_kv", TINY_KV)
    writer.add_uint32("llama.rope.dimension_count", TINY_DIM // TINY_HEADS)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_uint32("llama.vocab_size", TINY_VOCAB)
    writer.add_uint32("general.file_type", 1)
    tokens = [f"t{i}" for i in range(TINY_VOCAB)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * TINY_VOCAB)
    writer.add_token_merges(["t 1"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, values in tiny_tensors(seed).items():
        if values.ndim == 1:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, values.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def recipe_dir(recipe: dict[str, Any]) -> Path:
    """``cache_dir()/mark/<sha of recipe>`` (created)."""
    from weightprint.testing.models import cache_dir

    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    d = cache_dir() / "mark" / h
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_result(name: str, payload: dict) -> Path:
    """Record measured numbers in ``bench/results/<name>.json`` (atomically)."""
    root = Path(__file__).resolve().parents[1] / "bench" / "results"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{name}.json"
    tmp = target.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, target)
    return target
