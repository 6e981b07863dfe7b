"""Benchmark of white-box lineage on real models -> bench/results/lineage.json.

Measures, on this machine:
- compare_models(SmolLM2, derivative) for every acceptance derivative: verdict, log10 p, seconds;
- SmolLM2 vs Gemma 3 (not comparable); calibration under H0 is bench/bench_lineage_calibration.py,
  the residual symmetries and power bench/bench_lineage_symmetry.py;
- stored fingerprint size vs its budget (1 MB per 1e9 parameters);
- search over a database of 100 references (SmolLM2, Gemma 3 and 98 residual-permuted copies of
  SmolLM2's fingerprint, i.e. references that satisfy H0 exactly);
- peak RSS of compare_models in a fresh process for models of different sizes (streaming);
- exact derivation of SmolLM2 F16 vs its llama.cpp Q4_K_M.

Run: ``python bench/bench_lineage.py [--quick]`` (``--quick`` skips the RSS runs).
On a shared, oversubscribed machine, ``OPENBLAS_NUM_THREADS=1`` makes the d x d products about
3x faster (measured: 19 vs 55 ms per stored reference at load average 6.6 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from weightprint.io import open_model  # noqa: E402
from weightprint.lineage import (  # noqa: E402
    Fingerprint,
    build_fingerprint,
    compare_models,
    exact_derivation,
    search_fingerprints,
    store_fingerprint,
)
from weightprint.testing.models import gemma3_path, smollm2_path  # noqa: E402


def permuted_fingerprint(fp: Fingerprint, seed: int, label: str) -> Fingerprint:
    """``fp`` with its residual coordinates relabelled: a reference that satisfies H0 exactly."""
    perm = np.random.default_rng(seed).permutation(fp.hidden_size)
    return Fingerprint(
        label=label, hidden_size=fp.hidden_size, n_parameters=fp.n_parameters, config=dict(fp.config),
        layer_roles=fp.layer_roles, layer_features=[f[:, perm] for f in fp.layer_features],
        descriptors=fp.descriptors, global_features={k: v[perm] for k, v in fp.global_features.items()},
        tokens=fp.tokens, embedding=None if fp.embedding is None else fp.embedding[:, perm],
        head=None if fp.head is None else fp.head[:, perm], tied_embeddings=fp.tied_embeddings,
        vocab_size=fp.vocab_size, tokenizer_model=fp.tokenizer_model, vocab_minhash=fp.vocab_minhash,
        merges_minhash=fp.merges_minhash, chat_template_family=fp.chat_template_family,
        chat_template_sha256=fp.chat_template_sha256, levels=fp.levels,
    )


def peak_rss_mb(a: Path, b: Path) -> dict:
    """compare_models in a fresh process; peak RSS from /proc (VmHWM resets at exec, ru_maxrss does not)."""
    code = (
        "import time, sys\n"
        "from weightprint.lineage import compare_models\n"
        "t = time.perf_counter(); r = compare_models(sys.argv[1], sys.argv[2])\n"
        "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(r.verdict, time.perf_counter() - t, hwm / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, check=True)
    verdict, seconds, rss = out.stdout.split()[-3:]
    n_params = 0
    with open_model(a) as m:
        n_params = m.n_parameters()
    return {"a": str(a), "b": str(b), "n_parameters_a": n_params, "verdict": verdict, "seconds": float(seconds),
            "peak_rss_mb": float(rss)}


def synthetic_safetensors(out_dir: Path, n_layers: int, *, d: int = 576, ffn: int = 1536, vocab: int = 49152) -> Path:
    """A llama-shaped F16 safetensors file of random weights (written tensor by tensor)."""
    from weightprint.io.safetensors_file import write_safetensors_shards

    shapes = [("model.embed_tokens.weight", (vocab, d))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (d,)), (p + "self_attn.q_proj.weight", (d, d)),
                   (p + "self_attn.k_proj.weight", (192, d)), (p + "self_attn.v_proj.weight", (192, d)),
                   (p + "self_attn.o_proj.weight", (d, d)), (p + "post_attention_layernorm.weight", (d,)),
                   (p + "mlp.gate_proj.weight", (ffn, d)), (p + "mlp.up_proj.weight", (ffn, d)),
                   (p + "mlp.down_proj.weight", (d, ffn))]
    shapes.append(("model.norm.weight", (d,)))
    dims = dict(shapes)

    def data(name: str) -> np.ndarray:
        seed = int.from_bytes(name.encode()[-8:].rjust(8, b"\0"), "little") % (2**32)
        return np.random.default_rng(seed).standard_normal(dims[name], dtype=np.float32).astype(np.float16)

    files = write_safetensors_shards(out_dir, [(n, s, "F16") for n, s in shapes], data, max_shard_bytes=10**12)
    return files[0]


def rss_scaling(tmp: Path) -> list[dict]:
    """Peak RSS of compare_models(m, m) for the same architecture at two depths (streaming check)."""
    out = []
    for n_layers in (30, 120):
        f = synthetic_safetensors(tmp / f"synthetic-{n_layers}", n_layers)
        row = peak_rss_mb(f, f)
        row["file_bytes"] = f.stat().st_size
        out.append(row)
        f.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from _fixtures_lineage import smollm2_derivatives

    from weightprint.testing.derive import read_derive_info

    smol, gemma = smollm2_path(), gemma3_path()
    derivs = smollm2_derivatives()
    out: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                             "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")}}

    out["load_average_at_start"] = os.getloadavg()
    compare_models(smol, derivs["f16"])  # warm-up: numba kernels compile once per machine
    rows = []
    for name, path in derivs.items():
        r = compare_models(smol, path)
        row = {"derivative": name, "verdict": r.verdict, "log10_pvalue": r.log10_pvalue, "pvalue": r.combined.pvalue_text(),
               "components": {c.name: round(c.log10_pvalue, 2) for c in r.components}, "seconds": round(r.seconds, 2),
               "unmatched_layers_a": r.alignment.get("unmatched_a")}
        info = read_derive_info(path) if path.is_dir() else {}
        drift = (info.get("result") or {}).get("relative_drift")
        if drift is not None:
            row["relative_l2_drift"] = drift
        rows.append(row)
        print(json.dumps(row), flush=True)
    out["derivatives"] = rows

    r = compare_models(smol, gemma)
    out["smollm2_vs_gemma"] = {"verdict": r.verdict, "reason": r.reason, "seconds": round(r.seconds, 2)}
    print(out["smollm2_vs_gemma"], flush=True)

    with open_model(smol) as m:
        full = build_fingerprint(m, label="SmolLM2-135M")
    with open_model(gemma) as m:
        gfull = build_fingerprint(m, label="Gemma-3-270M")
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'refs.db'}"
        n_bytes, n_tokens = store_fingerprint(full, db)
        store_fingerprint(gfull, db)
        for i in range(98):
            store_fingerprint(permuted_fingerprint(full, 1000 + i, f"null-{i:02d}"), db)
        out["fingerprint"] = {"n_parameters": full.n_parameters, "stored_bytes": n_bytes, "budget_bytes": full.n_parameters // 1000,
                              "stored_tokens": n_tokens, "references_in_db": 100}
        suspect = derivs["permuted+finetune+q4_k_m"]
        t0 = time.perf_counter()
        found = search_fingerprints(suspect, db)
        hits = found.ranking if hasattr(found, "ranking") else found
        total = time.perf_counter() - t0
        compare_seconds = sum(h.seconds for h in hits)
        null_ps = [h.log10_pvalue for h in hits if h.a.startswith("null-")]
        out["search_100"] = {
            "suspect": "permuted+finetune+q4_k_m",
            "seconds_total": round(total, 2),
            "seconds_comparisons": round(compare_seconds, 2),
            "seconds_suspect_fingerprint": round(total - compare_seconds, 2),
            "top": [{"label": h.a, "verdict": h.verdict, "log10_pvalue": round(h.log10_pvalue, 2)} for h in hits[:3]],
            "null_references_min_log10_p": round(min(null_ps), 2),
            "null_references_derived": sum(h.verdict == "derived" for h in hits if h.a.startswith("null-")),
        }
        print(out["search_100"], flush=True)

    f16, q4 = derivs["f16"], derivs["q4_k_m"]
    ex = exact_derivation(f16, q4)
    out["exact"] = {"exact": ex.exact, "reason": ex.reason, "seconds": round(ex.seconds, 2), "types": ex.types}
    tuned = exact_derivation(f16, derivs["permuted+finetune+q4_k_m"])
    out["exact_vs_finetuned_copy"] = {"exact": tuned.exact, "reason": tuned.reason, "seconds": round(tuned.seconds, 2),
                                      "n_differing": len(tuned.differing), "n_tensors": tuned.n_tensors,
                                      "largest": [d.to_dict() for d in tuned.differing[:3]]}
    print(out["exact"], out["exact_vs_finetuned_copy"]["reason"], flush=True)

    if not args.quick:
        # calibration under H0 (trained and exact-tie init pairs): bench/bench_lineage_calibration.py
        from weightprint.testing.derive import tiny_llama_pair

        a, b = tiny_llama_pair(0, threads=1)
        out["peak_rss"] = [peak_rss_mb(a, b), peak_rss_mb(smol, q4), peak_rss_mb(gemma, gemma)]
        print(out["peak_rss"], flush=True)
        with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:
            out["peak_rss_synthetic_depth"] = rss_scaling(Path(tmp))
        print(out["peak_rss_synthetic_depth"], flush=True)

    out["load_average_at_end"] = os.getloadavg()
    dest = ROOT / "bench" / "results" / "lineage.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    os.replace(tmp, dest)
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
