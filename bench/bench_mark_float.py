"""Float copies and the stripping attack on SmolLM2-135M.

An F16 copy is issued (scheme v3: every weight of a marked tensor on the keyed Q8_0 grid). The
attacker holds the copy only and looks for weights on the Q8_0 grid: per weight, its distance
to the nearest Q8_0 level of its own block (``|y/d - round(y/d)|``, ``d`` = the block's absmax /
127), small meaning "on the grid" (F16 storage moves a level by up to ~0.06 of a step). We
score that distance as a detector of the candidates (the weights the key steered, known from
the original) by its AUROC, for the v3 copy and for the v2-style copy (candidates snapped to
the grid, every other weight left as it was), plus the exact-equality flag; and trace the v3
copy and its Q8_0 requantization. Writes ``bench/results/mark_float.json``.

Usage: ``python bench/bench_mark_float.py [--ftype F16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def binary_auroc(counts: dict[str, int]) -> float:
    """AUROC of a yes/no flag as a detector of candidates: ``(1 + TPR - FPR) / 2`` (ties count half)."""
    pos = counts["tp"] + counts["fn"]
    neg = counts["fp"] + counts["tn"]
    if pos == 0 or neg == 0:
        return float("nan")
    return 0.5 * (1.0 + counts["tp"] / pos - counts["fp"] / neg)


BINS = 2000


def grid_distance(y: np.ndarray) -> np.ndarray:
    """Distance (in Q8_0 steps, 0..0.5) of each weight to the nearest level of its block's Q8_0 grid."""
    b = y.reshape(-1, 32).astype(np.float64)
    d = np.abs(b).max(axis=1, keepdims=True) / 127.0
    d[d == 0] = 1.0
    v = b / d
    return np.abs(v - np.rint(v)).reshape(-1)


def histogram_auroc(h_pos: np.ndarray, h_neg: np.ndarray) -> float:
    """AUROC of "small distance means candidate" from the two distance histograms (ties within a bin count half)."""
    pos, neg = h_pos.sum(), h_neg.sum()
    below = np.concatenate([[0], np.cumsum(h_neg)[:-1]])  # negatives in strictly larger-distance bins win for positives
    wins = np.sum(h_pos * (neg - below - h_neg)) + 0.5 * np.sum(h_pos * h_neg)
    return float(wins / (pos * neg))


