"""`lineage search` against references stored with a basis sketch -> bench/results/lineage_search_sketch.json.

A reference stored with ``fingerprint --basis-sketch`` keeps 2-bit embedding rows of 1.5 d tokens;
`search` fits an orthogonal map from them to the suspect's embedding and, when the held-out fit
explains something (median corr >= 0.3), tests the layer features in the recovered basis too
(Sidak over the two tests, as `compare` does). This script measures both sides:

- **H0** (the calibration pairs of bench_lineage_calibration.py: independent tiny llamas trained
  150 steps, and pairs at initialisation with exact ties): the search's p-value for B against a
  database holding only A (with its sketch), the share of pairs where the sketch gate passed,
  false positives at the default alpha and KS against uniform;
- **power** on real SmolLM2: a residual rotation (norms folded, head untied) + Q8_0, a residual
  permutation + Q8_0, and both with the within-block symmetries (MLP unit scaling, V/O per-head
  invertible mixing, Q/K rotary-pair scaling) searched in a database of SmolLM2 and Gemma 3
  stored with sketches; search time and stored sizes.

Run: ``python bench/bench_lineage_search_sketch.py [--pairs 100] [--init-pairs 40]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _results import write_result  # noqa: E402

from weightprint.lineage.compare import DEFAULT_ALPHA  # noqa: E402
from weightprint.lineage.db import fingerprint_model, search_fingerprints  # noqa: E402
from weightprint.testing.derive import tiny_llama_pair  # noqa: E402


def _search_row(a, b, tmp: Path, k: int) -> dict:
    db = tmp / f"ref{k}.db"
    fingerprint_model(a, db, label="A", basis_sketch=True)
    t0 = time.perf_counter()
    r = search_fingerprints(b, db, rng=k)
    best = r.ranking[0]
    rec = next((c for c in best.components if c.name == "recovered-basis"), None)
    return {"pair": k, "verdict": r.verdict, "log10_pvalue": best.log10_pvalue,
            "sketch_fit_corr": best.basis.get("fit_corr"), "recovered_ran": best.basis.get("kind") == "orthogonal",
            "recovered_log10_pvalue": None if rec is None else rec.log10_pvalue, "seconds": round(time.perf_counter() - t0, 3)}


def null_pairs(n: int, steps: int, offset: int, tmp: Path) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = tiny_llama_pair(offset + i, steps=steps, n_layers=4)
        rows.append({"steps": steps, **_search_row(a, b, tmp, offset + i)})
        r = rows[-1]
        print(f"H0 steps={steps} {i + 1}/{n}: {r['verdict']} p={10 ** r['log10_pvalue']:.3g} "
              f"fit corr {r['sketch_fit_corr']}", flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    lp = np.array([r["log10_pvalue"] for r in rows], dtype=float)
    p = 10.0 ** lp
    corr = [r["sketch_fit_corr"] for r in rows if r["sketch_fit_corr"] is not None]
    return {
        "n": len(rows),
        "false_positives_at_default_alpha": int(np.count_nonzero(lp < math.log10(DEFAULT_ALPHA))),
        "share_below_0.01": float(np.mean(p <= 0.01)), "share_below_0.05": float(np.mean(p <= 0.05)),
        "min_pvalue": float(p.min()),
        "ks_uniform_two_sided_p": float(stats.kstest(p, "uniform").pvalue),
        "ks_uniform_greater_p": float(stats.kstest(p, "uniform", alternative="greater").pvalue),
        "sketch_gate_passed": int(sum(r["recovered_ran"] for r in rows)),
        "sketch_fit_corr_median": float(np.median(corr)) if corr else None,
        "sketch_fit_corr_max": float(np.max(corr)) if corr else None,
    }


def power(tmp: Path) -> dict:
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.testing.models import gemma3_path, smollm2_path
    from weightprint.testing.symmetry import block_symmetries, residual_transform, transformed

    src = smollm2_path()
    db = tmp / "real.db"
    sizes = {}
    for m in (src, gemma3_path()):
        fr = fingerprint_model(m, db, basis_sketch=True)
        sizes[fr.label] = {"n_bytes": fr.n_bytes, "budget_bytes_with_sketch": fr.budget_bytes}
    suspects = {"rotate+Q8_0": transformed(src, "rotate", seed=3, file_type="Q8_0"),
                "permute+Q8_0": transformed(src, "permute", seed=1, file_type="Q8_0")}
    for kind in ("rotate", "permute"):
        out = tmp / f"block-{kind}.gguf"
        with open_model(src) as m:
            convert(residual_transform(block_symmetries(m, seed=7), kind, seed=11), out, file_type="Q8_0")
        suspects[f"block symmetries+{kind}+Q8_0"] = out
    suspects["Gemma 3 270M"] = gemma3_path()
    rows = {}
    for name, path in suspects.items():
        r = search_fingerprints(path, db)
        best = r.ranking[0]
        rows[name] = {"verdict": r.verdict, "top": best.a, "log10_pvalue": best.log10_pvalue,
                      "basis": best.basis.get("kind"), "sketch_fit_corr": best.basis.get("fit_corr"),
                      "seconds": round(r.seconds, 2)}
        print(name, rows[name], flush=True)
    return {"sizes": sizes, "suspects": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--init-pairs", type=int, default=40)
    ap.add_argument("--no-power", action="store_true")
    ap.add_argument("--power-only", action="store_true", help="only the SmolLM2 rows (-> lineage_search_sketch_power)")
    args = ap.parse_args()
    if args.power_only:
        with tempfile.TemporaryDirectory() as d:
            print(write_result("lineage_search_sketch_power", {"power_smollm2": power(Path(d))}))
        return
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pw = None if args.no_power else power(tmp)
        init = null_pairs(args.init_pairs, 0, 5000, tmp)
        trained = null_pairs(args.pairs, 150, 7000, tmp)
    record = {"default_alpha": DEFAULT_ALPHA, "power_smollm2": pw,
              "h0_trained": {"summary": summarize(trained), "pairs": trained},
              "h0_init_exact_ties": {"summary": summarize(init), "pairs": init},
              "h0_all": summarize(trained + init), "seconds": round(time.perf_counter() - t0, 1)}
    print(write_result("lineage_search_sketch", record))
    print(record["h0_all"])


if __name__ == "__main__":
    main()
