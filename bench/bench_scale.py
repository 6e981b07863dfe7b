"""7B-scale: a synthetic llama model (Llama-2-7B shapes, random weights) through the whole-model
commands, against llama.cpp, with each step's peak memory.

Run: ``python bench/bench_scale.py [--layers 32] [--threads 2] [--keep]``. Writes
``bench/results/scale.json``.

The model has 7B's tensor shapes (hidden 4096, ffn 11008, vocab 32000, 32 layers: 6.7e9
weights, ~13.5 GB as F16). With ``--layers N`` it keeps those shapes and N of the 32 layers, so
the largest tensor (what a streaming step may hold) is the 7B's; the run refuses to start when
the disk lacks room for the source plus the largest output. Steps, each in a fresh subprocess
(peak RSS: the child's ``VmHWM``; wall time includes the interpreter's start):

1. ``convert f16.gguf q4km.gguf --type Q4_K_M`` vs ``llama_model_quantize`` (same thread count),
   and whether the tensors are byte-identical;
2. ``convert f16.gguf out --to hf``;
3. ``lineage compare f16.gguf q4km.gguf`` and ``fingerprint f16.gguf --db`` (SQLite).

The machine is shared: the load average is recorded; compare ratios from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import write_synthetic  # noqa: E402  (the same synthetic llama writer)

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN, FFN, VOCAB, FULL_LAYERS = 4096, 11008, 32000, 32


def _f16_bytes(layers: int) -> int:
    per_layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN
    return 2 * (layers * per_layer + 2 * VOCAB * HIDDEN)


def _step(label: str, code: str, threads: int) -> dict:
    """Run ``code`` in a fresh Python; return wall seconds and peak RSS (MB) of that process."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's high-water mark into a forked
    # and exec'd child's ru_maxrss (the bench's own ~1 GB from writing the model), VmHWM is the
    # child's own address space
    wrapped = code + (
        "\nprint('PEAK_RSS_KB', next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    env = dict(os.environ, WEIGHTPRINT_THREADS=str(threads))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = next(int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB"))
    out = {"seconds": round(wall, 2), "peak_rss_mb": round(rss / 1024, 1)}
    print(f"  {label}: {out['seconds']:.1f} s, peak RSS {out['peak_rss_mb']:.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=FULL_LAYERS, help="layers of 7B shape (32: the full 7B)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the files (default: deleted at the end)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-lineage", action="store_true")
    args = ap.parse_args()
    tmp_root = os.environ.get("WEIGHTPRINT_BENCH_TMP") or tempfile.gettempdir()
    need = _f16_bytes(args.layers) * (2 if args.skip_hf else 2.05) + 2e9
    free = shutil.disk_usage(tmp_root).free
    if free < need:
        sys.exit(f"{tmp_root}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed for {args.layers} layers;"
                 " use --layers or WEIGHTPRINT_BENCH_TMP")
    result: dict = {
        "benchmark": "7B-shaped synthetic llama: quantize, to hf, lineage, fingerprint",
        "shape": {"hidden": HIDDEN, "ffn": FFN, "vocab": VOCAB, "layers": args.layers, "of_full_layers": FULL_LAYERS},
        "threads": args.threads,
        "load_before": os.getloadavg(),
        "disk_free_gb_before": round(free / 1e9, 1),
    }
    d = Path(tempfile.mkdtemp(prefix="wp-scale-", dir=tmp_root))
    try:
        src, q, ref, hf = d / "f16.gguf", d / "q4km.gguf", d / "ref-q4km.gguf", d / "hf"
        t0 = time.perf_counter()
        size = write_synthetic(src, args.layers, hidden=HIDDEN, ffn=FFN, vocab=VOCAB)
        result["source_bytes"] = size
        result["write_source_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{args.layers} layers of 7B shape: {size / 1e9:.2f} GB F16 written in {result['write_source_seconds']} s",
              flush=True)
        ours = _step("weightprint convert -> Q4_K_M",
                     f"from weightprint.convert import convert; convert({str(src)!r}, {str(q)!r}, file_type='Q4_K_M')",
                     args.threads)
        theirs = _step("llama.cpp llama_model_quantize -> Q4_K_M",
                       "from weightprint.testing.llama_ref import llama_quantize; from weightprint.constants import FileType;"
                       f"llama_quantize({str(src)!r}, {str(ref)!r}, FileType.Q4_K_M, nthread={args.threads})",
                       args.threads)
        same = subprocess.run([sys.executable, "-c", (
            "import numpy as np; from weightprint.io import open_model\n"
            f"a = open_model({str(q)!r}); b = open_model({str(ref)!r})\n"
            "bad = [n for n in a.tensor_names() if a.info(n).qtype != b.info(n).qtype or not np.array_equal("
            "np.asarray(a.raw(n)).view(np.uint8), np.asarray(b.raw(n)).view(np.uint8))]\n"
            "print(len(bad), bad[:5])")], capture_output=True, text=True)
        result["quantize"] = {"weightprint": ours, "llama_cpp": theirs,
                              "ratio_ours_over_llama_cpp": round(ours["seconds"] / theirs["seconds"], 3),
                              "differing_tensors": same.stdout.strip() or same.stderr[-500:]}
        print(f"  ratio {result['quantize']['ratio_ours_over_llama_cpp']:.2f}x llama.cpp; differing tensors:"
              f" {result['quantize']['differing_tensors']}", flush=True)
        ref.unlink()
        if not args.skip_hf:
            result["to_hf"] = _step("weightprint convert --to hf",
                                    f"from weightprint.convert import convert; convert({str(src)!r}, {str(hf)!r}, to='hf')",
                                    args.threads)
            shutil.rmtree(hf)
        if not args.skip_lineage:
            result["lineage_compare"] = _step(
                "lineage compare f16 q4km",
                f"from weightprint.lineage.compare import compare_models; r = compare_models({str(src)!r}, {str(q)!r});"
                "print(r.verdict)", args.threads)
            result["fingerprint"] = _step(
                "fingerprint f16 --db sqlite",
                f"from weightprint.lineage.db import fingerprint_model; fingerprint_model({str(src)!r}, {str(d / 'fp.db')!r})",
                args.threads)
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    steps = [v for k, v in result.items() if isinstance(v, dict) and "peak_rss_mb" in v]
    steps += [result["quantize"]["weightprint"]] if "quantize" in result else []
    result["max_peak_rss_mb_weightprint"] = max(s["peak_rss_mb"] for s in steps)
    print(f"load average before {result['load_before']}, after {result['load_after']};"
          f" largest weightprint peak RSS {result['max_peak_rss_mb_weightprint']:.0f} MB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
