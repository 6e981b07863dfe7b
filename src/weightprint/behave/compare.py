"""Black-box comparison: do two models (files, directories or endpoints) behave as one model?

Both sides complete the same prompts (:mod:`weightprint.behave.suites`). Two regimes:

- **greedy** (both sides deterministic): one greedy continuation per prompt. Statistics: exact
  agreement (identical continuations), token-level agreement (common token prefix where both
  sides give tokens, else common word prefix), and, where both give log-probabilities, the
  log-prob distance (mean ``|log p_A(t) - log p_B(t)|`` of the chosen tokens over the shared
  prefix) and the raw arg-max agreement there (from the reported top log-probabilities, which
  are the model's own, before any repetition penalty the server applies).
- **sampled** (an endpoint samples even when asked for ``temperature=0``, or ``sampled=True``):
  ``n_samples`` completions per prompt from each side at ``temperature``, as in Model
  Provenance Testing (Nikolić et al. 2025): per-prompt match rates between the two sides
  (cross) and within each side (within).

**The same-model test.** An observation ``s`` in [0, 1] is the prefix similarity of two
continuations, one from each side, measured on their first ``prefix_pieces`` words (CJK
characters count as words): greedy, one per prompt; sampled, one per disjoint pair (the j-th
sample of A with the j-th of B), so N prompts x m samples give N m independent observations.
H0: *A and B are unrelated models*, i.e. the average expectation of the observations is at
most ``c0``, the largest mean similarity measured over known-different pairs (real models and
independently initialised tiny models; ``bench/bench_compare.py``) plus a margin. The
observations are independent and bounded, so the Chernoff-Hoeffding bound in KL form,
``P(mean >= m) <= exp(-n KL(m || c0))``, is a valid p-value whatever the per-prompt means.
The identity question (``same`` or ``related``) is asked only after H0 is rejected, a fixed
sequence of tests, so the chance of any false claim stays at ``alpha``.

Greedy answers that a side also gives to another prompt (its first ``prefix_pieces // 2``
words equal), or that loop (at most half of the compared words distinct), do not depend on the
prompt -- a degenerate model looping on one phrase -- and are no evidence of identity: their observations count as 0 (which can only make the test more
conservative). Two briefly trained tiny models agree on 25-40% of such loops otherwise.

**The likelihood test** (sampled regime, when a side can score text: a local model). Sampled
continuations rarely share even three words, so the prefix test has little power there; instead
the scoring side's model compares how well it expected the other side's j-th sample of each
prompt with how well it expected its own j-th sample (mean centred log-probability,
``log p - E[log p]`` per token): 1 when the other's is higher, 1/2 on a tie, 0 otherwise
(:func:`likelihood_observations`). For one model, sampling alike, the two samples are
exchangeable and every observation has mean 1/2; an unrelated model's samples are expected less
well. H0 *unrelated*: mean at most ``C0_LIKELIHOOD``, by the same Chernoff bound over the
disjoint pairs; rejected, the verdict is ``same`` when the mean is at least ``SAME_LIKELIHOOD``,
else ``related``. The test is used only when the scorer reads its prompts
(:attr:`LikelihoodEvidence.applicable`). The other side needs to return text only. The
unrelated-null tests of a regime share ``alpha`` (Bonferroni).

**The probe tests** (one-token *probe* prompts, the shipped ``probes`` suite). Greedy, both sides
with log-probabilities: per context (suite prompts and probes), the Jaccard overlap of the two
sides' top-5 next-token strings after each side's *generic* tokens (in its own top-5 at 10% of
the contexts or more) are left out (:func:`specific_topk_overlaps`, :func:`topk_test`). Sampled,
with a local scorer: whether the other side's one-token samples at the code probes fall among the
scorer's specific top-5 (:func:`probe_membership`). Both are tested per language against null
bounds measured on real unrelated models that share a tokenizer (Gemma 3 under SmolLM2's
vocabulary, :mod:`weightprint.testing.transplant`), by :func:`language_test`: a fine-tune moves
the next tokens of what it was trained on and leaves the rest, where unrelated models disagree.

**Verdict.** ``different`` when that p-value is not below ``alpha``; otherwise ``same`` when
the sides are indistinguishable at the precision the regime allows (greedy with log-probs: the
arg-max agrees at >= 97% of the shared positions and the log-prob distance is <= 0.1 nats;
greedy text only: mean similarity >= 0.9; sampled: cross/within ratio >= 0.8, within being the
mean of the two sides' own match rates), else
``related`` (a fine-tune, a different quantization, a merge), with the drift statistics as
evidence. A sampled regime also reports a permutation test of H0 *both sides sample the same
distribution* (labels exchanged within each prompt).
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from weightprint.behave.backends.base import Backend, GenerateRequest, Generation, LoglikelihoodRequest, open_backend
from weightprint.behave.suites import Prompt, load_prompts
from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress, substep
from weightprint.results import LN10, TestResult, VerdictResult, format_pvalue, to_jsonable

__all__ = [
    "C0_GREEDY", "C0_MEMBERSHIP_BY_LANG", "C0_SAMPLED", "C0_TOPK", "C0_TOPK_BY_LANG", "CompareResult",
    "GENERIC_TOKEN_SHARE", "Side", "chernoff_log10_pvalue", "collect_answers", "compare_answers", "compare_models", "first_topk", "generic_tokens", "prefix_similarity",
    "probe_membership", "probe_tops", "specific_topk_overlaps", "text_pieces", "topk_bound", "topk_test",
]

#: null bounds of the mean similarity of unrelated models (see module docstring). Greedy: the
#: largest mean over 33 known-different pairs (SmolLM2 family x 6 independently initialised tiny
#: llamas of 4 shapes, tiny x tiny) was 0.0 after the generic-answer rule (0.42 before it), so 0.1
#: leaves a margin (bench/results/bench_compare_calibrate.json); SmolLM2 vs Gemma 3 measured 0.038
#: (21 prompts). Sampled: not calibrated beyond those pairs (largest seen 0.016); 0.25 is kept.
C0_GREEDY = 0.1
C0_SAMPLED = 0.25
#: null bounds of the mean *context-specific* top-5 overlap (:func:`specific_topk_overlaps`) of
#: unrelated models, per language of the contexts (suite prompts and shipped probes), and for any
#: other language. The null was measured on real unrelated pairs that share SmolLM2's token
#: strings -- Gemma 3 under SmolLM2's own tokenizer (weightprint.testing.transplant: an
#: independently trained model, same vocabulary) and Gemma 3 itself -- against SmolLM2, its
#: requantization and its fine-tunes (bench/results/bench_compare_topk.json): English at most 0.40,
#: code at most 0.26. Russian, German, French and Chinese measured lower (0.03-0.31), but there the
#: transplant is degraded (SmolLM2 splits those words into pieces Gemma 3 never saw together), so
#: they get the English bound, the largest: a fluent unrelated model is assumed to agree with
#: another no more in those languages than in English. Each bound is the measured largest plus
#: a margin of a quarter or more.
C0_TOPK_BY_LANG = {"code": 0.33}
C0_TOPK = 0.5
#: languages with fewer observations than this join the pooled test only (the probe tests)
MIN_LANGUAGE_GROUP = 10
#: null bounds of the probe-membership test (sampled regime, text only: the other side's sampled
#: next token at a probe is among the scorer's context-specific top-5), per probe language; only
#: these languages are sampled. Computed exactly from next-token distributions (token strings
#: matched as the test matches them), the SmolLM2 family vs Gemma 3 and vs Gemma 3 under SmolLM2's
#: tokenizer, both ways, at sampling temperatures 0.05-1.0 (the endpoint's is unknown, and the
#: null is largest near greedy): code at most 0.50, so 0.63 (English up to 0.86: no test there);
#: the SmolLM2 family 0.77-0.94 on code near greedy (bench/results/bench_compare_membership.json)
C0_MEMBERSHIP_BY_LANG = {"code": 0.63}
#: one-token samples per probe and side for that test (97 code probes: 1,552 observations)
PROBE_SAMPLES = 16

#: a token in a side's top-k at this share of the contexts or more is *generic* for that side (",",
#: " the", "\n"...) and left out of its top-k sets: two models that share a tokenizer agree on
#: their frequent tokens whatever their weights (six independent tiny llamas with one tokenizer:
#: 0.28-0.51 raw overlap, at most 0.05 after this filter)
GENERIC_TOKEN_SHARE = 0.1
#: null bound of the likelihood-test observations of unrelated models (see :func:`likelihood_observations`):
#: over the zoo of bench/bench_compare.py (16 prompts x 6 samples, every model scoring every model's
#: samples), unrelated pairs where the test applies measured at most 0.21 (SmolLM2's Q8_0 scoring
#: Gemma 3's samples; SmolLM2 0.19; Gemma 3 scoring SmolLM2's 0.14, its fine-tune's 0.05; real
#: models scoring tiny ones 0), the same model 0.50-0.55: 0.3 is 2 standard errors above the largest
#: unrelated pair
C0_LIKELIHOOD = 0.3
#: mean likelihood observation at or above which a significant likelihood test says ``same``
#: (0.5 for one model: its samples are exchangeable with the scorer's own); below it, ``related``
SAME_LIKELIHOOD = 0.4
#: the likelihood test is used when the scorer's own samples fit their prompt better than a foreign
#: one more often than chance, at this level (log10)
GATE_LOG10_ALPHA = -3.0
#: ... and at least this fraction of them (SmolLM2: 0.98; 60-step tiny llamas: 0.66-0.89)
MIN_SCORER_SPECIFIC = 0.9
#: default significance level of "not unrelated"
DEFAULT_ALPHA = 1e-3
SAME_ARGMAX_AGREEMENT = 0.97
SAME_LOGPROB_DISTANCE = 0.1
SAME_TEXT_SIMILARITY = 0.9
SAME_SAMPLED_RATIO = 0.8
#: B's sample seeds start here (A's at ``seed``)
SEED_OFFSET_B = 100_003

_PIECE_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+|[^\w\s]")


def text_pieces(text: str) -> list[str]:
    """Words, single CJK characters and single punctuation marks of ``text``, in order.

    Whitespace is dropped, so two tokenizers that split a text differently give the same pieces.
    """
    return _PIECE_RE.findall(text)


def prefix_similarity(a: str, b: str, n: int) -> float:
    """Common-prefix length of the first ``n`` pieces of two texts, over ``n`` (a shorter text is
    padded with an end marker, so two texts that both stop early still agree there)."""
    pa, pb = text_pieces(a)[:n], text_pieces(b)[:n]
    pa += [None] * (n - len(pa))  # type: ignore[list-item]
    pb += [None] * (n - len(pb))  # type: ignore[list-item]
    k = 0
    for x, y in zip(pa, pb):
        if x != y:
            break
        k += 1
    return k / n


def chernoff_log10_pvalue(mean: float, c0: float, n: int) -> float:
    """log10 of ``exp(-n KL(mean || c0))``: the Chernoff-Hoeffding bound on P(mean of n independent
    [0, 1] variables >= ``mean``) when their average expectation is at most ``c0`` (0 when mean <= c0)."""
    if n <= 0 or mean <= c0:
        return 0.0
    m = min(mean, 1.0)
    kl = m * math.log(m / c0) + ((1 - m) * math.log((1 - m) / (1 - c0)) if m < 1 else 0.0)
    return float(-n * kl / LN10)


# ----------------------------------------------------------------------------------------------
# Collecting answers
# ----------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side's answers: per prompt, a list of generations (one in greedy mode)."""

    label: str
    answers: list[list[Generation]]
    logprobs: bool
    queries: int


