"""Benchmark weightprint.quant against gguf-py (dequantize) and llama.cpp's ggml (quantize).

Run: ``python bench/bench_quant.py [--rows 2048 --cols 2048 --repeats 7]``. Prints one line per
measurement and writes ``bench/results/quant.json``. Targets: dequantize >= 10x gguf-py's numpy
``gguf.quants.dequantize``; quantize within 2x of single-threaded ``ggml_quantize_chunk``.

Our side runs on ``--threads`` threads (default 1: kernel against kernel; whole-model
commands against llama.cpp at 1 and 2 threads are bench_e2e.py's). Times are the minimum over repeats (the machine is shared; the load average is recorded).
Dequantize is timed twice: allocating its result (as gguf-py does; after gguf-py has run, that
allocation page-faults, which can cost more than the kernel) and writing into a reused ``out=``
buffer (how a streaming caller uses it).
Ours and the reference run alternately, so both see the same load. The JIT is warmed up before timing (numba compile time is not part of the throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

DEQUANT_TYPES = ("Q4_K", "Q6_K", "Q8_0", "Q4_1")
QUANT_TYPES = ("Q4_K", "Q8_0")


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _best_pair(fn_a, fn_b, repeats: int) -> tuple[float, float]:
    """Minimum times of two functions, measured alternately so both see the same machine load."""
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return min(ta), min(tb)


def run(rows: int, cols: int, repeats: int, quant_rows: int) -> dict:
    import gguf.quants

    from weightprint.constants import QType
    from weightprint.quant import dequantize, quantize
    from weightprint.testing import ggml_ref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    n = x.size
    out: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "loadavg_1m": os.getloadavg()[0],
        },
        "shape": [rows, cols],
        "dequantize": {},
        "quantize": {},
    }
    for name in DEQUANT_TYPES:
        qt = QType[name]
        q = quantize(x, qt)
        dequantize(q, qt)  # JIT warm-up
        ours, ref = _best_pair(lambda: dequantize(q, qt), lambda: gguf.quants.dequantize(q, qt), repeats)
        buf = np.empty(n, dtype=np.float32)
        ours_buf, _ = _best_pair(lambda: dequantize(q, qt, out=buf), lambda: gguf.quants.dequantize(q, qt), repeats)
        rec = {
            "ours_mweights_per_s": n / ours / 1e6,
            "ours_out_buffer_mweights_per_s": n / ours_buf / 1e6,
            "gguf_py_mweights_per_s": n / ref / 1e6,
            "speedup": ref / ours,
            "speedup_out_buffer": ref / ours_buf,
            "target_speedup": 10.0,
        }
        out["dequantize"][name] = rec
        print(
            f"dequantize {name}: ours {rec['ours_mweights_per_s']:8.1f} M/s (reused out= buffer"
            f" {rec['ours_out_buffer_mweights_per_s']:8.1f} M/s)  gguf-py {rec['gguf_py_mweights_per_s']:7.1f} M/s"
            f"  speedup {rec['speedup']:5.1f}x / {rec['speedup_out_buffer']:5.1f}x (target >= 10x)"
        )
    xq = x[:quant_rows]
    nq = xq.size
    have_ref = ggml_ref.available()
    for name in QUANT_TYPES:
        qt = QType[name]
        quantize(xq[:1], qt)  # JIT warm-up
        rec: dict = {"rows": quant_rows}
        if have_ref:
            ours, ref = _best_pair(lambda: quantize(xq, qt), lambda: ggml_ref.quantize(xq, qt), repeats)
            rec.update(
                {
                    "ours_mweights_per_s": nq / ours / 1e6,
                    "ggml_mweights_per_s": nq / ref / 1e6,
                    "time_ratio_ours_over_ggml": ours / ref,
                    "target_ratio": 2.0,
                    "bit_exact": bool(np.array_equal(quantize(xq, qt), ggml_ref.quantize(xq, qt))),
                }
            )
            print(
                f"quantize   {name}: ours {rec['ours_mweights_per_s']:8.1f} M/s  ggml"
                f" {rec['ggml_mweights_per_s']:7.1f} M/s  time ratio {rec['time_ratio_ours_over_ggml']:4.2f}"
                f" (target <= 2)  bit-exact {rec['bit_exact']}"
            )
        else:
            rec["ours_mweights_per_s"] = nq / _best(lambda: quantize(xq, qt), repeats) / 1e6
            rec["ggml"] = f"unavailable: {ggml_ref.unavailable_reason()}"
            print(f"quantize   {name}: ours {rec['ours_mweights_per_s']:8.1f} M/s  (llama.cpp unavailable)")
        out["quantize"][name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--cols", type=int, default=2048)
    p.add_argument("--quant-rows", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1,
                   help="weightprint threads per tensor (1: kernel against kernel, as gguf-py and ggml_quantize_chunk run)")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "quant.json")
    args = p.parse_args(argv)
    from weightprint.quant import set_num_threads

    set_num_threads(args.threads)
    result = run(args.rows, args.cols, args.repeats, args.quant_rows)
    result["machine"]["weightprint_threads"] = args.threads
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
