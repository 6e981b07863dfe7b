"""Calibration of `lineage` under H0 on independently trained models -> bench/results/lineage_calibration.json.

H0: B was trained independently of A. Every pair here satisfies it by construction:

- **trained pairs**: two llama-shaped models (hidden 64, 4 layers, MLP 128, 4 heads / 2 KV heads,
  untied head, the shipped 1024-token tokenizer) initialised from different seeds and trained on
  the shipped text with different data orders (the seed also draws the training windows) for
  ``--steps`` AdamW steps at lr 3e-3: relative L2 distance from their own initialisation ~1
  (``drift_from_init`` below), i.e. well away from the random-init regime;
- **init pairs**: the same architecture at initialisation (``steps = 0``): Hugging Face's init
  sets every norm weight to exactly 1.0, the exact-tie case that broke the old index-order ranks.

For each pair the whole pipeline runs (fingerprints, basis recovery, identity-basis exact test,
recovered-basis test, Sidak's combination). Reported: the false-positive count at the default alpha
(1e-6) and at 0.01/0.05, and KS tests of the p-values against uniform (two-sided, and
one-sided 'greater' = excess of small p-values), for the combined verdict p-value and for each
of the two tests. The recovered-basis p-value has no exact argument (the map is fitted on the
same models), so this simulation is its calibration.

Also measured on trained tiny models: power against their own derivatives (noise of increasing
relative size; each residual symmetry).

Run: ``python bench/bench_lineage_calibration.py [--pairs 100] [--init-pairs 50] [--steps 150]``.
Models are cached under ``~/.cache/weightprint`` (``derived("tiny_llama", ...)``), so a second
run only re-tests.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _results import write_result  # noqa: E402

from weightprint.lineage import compare_models  # noqa: E402
from weightprint.lineage.compare import DEFAULT_ALPHA  # noqa: E402
from weightprint.testing.derive import derived, relative_drift, tiny_llama_pair  # noqa: E402

ARCH = {"n_layers": 4}


def _component(r, name: str) -> float | None:
    c = next((c for c in r.components if c.name == name), None)
    return None if c is None else c.log10_pvalue


def run_pairs(n: int, *, steps: int, offset: int, label: str, on_row=None) -> list[dict]:
    rows: list[dict] = []
    for i in range(n):
        t0 = time.perf_counter()
        a, b = tiny_llama_pair(offset + i, steps=steps, **ARCH)
        t_build = time.perf_counter() - t0
        r = compare_models(a, b, n_resamples=999, rng=offset + i)
        rows.append({
            "pair": offset + i, "steps": steps, "verdict": r.verdict, "log10_pvalue": r.log10_pvalue,
            "identity_basis": _component(r, "identity-basis"), "recovered_basis": _component(r, "recovered-basis"),
            "basis_kind": r.basis.get("kind"), "fit_quality": r.basis.get("fit_quality"),
            "seconds_compare": round(r.seconds, 3), "seconds_build": round(t_build, 2),
        })
        if on_row is not None:
            on_row(rows)
        print(f"{label} {i + 1}/{n}: {r.verdict} p={10 ** r.log10_pvalue:.3g} basis={r.basis.get('kind')} "
              f"(build {t_build:.1f} s, compare {r.seconds:.2f} s)", flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    out: dict = {"n_pairs": len(rows)}
    for key in ("log10_pvalue", "identity_basis", "recovered_basis"):
        lp = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
        if lp.size == 0:
            continue
        p = 10.0 ** lp
        out[key] = {
            "n": int(lp.size),
            "false_positives_at_default_alpha": int(np.count_nonzero(lp < math.log10(DEFAULT_ALPHA))),
            "share_below_0.01": float(np.mean(p <= 0.01)),
            "share_below_0.05": float(np.mean(p <= 0.05)),
            "min_pvalue": float(p.min()),
            "ks_uniform_two_sided_p": float(stats.kstest(p, "uniform").pvalue),
            "ks_uniform_greater_p": float(stats.kstest(p, "uniform", alternative="greater").pvalue),
        }
    out["verdicts"] = {v: sum(r["verdict"] == v for r in rows) for v in sorted({r["verdict"] for r in rows})}
    return out


def power(steps: int) -> dict:
    """Detection on trained tiny models: noisy copies and residual symmetries of pair 0's A."""
    from weightprint.io import open_model
    from weightprint.testing.symmetry import residual_transform

    a, _ = tiny_llama_pair(900, steps=steps, **ARCH)
    out: dict = {"noise": [], "symmetries": {}}
    for sigma in (0.05, 0.1, 0.2, 0.4, 0.8):
        b = derived("noise", a, sigma_rel=sigma, seed=1)
        r = compare_models(a, b)
        out["noise"].append({"sigma_rel": sigma, "relative_drift": relative_drift(a, b), "verdict": r.verdict,
                             "log10_pvalue": r.log10_pvalue})
        print(f"power noise {sigma}: {r.verdict} {r.combined.pvalue_text()}", flush=True)
    with open_model(a) as ma:
        for kind in ("sign_flip", "permute", "rotate"):
            r = compare_models(ma, residual_transform(ma, kind, seed=3))
            out["symmetries"][kind] = {"verdict": r.verdict, "log10_pvalue": r.log10_pvalue, "basis": r.basis.get("kind")}
            print(f"power {kind}: {r.verdict} {r.combined.pvalue_text()} basis={r.basis.get('kind')}", flush=True)
    return out


