"""Distillation from A into an independently initialised B: `lineage` should find no evidence
(B shares A's behaviour, not its weights) -> bench/results/lineage_distillation.json.

For each pair: a teacher tiny llama A (4 layers, 150 AdamW steps on the shipped text), and two
students initialised with the same seed, independently of A: one trained on the text, one
distilled from A (the KL divergence from A's next-token distribution, 150 steps). Measured:
that distillation worked (the distilled student's KL from the teacher on held-out text, against
the text-trained student's), and `lineage compare A B` on the distilled student (verdict,
p-value; the p-values over the pairs against uniform).

Run: ``python bench/bench_lineage_distillation.py [--pairs 20]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _results import write_result  # noqa: E402

from weightprint.lineage import compare_models  # noqa: E402
from weightprint.testing.derive import derived  # noqa: E402
from weightprint.testing.perplexity import heldout_kl  # noqa: E402

ARCH = {"n_layers": 4}
STEPS = 150
OFFSET = 8000


def main() -> None:
    from scipy import stats

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    for i in range(args.pairs):
        seed = 2 * (OFFSET + i)
        teacher = derived("tiny_llama", None, seed=seed, steps=STEPS, **ARCH)
        on_text = derived("tiny_llama", None, seed=seed + 1, steps=STEPS, **ARCH)
        distilled = derived("tiny_llama", None, seed=seed + 1, steps=STEPS, teacher=str(teacher), **ARCH)
        r = compare_models(teacher, distilled, rng=i)
        rows.append({"pair": i, "verdict": r.verdict, "log10_pvalue": r.log10_pvalue,
                     "kl_teacher_distilled": heldout_kl(teacher, distilled),
                     "kl_teacher_text_trained": heldout_kl(teacher, on_text)})
        print(f"pair {i}: {r.verdict} ({r.combined.pvalue_text()}), KL from teacher: distilled "
              f"{rows[-1]['kl_teacher_distilled']:.3f} vs text-trained {rows[-1]['kl_teacher_text_trained']:.3f}", flush=True)
    p = np.array([10.0 ** r["log10_pvalue"] for r in rows])
    out = {
        "architecture": {**ARCH, "steps": STEPS}, "pairs": len(rows), "rows": rows,
        "derived": sum(r["verdict"] == "derived" for r in rows),
        "ks_uniform_pvalue": float(stats.kstest(p, "uniform").pvalue),
        "median_kl_distilled": float(np.median([r["kl_teacher_distilled"] for r in rows])),
        "median_kl_text_trained": float(np.median([r["kl_teacher_text_trained"] for r in rows])),
        "distillation_closer_in": sum(r["kl_teacher_distilled"] < r["kl_teacher_text_trained"] for r in rows),
        "seconds": round(time.perf_counter() - t0, 1), "load_average_at_end": os.getloadavg(),
    }
    path = write_result("lineage_distillation", out)
    print(f"{out['derived']}/{len(rows)} derived; KS p = {out['ks_uniform_pvalue']:.2f}; median KL from the teacher: "
          f"distilled {out['median_kl_distilled']:.3f}, text-trained {out['median_kl_text_trained']:.3f} "
          f"(distilled closer in {out['distillation_closer_in']}/{len(rows)}); wrote {path}")


if __name__ == "__main__":
    main()