def collect_answers(backend: Backend, prompts: Sequence[Prompt], *, sampled: bool, max_tokens: int,
                    n_samples: int, temperature: float, top_logprobs: int, seed: int,
                    progress: ProgressCallback | None = None) -> Side:
    """Ask ``backend`` for greedy continuations (or ``n_samples`` samples) of every prompt."""
    progress = progress or no_progress
    caps = backend.capabilities
    k = min(top_logprobs, caps.max_top_logprobs) if (caps.logprobs and top_logprobs and not sampled) else 0
    reqs: list[GenerateRequest] = []
    for p in prompts:
        if sampled:
            reqs += [GenerateRequest(prompt=p.prompt, max_tokens=max_tokens, temperature=temperature,
                                     seed=seed + j, chat=p.chat) for j in range(n_samples)]
        else:
            reqs.append(GenerateRequest(prompt=p.prompt, max_tokens=max_tokens, temperature=0.0, seed=seed,
                                        chat=p.chat, top_logprobs=k))
    gens = backend.generate(reqs, progress=progress)
    per = n_samples if sampled else 1
    answers = [gens[i * per:(i + 1) * per] for i in range(len(prompts))]
    has_lp = bool(k) and all(g.token_logprobs is not None for g in gens)
    return Side(label=backend.label or backend.name, answers=answers, logprobs=has_lp, queries=len(reqs))


