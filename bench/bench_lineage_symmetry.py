"""`lineage` on SmolLM2 under the thief's free changes of residual basis, and its power -> bench/results/lineage_symmetry.json.

Measured, with the whole pipeline (fingerprints, basis recovery, identity-basis and
recovered-basis tests) and its wall time per pair:

- SmolLM2 vs each symmetry derivative of issue 9 (sign flip, residual permutation, rotation with
  folded norms and untied head), each on top of a hidden-unit/head permutation and requantized
  (tests/_fixtures_lineage.py ``SYMMETRY_DERIVATIVES``);
- SmolLM2 vs copies with Gaussian noise of increasing relative size (``derived("noise")``:
  every tensor plus ``sigma_rel`` times its own standard deviation; relative L2 drift ~ sigma_rel),
  which is what the "no evidence" reason's power statement quotes;
- SmolLM2 vs a copy trained 1,000 more steps (every weight, AdamW, lr 1e-4 on the shipped text);
- SmolLM2 vs Gemma 3 (different widths: not comparable, never derived).

Run: ``OPENBLAS_NUM_THREADS=2 python bench/bench_lineage_symmetry.py [--noise 0.05 0.1 ...]``. The
load average at start and end is recorded: on a shared 2-core machine wall times vary 2-3x.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _results import write_result  # noqa: E402

from weightprint.lineage import compare_models  # noqa: E402
from weightprint.testing.models import gemma3_path, smollm2_path  # noqa: E402


def timed(a, b) -> tuple:
    """``compare_models(a, b)`` and the process CPU seconds it used (all threads): on a shared,
    oversubscribed machine the CPU time says what an idle 2-core machine's wall time would be."""
    c0 = time.process_time()
    r = compare_models(a, b)
    return r, round(time.process_time() - c0, 2)


def row(r, **extra) -> dict:
    return {
        **extra,
        "verdict": r.verdict,
        "log10_pvalue": r.log10_pvalue,
        "pvalue_text": r.combined.pvalue_text() if r.combined is not None else None,
        "method": r.combined.method if r.combined is not None else None,
        "components": {c.name: round(c.log10_pvalue, 2) for c in r.components},
        "basis": r.basis,
        "seconds": round(r.seconds, 2),
        "reason": r.reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.4])
    ap.add_argument("--name", default="lineage_symmetry")
    ap.add_argument("--heavy-steps", type=int, default=1000, help="steps of the heavy continued training")
    ap.add_argument("--heavy-lr", type=float, default=3e-4,
                    help="its learning rate (1e-4 moved the weights by 2.9%% in 1,000 steps; 3e-4 is past 5%%)")
    ap.add_argument("--heavy-only", action="store_true", help="only the heavy continued training")
    args = ap.parse_args()
    from _fixtures_lineage import smollm2_symmetry_derivatives

    from weightprint.testing.derive import derived, relative_drift

    smol = smollm2_path()
    out: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                             "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
                 "load_average_at_start": os.getloadavg()}
    compare_models(smol, smol)  # warm-up (numba kernels, page cache)
    out["symmetries"] = []
    for name, path in ({} if args.heavy_only else smollm2_symmetry_derivatives()).items():
        r, cpu = timed(smol, path)
        out["symmetries"].append(row(r, derivative=name, cpu_seconds=cpu))
        print(name, r.verdict, r.combined.pvalue_text(), r.basis.get("kind"), f"{r.seconds:.1f} s", flush=True)
        write_result(args.name, out)
    out["noise"] = []
    for sigma in ([] if args.heavy_only else args.noise):
        b = derived("noise", smol, sigma_rel=sigma, seed=0)
        r, cpu = timed(smol, b)
        out["noise"].append(row(r, sigma_rel=sigma, relative_drift=relative_drift(smol, b), cpu_seconds=cpu))
        print("noise", sigma, r.verdict, r.combined.pvalue_text(), f"{r.seconds:.1f} s", flush=True)
        write_result(args.name, out)
    # heavy continued training: every weight trained 1,000 AdamW steps on CPU (cached once per
    # machine: ~13 min on 2 idle cores)
    t0 = time.perf_counter()
    tuned = derived("finetune", smol, steps=args.heavy_steps, lr=args.heavy_lr, seed=0)
    built = round(time.perf_counter() - t0, 1)
    r, cpu = timed(smol, tuned)
    out["heavy_finetune"] = row(r, steps=args.heavy_steps, lr=args.heavy_lr, relative_drift=relative_drift(smol, tuned),
                                cpu_seconds=cpu, build_seconds_this_run=built)
    print("fine-tune", args.heavy_steps, "steps", r.verdict, r.combined.pvalue_text(),
          f"drift {out['heavy_finetune']['relative_drift']:.3f}", f"{r.seconds:.1f} s", flush=True)
    write_result(args.name, out)
    t0 = time.perf_counter()
    r = compare_models(smol, gemma3_path())
    out["smollm2_vs_gemma3"] = row(r)
    out["smollm2_vs_gemma3"]["seconds"] = round(time.perf_counter() - t0, 2)
    out["load_average_at_end"] = os.getloadavg()
    path = write_result(args.name, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
