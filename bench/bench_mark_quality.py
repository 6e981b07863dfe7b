"""Mark strength vs output change on SmolLM2-135M: the delta sweep behind DEFAULT_DELTA.

For each band width ``delta`` one Q4_K_M copy is issued from the F16 source (a throwaway
registry) and compared with the unmarked Q4_K_M copy over 20 prompts x 32 greedy tokens:

- the copy's own trace z (= sqrt(#candidates)) and the number of weights that changed level;
- greedy agreement in float32 (transformers, dequantized weights), teacher-forced and free-running;
- teacher-forced greedy agreement in llama.cpp (1 thread), which quantizes activations to
  8 bits inside every quantized matrix product;
- the z of the two weakest attacks of the acceptance tests: the copy requantized to Q4_0, and
  the average of two copies (2-collusion, the smaller of the two colluders' z).

A control changes one single weight of the unmarked copy by one level: what llama.cpp's greedy
choices do then is the floor of any agreement measured with llama.cpp. Writes
``bench/results/mark_quality.json``. Usage: ``python bench/bench_mark_quality.py [--deltas ...]``
(about 1 min per delta on 2 cores).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.0002, 0.0003, 0.001, 0.003, 0.01])
    args = ap.parse_args()

    import llama_cpp
    from _fixtures_mark import smol_issued
    from _results import write_result
    from test_mark_real import _Float32Greedy, _hf_float32

    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.mark import init_registry, issue_copy, trace_leak
    from weightprint.mark.scheme import level_pair
    from weightprint.quant import KeyedRounding, dequantize, quantize
    from weightprint.testing.derive import heldout_text

    info = smol_issued()
    source, plain = info["source"], info["plain"]
    words = heldout_text().split()
    prompts = [" ".join(words[i * 25: i * 25 + 12]) for i in range(20)]

    def llama_forced(path, seqs):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False,
                              seed=0, logits_all=True)
        preds = []
        for toks, gen in seqs:
            llm.reset()
            llm.eval(toks + gen)
            sc = np.asarray(llm.scores[: len(toks) + len(gen)])
            preds.append(sc[len(toks) - 1: len(toks) + len(gen) - 1].argmax(axis=1))
        return np.concatenate(preds)

    results: dict = {"prompts": len(prompts), "tokens_per_prompt": 32, "sweep": [], "control": {}}
    with tempfile.TemporaryDirectory(dir=info["dir"]) as tmp:
        tmp = Path(tmp)
        plain_dir = _hf_float32(plain, tmp)
        g = _Float32Greedy(prompts, plain_dir)
        base = g.generate(plain_dir)
        base_forced = g.forced(plain_dir, base)
        llm_seqs = [(x[0].tolist(), b) for x, b in zip(g.ids, base)]
        llama_base = llama_forced(plain, llm_seqs)

        def compare(path):
            d = _hf_float32(path, tmp)
            gen = g.generate(d)
            free = float(np.mean([a == b for x, y in zip(base, gen) for a, b in zip(x, y)]))
            forced = float(np.mean(g.forced(d, base) == base_forced))
            shutil.rmtree(d)
            return {"float32_teacher_forced": forced, "float32_free_running": free,
                    "llama_cpp_teacher_forced": float(np.mean(llama_forced(path, llm_seqs) == llama_base))}

        for delta in args.deltas:
            url = f"sqlite:///{tmp / f'r{delta}.db'}"
            key = tmp / f"k{delta}.key"
            init_registry(url, key)
            out = tmp / f"copy-{delta}.gguf"
            t0 = time.perf_counter()
            issue_copy(source, "bench", "Q4_K_M", out, registry_url=url, key_file=key, delta=delta)
            v = trace_leak(out, source=source, registry_url=url, key_file=key)
            t = v.tests[0].result
            changed = 0
            with open_model(out) as a, open_model(plain) as b:
                for name in a.tensor_names():
                    changed += int(np.count_nonzero(a.tensor(name, np.float32) != b.tensor(name, np.float32)))
            # the two weakest attacks of tests/test_mark_real.py: requantization to Q4_0, 2-collusion
            leak = tmp / "leak-q4_0.gguf"
            convert(out, leak, file_type="Q4_0")
            z_q4_0 = {x.recipient: x.result.statistic for x in
                      trace_leak(leak, source=source, registry_url=url, key_file=key).tests}["bench"]
            leak.unlink()
            other = tmp / f"copy2-{delta}.gguf"
            issue_copy(source, "bench-2", "Q4_K_M", other, registry_url=url, key_file=key, delta=delta)
            avg = tmp / "leak-average"
            with open_model(other) as mb:
                convert(out, avg, to="hf", dtype="float32", tensor_transform=lambda n, v, q: (v + mb.tensor(n)) / 2)
            z_avg = {x.recipient: x.result.statistic for x in
                     trace_leak(avg, source=source, registry_url=url, key_file=key).tests}
            shutil.rmtree(avg)
            other.unlink()
            row = {"delta": delta, "z": round(t.statistic, 1), "log10_p": round(t.log10_pvalue, 1),
                   "candidates": t.n, "weights_changed": changed, **compare(out),
                   "z_requantized_q4_0": round(z_q4_0, 1), "z_2_collusion": round(min(z_avg.values()), 1),
                   "seconds": round(time.perf_counter() - t0, 1)}
            print(row, flush=True)
            results["sweep"].append(row)
            out.unlink()

        # control: one weight of layer 5's up_proj one level away from llama.cpp's rounding
        target = "model.layers.5.mlp.up_proj.weight"

        def one_flip(name, values, qtype):
            if name != target:
                return values
            up, dn = level_pair(values, qtype, 0.01)
            d0 = dequantize(quantize(values, qtype), qtype, values.shape)
            i = int(np.flatnonzero((up != dn).reshape(-1))[0])
            dirs = np.zeros(values.size, np.int8)
            dirs[i] = -1 if d0.reshape(-1)[i] == up.reshape(-1)[i] else 1
            return KeyedRounding(values, dirs.reshape(values.shape), 0.01)

        out = tmp / "one-weight.gguf"
        convert(source, out, file_type="Q4_K_M", tensor_transform=one_flip)
        results["control"] = {"what": f"one weight of {target} one level off", **compare(out)}
        print(results["control"], flush=True)
    results["source_sha256_prefix"] = hashlib.sha256(Path(source).read_bytes()[:1 << 20]).hexdigest()[:12]
    write_result("mark_quality", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