def probe_tops(backend: Backend, probes: Sequence[Prompt], *, top_logprobs: int, seed: int = 0,
               progress: ProgressCallback | None = None) -> tuple[list[frozenset[str] | None], int]:
    """A backend's top-k next tokens at one-token probe prompts, and the queries that took.

    The top-k test needs no continuation, only the next-token candidates at a shared context, so
    each probe asks for one token: the 316 shipped probes cost about what 20 suite prompts of 16
    tokens do.
    """
    side = collect_answers(backend, probes, sampled=False, max_tokens=1, n_samples=1, temperature=0.0,
                           top_logprobs=top_logprobs, seed=seed, progress=progress)
    return [first_topk(a[0]) if side.logprobs else None for a in side.answers], side.queries


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareResult(VerdictResult):
    """Verdict of :func:`compare_models`: ``same``, ``related`` or ``different``."""

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset({"same", "related"})

    a: str
    b: str
    verdict: str
    mode: str
    n_prompts: int
    tests: tuple[TestResult, ...]
    statistics: dict[str, Any]
    per_prompt: tuple[dict[str, Any], ...] = ()
    queries: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    alpha: float = DEFAULT_ALPHA

    @property
    def evidence(self) -> list[TestResult]:
        return list(self.tests)

    @property
    def unrelated_test(self) -> TestResult:
        return self.tests[0]

    def summary(self) -> str:
        s = self.statistics
        bits = [f"{self.verdict}: {self.a} vs {self.b}", f"{self.mode}, {self.n_prompts} prompts",
                f"similarity {s['mean_similarity']:.3f}", self.unrelated_test.pvalue_text() + " (H0: unrelated)"]
        if s.get("logprob_distance") is not None:
            bits.append(f"log-prob distance {s['logprob_distance']:.3g}")
        if s.get("cross_within_ratio") is not None:
            bits.append(f"cross/within {s['cross_within_ratio']:.2f}")
        return "; ".join(bits)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "kind": "compare", "a": self.a, "b": self.b, "verdict": self.verdict, "mode": self.mode,
            "n_prompts": self.n_prompts, "alpha": self.alpha, "statistics": self.statistics,
            "tests": [t.to_dict() for t in self.tests], "per_prompt": list(self.per_prompt),
            "queries": self.queries, "seconds": self.seconds,
        })


def first_topk(g: Generation) -> frozenset[str] | None:
    """The token strings of a generation's top-k first tokens (its prompt's next-token candidates), or None."""
    if not g.top_logprobs or not g.top_logprobs[0]:
        return None
    return frozenset(g.top_logprobs[0])


def generic_tokens(tops: Sequence[frozenset[str] | None], share: float = GENERIC_TOKEN_SHARE) -> frozenset[str]:
    """The tokens in at least ``share`` of a side's top-k sets (and in at least two of them)."""
    sets = [t for t in tops if t is not None]
    counts = Counter(tok for t in sets for tok in t)
    need = max(2.0, share * len(sets))
    return frozenset(tok for tok, c in counts.items() if c >= need)


def specific_topk_overlaps(tops_a: Sequence[frozenset[str] | None], tops_b: Sequence[frozenset[str] | None],
                           share: float = GENERIC_TOKEN_SHARE) -> np.ndarray:
    """Per context: the Jaccard overlap of the two sides' top-k next-token strings, each side's
    *generic* tokens (:func:`generic_tokens`, from its own top-k sets over all the contexts) left
    out; 0 when nothing specific is left, NaN where a side gave no top-k.

    Two models that share a tokenizer agree on the frequent tokens (",", " the", "\\n") whatever
    their weights, and a barely trained model predicts only those: six independent tiny llamas with
    one tokenizer overlap 0.28-0.51 before the filter, at most 0.05 after it. What is left is the
    context-specific part of the next-token candidates, which a fine-tune keeps where it did not
    train (SmolLM2 vs its 200-step prose fine-tune: 0.61 on code) and an independently trained
    model shares less (Gemma 3 under SmolLM2's tokenizer: 0.21 on code, 0.35 on English).
    """
    ga, gb = generic_tokens(tops_a, share), generic_tokens(tops_b, share)
    out = np.full(len(tops_a), np.nan)
    for i, (a, b) in enumerate(zip(tops_a, tops_b)):
        if a is None or b is None:
            continue
        sa, sb = a - ga, b - gb
        union = sa | sb
        out[i] = len(sa & sb) / len(union) if union else 0.0
    return out


def topk_bound(lang: str) -> float:
    """The null bound of the context-specific top-k overlap for contexts in ``lang``."""
    return C0_TOPK_BY_LANG.get(lang, C0_TOPK)


def language_test(x: np.ndarray, langs: Sequence[str], bound: Callable[[str], float], *, name: str,
                  null_hypothesis: str, method: str, evidence: dict[str, Any] | None = None) -> TestResult | None:
    """An unrelated-null test of observations in [0, 1] whose null bound depends on the language of
    their context: one Chernoff-Hoeffding test per language with at least ``MIN_LANGUAGE_GROUP``
    observations (against ``bound(lang)``) and, where there are two languages or more, one over all
    of them (against the mean of their bounds: valid for independent observations whose means
    differ), combined by Bonferroni. NaN observations are left out."""
    ok = ~np.isnan(x)
    if not ok.any():
        return None
    x = x[ok]
    lg = [l for l, k in zip(langs, ok) if k]
    groups: dict[str, Any] = {}
    for lang in dict.fromkeys(lg):
        sel = np.array([l == lang for l in lg])
        m, c0, k = float(x[sel].mean()), float(bound(lang)), int(sel.sum())
        groups[lang] = {"n": k, "mean": m, "c0": c0,
                        "log10_pvalue": chernoff_log10_pvalue(m, c0, k) if k >= MIN_LANGUAGE_GROUP else None}
    parts = [g["log10_pvalue"] for g in groups.values() if g["log10_pvalue"] is not None]
    pooled = None
    if len(groups) > 1 or not parts:
        pooled_c0 = float(np.mean([bound(l) for l in lg]))
        pooled = {"mean": float(x.mean()), "c0": pooled_c0, "log10_pvalue": chernoff_log10_pvalue(float(x.mean()), pooled_c0, len(x))}
        parts.append(pooled["log10_pvalue"])
    combined = min(0.0, min(parts) + math.log10(len(parts)))
    best = min(groups, key=lambda k: groups[k]["log10_pvalue"] if groups[k]["log10_pvalue"] is not None else 0.0)
    return TestResult(
        name=name, statistic=float(x.mean()), log10_pvalue=combined, null_hypothesis=null_hypothesis, alternative="greater",
        method=(f"Chernoff-Hoeffding bound exp(-n KL(mean || c0)) per language" + (" and over all observations (c0 the mean "
                "of their bounds)" if pooled else "") + f", Bonferroni over the {len(parts)} tests; " + method),
        n=len(x), evidence={"by_language": groups, "pooled": pooled, "strongest_language": best, **(evidence or {})})


def topk_test(overlaps: np.ndarray, langs: Sequence[str], *, n_prompts: int = 0, n_probes: int = 0) -> TestResult | None:
    """The unrelated-null test of the context-specific top-k overlaps (:func:`specific_topk_overlaps`),
    per language (:func:`language_test`, bounds :func:`topk_bound`). A fine-tune moves the next
    tokens of what it trained on and leaves the rest: the evidence comes from what it left."""
    return language_test(
        overlaps, langs, topk_bound, name="unrelated-null-topk",
        null_hypothesis=("A and B are unrelated models: in every language of the contexts, the mean Jaccard overlap of "
                         "their context-specific top-k next tokens is at most that language's bound (calibrated on "
                         f"real unrelated models that share a tokenizer: code {topk_bound('code')}, other languages "
                         f"{C0_TOPK})"),
        method=("per context, the Jaccard overlap of the two top-k next-token sets with each side's generic tokens (in "
                f"its top-k at >= {GENERIC_TOKEN_SHARE:.0%} of the contexts) left out"
                + (f"; {n_prompts} suite prompts + {n_probes} one-token probe prompts" if n_probes else "")),
        evidence={"probe_prompts": n_probes, "generic_share": GENERIC_TOKEN_SHARE})


