"""A synthetic llama-architecture GGUF of any size, written one tensor at a time.

For the streaming and scale benchmarks (``bench/bench_stream.py``, ``bench/bench_scale.py``) and
the tests that hold conversions to a memory bound: random F16 weights (F32 norms), a
placeholder byte-level vocabulary ``t0 .. t{vocab-1}`` without merges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_synthetic(path: Path, n_layers: int, hidden: int = 2048, ffn: int = 5632, vocab: int = 1024, seed: int = 0) -> int:
    """A llama-arch F16 GGUF with random weights, written tensor by tensor. Returns its size."""
    from gguf import GGUFValueType

    from weightprint.constants import QType
    from weightprint.io.gguf_file import TensorSpec, write_gguf

    arch = "llama"
    md = {
        "general.architecture": arch,
        "general.name": f"synthetic-{n_layers}L",
        "general.file_type": 1,
        f"{arch}.block_count": n_layers,
        f"{arch}.context_length": 2048,
        f"{arch}.embedding_length": hidden,
        f"{arch}.feed_forward_length": ffn,
        f"{arch}.attention.head_count": hidden // 128,
        f"{arch}.attention.head_count_kv": hidden // 128,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(vocab)],
        "tokenizer.ggml.token_type": [1] * vocab,
        "tokenizer.ggml.merges": [],
    }
    types = {
        "general.architecture": GGUFValueType.STRING,
        "general.name": GGUFValueType.STRING,
        "general.file_type": GGUFValueType.UINT32,
        f"{arch}.block_count": GGUFValueType.UINT32,
        f"{arch}.context_length": GGUFValueType.UINT32,
        f"{arch}.embedding_length": GGUFValueType.UINT32,
        f"{arch}.feed_forward_length": GGUFValueType.UINT32,
        f"{arch}.attention.head_count": GGUFValueType.UINT32,
        f"{arch}.attention.head_count_kv": GGUFValueType.UINT32,
        f"{arch}.attention.layer_norm_rms_epsilon": GGUFValueType.FLOAT32,
        f"{arch}.rope.freq_base": GGUFValueType.FLOAT32,
        "tokenizer.ggml.model": GGUFValueType.STRING,
        "tokenizer.ggml.tokens": GGUFValueType.ARRAY,
        "tokenizer.ggml.token_type": GGUFValueType.ARRAY,
        "tokenizer.ggml.merges": GGUFValueType.ARRAY,
    }
    specs = [TensorSpec("token_embd.weight", (vocab, hidden), QType.F16)]
    for i in range(n_layers):
        specs += [
            TensorSpec(f"blk.{i}.attn_norm.weight", (hidden,), QType.F32),
            TensorSpec(f"blk.{i}.attn_q.weight", (hidden, hidden), QType.F16),
            TensorSpec(f"blk.{i}.attn_k.weight", (hidden, hidden), QType.F16),
            TensorSpec(f"blk.{i}.attn_v.weight", (hidden, hidden), QType.F16),
            TensorSpec(f"blk.{i}.attn_output.weight", (hidden, hidden), QType.F16),
            TensorSpec(f"blk.{i}.ffn_norm.weight", (hidden,), QType.F32),
            TensorSpec(f"blk.{i}.ffn_gate.weight", (ffn, hidden), QType.F16),
            TensorSpec(f"blk.{i}.ffn_up.weight", (ffn, hidden), QType.F16),
            TensorSpec(f"blk.{i}.ffn_down.weight", (hidden, ffn), QType.F16),
        ]
    specs += [TensorSpec("output_norm.weight", (hidden,), QType.F32), TensorSpec("output.weight", (vocab, hidden), QType.F16)]
    rng = np.random.default_rng(seed)

    def data(spec: TensorSpec) -> np.ndarray:
        if spec.qtype == QType.F32:
            return np.ones(spec.shape, np.float32).view(np.uint8).reshape(1, -1)
        x = rng.standard_normal(spec.shape, dtype=np.float32) * 0.02
        return x.astype(np.float16).view(np.uint8)

    write_gguf(path, metadata=md, metadata_types=types, tensors=specs, data=data)
    return path.stat().st_size