def _count(counts: dict[str, int], flag: np.ndarray, label: np.ndarray) -> None:
    counts["tp"] += int(np.count_nonzero(flag & label))
    counts["fn"] += int(np.count_nonzero(~flag & label))
    counts["fp"] += int(np.count_nonzero(flag & ~label))
    counts["tn"] += int(np.count_nonzero(~flag & ~label))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftype", default="F16")
    args = ap.parse_args()

    from _fixtures_mark import smol_issued
    from _results import write_result

    from weightprint.constants import QType
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.mark import DEFAULT_DELTA, init_registry, issue_copy, trace_leak
    from weightprint.mark.scheme import is_marked_tensor, level_pair
    from weightprint.quant import dequantize, quantize

    info = smol_issued()
    source = info["source"]
    out: dict = {"model": "SmolLM2-135M-Instruct", "ftype": args.ftype, "delta": DEFAULT_DELTA}
    with tempfile.TemporaryDirectory(dir=info["dir"]) as tmp:
        tmp = Path(tmp)
        url = f"sqlite:///{tmp / 'float.db'}"
        key = tmp / "float.key"
        init_registry(url, key)
        t0 = time.perf_counter()
        res = issue_copy(source, "float-recipient", args.ftype, tmp / "copy.gguf", registry_url=url, key_file=key)
        out["issue_seconds"] = time.perf_counter() - t0
        c3 = dict.fromkeys(("tp", "fn", "fp", "tn"), 0)
        c2 = dict(c3)
        on_grid = lambda v: dequantize(quantize(v, QType.Q8_0), QType.Q8_0, shape=v.shape) == v  # noqa: E731
        store = np.float16 if args.ftype == "F16" else np.float32
        rng = np.random.default_rng(0)
        hist = {k: np.zeros(BINS, np.int64) for k in ("v3_pos", "v3_neg", "v2_pos", "v2_neg")}

        def add_hist(tag: str, y: np.ndarray, cand: np.ndarray) -> None:
            dist = grid_distance(y)
            lab = cand.reshape(-1)
            hist[tag + "_pos"] += np.histogram(dist[lab], bins=BINS, range=(0, 0.5 + 1e-9))[0]
            hist[tag + "_neg"] += np.histogram(dist[~lab], bins=BINS, range=(0, 0.5 + 1e-9))[0]
        with open_model(source) as o, open_model(res.output) as c:
            for t in o.tensor_infos():
                if not is_marked_tensor(t.name, tuple(t.shape)) or t.shape[-1] % 32:
                    continue
                x = o.tensor(t.name)
                up, dn = level_pair(x, QType.Q8_0, DEFAULT_DELTA)
                cand = up != dn
                y = c.tensor(t.name)
                _count(c3, on_grid(y), cand)
                add_hist("v3", y, cand)
                del y
                # v2's float copy: candidates snapped to a (fair) key-side level, the rest as they were
                v2 = np.where(cand, np.where(rng.random(x.shape, dtype=np.float32) < 0.5, up, dn), x)
                del up, dn, x
                v2 = v2.astype(store).astype(np.float32)
                _count(c2, on_grid(v2), cand)
                add_hist("v2", v2, cand)
                del v2, cand
        n = sum(c3.values())
        out["stripping_attack"] = {
            "detector": "distance of each weight to its block's Q8_0 grid (small = on the grid = flagged)",
            "v3_auroc_grid_distance": histogram_auroc(hist["v3_pos"], hist["v3_neg"]),
            "v2_style_auroc_grid_distance": histogram_auroc(hist["v2_pos"], hist["v2_neg"]),
            "exact_flag": "unchanged by a Q8_0 round trip of the copy (exact equality; F16 storage breaks it)",
            "n_weights": n, "candidate_fraction": (c3["tp"] + c3["fn"]) / n,
            "v3_flagged_fraction": (c3["tp"] + c3["fp"]) / n, "v3_auroc_exact_flag": binary_auroc(c3), "v3_counts": c3,
            "v2_style_flagged_fraction": (c2["tp"] + c2["fp"]) / n, "v2_style_auroc_exact_flag": binary_auroc(c2),
            "v2_style_counts": c2, "target_auroc": 0.55,
        }
        print(json.dumps(out["stripping_attack"], indent=2), flush=True)
        v = trace_leak(res.output, source=source, registry_url=url, key_file=key)
        out["trace_copy"] = {"accused": v.accused_recipient, "log10_p": v.tests[0].result.log10_pvalue,
                             "z": v.tests[0].result.statistic}
        q8 = tmp / "copy-q8.gguf"
        convert(res.output, q8, file_type="Q8_0")
        v = trace_leak(q8, source=source, registry_url=url, key_file=key)
        out["trace_requantized_q8_0"] = {"accused": v.accused_recipient, "log10_p": v.tests[0].result.log10_pvalue,
                                         "z": v.tests[0].result.statistic}
        try:
            from weightprint.testing.derive import heldout_text, perplexity

            text = heldout_text()
            out["perplexity"] = {"source_f16": perplexity(source, text, threads=2),
                                 "issued_copy": perplexity(res.output, text, threads=2),
                                 "inference": "llama.cpp"}
        except Exception as e:  # noqa: BLE001 - llama.cpp may be absent
            out["perplexity"] = {"error": str(e)}
    out["load_average"] = os.getloadavg()
    out["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_result("mark_float", out)
    print(json.dumps(out, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