def membership_bound(lang: str) -> float:
    """The null bound of the probe-membership observations for probes in ``lang`` (1: no test)."""
    return C0_MEMBERSHIP_BY_LANG.get(lang, 1.0)


def probe_membership(scorer: Backend, other: Backend, probes: Sequence[Prompt], *, n_samples: int = PROBE_SAMPLES,
                     temperature: float, top_logprobs: int = 5, seed: int = 0,
                     progress: ProgressCallback | None = None) -> tuple[TestResult | None, int, int]:
    """Sampled regime, the other side text only: is its most likely next token at a probe among the
    scorer's context-specific top-k there? Returns the test (:func:`language_test` with the bounds
    :data:`C0_MEMBERSHIP_BY_LANG`) and the queries of the scorer and of the other side.

    The scorer (a local model) gives its top-k next tokens at every probe; its generic tokens
    (:func:`generic_tokens`) are left out. The other side is asked for ``n_samples`` one-token
    samples at the probes whose language has a bound (the code probes), and its most frequent
    sampled text there stands for its most likely next token: one observation per probe, 1 when
    that text is one of the scorer's specific top-k token strings (ties share the observation).
    The sampling temperature of an endpoint is unknown; the mode makes the observation nearly
    independent of it, and the bound is the null measured near greedy, where it is largest.
    """
    progress = progress or no_progress
    tops, q_scorer = probe_tops(scorer, probes, top_logprobs=top_logprobs, seed=seed, progress=substep(progress, 0, 2, "probes"))
    if not any(t is not None for t in tops):
        return None, q_scorer, 0
    generic = generic_tokens(tops)
    asked = [i for i, p in enumerate(probes) if membership_bound(p.lang) < 1.0 and tops[i] is not None]
    if not asked:
        return None, q_scorer, 0
    side = collect_answers(other, [probes[i] for i in asked], sampled=True, max_tokens=1, n_samples=n_samples,
                           temperature=temperature, top_logprobs=0, seed=seed, progress=substep(progress, 1, 2, "probe samples"))
    obs, langs = [], []
    for i, drawn in zip(asked, side.answers):
        specific = tops[i] - generic
        counts = Counter(g.text for g in drawn if g.text)
        if not counts:
            obs.append(0.0)
        else:  # the share of the most frequent sampled texts (ties) that are among the scorer's specific top-k
            top = max(counts.values())
            modes = [t for t, c in counts.items() if c == top]
            obs.append(sum(t in specific for t in modes) / len(modes))
        langs.append(probes[i].lang)
    test = language_test(
        np.asarray(obs), langs, membership_bound, name="unrelated-null-probe-membership",
        null_hypothesis=("A and B are unrelated models: the other side's most frequent sampled next token at a probe "
                         f"is among {scorer.label or scorer.name}'s context-specific top-k there no more often than the "
                         "bound of the probe's language (calibrated on real unrelated models that share a tokenizer, "
                         "for any sampling temperature: " + ", ".join(f"{k} {v}" for k, v in C0_MEMBERSHIP_BY_LANG.items()) + ")"),
        method=(f"one observation per probe: of the other side's {n_samples} one-token samples there (distinct seeds), the "
                "share of its most frequent texts that are among the scorer's top-k token strings, the scorer's generic "
                "tokens left out"),
        evidence={"scorer": scorer.label or scorer.name, "samples_per_probe": n_samples, "probes_sampled": len(asked)})
    return test, q_scorer, side.queries


def _logprob_stats(ga: Generation, gb: Generation) -> tuple[int, float, int, int] | None:
    """(shared positions, sum |dlogp|, arg-max agreements, positions with both top lists) over the common token prefix."""
    if ga.tokens is None or gb.tokens is None or ga.token_logprobs is None or gb.token_logprobs is None:
        return None
    n = 0
    dist = 0.0
    agree = tops = 0
    for j, (ta, tb) in enumerate(zip(ga.tokens, gb.tokens)):
        if ta != tb:
            break
        n += 1
        dist += abs(ga.token_logprobs[j] - gb.token_logprobs[j])
        if ga.top_logprobs and gb.top_logprobs and j < len(ga.top_logprobs) and j < len(gb.top_logprobs):
            da, db = ga.top_logprobs[j], gb.top_logprobs[j]
            if da and db:
                tops += 1
                agree += max(da, key=da.get) == max(db, key=db.get)
    return n, dist, agree, tops


def _token_agreement(ga: Generation, gb: Generation, n_pieces: int) -> float:
    if ga.tokens is not None and gb.tokens is not None:
        m = max(len(ga.tokens), len(gb.tokens), 1)
        k = 0
        for x, y in zip(ga.tokens, gb.tokens):
            if x != y:
                break
            k += 1
        return k / m
    return prefix_similarity(ga.text, gb.text, n_pieces)


def prefix_match(a: str, b: str, n: int) -> float:
    """1.0 when the first ``n`` pieces of two texts agree (both may end early), else 0.0."""
    return 1.0 if prefix_similarity(a, b, n) == 1.0 else 0.0


