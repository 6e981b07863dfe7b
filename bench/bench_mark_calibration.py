"""Calibration with fresh keys: 10,000 never-issued (unseeded) keys traced on SmolLM2-135M leaks.

H0 holds for every such key (it never produced the leak), so the p-values must be uniform or
conservative: at most about alpha * n of them below alpha. The one-sided KS test
(``alternative="greater"``: the empirical CDF above the uniform's) checks for anti-conservative
p-values; the two-sided one also flags conservative ones (the Berry-Esseen term). Leaks: the unmarked Q4_K_M copy and a
registered recipient's marked copy. The keys are scored on ``--layers`` decoder layers (the same
code path as a full trace; a full trace streams ~134 MB per key) with the registry's code key.
Writes ``bench/results/mark_calibration.json``.

Usage: ``python bench/bench_mark_calibration.py [--keys 10000] [--layers 1]``.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=1)
    args = ap.parse_args()

    from _fixtures_mark import smol_issued
    from _results import write_result

    from weightprint.io import open_model
    from weightprint.mark.keys import CopyKey, load_key_file
    from weightprint.mark.trace import CopyTest, correlate_leak

    info = smol_issued()
    code = load_key_file(info["key_file"]).code_key()
    keys = [CopyTest(f"fresh-{i}", f"fresh-{i}", "Q4_K_M", CopyKey.random()) for i in range(args.keys)]
    subset = lambda name: any(f".layers.{i}." in name for i in range(args.layers))  # noqa: E731
    out: dict = {"n_keys": args.keys, "layers": args.layers, "keys": "fresh (secrets.token_bytes)", "leaks": {}}
    for label, leak_path in (("unmarked Q4_K_M", info["plain"]), ("recipient-0's marked copy", info["copies"]["recipient-0"]["output"])):
        t0 = time.perf_counter()
        with open_model(info["source"]) as o, open_model(leak_path) as leak:
            st = correlate_leak(o, leak, keys, code_key=code, tensor_filter=subset)
        ps = np.array([t.pvalue for t in st.tests])
        res = {
            "n_candidates_per_key": st.tests[0].n,
            "ks_pvalue_two_sided": float(stats.kstest(ps, "uniform").pvalue),
            "ks_pvalue_anticonservative": float(stats.kstest(ps, "uniform", alternative="greater").pvalue),
            "deciles": np.histogram(ps, bins=10, range=(0, 1))[0].tolist(),
            "min_p": float(ps.min()),
            "count_p_below": {str(a): int((ps < a).sum()) for a in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9)},
            "expected_below_if_uniform": {str(a): a * args.keys for a in (1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-9)},
            "false_accusations_at_alpha_1e-9_bonferroni": int((ps * args.keys < 1e-9).sum()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        out["leaks"][label] = res
        print(label, json.dumps(res), flush=True)
    out["load_average"] = os.getloadavg()
    out["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_result("mark_calibration", out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
