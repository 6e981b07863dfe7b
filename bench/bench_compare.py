"""Black-box compare: speed on two local 135M GGUFs, and calibration over known-different pairs.

    .venv/bin/python bench/bench_compare.py speed          # compare SmolLM2 Q4_1 vs its Q8_0, default suite
    .venv/bin/python bench/bench_compare.py calibrate      # every pair of the model zoo, both regimes
    .venv/bin/python bench/bench_compare.py likelihood     # the sampled regime's likelihood test over the zoo
    .venv/bin/python bench/bench_compare.py power          # verdict vs fine-tune strength (10..200 steps)
    .venv/bin/python bench/bench_compare.py topk           # the context-specific top-k test over the zoo
    .venv/bin/python bench/bench_compare.py membership     # the probe-membership test (sampled, text only)

Calibration: the same-model test's null is "unrelated models" with mean prefix similarity at
most c0. Over known-different pairs (SmolLM2 vs Gemma 3, real models vs independently
initialised tiny llamas of several shapes, tiny llamas among themselves) the script reports each
pair's mean similarity, p-value and verdict, the largest similarity seen (which c0 must exceed),
and the false-positive rates of `same` and of `same or related` at the default level. Known
related pairs (SmolLM2 vs its requantization and its fine-tune) are reported beside them.
Answers are cached (weightprint.behave.cached), so a rerun recomputes only statistics.
Results: bench/results/bench_compare_<mode>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from weightprint.behave.backends import open_backend  # noqa: E402
from weightprint.behave.cached import CachedBackend, model_identity  # noqa: E402
from weightprint.behave.compare import (  # noqa: E402
    C0_GREEDY, C0_SAMPLED, DEFAULT_ALPHA, collect_answers, compare_answers, compare_models, SEED_OFFSET_B,
)
from weightprint.behave.suites import load_prompts  # noqa: E402

RESULTS = ROOT / "bench" / "results"
TINY_SHAPES = [  # (hidden, layers, intermediate, heads, kv heads)
    (64, 2, 128, 4, 2), (64, 2, 128, 4, 2), (96, 3, 192, 4, 2), (96, 3, 192, 4, 2), (128, 2, 256, 4, 4), (48, 4, 96, 4, 2),
]


def _write(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_compare_{name}.json"
    data["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}
    out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return out


def speed(threads: int) -> dict:
    from _fixtures_behave import requantized
    from weightprint.testing.models import smollm2_path

    a = smollm2_path()
    b = requantized(a)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    r = compare_models(a, b, options_a={"n_threads": threads}, options_b={"n_threads": threads})
    wall = time.perf_counter() - t0
    data = {"what": "compare SmolLM2 Q4_1 vs its Q8_0 requantization, default suite, no cache",
            "seconds": wall, "cpu_seconds": time.process_time() - cpu0, "threads": threads,
            "verdict": r.verdict, "summary": r.summary(), "statistics": r.statistics, "n_prompts": r.n_prompts}
    print(json.dumps({k: data[k] for k in ("seconds", "verdict", "summary")}, indent=1))
    return data


def zoo(with_finetune: bool, finetune_dir: str | None = None) -> dict[str, tuple[str, Path]]:
    """name -> (family, path)."""
    from _fixtures_behave import requantized
    from weightprint.testing.derive import derived
    from weightprint.testing.models import gemma3_path, smollm2_path

    sm = smollm2_path()
    models = {"smollm2": ("smollm2", sm), "smollm2-q8_0": ("smollm2", requantized(sm)), "gemma3": ("gemma3", gemma3_path())}
    if with_finetune:
        ft = Path(finetune_dir) if finetune_dir else derived("finetune", sm, steps=200, seed=0)
        models["smollm2-ft200"] = ("smollm2", derived("gguf", ft, file_type="Q8_0"))
    for i, (h, layers, inter, heads, kv) in enumerate(TINY_SHAPES):
        p = derived("tiny_llama", None, seed=1000 + i, steps=60, hidden_size=h, n_layers=layers,
                    intermediate_size=inter, n_heads=heads, n_kv_heads=kv)
        models[f"tiny{i}-{h}x{layers}"] = (f"tiny{i}", p)
    return models


class _NotCached(Exception):
    pass


class _CachedOnly:
    """A backend stand-in that refuses to compute (--cached-only: use the answers stored so far)."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.label, self.capabilities = inner.name, inner.label, inner.capabilities

    def generate(self, requests, progress=None):
        raise _NotCached

    def close(self):
        self.inner.close()