def _generic_answers(side: Side, n: int) -> np.ndarray:
    """Per prompt: does this side give (the first half of) the same greedy answer to another prompt
    too, or loop (at most n/2 distinct words among its first n)?

    A barely trained or broken model loops on the same phrase whatever it is asked (", and the c, and
    the c"); two such models agree without being one model. Their agreement on such answers is not
    counted (the observation is set to 0, which can only make the test more conservative).
    """
    texts = [a[0].text for a in side.answers]
    half = max(1, n // 2)
    pieces = [text_pieces(t)[:n] for t in texts]
    heads = [tuple(p[:half]) for p in pieces]
    counts: dict[tuple, int] = {}
    for h in heads:
        counts[h] = counts.get(h, 0) + 1
    shared = np.array([counts[h] > 1 for h in heads])  # empty and whitespace-only answers too
    looping = np.array([len(p) == n and len(set(p)) <= n // 2 for p in pieces])
    return shared | looping


def _mean_pair_similarity(xs: Sequence[str], ys: Sequence[str] | None, n: int, sim=prefix_similarity) -> float:
    if ys is None:  # within one side: distinct pairs
        vals = [sim(xs[i], xs[j], n) for i in range(len(xs)) for j in range(i + 1, len(xs))]
    else:
        vals = [sim(x, y, n) for x in xs for y in ys]
    return float(np.mean(vals)) if vals else 0.0


def _identity_permutation_test(texts_a: list[list[str]], texts_b: list[list[str]], n: int, *,
                               n_resamples: int, seed: int, sim=prefix_similarity) -> TestResult:
    """H0: per prompt, A's and B's samples come from one distribution (labels exchangeable within prompts)."""
    rng = np.random.default_rng(seed)
    sims = []
    for xa, xb in zip(texts_a, texts_b):
        allx = list(xa) + list(xb)
        m = len(allx)
        s = np.ones((m, m))
        for i in range(m):
            for j in range(i + 1, m):
                s[i, j] = s[j, i] = sim(allx[i], allx[j], n)
        sims.append((s, len(xa)))

    def stat(labels_list: list[np.ndarray]) -> float:
        tot = 0.0
        for (s, _), lab in zip(sims, labels_list):
            a, b = lab, ~lab
            na, nb = a.sum(), b.sum()
            wa = (s[np.ix_(a, a)].sum() - na) / max(na * (na - 1), 1)
            wb = (s[np.ix_(b, b)].sum() - nb) / max(nb * (nb - 1), 1)
            cr = s[np.ix_(a, b)].mean()
            tot += (wa + wb) / 2 - cr
        return tot / len(sims)

    observed_labels = [np.arange(s.shape[0]) < na for s, na in sims]
    observed = stat(observed_labels)
    null = np.empty(n_resamples)
    for r in range(n_resamples):
        null[r] = stat([rng.permutation(lab) for lab in observed_labels])
    p = (1 + np.sum(null >= observed - 1e-12)) / (n_resamples + 1)
    return TestResult(
        name="same-distribution", statistic=float(observed), log10_pvalue=float(math.log10(p)),
        null_hypothesis="for every prompt, A's and B's sampled continuations come from one distribution",
        alternative="greater", method="permutation of side labels within each prompt (+1 corrected)",
        n=len(sims), n_resamples=n_resamples, seed=seed, null_distribution=null,
        evidence={"what": "mean over prompts of within-side minus cross-side prefix similarity"},
    )


def _fit(result: Any, text: str) -> float:
    """How well the scorer's model expected ``text``: the mean over its tokens of
    ``log p(token) - E_{z~p}[log p(z)]`` (the log-probability centred by the model's own expectation
    at that position, so that a text's intrinsic predictability cancels; mean 0 for text the model
    samples itself at temperature 1), or the log-likelihood per UTF-8 byte when the backend gives
    no expectations."""
    if result.expected_logprobs and len(result.expected_logprobs) == len(result.token_logprobs):
        return float(np.mean(np.subtract(result.token_logprobs, result.expected_logprobs)))
    return result.logprob / max(len(text.encode("utf-8")), 1)


@dataclass(frozen=True)
class LikelihoodEvidence:
    """What :func:`likelihood_observations` found: ``observations`` (prompts x sample pairs, in
    {0, 1/2, 1}); ``own_specific`` the fraction of the scorer's own samples that fit their own
    prompt better than a foreign one, and ``gate_log10_pvalue`` the sign test of that fraction
    against 1/2 (H0: the scorer's continuations do not depend on the prompt)."""

    observations: np.ndarray
    own_specific: float
    gate_log10_pvalue: float

    @property
    def applicable(self) -> bool:
        """The scorer's model answers its prompts: at least ``MIN_SCORER_SPECIFIC`` of its own samples
        fit their prompt better than a foreign one, significantly (sign test at 1e-3). A barely
        trained model cannot tell samples apart: six 60-step tiny llamas (0.66-0.89 of their samples
        specific) scored each other's samples at up to 0.51, as high as their own."""
        return (self.observations.size > 0 and self.own_specific >= MIN_SCORER_SPECIFIC
                and self.gate_log10_pvalue < GATE_LOG10_ALPHA)


def likelihood_observations(scorer: Backend, prompts: Sequence[Prompt], own: Side, other: Side,
                            progress: ProgressCallback | None = None) -> LikelihoodEvidence:
    """Per prompt and sample pair, does the scorer's model expect the other side's sample as well as
    its own? (The sampled regime, where the scorer can score text: a local model.)

    The j-th sample of the other side and the j-th of the scorer's own side, both continuations of
    prompt i, are scored by the scorer's model under prompt i with :func:`_fit` (per token, the
    log-probability minus the model's own expected log-probability there, averaged: a text's
    intrinsic predictability cancels); the observation is 1 when the other's fit is higher, 1/2 on
    a tie, 0 when lower. If both sides are one model (sampling alike), the two samples are
    exchangeable and every observation has mean 1/2 whatever the prompt; an unrelated model's
    samples are expected less well. Observations are independent (disjoint pairs). Empty answers
    and chat prompts (scored through a template the scorer may not share) give 0, which can only
    make the unrelated-null test more conservative. Text only: no log-probability is needed from
    the other side.

    Applicability: a scorer that does not read its prompts (a barely trained model) expects every
    text alike. Each of the scorer's own samples is also scored under a foreign prompt (the next
    prompt of the suite); :attr:`LikelihoodEvidence.applicable` asks that its own samples fit their
    own prompt better, nearly always.
    """
    usable = [i for i, p in enumerate(prompts) if not p.chat]
    m = min(len(own.answers[0]), len(other.answers[0])) if prompts else 0
    obs = np.zeros((len(prompts), m))
    if len(usable) < 2:
        return LikelihoodEvidence(obs[:, :0], 0.0, 0.0)
    foreign = {i: usable[(n + 1) % len(usable)] for n, i in enumerate(usable)}
    reqs, where = [], []
    for i in usable:
        for j in range(m):
            mine, theirs = own.answers[i][j].text, other.answers[i][j].text
            if mine.strip() and theirs.strip():
                reqs += [LoglikelihoodRequest(context=prompts[i].prompt, continuation=mine),
                         LoglikelihoodRequest(context=prompts[foreign[i]].prompt, continuation=mine),
                         LoglikelihoodRequest(context=prompts[i].prompt, continuation=theirs)]
                where.append((i, j, mine, theirs))
    if not reqs:
        return LikelihoodEvidence(obs, 0.0, 0.0)
    res = scorer.loglikelihood(reqs, progress=progress)
    own_specific = []
    for k, (i, j, mine, theirs) in enumerate(where):
        r = res[3 * k:3 * k + 3]
        f_mine, f_theirs = _fit(r[0], mine), _fit(r[2], theirs)
        obs[i, j] = 1.0 if f_theirs > f_mine else 0.5 if f_theirs == f_mine else 0.0
        own_specific.append(f_mine > _fit(r[1], mine))  # fits its own prompt better than a foreign one
    n_spec, n = int(np.sum(own_specific)), len(own_specific)
    from scipy.stats import binom

    gate = float(binom.sf(n_spec - 1, n, 0.5))  # P(at least n_spec of n | no dependence on the prompt)
    return LikelihoodEvidence(obs, n_spec / n, math.log10(max(gate, 1e-300)))


def compare_answers(side_a: Side, side_b: Side, prompts: Sequence[Prompt], *, sampled: bool,
                    prefix_pieces: int, alpha: float = DEFAULT_ALPHA, c0: float | None = None,
                    n_resamples: int = 999, seed: int = 0, exact_match: bool | None = None,
                    likelihood: tuple[str, LikelihoodEvidence] | None = None,
                    probe_tops: tuple[Sequence[str], Sequence[frozenset[str] | None], Sequence[frozenset[str] | None]] | None = None,
                    membership: TestResult | None = None) -> CompareResult:
    """The statistics and verdict of two sides' answers to the same prompts (see the module docstring).

    ``likelihood``: ``(scorer label, evidence)`` of :func:`likelihood_observations` (sampled regime).
    ``probe_tops``: the probe prompts' languages, and A's and B's top-k next tokens at them
    (:func:`probe_tops`; greedy regime, both sides with log-probabilities): more contexts for the
    top-k test. ``membership``: the probe-membership test (:func:`probe_membership`; sampled regime).
    """
    n = len(prompts)
    if not (len(side_a.answers) == len(side_b.answers) == n) or n == 0:
        raise WeightprintError(f"cannot compare {len(side_a.answers)} and {len(side_b.answers)} answers to {n} prompts")
    c0 = (C0_SAMPLED if sampled else C0_GREEDY) if c0 is None else c0
    exact_match = sampled if exact_match is None else exact_match
    sim = prefix_match if exact_match else prefix_similarity
    rows: list[dict[str, Any]] = []
    cross = np.empty(n)
    within = np.empty(n)
    exact = np.zeros(n, dtype=bool)
    tok_agree = np.empty(n)
    lp_n = lp_sum = lp_agree = lp_tops = 0
    lp_prompts = 0
    paired: list[float] = []  # sampled: the j-th sample of A against the j-th of B (disjoint, independent pairs)
    tops_a: list[frozenset[str] | None] = []  # greedy with log-probs: each prompt's top-k first tokens
    tops_b: list[frozenset[str] | None] = []
    generic = np.zeros(n, dtype=bool)
    if not sampled:  # answers that do not depend on the prompt are no evidence of identity
        generic = _generic_answers(side_a, prefix_pieces) | _generic_answers(side_b, prefix_pieces)
    for i, p in enumerate(prompts):
        ta = [g.text for g in side_a.answers[i]]
        tb = [g.text for g in side_b.answers[i]]
        row: dict[str, Any] = {"id": p.id, "lang": p.lang}
        if sampled:
            cross[i] = _mean_pair_similarity(ta, tb, prefix_pieces, sim)
            paired += [sim(x, y, prefix_pieces) for x, y in zip(ta, tb)]
            wa, wb = _mean_pair_similarity(ta, None, prefix_pieces, sim), _mean_pair_similarity(tb, None, prefix_pieces, sim)
            within[i] = (wa + wb) / 2
            exact[i] = any(x.strip() == y.strip() for x in ta for y in tb)
            tok_agree[i] = cross[i]
            row.update(cross=cross[i], within_a=wa, within_b=wb, a=ta[0], b=tb[0])
        else:
            ga, gb = side_a.answers[i][0], side_b.answers[i][0]
            cross[i] = 0.0 if generic[i] else sim(ga.text, gb.text, prefix_pieces)
            within[i] = 1.0
            exact[i] = " ".join(ga.text.split()) == " ".join(gb.text.split())
            tok_agree[i] = _token_agreement(ga, gb, prefix_pieces)
            lps = _logprob_stats(ga, gb) if side_a.logprobs and side_b.logprobs else None
            if side_a.logprobs and side_b.logprobs:
                tops_a.append(first_topk(ga))
                tops_b.append(first_topk(gb))
            if lps is not None and lps[0] > 0:
                lp_prompts += 1
                lp_n += lps[0]
                lp_sum += lps[1]
                lp_agree += lps[2]
                lp_tops += lps[3]
                row["logprob_distance"] = lps[1] / lps[0]
            row.update(similarity=cross[i], exact=bool(exact[i]), token_agreement=tok_agree[i], generic=bool(generic[i]),
                       a=ga.text, b=gb.text)
        rows.append(row)

    mean_sim = float(cross.mean())
    test_stat, n_obs = (float(np.mean(paired)), len(paired)) if sampled else (mean_sim, n)
    log10_p = chernoff_log10_pvalue(test_stat, c0, n_obs)
    unrelated = TestResult(
        name="unrelated-null", statistic=test_stat, log10_pvalue=log10_p,
        null_hypothesis=(f"A and B are unrelated models: the mean {'exact-match rate of the first' if exact_match else 'prefix similarity over the first'} "
                         f"{prefix_pieces} words of their continuations is at most {c0} (the bound calibrated on known-different pairs)"),
        alternative="greater",
        method=("Chernoff-Hoeffding bound exp(-n KL(mean || c0)) over independent observations: "
                + ("disjoint pairs of independent samples (j-th of A, j-th of B) of every prompt" if sampled else "one per prompt")),
        n=n_obs, evidence={"c0": c0, "prefix_pieces": prefix_pieces, "mode": "sampled" if sampled else "greedy",
                           "match": "exact prefix" if exact_match else "prefix fraction"},
    )
    tests = [unrelated]
    n_prompt_tops = sum(1 for a, b in zip(tops_a, tops_b) if a is not None and b is not None)
    langs = [p.lang for p in prompts][:len(tops_a)]
    n_probe = 0
    if probe_tops is not None and tops_a:
        plangs, pa, pb = probe_tops
        n_probe = sum(1 for a, b in zip(pa, pb) if a is not None and b is not None)
        tops_a, tops_b, langs = tops_a + list(pa), tops_b + list(pb), langs + list(plangs)
    topk = specific_topk_overlaps(tops_a, tops_b) if tops_a else np.zeros(0)
    if n_prompt_tops >= n / 2:
        # where both sides give log-probabilities: the context-specific top-k next tokens overlap for
        # related models even when their greedy texts part at once (a fine-tune in a new style)
        t = topk_test(topk, langs, n_prompts=n_prompt_tops, n_probes=n_probe)
        if t is not None:
            tests.append(t)
    stats: dict[str, Any] = {
        "mean_similarity": mean_sim,
        "exact_agreement": float(exact.mean()),
        "token_agreement": float(tok_agree.mean()),
        "logprob_distance": (lp_sum / lp_n) if lp_n else None,
        "argmax_agreement": (lp_agree / lp_tops) if lp_tops else None,
        "logprob_positions": lp_n,
        "logprob_prompts": lp_prompts,
        "cross_within_ratio": None,
        "generic_answers": int(generic.sum()),
        "c0": c0,
    }
    if likelihood is not None:
        stats["likelihood_scorer"] = likelihood[0]
        stats["likelihood_scorer_prompt_specific"] = likelihood[1].own_specific
        stats["likelihood_applicable"] = likelihood[1].applicable
    if likelihood is not None and likelihood[1].applicable:
        scorer, obs = likelihood[0], likelihood[1].observations
        m = float(obs.mean())
        stats["likelihood_mean"] = m
        tests.append(TestResult(
            name="unrelated-null-likelihood", statistic=m,
            log10_pvalue=chernoff_log10_pvalue(m, C0_LIKELIHOOD, obs.size),
            null_hypothesis=(f"A and B are unrelated models: {scorer}'s model expects the other side's samples better "
                             f"than its own with probability at most {C0_LIKELIHOOD} (the bound calibrated on "
                             "known-different pairs; one model: 1/2)"),
            alternative="greater",
            method=("Chernoff-Hoeffding bound exp(-n KL(mean || c0)) over disjoint sample pairs: 1 when the other "
                    "side's sample has the higher mean centred log-probability (log p - E[log p]) under the scorer "
                    "than the scorer's own sample of the same prompt, 1/2 tie, 0 lower"),
            n=int(obs.size), evidence={"c0": C0_LIKELIHOOD, "scorer": scorer, "same_at": SAME_LIKELIHOOD,
                                       "scorer_prompt_specific": likelihood[1].own_specific,
                                       "gate_log10_pvalue": likelihood[1].gate_log10_pvalue}))
    if membership is not None:
        tests.append(membership)
        stats["probe_membership"] = membership.statistic
    if sampled:
        w = float(within.mean())
        stats["mean_within_similarity"] = w
        stats["cross_within_ratio"] = mean_sim / w if w > 0 else None
        tests.append(_identity_permutation_test(
            [[g.text for g in a] for a in side_a.answers], [[g.text for g in b] for b in side_b.answers],
            prefix_pieces, n_resamples=n_resamples, seed=seed, sim=sim))

    # the unrelated null is rejected when any of its tests is significant at alpha / (number of tests) (Bonferroni)
    null_tests = [t for t in tests if t.name.startswith("unrelated-null")]
    rejected = [t.significant(alpha / len(null_tests)) for t in null_tests]
    stats["first_topk_overlap"] = float(np.nanmean(topk)) if np.any(~np.isnan(topk)) else None
    stats["probe_prompts"] = n_probe
    by_name = {t.name: r for t, r in zip(null_tests, rejected)}
    if not any(rejected):
        verdict = "different"
    elif by_name.get("unrelated-null-likelihood"):
        # the scorer's model cannot tell the other side's samples from its own: same; less: related
        verdict = "same" if stats["likelihood_mean"] >= SAME_LIKELIHOOD else "related"
    elif not rejected[0]:  # only the log-prob test: related, texts parted
        verdict = "related"
    elif sampled:
        ratio = stats["cross_within_ratio"] or 0.0
        verdict = "same" if ratio >= SAME_SAMPLED_RATIO else "related"
    elif stats["logprob_distance"] is not None and stats["argmax_agreement"] is not None and lp_prompts >= n / 2:
        verdict = ("same" if stats["argmax_agreement"] >= SAME_ARGMAX_AGREEMENT
                   and stats["logprob_distance"] <= SAME_LOGPROB_DISTANCE else "related")
    else:
        verdict = "same" if mean_sim >= SAME_TEXT_SIMILARITY else "related"
    return CompareResult(a=side_a.label, b=side_b.label, verdict=verdict, mode="sampled" if sampled else "greedy",
                         n_prompts=n, tests=tuple(tests), statistics=stats, per_prompt=tuple(rows),
                         queries={"a": side_a.queries, "b": side_b.queries}, alpha=alpha)


# ----------------------------------------------------------------------------------------------
# The library entry point
# ----------------------------------------------------------------------------------------------


#: context window of local backends opened by compare (prompts are short; llama-cpp-python's
#: log-probabilities cost time in proportion to the window)
LOCAL_N_CTX = 512


def _open(ref: str | Path | Backend, options: dict[str, Any]) -> tuple[Backend, bool]:
    if isinstance(ref, Backend):
        return ref, False
    if not str(ref).lower().startswith(("http://", "https://")):
        options = {"n_ctx": LOCAL_N_CTX, **options}
    return open_backend(ref, **options), True


def _scorer(a: Backend, b: Backend) -> Backend | None:
    """The side whose model can score text (a local model), for the likelihood test; A first."""
    for side in (a, b):
        if side.capabilities.echo and side.capabilities.logprobs:
            return side
    return None


def _is_sampling(backend: Backend) -> bool:
    probe = getattr(backend, "is_sampling", None)
    return bool(probe()) if callable(probe) else False


def compare_models(
    a: str | Path | Backend,
    b: str | Path | Backend,
    *,
    prompts: str | Path | Sequence[Prompt] = "default",
    n_prompts: int | None = None,
    sampled: bool | None = None,
    max_tokens: int | None = None,
    n_samples: int = 10,
    temperature: float = 0.8,
    prefix_pieces: int | None = None,
    top_logprobs: int = 5,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    probes: str | Path | Sequence[Prompt] | None = "probes",
    options_a: dict[str, Any] | None = None,
    options_b: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> CompareResult:
    """Are ``a`` and ``b`` the same model? Black-box, from their continuations of the same prompts.

    H0 of the reported p-value: *A and B are unrelated models* (see the module docstring for the
    statistics, the calibration of the null and the verdict rule).

    Parameters
    ----------
    a, b : str, Path or Backend
        A GGUF file, a Hugging Face directory, an ``http(s)://`` URL of an OpenAI-compatible
        server, or an open backend.
    prompts : str, Path or sequence of Prompt, *optional*, defaults to ``"default"``
        A shipped suite name, a JSONL file, or prompts.
    n_prompts : int, *optional*
        Use the first ``n_prompts`` prompts.
    sampled : bool, *optional*
        Force the sampled (True) or greedy (False) regime; default: sampled when either side
        samples although asked for greedy output.
    max_tokens : int, *optional*
        Tokens per continuation; default 16 greedy, 8 sampled.
    n_samples : int, *optional*, defaults to 10
        Samples per prompt and side in the sampled regime (32 prompts x 10: 320 pairs).
    temperature : float, *optional*, defaults to 0.8
        Sampling temperature we ask for in the sampled regime.
    prefix_pieces : int, *optional*
        Words compared per continuation; default 10 greedy, 3 sampled.
    top_logprobs : int, *optional*, defaults to 5
        Top alternatives asked for where a side offers log-probabilities (greedy regime).
    alpha : float, *optional*, defaults to 1e-3
        Level of the unrelated-null test below which the verdict is ``same`` or ``related``.
    seed : int, *optional*
        Seed of the sampled requests and of the permutation test.
    probes : str, Path, sequence of Prompt or None, *optional*, defaults to ``"probes"``
        One-token probe prompts. Greedy regime, both sides with log-probabilities: their
        context-specific top-k overlaps join the prompts' own (:func:`topk_test`). Sampled regime
        with a local scorer: the other side's one-token samples at the probes whose language has
        a membership bound (:func:`probe_membership`). The shipped ``probes`` suite has 316 (43-44
        per language, 97 code fragments); None asks none.
    options_a, options_b : dict, *optional*
        Keyword arguments of :func:`~weightprint.behave.backends.base.open_backend` (``model=``...).
    progress : ProgressCallback, *optional*

    Returns
    -------
    CompareResult
    """
    progress = progress or no_progress
    t0 = time.perf_counter()
    plist = list(prompts) if not isinstance(prompts, (str, Path)) else load_prompts(prompts)
    if n_prompts:
        plist = plist[:n_prompts]
    if not 0 < alpha < 1:
        raise WeightprintError(f"`alpha` must be in (0, 1), got {alpha}")
    if n_samples < 2:
        raise WeightprintError(f"`n_samples` must be at least 2, got {n_samples}")
    ba, close_a = _open(a, dict(options_a or {}))
    try:
        bb, close_b = _open(b, dict(options_b or {}))
        try:
            if sampled is None:
                progress(0, 3, "probe sampling")
                sampled = _is_sampling(ba) or _is_sampling(bb)
            mt = max_tokens or (8 if sampled else 16)
            pp = prefix_pieces or (3 if sampled else 10)
            kw = dict(sampled=sampled, max_tokens=mt, n_samples=n_samples, temperature=temperature,
                      top_logprobs=top_logprobs, seed=seed)
            side_a = collect_answers(ba, plist, progress=substep(progress, 1, 3, f"A {ba.label}"), **kw)
            # B's samples get other seeds: two copies of one local model must not share their random draws
            kw["seed"] = seed + (SEED_OFFSET_B if sampled else 0)
            side_b = collect_answers(bb, plist, progress=substep(progress, 2, 3, f"B {bb.label}"), **kw)
            likelihood = None
            membership = None
            tops = None
            plist_probe = (list(probes) if not isinstance(probes, (str, Path)) else load_prompts(probes)) if probes is not None else []
            skipped = False
            if not sampled and plist_probe and side_a.logprobs and side_b.logprobs:
                # the probes only add evidence against H0; when the suite prompts already reject it
                # (at the level the planned tests get), they cannot change the verdict: not asked
                skipped = _rejects_without_probes(side_a, side_b, plist, sampled=False, prefix_pieces=pp, alpha=alpha)
                if not skipped:
                    pa, qa = probe_tops(ba, plist_probe, top_logprobs=top_logprobs, seed=seed,
                                        progress=substep(progress, 2, 3, f"probes A {ba.label}"))
                    pb, qb = probe_tops(bb, plist_probe, top_logprobs=top_logprobs, seed=seed,
                                        progress=substep(progress, 2, 3, f"probes B {bb.label}"))
                    side_a.queries += qa
                    side_b.queries += qb
                    tops = ([p.lang for p in plist_probe], pa, pb)
            scorer = _scorer(ba, bb) if sampled else None
            if scorer is not None:
                own, other = (side_a, side_b) if scorer is ba else (side_b, side_a)
                progress(3, 3, f"likelihood under {scorer.label}")
                likelihood = (scorer.label or scorer.name, likelihood_observations(scorer, plist, own, other))
                if plist_probe:
                    skipped = _rejects_without_probes(side_a, side_b, plist, sampled=True, prefix_pieces=pp, alpha=alpha,
                                                      likelihood=likelihood, seed=seed, n_resamples=99)
                if plist_probe and not skipped:
                    membership, q_scorer, q_other = probe_membership(
                        scorer, bb if scorer is ba else ba, plist_probe, temperature=temperature,
                        top_logprobs=top_logprobs, seed=seed + SEED_OFFSET_B, progress=substep(progress, 3, 3, "probes"))
                    own.queries += q_scorer
                    other.queries += q_other
        finally:
            if close_b:
                bb.close()
    finally:
        if close_a:
            ba.close()
    progress(3, 3, "statistics")
    result = compare_answers(side_a, side_b, plist, sampled=sampled, prefix_pieces=pp, alpha=alpha, seed=seed,
                             likelihood=likelihood, probe_tops=tops, membership=membership)
    object.__setattr__(result, "seconds", time.perf_counter() - t0)
    stats = result.statistics
    stats.update(max_tokens=mt, n_samples=n_samples if sampled else 1, temperature=temperature if sampled else 0.0,
                 probes_not_needed=skipped)
    return result


def _rejects_without_probes(side_a: Side, side_b: Side, prompts: Sequence[Prompt], *, sampled: bool, prefix_pieces: int,
                            alpha: float, **kw: Any) -> bool:
    """Does a test that the probes do not feed reject H0 *unrelated* on the suite prompts alone, at
    the level it gets with every planned test counted (Bonferroni)? Then the probes cannot change
    the verdict, and the rejection region stays inside that of all the tests together: the top-k
    test (which the probes would extend) and the probe-membership test are left out of the
    decision."""
    pre = compare_answers(side_a, side_b, prompts, sampled=sampled, prefix_pieces=prefix_pieces, alpha=alpha, **kw)
    null_tests = [t for t in pre.tests if t.name.startswith("unrelated-null")]
    planned = len(null_tests) + (0 if any(t.name == "unrelated-null-topk" for t in null_tests) else 1)
    return any(t.significant(alpha / planned) for t in null_tests if t.name != "unrelated-null-topk")


def describe(result: CompareResult) -> list[tuple[str, str]]:
    """Rows (name, value) for a terminal table or a report."""
    s = result.statistics
    rows = [("verdict", result.verdict), ("regime", result.mode), ("prompts", str(result.n_prompts)),
            ("mean prefix similarity", f"{s['mean_similarity']:.3f} (null bound c0 = {s['c0']})"),
            ("H0: unrelated", format_pvalue(result.unrelated_test.log10_pvalue)),
            ("exact agreement", f"{s['exact_agreement']:.3f}"),
            ("token agreement", f"{s['token_agreement']:.3f}")]
    if s.get("logprob_distance") is not None:
        rows.append(("log-prob distance (nats)", f"{s['logprob_distance']:.4f} over {s['logprob_positions']} positions"))
    if s.get("argmax_agreement") is not None:
        rows.append(("arg-max agreement", f"{s['argmax_agreement']:.3f}"))
    if s.get("cross_within_ratio") is not None:
        rows.append(("cross/within similarity", f"{s['cross_within_ratio']:.3f}"))
    for t in result.tests[1:]:
        rows.append((f"H0: {t.name}", t.pvalue_text()))
        groups = (t.evidence or {}).get("by_language")
        if groups:  # the per-language means against their bounds (the probe tests)
            rows.append((f"  {t.name} by language", ", ".join(
                f"{lang} {g['mean']:.2f}/{g['c0']:.2f} (n {g['n']})" for lang, g in groups.items())))
    rows.append(("queries", f"A {result.queries.get('a', 0)}, B {result.queries.get('b', 0)}"))
    return rows
