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


from weightprint.testing.synthetic import write_synthetic  # noqa: F401  (bench_scale imports it from here)

RESULTS = Path(__file__).parent / "results"


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
