"""Collusion on SmolLM2-135M: k = 2, 4, 8 of the 8 issued Q4_K_M copies combined by four strategies.

Each colluded leak is a lazy view (tests/_fixtures_mark.py ``collusion_model``): agree-keep/midpoint,
average, majority vote, random pick, weight by weight; optionally requantized to Q4_K_M by
weightprint (``--requantize-ks``). It is traced against the 8 registered copies plus ``--innocents``
fresh never-issued keys (the innocents when all 8 collude), with the registry's code key; the
Bonferroni correction counts every key tested. Writes ``bench/results/mark_collusion.json``.

Usage: ``python bench/bench_mark_collusion.py [--ks 2 4 8] [--innocents 100] [--requantize-ks 8]``.
Results are written after every run (a long run can be stopped and still leave its numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def requantized_view(model, file_type: str):
    """``model`` with every tensor quantized to the type ``file_type``'s mix gives it, and back."""
    from weightprint.constants import parse_file_type
    from weightprint.convert import plan_tensor_types
    from weightprint.quant import dequantize, quantize, supports_quantize
    from weightprint.testing.symmetry import ModelView

    plan = plan_tensor_types(model, parse_file_type(file_type))

    class Requantized(ModelView):
        def values(self, name, x):
            q = plan.get(name)
            if q is None or not supports_quantize(q) or x.ndim != 2:
                return x
            return dequantize(quantize(x, q), q, shape=x.shape)

    return Requantized(model)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--innocents", type=int, default=100)
    ap.add_argument("--requantize-ks", type=int, nargs="*", default=[8],
                    help="coalition sizes whose colluded leaks are also traced after a Q4_K_M requantization")
    ap.add_argument("--strategies", nargs="+", default=None)
    args = ap.parse_args()

    from _fixtures_mark import COLLUSION_STRATEGIES, SMOL_RECIPIENTS, collusion_model, smol_issued
    from _results import write_result

    from weightprint.io import open_model
    from weightprint.mark.keys import CopyKey, load_key_file
    from weightprint.mark.registry import open_registry
    from weightprint.mark.trace import CopyTest, correlate_leak

    info = smol_issued()
    master = load_key_file(info["key_file"])
    with open_registry(info["url"]) as reg:
        records = {r.recipient: r for r in reg.copies()}
    registered = [CopyTest(r.issue_id, r.recipient, r.file_type, master.derive(bytes.fromhex(r.key_salt), r.issue_id),
                           float(r.delta)) for r in (records[x] for x in SMOL_RECIPIENTS)]
    innocents = [CopyTest(f"fresh-{i}", f"fresh-{i}", "Q4_K_M", CopyKey.random()) for i in range(args.innocents)]
    tests = registered + innocents
    out: dict = {"n_keys_tested": len(tests), "alpha": 1e-9, "runs": {}}
    strategies = args.strategies or list(COLLUSION_STRATEGIES)
    plan = [(k, strategy, "float") for k in args.ks for strategy in strategies]
    plan += [(k, strategy, "Q4_K_M") for k in args.requantize_ks for strategy in strategies]
    for k, strategy, variant in plan:
        colluders = SMOL_RECIPIENTS[:k]
        models = [open_model(info["copies"][r]["output"]) for r in colluders]
        try:
            leak = collusion_model(models, strategy, seed=k)
            if variant != "float":
                leak = requantized_view(leak, variant)
            t0 = time.perf_counter()
            with open_model(info["source"]) as o:
                st = correlate_leak(o, leak, tests, code_key=master.code_key())
        finally:
            for m in models:
                m.close()
        res = {t.evidence["recipient"]: t for t in st.tests}
        guilty = {r: res[r] for r in colluders}
        innocent = [t for r, t in res.items() if r not in colluders]
        run = {
            "k": k, "strategy": strategy, "leak": variant,
            "colluders_accused": sum(t.evidence["log10_pvalue_bonferroni"] < -9 for t in guilty.values()),
            "min_colluder_z": round(min(t.statistic for t in guilty.values()), 2),
            "max_colluder_log10_p_bonferroni": round(max(t.evidence["log10_pvalue_bonferroni"]
                                                         for t in guilty.values()), 1),
            "innocents_accused": sum(t.evidence["log10_pvalue_bonferroni"] < -9 for t in innocent),
            "max_innocent_z": round(max(t.statistic for t in innocent), 3),
            "min_innocent_p": min(t.pvalue for t in innocent),
            "n_candidates": next(iter(guilty.values())).n,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        out["runs"][f"k{k}-{strategy}-{variant}"] = run
        print(json.dumps(run), flush=True)
        out["load_average"] = os.getloadavg()
        write_result("mark_collusion", out)
    out["load_average"] = os.getloadavg()
    out["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_result("mark_collusion", out)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
