"""`lineage compare` against the reference method, MATCH (Zhu et al., "Independence Tests for
Language Models", ICML 2025), on the same pairs in the same run -> bench/results/lineage_match.json.

MATCH, as model-tracing defines it (re-implemented here with torch on CPU): feed the same token
sequences through both models; for every layer, collect the outputs of the MLP's gate and up
projections (token x hidden unit), match A's hidden units to B's by a linear assignment on the
Euclidean distances of their activation vectors, once on the gate and once on the up outputs,
and take the Pearson correlation test of the two matchings (two independent models give two
unrelated permutations; a derivative gives the same one twice). Per-layer p-values are combined
with Fisher's method. It is blind to the residual basis (activations, not weights), hence the
reference for the thief's changes of basis. This implementation runs one forward pass per model
with every layer hooked (model-tracing runs four passes per layer), so it is faster than the
original; the ratio printed is against this faster MATCH.

Pairs: SmolLM2 against its three changes of residual basis (sign flip, residual permutation,
rotation with folded norms and untied head; each on top of an MLP/head permutation and
requantized), and independently trained tiny llama pairs (4 layers, 150 steps; the
calibration's cached models), where neither method may claim a derivation.

Run: ``OPENBLAS_NUM_THREADS=2 python bench/bench_lineage_match.py [--tiny-pairs 5] [--tokens 512]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from _results import write_result  # noqa: E402

from weightprint.lineage import compare_models  # noqa: E402
from weightprint.testing.hfdir import as_hf_dir  # noqa: E402
from weightprint.testing.models import smollm2_path  # noqa: E402

ALPHA = 1e-6  # lineage's default level; MATCH is read at the same level


def _input_ids(hf_dir: Path, n_tokens: int, seq_len: int):
    import torch
    from transformers import AutoTokenizer

    from weightprint.testing.corpus import heldout_text

    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(heldout_text(40_000), return_tensors="pt").input_ids[0]
    n_seq = max(1, n_tokens // seq_len)
    if ids.numel() < n_seq * seq_len:
        ids = ids.repeat(-(-n_seq * seq_len // ids.numel()))
    return torch.as_tensor(ids[: n_seq * seq_len]).view(n_seq, seq_len)


def _activations(hf_dir: Path, input_ids) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gate and up projection outputs (tokens x units, float32) of every layer, one forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    layers = model.model.layers
    gate: list[list] = [[] for _ in layers]
    up: list[list] = [[] for _ in layers]
    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.mlp.gate_proj.register_forward_hook(lambda m, a, out, i=i: gate[i].append(out.detach())))
        handles.append(layer.mlp.up_proj.register_forward_hook(lambda m, a, out, i=i: up[i].append(out.detach())))
    with torch.no_grad():
        for row in input_ids:
            model(row[None, :])
    for h in handles:
        h.remove()
    flat = lambda xs: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).numpy()  # noqa: E731
    return [flat(g) for g in gate], [flat(u) for u in up]


def _matching(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """B's unit matched to each of A's: linear assignment on Euclidean distances of the units'
    activation vectors (model-tracing's ``match_wmats``)."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    return linear_sum_assignment(cdist(xa.T.astype(np.float64), xb.T.astype(np.float64)))[1]


def match_test(dir_a: Path, dir_b: Path, *, n_tokens: int, seq_len: int) -> dict:
    from scipy import stats

    t0 = time.perf_counter()
    ids = _input_ids(dir_a, n_tokens, seq_len)
    ga, ua = _activations(dir_a, ids)
    gb, ub = _activations(dir_b, ids)
    log10_ps = []
    for i in range(min(len(ga), len(gb))):
        pg, pu = _matching(ga[i], gb[i]), _matching(ua[i], ub[i])
        r = stats.pearsonr(pg, pu)
        log10_ps.append(math.log10(max(float(r.pvalue), 1e-300)))
    # Fisher's method over the layers: -2 sum ln p ~ chi2(2k) under H0
    chi2 = -2.0 * math.log(10.0) * sum(log10_ps)
    k = len(log10_ps)
    fisher = stats.chi2.logsf(chi2, 2 * k) / math.log(10.0)
    if not math.isfinite(fisher):  # underflow: the chi2(2k) tail's leading term, e^{-x/2} (x/2)^{k-1} / Gamma(k)
        fisher = ((k - 1) * math.log(chi2 / 2) - chi2 / 2 - math.lgamma(k)) / math.log(10.0)
    return {"seconds": round(time.perf_counter() - t0, 2), "layers": len(log10_ps),
            "log10_pvalue_fisher": float(fisher), "derived": bool(fisher < math.log10(ALPHA)),
            "layers_below_alpha": int(sum(p < math.log10(ALPHA) for p in log10_ps)),
            "min_layer_log10_pvalue": min(log10_ps), "max_layer_log10_pvalue": max(log10_ps)}


def ours(a: Path, b: Path) -> dict:
    t0 = time.perf_counter()
    r = compare_models(a, b)
    return {"seconds": round(time.perf_counter() - t0, 2), "verdict": r.verdict, "log10_pvalue": r.log10_pvalue,
            "pvalue_text": r.combined.pvalue_text() if r.combined is not None else None,
            "basis": r.basis.get("kind"), "derived": r.verdict == "derived"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny-pairs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=512, help="token positions fed to MATCH (sequences of --seq-len)")
    ap.add_argument("--seq-len", type=int, default=64)
    args = ap.parse_args()

    from _fixtures_lineage import smollm2_symmetry_derivatives

    from weightprint.testing.derive import tiny_llama_pair

    load0 = os.getloadavg()
    src = smollm2_path()
    pairs: list[tuple[str, Path, Path, bool]] = [
        (name, src, path, True) for name, path in smollm2_symmetry_derivatives().items()]
    pairs += [(f"tiny independent pair {i}", *tiny_llama_pair(i, steps=150, n_layers=4), False)
              for i in range(args.tiny_pairs)]
    rows = []
    for name, a, b, truth in pairs:
        dir_a, dir_b = as_hf_dir(a), as_hf_dir(b)  # converted (and cached) before timing either method
        mine = ours(a, b)
        ref = match_test(dir_a, dir_b, n_tokens=args.tokens, seq_len=args.seq_len)
        rows.append({"pair": name, "derived_truth": truth, "weightprint": mine, "match": ref,
                     "speedup": round(ref["seconds"] / max(mine["seconds"], 1e-9), 1)})
        print(f"{name}: weightprint {mine['verdict']} {mine['pvalue_text']} in {mine['seconds']} s; "
              f"MATCH log10 p {ref['log10_pvalue_fisher']:.1f} ({ref['layers_below_alpha']}/{ref['layers']} layers "
              f"< {ALPHA:g}) in {ref['seconds']} s; {rows[-1]['speedup']}x", flush=True)
    real = [r for r in rows if r["derived_truth"]]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
        "load_average_at_start": load0, "load_average_at_end": os.getloadavg(),
        "match_config": {"tokens": args.tokens, "seq_len": args.seq_len, "dtype": "float32",
                         "combination": "Fisher over layers", "alpha": ALPHA},
        "rows": rows,
        "weightprint_correct": sum(r["weightprint"]["derived"] == r["derived_truth"] for r in rows),
        "match_correct": sum(r["match"]["derived"] == r["derived_truth"] for r in rows),
        "n_pairs": len(rows),
        "speedup_on_smollm2_pairs": {"min": min(r["speedup"] for r in real), "max": max(r["speedup"] for r in real)},
    }
    path = write_result("lineage_match", out)
    print(f"correct: weightprint {out['weightprint_correct']}/{len(rows)}, MATCH {out['match_correct']}/{len(rows)}; "
          f"speed-up on SmolLM2 pairs {out['speedup_on_smollm2_pairs']}; wrote {path}")


if __name__ == "__main__":
    main()
