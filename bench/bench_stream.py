"""Streaming benchmark: peak RSS of `weightprint convert` must not grow with model size.

Writes two synthetic llama-architecture F16 GGUF files (about 2.2 GB and 4.3 GB; hidden size
2048, so every k-quant branch is used), converts each to Q4_K_M in a fresh subprocess and
records the subprocess's peak RSS (ru_maxrss). Target: < 600 MB for the >= 2 GB models, and the
same peak for both sizes. Writes bench/results/stream.json.

    python bench/bench_stream.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def write_synthetic(path: Path, n_layers: int, hidden: int = 2048, ffn: int = 5632, vocab: int = 1024) -> int:
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
    rng = np.random.default_rng(0)

    def data(spec: TensorSpec) -> np.ndarray:
        if spec.qtype == QType.F32:
            return np.ones(spec.shape, np.float32).view(np.uint8).reshape(1, -1)
        x = rng.standard_normal(spec.shape, dtype=np.float32) * 0.02
        return x.astype(np.float16).view(np.uint8)

    write_gguf(path, metadata=md, metadata_types=types, tensors=specs, data=data)
    return path.stat().st_size


# The child's own peak (VmHWM, kB). Not getrusage's ru_maxrss: Linux carries the parent's
# high-water mark into a forked and exec'd child's ru_maxrss.
_PRINT_HWM = "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def convert_peak_rss(src: Path, out: Path) -> tuple[float, float]:
    """Run `weightprint convert` in a child process; return (peak RSS in MB, seconds)."""
    code = (
        "from weightprint.convert import convert;"
        f"convert({str(src)!r},{str(out)!r},to='gguf',file_type='Q4_K_M');" + _PRINT_HWM
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt = time.perf_counter() - t0
    return int(proc.stdout.strip().splitlines()[-1]) / 1024, dt


def baseline_rss() -> float:
    code = "import weightprint.convert, weightprint.quant, weightprint.io;" + _PRINT_HWM
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="keep the synthetic files")
    ap.add_argument("--layers", type=int, nargs=2, default=[21, 42], help="layer counts of the two models")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("WEIGHTPRINT_BENCH_TMP")) as d:
        for n_layers in args.layers:
            src = Path(d) / f"synthetic-{n_layers}L-f16.gguf"
            size = write_synthetic(src, n_layers)
            rss, secs = convert_peak_rss(src, Path(d) / "out.gguf")
            rows.append({"layers": n_layers, "source_bytes": size, "peak_rss_mb": round(rss, 1), "seconds": round(secs, 2)})
            print(f"{n_layers} layers, {size / 1e9:.2f} GB F16 -> Q4_K_M: peak RSS {rss:.0f} MB, {secs:.1f} s", flush=True)
            os.unlink(Path(d) / "out.gguf")
            if not args.keep:
                os.unlink(src)
    base = baseline_rss()
    big = max(rows, key=lambda r: r["source_bytes"])
    small = min(rows, key=lambda r: r["source_bytes"])
    result = {
        "benchmark": "streaming convert F16 -> Q4_K_M",
        "import_baseline_rss_mb": round(base, 1),
        "runs": rows,
        "target_peak_rss_mb": 600,
        "meets_target": big["peak_rss_mb"] < 600,
        "rss_growth_ratio_big_over_small": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
    }
    print(f"import baseline {base:.0f} MB; RSS ratio big/small = {result['rss_growth_ratio_big_over_small']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "stream.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
