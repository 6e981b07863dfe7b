"""Contamination tests on real models: the acceptance numbers of issue 13, written to bench/results.

- the exchangeability test (Oren et al.) at the authors' budget (50 shards x 250 orders) on the
  shipped 200-item benchmark, through llama.cpp: on SmolLM2-135M and on a SmolLM2 fine-tuned on
  the benchmark in canonical order (:func:`weightprint.testing.contaminate.contaminated_smollm2`);
- Min-K%++ AUROC, benchmark (seen) vs the 200 unseen items, on both;
- calibration under H0: exchangeability p-values of the untouched SmolLM2 on freshly generated
  benchmarks (KS test against uniform);
- wall time of each run (2 threads).

Usage: ``python bench/bench_contamination.py [--which all|original|contaminated|null|eqbench] [--null-runs 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

RESULTS = Path(os.environ.get("WEIGHTPRINT_RESULTS_DIR", Path(__file__).resolve().parent / "results"))


def _write(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update(payload)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    print(json.dumps(payload, indent=2), flush=True)


_T0 = time.perf_counter()


def _log(d: int, t: int, s: str) -> None:
    if "·" not in s and (d == t or d % 5 == 0):
        print(f"  [{time.perf_counter() - _T0:.0f}s] {d}/{t} {s}", file=sys.stderr, flush=True)


def run_model(label: str, path: Path, shards: int, perms: int, threads: int, n_items: int = 200) -> dict:
    from weightprint.behave.backends import open_backend
    from weightprint.evals.contamination import check_contamination
    from weightprint.evals.data import shipped_benchmark

    seen, unseen = shipped_benchmark("seen"), shipped_benchmark("unseen")
    if n_items != 200:
        label = f"{label}_{n_items}_items"
    with open_backend(path, n_threads=threads) as b:
        t0 = time.perf_counter()
        res = check_contamination(b, seen, unseen=unseen, exchangeability=False)
        t_mem = time.perf_counter() - t0
        from weightprint.evals.contamination import exchangeability_test
        t0, c0 = time.perf_counter(), time.process_time()
        ex = exchangeability_test(b, seen[:n_items], n_shards=shards, n_permutations=perms, rng=0, progress=_log)
        t_ex, c_ex = time.perf_counter() - t0, time.process_time() - c0
    out = {
        "model": str(path), "items": n_items, "exchangeability_pvalue": ex.pvalue, "exchangeability_t": ex.statistic,
        "exchangeability_mean_difference_nats": ex.evidence["mean_difference"],
        "shards": ex.evidence["n_shards"], "permutations": perms,
        "distinct_orders_scored": ex.evidence["distinct_orders_scored"], "exchangeability_seconds": round(t_ex, 1),
        "exchangeability_cpu_seconds": round(c_ex, 1),
        "min_k_pp_auroc": res.membership.statistic, "min_k_pp_auroc_pvalue": res.membership.pvalue,
        "min_k_auroc": float(__import__("weightprint.evals.contamination", fromlist=["auroc"]).auroc(
            res.seen_scores.min_k, res.unseen_scores.min_k)),
        "membership_seconds": round(t_mem, 1), "threads": threads,
    }
    _write("contamination", {label: out})
    return out


def run_null(path: Path, runs: int, n_items: int, shards: int, perms: int, threads: int) -> dict:
    from weightprint.behave.backends import open_backend
    from weightprint.evals.benchgen import generate_items
    from weightprint.evals.contamination import exchangeability_test

    pvals = []
    t0 = time.perf_counter()
    with open_backend(path, n_threads=threads) as b:
        for r in range(runs):
            items = generate_items(n_items, seed=50_000 + r)
            pvals.append(exchangeability_test(b, items, n_shards=shards, n_permutations=perms, rng=r).pvalue)
            print(f"  null run {r + 1}/{runs}: p = {pvals[-1]:.3f}", file=sys.stderr, flush=True)
    out = {"runs": runs, "items": n_items, "shards": shards, "permutations": perms, "pvalues": pvals,
           "ks_pvalue": float(stats.kstest(pvals, "uniform").pvalue), "fraction_below_0.05": float(np.mean(np.array(pvals) < 0.05)),
           "seconds": round(time.perf_counter() - t0, 1), "model": str(path)}
    key = "null_calibration" if (n_items, shards, perms) == (20, 10, 20) else f"null_calibration_{n_items}items_{shards}x{perms}"
    _write("contamination", {key: out})
    return out


def run_eqbench(path: Path, threads: int) -> dict:
    from weightprint.behave.backends import open_backend
    from weightprint.evals.eqbench import run_eqbench as run, sample_questions

    t0 = time.perf_counter()
    with open_backend(path, n_threads=threads) as b:
        res = run(b, sample_questions())
    out = {"model": str(path), "score": res.score, "parse_failure_rate": res.parse_failure_rate,
           "score_unparseable_as_zero": res.score_unparseable_as_zero, "n_questions": res.n_questions,
           "seconds": round(time.perf_counter() - t0, 1), "answers": [q.answer for q in res.questions]}
    _write("eqbench_sample", {"smollm2": out})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="all", choices=["all", "original", "contaminated", "null", "eqbench"])
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--permutations", type=int, default=250)
    ap.add_argument("--null-runs", type=int, default=20)
    ap.add_argument("--null-items", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: 2, or 1 on a busy machine)")
    ap.add_argument("--items", type=int, default=200, help="exchangeability on the first N benchmark items")
    a = ap.parse_args()
    if a.threads is None:
        from weightprint.testing.perplexity import default_threads

        a.threads = default_threads()
    from weightprint.testing.models import smollm2_path

    if a.which in ("all", "eqbench"):
        run_eqbench(smollm2_path(), a.threads)
    if a.which in ("all", "original"):
        run_model("original", smollm2_path(), a.shards, a.permutations, a.threads, a.items)
    if a.which in ("all", "contaminated"):
        from weightprint.testing.contaminate import CONTAMINATION_RECIPE, contaminated_smollm2

        out = run_model("contaminated", contaminated_smollm2(), a.shards, a.permutations, a.threads, a.items)
        _write("contamination", {"contaminated_recipe": CONTAMINATION_RECIPE})
    if a.which in ("all", "null"):
        run_null(smollm2_path(), a.null_runs, a.null_items, a.shards, a.permutations, a.threads)


if __name__ == "__main__":
    main()