def merge(names: list[str], out_name: str) -> dict:
    """Merge the pairs of several (possibly partial) runs, one row per pair index, and summarize."""
    from _results import results_dir

    trained: dict[int, dict] = {}
    init: dict[int, dict] = {}
    meta: dict = {}
    for name in names:
        path = results_dir() / f"{name}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        meta = meta or {k: rec[k] for k in ("architecture", "steps", "drift_from_init", "default_alpha", "power_tiny")}
        for row in rec["trained"]["pairs"]:
            trained.setdefault(row["pair"], row)
        for row in rec["init_exact_ties"]["pairs"]:
            init.setdefault(row["pair"], row)
        if rec.get("power_tiny"):
            meta["power_tiny"] = rec["power_tiny"]
    t_rows, i_rows = [trained[k] for k in sorted(trained)], [init[k] for k in sorted(init)]
    from weightprint.lineage.compare import sidak_log10

    for row in t_rows + i_rows:  # runs started before the switch to Sidak stored Bonferroni's combination
        parts = [row[k] for k in ("identity_basis", "recovered_basis") if row.get(k) is not None]
        if parts:
            row["log10_pvalue"] = sidak_log10(parts)
    record = {**meta, "merged_from": names, "trained": {"summary": summarize(t_rows), "pairs": t_rows},
              "init_exact_ties": {"summary": summarize(i_rows), "pairs": i_rows}, "all": summarize(t_rows + i_rows)}
    write_result(out_name, record)
    print(markdown_table(record))
    return record


def markdown_table(record: dict) -> str:
    """The calibration table of docs/lineage.md."""
    lines = ["| pairs (H0 true) | n | p-value | false positives at alpha = 1e-6 | share p <= 0.01 | share p <= 0.05 "
             "| smallest p | KS vs uniform, two-sided p | KS one-sided ('greater': excess of small p) p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, label in (("trained", "trained, 150 steps"), ("init_exact_ties", "initialisation, exact ties"),
                         ("all", "all")):
        summ = record[group] if group == "all" else record[group]["summary"]
        for key, what in (("log10_pvalue", "combined (verdict)"), ("identity_basis", "identity-basis (exact)"),
                          ("recovered_basis", "recovered-basis (calibrated)")):
            x = summ.get(key)
            if not x:
                continue
            lines.append(f"| {label} | {x['n']} | {what} | {x['false_positives_at_default_alpha']} | "
                         f"{x['share_below_0.01']:.3f} | {x['share_below_0.05']:.3f} | {x['min_pvalue']:.3g} | "
                         f"{x['ks_uniform_two_sided_p']:.3g} | {x['ks_uniform_greater_p']:.3g} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--init-pairs", type=int, default=50)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--name", default="lineage_calibration")
    ap.add_argument("--offset", type=int, default=7000, help="first trained pair index (split a run over processes)")
    ap.add_argument("--no-power", action="store_true", help="skip the power measurements")
    ap.add_argument("--merge", nargs="*", metavar="NAME",
                    help="only merge the named result files (e.g. lineage_calibration lineage_calibration_part2) "
                         "into lineage_calibration_all and print the docs table")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, "lineage_calibration_all")
        return
    t0 = time.perf_counter()
    a0 = derived("tiny_llama", None, seed=2 * 7000, steps=0, **ARCH)
    a1 = derived("tiny_llama", None, seed=2 * 7000, steps=args.steps, **ARCH)
    drift = relative_drift(a0, a1)
    power_tiny = None if args.no_power else power(args.steps)
    init_rows = run_pairs(args.init_pairs, steps=0, offset=5000, label="init")

    def partial(rows: list[dict]) -> None:  # a long run records what it has after every pair
        write_result(args.name, build(rows, complete=False))

    def build(trained_rows: list[dict], *, complete: bool) -> dict:
        return {
            "complete": complete,
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "default_alpha": DEFAULT_ALPHA,
            "architecture": {"hidden_size": 64, "intermediate_size": 128, "n_heads": 4, "n_kv_heads": 2, **ARCH},
            "steps": args.steps,
            "drift_from_init": drift,
            "trained": {"summary": summarize(trained_rows), "pairs": trained_rows},
            "init_exact_ties": {"summary": summarize(init_rows), "pairs": init_rows},
            "all": summarize(trained_rows + init_rows),
            "power_tiny": power_tiny,
            "seconds": round(time.perf_counter() - t0, 1),
        }

    trained_rows = run_pairs(args.pairs, steps=args.steps, offset=args.offset, label="trained", on_row=partial)
    record = build(trained_rows, complete=True)
    path = write_result(args.name, record)
    print(json.dumps({k: record[k] for k in ("drift_from_init", "all", "seconds")}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