def calibrate(threads: int, n_samples: int, with_finetune: bool, sampled_prompts: int, reverse: bool = False,
              finetune_dir: str | None = None, cached_only: bool = False) -> dict:
    prompts = load_prompts("default")
    reg_prompts = {"greedy": prompts, "sampled": prompts[::max(1, len(prompts) // sampled_prompts)][:sampled_prompts]}
    cache = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint")) / "behave_bench.db"
    models = zoo(with_finetune, finetune_dir)
    regimes = {"greedy": dict(sampled=False, max_tokens=16, top_logprobs=5, prefix=10),
               "sampled": dict(sampled=True, max_tokens=8, top_logprobs=0, prefix=3)}
    answers: dict[tuple[str, str, int], object] = {}
    timings = {}
    skipped = []
    for name, (_, path) in list(reversed(models.items()) if reverse else models.items()):
        t0 = time.perf_counter()
        inner = _CachedOnly(open_backend(path, n_threads=threads, n_ctx=512)) if cached_only else \
            open_backend(path, n_threads=threads, n_ctx=512)
        backend = CachedBackend(inner, cache, model_identity(path))
        try:
            for reg, kw in regimes.items():
                for side_seed in ((0, SEED_OFFSET_B) if kw["sampled"] else (0,)):
                    answers[(name, reg, side_seed)] = collect_answers(
                        backend, reg_prompts[reg], sampled=kw["sampled"], max_tokens=kw["max_tokens"], n_samples=n_samples,
                        temperature=0.8, top_logprobs=kw["top_logprobs"], seed=side_seed)
        except _NotCached:
            skipped.append(name)
            del models[name]
            continue
        finally:
            backend.close()
        timings[name] = time.perf_counter() - t0
        print(f"{name}: answers in {timings[name]:.1f} s", flush=True)
    # (regime, words compared, exact match of those words?) -- the shipped defaults first
    variants = [("greedy", 10, False), ("sampled", 3, True), ("sampled", 2, True), ("sampled", 3, False)]
    rows = []
    for (na, (fa, _)), (nb, (fb, _)) in itertools.combinations(models.items(), 2):
        for reg, pieces, exact in variants:
            kw = regimes[reg]
            sb = SEED_OFFSET_B if kw["sampled"] else 0
            r = compare_answers(answers[(na, reg, 0)], answers[(nb, reg, sb)], reg_prompts[reg], sampled=kw["sampled"],
                                prefix_pieces=pieces, exact_match=exact, n_resamples=199)
            rows.append({"a": na, "b": nb, "variant": f"{reg}/{pieces}{'/exact' if exact else ''}",
                         "known": "related" if fa == fb else "different",
                         "verdict": r.verdict, "statistic": r.unrelated_test.statistic, "n_obs": r.unrelated_test.n,
                         "mean_similarity": r.statistics["mean_similarity"],
                         "log10_p_unrelated": r.unrelated_test.log10_pvalue,
                         "logprob_distance": r.statistics.get("logprob_distance"),
                         "argmax_agreement": r.statistics.get("argmax_agreement"),
                         "cross_within_ratio": r.statistics.get("cross_within_ratio"),
                         "exact_agreement": r.statistics["exact_agreement"],
                         "first_topk_overlap": r.statistics.get("first_topk_overlap")})
    summary = {}
    for reg, pieces, exact in variants:
        name = f"{reg}/{pieces}{'/exact' if exact else ''}"
        mine = [r for r in rows if r["variant"] == name]
        diff = [r for r in mine if r["known"] == "different"]
        summary[name] = {
            "known_different_pairs": len(diff),
            "max_statistic_of_different_pairs": max(r["statistic"] for r in diff),
            "max_first_topk_overlap_of_different_pairs": max((r["first_topk_overlap"] or 0.0) for r in diff),
            "mean_statistic_of_different_pairs": sum(r["statistic"] for r in diff) / len(diff),
            "c0_in_use": C0_GREEDY if reg == "greedy" else C0_SAMPLED,
            "false_positive_rate_same": sum(r["verdict"] == "same" for r in diff) / len(diff),
            "false_positive_rate_same_or_related": sum(r["verdict"] != "different" for r in diff) / len(diff),
            "alpha": DEFAULT_ALPHA,
            "related_pairs": [r for r in mine if r["known"] == "related"],
        }
    for name, s_ in summary.items():
        print(name, json.dumps({k: v for k, v in s_.items() if k != "related_pairs"}))
        for r in s_["related_pairs"]:
            print("   related:", r["a"], r["b"], r["verdict"], round(r["statistic"], 3), r["log10_p_unrelated"], r["first_topk_overlap"],
                  r["logprob_distance"], r["argmax_agreement"], r["cross_within_ratio"])
    return {"pairs": rows, "summary": summary, "answer_seconds": timings, "skipped_not_cached": skipped, "n_samples": n_samples,
            "n_prompts": {k: len(v) for k, v in reg_prompts.items()}, "models": {k: str(v[1]) for k, v in models.items()}}


def acceptance(threads: int, n_samples: int, sampled_prompts: int, finetune_dir: str | None) -> dict:
    """The issue's acceptance runs against a real llama_cpp.server on 127.0.0.1 (started here) and a
    text-only sampling proxy in front of it; local answers come from the calibration cache."""
    from _fixtures_behave import TextOnlySamplingProxy, requantized, start_llama_server, stop
    from weightprint.behave.identify import identify_model

    prompts = load_prompts("default")
    sampled_subset = prompts[::max(1, len(prompts) // sampled_prompts)][:sampled_prompts]
    cache = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint")) / "behave_bench.db"
    models = zoo(True, finetune_dir)
    sm = models["smollm2"][1]
    http = {"cache": cache.with_name("behave_acceptance_http.db"), "concurrency": 1, "timeout": 900}
    local = {name: CachedBackend(open_backend(models[name][1], n_threads=threads, n_ctx=512), cache, model_identity(models[name][1]))
             for name in ("smollm2", "smollm2-q8_0", "smollm2-ft200", "gemma3")}
    out: dict = {"runs": []}
    # a fixed port keeps the HTTP cache's keys (which include the URL) valid from one run to the next
    proc, url = start_llama_server(sm, threads=threads, port=int(os.environ.get("WEIGHTPRINT_BENCH_PORT", "41351")))
    try:
        with TextOnlySamplingProxy(url, temperature=0.8) as proxy:
            def run(target, plist, name):
                t0 = time.perf_counter()
                r = compare_models(target, local[name], prompts=plist, n_samples=n_samples, options_a=http)
                row = {"target": "server" if target == url else "text-only sampling proxy", "b": name,
                       "regime": r.mode, "verdict": r.verdict, "log10_p_unrelated": r.unrelated_test.log10_pvalue,
                       "summary": r.summary(), "statistics": r.statistics,
                       "tests": [t.to_dict() for t in r.tests], "seconds": time.perf_counter() - t0}
                out["runs"].append(row)
                print(json.dumps({k: row[k] for k in ("target", "b", "verdict", "summary")}), flush=True)
                _write("acceptance", out)  # partial results survive an interrupted run

            # models whose local answers are cached first; Gemma (slow log-probs over 262k tokens) last
            for name in ("smollm2", "smollm2-ft200", "smollm2-q8_0"):
                run(url, prompts, name)
            for name in ("smollm2", "smollm2-ft200", "smollm2-q8_0"):
                run(proxy.url, sampled_subset, name)
            q4k = requantized(sm, ftype=15, name="q4_k_m")
            cands = [local["gemma3"], local["smollm2-ft200"], local["smollm2-q8_0"],
                     CachedBackend(open_backend(q4k, n_threads=threads, n_ctx=512), cache, model_identity(q4k)), local["smollm2"]]
            t0 = time.perf_counter()
            idr = identify_model(url, cands, max_queries=8, target_options=http)
            out["identify"] = {**idr.to_dict(), "seconds": time.perf_counter() - t0}
            print(idr.summary(), flush=True)
            _write("acceptance", out)
            run(url, prompts, "gemma3")
            run(proxy.url, sampled_subset, "gemma3")
    finally:
        stop(proc)
        for b in local.values():
            b.close()
    return out


def likelihood(threads: int, n_samples: int, with_finetune: bool, sampled_prompts: int, finetune_dir: str | None,
               scorers: str | None = None) -> dict:
    """The likelihood test over the zoo: every model scores every model's samples (its own second
    sample set included: the same-model reference) against its own; per ordered pair the mean
    observation, the p-value of H0 unrelated and the verdict."""
    from weightprint.behave.compare import C0_LIKELIHOOD, likelihood_observations

    prompts = load_prompts("default")
    prompts = prompts[::max(1, len(prompts) // sampled_prompts)][:sampled_prompts]
    cache = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint")) / "behave_bench.db"
    models = zoo(with_finetune, finetune_dir)
    kw = dict(sampled=True, max_tokens=8, n_samples=n_samples, temperature=0.8, top_logprobs=0)
    answers = {}
    for name, (_, path) in models.items():
        with CachedBackend(open_backend(path, n_threads=threads, n_ctx=512), cache, model_identity(path)) as b:
            for sd in (0, SEED_OFFSET_B):
                answers[(name, sd)] = collect_answers(b, prompts, seed=sd, **kw)
    rows = []
    for sname, (sfam, spath) in models.items():
        if scorers and not any(x in sname for x in scorers.split(",")):
            continue
        t0 = time.perf_counter()
        with open_backend(spath, n_threads=threads, n_ctx=512) as scorer:
            for oname, (ofam, _) in models.items():
                ev = likelihood_observations(scorer, prompts, answers[(sname, 0)], answers[(oname, SEED_OFFSET_B)])
                r = compare_answers(answers[(sname, 0)], answers[(oname, SEED_OFFSET_B)], prompts, sampled=True,
                                    prefix_pieces=3, n_resamples=99, likelihood=(sname, ev))
                lk = next((t for t in r.tests if t.name == "unrelated-null-likelihood"), None)
                known = "same" if sname == oname else "related" if sfam == ofam else "different"
                mean = float(ev.observations.mean()) if ev.observations.size else 0.0
                rows.append({"scorer": sname, "other": oname, "known": known, "mean": mean, "n": int(ev.observations.size),
                             "applicable": ev.applicable, "scorer_prompt_specific": ev.own_specific,
                             "gate_log10_pvalue": ev.gate_log10_pvalue,
                             "log10_p_unrelated": lk.log10_pvalue if lk else None, "verdict": r.verdict})
                print(f"{sname:>16} <- {oname:<16} {known:9} mean {mean:.3f} specific {ev.own_specific:.2f} "
                      f"{'applies' if ev.applicable else 'n/a'} p 10^{(lk.log10_pvalue if lk else 0):.1f} {r.verdict}", flush=True)
        print(f"{sname}: scored in {time.perf_counter() - t0:.0f} s", flush=True)
    diff = [r for r in rows if r["known"] == "different"]
    applied = [r for r in diff if r["applicable"]]
    return {"what": "likelihood test, every scorer x every model's samples (16 prompts x n samples, T = 0.8, 8 tokens)",
            "rows": rows, "c0_in_use": C0_LIKELIHOOD, "known_different_pairs": len(diff),
            "known_different_pairs_where_the_test_applies": len(applied),
            "max_mean_of_different_pairs_where_the_test_applies": max((r["mean"] for r in applied), default=None),
            "max_mean_of_different_pairs": max(r["mean"] for r in diff),
            "false_positive_rate_same": sum(r["verdict"] == "same" for r in diff) / len(diff),
            "false_positive_rate_same_or_related": sum(r["verdict"] != "different" for r in diff) / len(diff),
            "same_model_means": [r["mean"] for r in rows if r["known"] == "same"], "n_samples": n_samples,
            "models": {k: str(v[1]) for k, v in models.items()}}


def _chat_corpus() -> str:
    """The shipped training text as ChatML turns: "Continue this passage: <20 words>" -> the rest."""
    import re

    from weightprint.testing.corpus import training_text

    out = []
    for p in (p.strip() for p in re.split(r"\n\s*\n", training_text())):
        words = p.split()
        if len(words) > 40:
            out.append(f"<|im_start|>user\nContinue this passage: {' '.join(words[:20])}<|im_end|>\n"
                       f"<|im_start|>assistant\n{' '.join(words[20:])}<|im_end|>\n")
    return "".join(out)


def power(threads: int, sampled_steps: tuple[int, ...] = (25,)) -> dict:
    """`compare` SmolLM2 (Q4_1) against full fine-tunes of it of increasing length (lr 1e-4, AdamW,
    the shipped prose corpus; and 200 steps on the same text as chat turns): where does the
    verdict turn from `same`/`related` to `different`, and at what weight drift."""
    from weightprint.testing.derive import derived
    from weightprint.testing.hfdir import read_derive_info
    from weightprint.testing.models import smollm2_path

    smol = smollm2_path()
    variants = [(f"prose, {n} steps", dict(steps=n, seed=0)) for n in (10, 25, 50, 100, 200)]
    variants.append(("chat turns, 200 steps", dict(steps=200, seed=0, text=_chat_corpus())))
    rows = []
    for name, params in variants:
        ft = derived("finetune", smol, **params)
        gguf = derived("gguf", ft, file_type="Q8_0")
        info = (read_derive_info(ft).get("result") or {})
        for sampled in (False, True) if params["steps"] in sampled_steps else (False,):
            r = compare_models(str(smol), str(gguf), sampled=sampled, options_a={"n_threads": threads},
                               options_b={"n_threads": threads})
            row = {"finetune": name, "steps": params["steps"], "relative_drift": info.get("relative_drift"),
                   "regime": r.mode, "verdict": r.verdict, "log10_p_unrelated": r.unrelated_test.log10_pvalue,
                   "statistics": {k: v for k, v in r.statistics.items() if isinstance(v, (int, float)) or v is None},
                   "tests": {t.name: {"statistic": t.statistic, "log10_pvalue": t.log10_pvalue} for t in r.tests}}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("finetune", "relative_drift", "regime", "verdict")}), flush=True)
    return {"reference": "SmolLM2-135M-Instruct Q4_1", "rows": rows}


def _probe_zoo(with_tiny: bool = False) -> dict[str, tuple[str, Path]]:
    """SmolLM2, its Q8_0, two 200-step fine-tunes, Gemma 3 and Gemma 3 under SmolLM2's tokenizer
    (and the six tiny llamas)."""
    from weightprint.testing.derive import derived
    from weightprint.testing.models import gemma3_path, smollm2_path

    smol = smollm2_path()
    models = {k: v for k, v in zoo(True).items() if with_tiny or not k.startswith("tiny")}
    models["smollm2-ftchat200"] = ("smollm2", derived("gguf", derived("finetune", smol, steps=200, seed=0, text=_chat_corpus()),
                                                      file_type="Q8_0"))
    models["gemma3-smollm2-tokenizer"] = ("gemma3", derived("transplant", gemma3_path(), tokenizer_source=smol))
    return models


def topk(threads: int) -> dict:
    """The context-specific top-5 test (greedy regime with log-probabilities) over a zoo that has
    *same-tokenizer* unrelated pairs at real quality: Gemma 3 under SmolLM2's tokenizer
    (weightprint.testing.transplant) against the SmolLM2 family, and six independent tiny llamas
    sharing one tokenizer. Per pair: the mean specific overlap over the suite prompts and the
    shipped probes (all, and per language), raw overlaps for comparison, the p-value of the
    unrelated null and the verdict of that test alone."""
    from weightprint.behave.compare import C0_TOPK, C0_TOPK_BY_LANG, probe_tops, specific_topk_overlaps, topk_test
    from weightprint.testing.derive import derived
    from weightprint.testing.models import smollm2_path

    smol = smollm2_path()
    models = _probe_zoo(with_tiny=True)
    for n in (10, 50):
        models[f"smollm2-ft{n}"] = ("smollm2", derived("gguf", derived("finetune", smol, steps=n, seed=0), file_type="Q8_0"))
    contexts = load_prompts("default") + load_prompts("probes")
    langs = [p.lang for p in contexts]
    cache = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint")) / "behave_bench.db"
    tops = {}
    for name, (_, path) in models.items():
        t0 = time.perf_counter()
        with CachedBackend(open_backend(path, n_threads=threads, n_ctx=512), cache, model_identity(path)) as b:
            tops[name], _ = probe_tops(b, [replace(p, chat=False) for p in contexts], top_logprobs=5)
        print(f"{name}: top-5 at {len(contexts)} contexts in {time.perf_counter() - t0:.1f} s", flush=True)

    def raw(a, b):
        return [len(x & y) / len(x | y) for x, y in zip(a, b) if x is not None and y is not None]

    rows = []
    for (na, (fa, _)), (nb, (fb, _)) in itertools.combinations(models.items(), 2):
        if na.startswith("tiny") != nb.startswith("tiny"):
            continue  # no token string in common to speak of (1,024-token tokenizer vs 49k)
        ov = specific_topk_overlaps(tops[na], tops[nb])
        test = topk_test(ov, langs)
        m = test.statistic
        by_lang = {lang: g["mean"] for lang, g in test.evidence["by_language"].items()}
        lp = test.log10_pvalue
        rows.append({"a": na, "b": nb, "related": fa == fb, "specific_overlap": m, "by_language": by_lang,
                     "by_language_log10_p": {k: g["log10_pvalue"] for k, g in test.evidence["by_language"].items()},
                     "raw_overlap": float(np.mean(raw(tops[na], tops[nb]))), "n": test.n, "log10_p": lp,
                     "rejects_at_5e-4": bool(lp < np.log10(5e-4))})
        print(f"{na:26s} {nb:26s} {'related' if fa == fb else 'unrelated':9s} specific {m:.3f} raw {rows[-1]['raw_overlap']:.3f} "
              f"log10 p {lp:8.2f}  " + " ".join(f"{k} {v:.2f}" for k, v in by_lang.items()), flush=True)
    unrelated = [r for r in rows if not r["related"]]
    real_unrelated = [r for r in unrelated if not r["a"].startswith("tiny")]
    return {"what": "context-specific top-5 overlap (generic tokens of each side removed) over suite prompts + probes",
            "c0": C0_TOPK, "c0_by_language": C0_TOPK_BY_LANG, "n_contexts": len(contexts), "rows": rows,
            "largest_unrelated": max(r["specific_overlap"] for r in unrelated),
            "largest_unrelated_real": max(r["specific_overlap"] for r in real_unrelated),
            "largest_unrelated_real_by_language": {lang: max(r["by_language"][lang] for r in real_unrelated) for lang in dict.fromkeys(langs)},
            "false_positives": sum(r["rejects_at_5e-4"] for r in unrelated), "unrelated_pairs": len(unrelated),
            "related_detected": sum(r["rejects_at_5e-4"] for r in rows if r["related"]),
            "related_pairs": sum(r["related"] for r in rows)}


def _next_token_logprobs(path: Path, prompts: list, threads: int) -> tuple[np.ndarray, list[str]]:
    """The next-token log-probabilities at each prompt, and the vocabulary's token strings."""
    from llama_cpp import Llama

    m = Llama(model_path=str(path), n_ctx=256, verbose=False, n_threads=threads, logits_all=True)
    strings = [m.detokenize([i]).decode("utf-8", errors="ignore") for i in range(m.n_vocab())]
    out = np.zeros((len(prompts), m.n_vocab()), np.float32)
    for i, p in enumerate(prompts):
        m.reset()
        m.eval(m.tokenize(p.prompt.encode(), add_bos=True, special=False))
        lg = np.array(m.scores[m.n_tokens - 1], dtype=np.float64)
        lg -= lg.max()
        out[i] = lg - np.log(np.exp(lg).sum())
    return out, strings


def membership(threads: int, n_samples: int) -> dict:
    """The probe-membership test (sampled regime, the other side text only) over the probe zoo:
    (1) the pipeline itself, every local model scoring every other's one-token samples at the
    probes (temperature 0.8, ``n_samples`` per probe); (2) the exact expectation of each
    observation from the models' next-token distributions at sampling temperatures 0.05-1.0, token
    strings matched as the pipeline matches them (the endpoint's temperature is unknown, so the
    null bound must cover all of them)."""
    import collections

    from weightprint.behave.compare import C0_MEMBERSHIP_BY_LANG, GENERIC_TOKEN_SHARE, probe_membership

    models = _probe_zoo()
    probes = load_prompts("probes")
    cache = Path(os.environ.get("WEIGHTPRINT_CACHE", Path.home() / ".cache" / "weightprint")) / "behave_bench.db"
    backends = {name: CachedBackend(open_backend(path, n_threads=threads, n_ctx=512), cache, model_identity(path))
                for name, (_, path) in models.items()}
    rows = []
    try:
        for (ns, (fs, _)), (no, (fo, _)) in itertools.product(models.items(), repeat=2):
            if ns == no:
                continue
            t, _, _ = probe_membership(backends[ns], backends[no], probes, n_samples=n_samples, temperature=0.8, seed=100_003)
            rows.append({"scorer": ns, "sampler": no, "related": fs == fo, "mean": t.statistic, "n": t.n,
                         "log10_p": t.log10_pvalue, "by_language": {k: g["mean"] for k, g in t.evidence["by_language"].items()}})
            print(f"scorer {ns:26s} samples {no:26s} {'related' if fs == fo else 'unrelated':9s} {t.statistic:.3f} "
                  f"log10 p {t.log10_pvalue:8.2f}", flush=True)
    finally:
        for b in backends.values():
            b.close()
    # exact expectations from the next-token distributions; token strings compared as the pipeline does
    langs = np.array([p.lang for p in probes])
    lp, strings = {}, {}
    for k, (_, path) in models.items():
        lp[k], strings[k] = _next_token_logprobs(path, probes, threads)
    exact = []
    for ns, no in itertools.permutations(models, 2):
        top = np.argsort(-lp[ns], axis=1)[:, :5]
        counts = collections.Counter(t for row in top for t in row)
        generic = {t for t, c in counts.items() if c >= max(2, GENERIC_TOKEN_SHARE * len(top))}
        specific = [{strings[ns][t] for t in row if t not in generic} for row in top]
        ids_of = collections.defaultdict(list)  # sampler's token ids by string
        for i, text in enumerate(strings[no]):
            ids_of[text].append(i)
        for temp in (0.05, 0.5, 0.8, 1.0):
            x = lp[no] / temp
            x -= x.max(axis=1, keepdims=True)
            p = np.exp(x)
            p /= p.sum(axis=1, keepdims=True)
            m = np.array([p[i, [j for text in specific[i] for j in ids_of.get(text, ())]].sum() for i in range(len(probes))])
            exact.append({"scorer": ns, "sampler": no, "related": models[ns][0] == models[no][0], "temperature": temp,
                          "by_language": {lang: float(m[langs == lang].mean()) for lang in dict.fromkeys(langs)}})
    unrelated = [r for r in exact if not r["related"]]
    related = [r for r in exact if r["related"]]
    by_lang = {lang: {"largest_unrelated": max(r["by_language"][lang] for r in unrelated),
                      "smallest_related": min(r["by_language"][lang] for r in related)} for lang in dict.fromkeys(langs)}
    print(json.dumps(by_lang, indent=1))
    return {"what": "probe membership: the other side's one-token samples among the scorer's context-specific top-5",
            "c0_by_language": C0_MEMBERSHIP_BY_LANG, "samples_per_probe": n_samples, "pipeline": rows, "exact": exact,
            "exact_summary_by_language": by_lang,
            "pipeline_false_positives": int(sum(r["log10_p"] < np.log10(5e-4) for r in rows if not r["related"])),
            "pipeline_unrelated_pairs": sum(not r["related"] for r in rows),
            "pipeline_related_detected": int(sum(r["log10_p"] < np.log10(5e-4) for r in rows if r["related"])),
            "pipeline_related_pairs": sum(r["related"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["speed", "calibrate", "acceptance", "likelihood", "power", "topk", "membership"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--probe-samples", type=int, default=16, help="membership: one-token samples per probe")
    ap.add_argument("--finetune", action="store_true", help="include the 200-step fine-tune (built once, slow)")
    ap.add_argument("--finetune-dir", help="an already fine-tuned Hugging Face directory to use instead of building one")
    ap.add_argument("--cached-only", action="store_true", help="use only the answers already cached (skip other models)")
    ap.add_argument("--reverse", action="store_true", help="answer in reverse model order (a second process shares the cache)")
    ap.add_argument("--sampled-prompts", type=int, default=16, help="prompts of the sampled regime (evenly spaced)")
    ap.add_argument("--scorers", help="likelihood: only the scorers whose names contain one of these (comma-separated)")
    args = ap.parse_args()
    if args.mode == "likelihood":
        print(_write("likelihood" + ("_" + args.scorers.replace(",", "_") if args.scorers else ""),
                     likelihood(args.threads, args.samples, args.finetune or bool(args.finetune_dir), args.sampled_prompts,
                                args.finetune_dir, args.scorers)))
        return
    if args.mode == "power":
        print(_write("power", power(args.threads)))
        return
    if args.mode == "topk":
        _write("topk", topk(args.threads))
        return
    if args.mode == "membership":
        _write("membership", membership(args.threads, args.probe_samples))
        return
    if args.mode == "acceptance":
        print(_write("acceptance", acceptance(args.threads, args.samples, args.sampled_prompts, args.finetune_dir)))
        return
    data = speed(args.threads) if args.mode == "speed" else calibrate(args.threads, args.samples, args.finetune or bool(args.finetune_dir), args.sampled_prompts, args.reverse,
                  args.finetune_dir, args.cached_only)
    print(_write(args.mode, data))


if __name__ == "__main__":
    main()
