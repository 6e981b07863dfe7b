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
            "sketch_fit_corr": best.basis.get("fit_corr"), "token_gram_corr": best.basis.get("token_gram_corr"),
            "recovered_ran": best.basis.get("kind") == "orthogonal",
            "recovered_log10_pvalue": None if rec is None else rec.log10_pvalue, "seconds": round(time.perf_counter() - t0, 3)}


def null_pairs(n: int, steps: int, offset: int, tmp: Path) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = tiny_llama_pair(offset + i, steps=steps, n_layers=4)
        rows.append({"steps": steps, **_search_row(a, b, tmp, offset + i)})
        r = rows[-1]
        print(f"H0 steps={steps} {i + 1}/{n}: {r['verdict']} p={10 ** r['log10_pvalue']:.3g} "
              f"token Gram corr {r['token_gram_corr']}, fit corr {r['sketch_fit_corr']}", flush=True)
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
        "token_gram_corr_median": float(np.median([r["token_gram_corr"] for r in rows])),
        "token_gram_corr_max": float(np.max([r["token_gram_corr"] for r in rows])),
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
                      "token_gram_corr": best.basis.get("token_gram_corr"),
                      "seconds": round(r.seconds, 2)}
        print(name, rows[name], flush=True)
    return {"sizes": sizes, "suspects": rows}


def junk_reference(fp, seed: int, label: str):
    """A sketched reference that satisfies H0 by construction: ``fp`` (stored form) with every
    feature row, embedding row and sketch row shuffled on its own -- the same marginals, no model
    behind them. For timing a search over many sketched references of SmolLM2's shape."""
    from weightprint.lineage.fingerprint import Fingerprint

    rng = np.random.default_rng(seed)

    def shuffle_rows(x):
        return None if x is None else np.stack([rng.permutation(r) for r in x])

    return Fingerprint(
        label=label, hidden_size=fp.hidden_size, n_parameters=fp.n_parameters, config=dict(fp.config),
        layer_roles=fp.layer_roles, layer_features=[shuffle_rows(f) for f in fp.layer_features],
        descriptors=fp.descriptors, global_features={k: rng.permutation(v) for k, v in fp.global_features.items()},
        tokens=fp.tokens, embedding=shuffle_rows(fp.embedding), head=shuffle_rows(fp.head),
        tied_embeddings=fp.tied_embeddings, vocab_size=fp.vocab_size, tokenizer_model=fp.tokenizer_model,
        vocab_minhash=fp.vocab_minhash, merges_minhash=fp.merges_minhash,
        chat_template_family=fp.chat_template_family, chat_template_sha256=fp.chat_template_sha256,
        levels=fp.levels, basis_tokens=fp.basis_tokens, basis_rows=shuffle_rows(fp.basis_rows),
    )


def search_100(tmp: Path) -> dict:
    """100 sketched references (SmolLM2, Gemma 3, 98 junk ones of SmolLM2's shape); search time."""
    from _fixtures_lineage import smollm2_derivatives, smollm2_symmetry_derivatives

    from weightprint.io import open_model
    from weightprint.lineage.db import store_fingerprint
    from weightprint.lineage.fingerprint import Fingerprint, basis_sketch_tokens, build_fingerprint
    from weightprint.testing.models import gemma3_path, smollm2_path

    db = tmp / "refs100.db"
    fps = {}
    for label, path in (("SmolLM2-135M", smollm2_path()), ("Gemma-3-270M", gemma3_path())):
        with open_model(path) as m:
            full = build_fingerprint(m, label=label, max_tokens=max(2048, basis_sketch_tokens(m.geometry.hidden_size)))
        store_fingerprint(full, db, basis_sketch=True)
        fps[label] = full
    stored = Fingerprint.from_bytes(fps["SmolLM2-135M"].compact(basis_sketch=True).to_bytes())
    for i in range(98):
        store_fingerprint(junk_reference(stored, 2000 + i, f"junk-{i:02d}"), db)
    out = {}
    suspects = {"rotation+folded+untied+mlp_perm+q8_0": smollm2_symmetry_derivatives()["rotation+folded+untied+mlp_perm+q8_0"],
                "permuted+finetune+q4_k_m": smollm2_derivatives()["permuted+finetune+q4_k_m"]}
    for name, path in suspects.items():
        t0 = time.perf_counter()
        r = search_fingerprints(path, db)
        total = time.perf_counter() - t0
        junk = [h for h in r.ranking if h.a.startswith("junk-")]
        out[name] = {"seconds_total": round(total, 2), "verdict": r.verdict, "top": r.ranking[0].a,
                     "top_log10_pvalue": round(r.ranking[0].log10_pvalue, 1), "top_basis": r.ranking[0].basis.get("kind"),
                     "junk_derived": sum(h.verdict == "derived" for h in junk),
                     "junk_min_log10_p": round(min(h.log10_pvalue for h in junk), 2),
                     "junk_token_gram_corr_max": max((h.basis.get("token_gram_corr") or -1.0) for h in junk),
                     "junk_sketch_fit_corr_max": max((h.basis.get("fit_corr") or -1.0) for h in junk)}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--init-pairs", type=int, default=40)
    ap.add_argument("--no-power", action="store_true")
    ap.add_argument("--power-only", action="store_true", help="only the SmolLM2 rows (-> lineage_search_sketch_power)")
    ap.add_argument("--search-100", action="store_true", help="only the 100-reference search time (-> lineage_search_sketch_100)")
    args = ap.parse_args()
    if args.search_100:
        with tempfile.TemporaryDirectory() as d:
            print(write_result("lineage_search_sketch_100", {"search_100_sketched": search_100(Path(d))}))
        return
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
