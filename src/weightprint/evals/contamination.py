"""Was a benchmark in a model's training data? Two tests on any backend that scores text.

Exchangeability test (Oren et al., "Proving test set contamination in black box language
models", ICLR 2024)
    H0: the model is independent of the benchmark's canonical order (it was not trained on the
    benchmark as published). If the canonical order is itself a uniformly random arrangement of
    the items (true of most benchmarks, and of any that was shuffled before release), then under
    H0 the log-likelihood of the canonical order is exchangeable with that of a random reordering.
    A model trained on the benchmark prefers the order it saw.

    The *sharded likelihood comparison test* (their Section 3.2): the items, in canonical order,
    are cut into ``r`` contiguous shards (sizes differ by at most one, the larger first, as
    ``numpy.array_split``). For shard i, ``s_i = log p(shard i in canonical order) - mean_j log
    p(shard i in random order j)`` over ``m`` random orders drawn independently (with replacement,
    so the canonical order may be among them). Under H0 every ``s_i`` has mean 0, and the shards
    are independent, so the one-sided t statistic ``t = mean(s) / (sd(s) / sqrt(r))`` is compared
    with Student's t with ``r - 1`` degrees of freedom (alternative ``greater``: the canonical
    order is more likely). The authors' defaults are r = 50 shards and m = 250 orders.

    Fewer items than ``2 * shards`` (a shard needs two items to have two orders): the number of
    shards drops to ``n_items // 2``; when that is below :data:`MIN_SHARDS` the test falls back to
    the authors' plain permutation test on the whole benchmark (one sequence of all items; p =
    (1 + #{j: log p(order j) >= log p(canonical)}) / (m + 1), exact for any size). Fewer than two
    items, or an empty benchmark: :class:`~weightprint.errors.WeightprintError`.

    A log-likelihood is that of the items joined by ``separator`` (default a newline) as one
    text, all tokens scored after the backend's start token (``Backend.loglikelihood`` with an
    empty context). Each distinct order of a shard is scored once; orders are sent in
    lexicographic order so that consecutive requests share a prefix, which the llama.cpp backend
    keeps in its KV cache.

Min-K% and Min-K%++ membership scores (Shi et al. 2024, "Detecting pretraining data from large
language models"; Zhang et al. 2025, "Min-K%++")
    Per item, the mean over its k % lowest-scoring tokens of ``log p(x_t)`` (Min-K%) or of
    ``(log p(x_t) - mu_t) / sigma_t`` (Min-K%++), where ``mu_t`` and ``sigma_t`` are the mean and
    standard deviation of log p under the model's own next-token distribution. Higher = more
    "member-like". With items known to be unseen, the seen-vs-unseen AUROC is reported with a
    one-sided Mann-Whitney test. H0: seen and unseen items' scores come from one distribution.
    That H0 holds for an untouched model only when the unseen items are like the seen ones
    (a random split of one pool); differently styled unseen items break it without any
    contamination. Neither score has a calibrated threshold on its own.

The verdict (:class:`ContaminationResult`) is ``contaminated`` when a test's Bonferroni-adjusted
p-value over the tests run is below ``alpha`` (default 0.01), else ``no evidence``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
from scipy import stats

from weightprint.behave.backends.base import Backend, BackendCapabilityError, LoglikelihoodRequest
from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress, substep
from weightprint.results import LN10, TestResult, VerdictResult, combine_bonferroni, format_pvalue

__all__ = [
    "DEFAULT_PERMUTATIONS", "DEFAULT_SHARDS", "MIN_SHARDS", "ContaminationResult", "MembershipScores",
    "auroc", "exchangeability_test", "membership_scores", "membership_test", "min_k_percent",
    "min_k_plus_plus", "shard_bounds", "check_contamination",
]

DEFAULT_SHARDS = 50
DEFAULT_PERMUTATIONS = 250
#: below this many shards of two items the sharded t-test gives way to the whole-benchmark permutation test
MIN_SHARDS = 10
DEFAULT_K = 0.2


# ------------------------------------------------------------------ Min-K% / Min-K%++
def _lowest_mean(values: np.ndarray, k: float) -> float:
    if values.size == 0:
        return float("nan")
    n = max(1, int(math.floor(k * values.size)))
    return float(np.partition(values, n - 1)[:n].mean())


def min_k_percent(logprobs: Sequence[float], k: float = DEFAULT_K) -> float:
    """Min-K%: the mean of the ``k`` fraction lowest token log-probabilities (at least one token).

    ``nan`` for a text with no scored token.

    Examples
    --------
    >>> min_k_percent([-1.0, -5.0, -2.0, -4.0, -3.0], k=0.4)
    -4.5
    """
    _check_k(k)
    return _lowest_mean(np.asarray(logprobs, dtype=np.float64), k)


def min_k_plus_plus(logprobs: Sequence[float], mean: Sequence[float], std: Sequence[float], k: float = DEFAULT_K) -> float:
    """Min-K%++: the mean of the ``k`` fraction lowest ``(log p(x_t) - mu_t) / sigma_t``.

    A position where the model's distribution has zero spread (``sigma_t == 0``) scores 0.

    Examples
    --------
    >>> min_k_plus_plus([-1.0, -3.0], [-2.0, -2.0], [1.0, 2.0], k=0.5)
    -0.5
    """
    _check_k(k)
    lp, mu, sd = (np.asarray(x, dtype=np.float64) for x in (logprobs, mean, std))
    if not (lp.shape == mu.shape == sd.shape):
        raise ValueError(f"{lp.size} log-probabilities with {mu.size} means and {sd.size} standard deviations")
    z = np.divide(lp - mu, sd, out=np.zeros_like(lp), where=sd > 0)
    return _lowest_mean(z, k)


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise WeightprintError(f"`k` must be in (0, 1], got {k!r}")


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve of scores (higher = positive): P(X > Y) + P(X = Y) / 2.

    Examples
    --------
    >>> auroc([3.0, 2.0], [1.0, 2.0])
    0.875
    """
    x, y = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise WeightprintError(f"AUROC needs scores of both kinds, got {x.size} positive and {y.size} negative")
    ranks = stats.rankdata(np.concatenate([x, y]))
    u = ranks[: x.size].sum() - x.size * (x.size + 1) / 2.0
    return float(u / (x.size * y.size))


@dataclass(frozen=True)
class MembershipScores:
    """Per-item membership scores (higher = more likely seen in training).

    ``min_k_plus_plus`` is empty when the backend cannot give the vocabulary statistics.
    """

    k: float
    min_k: tuple[float, ...]
    min_k_plus_plus: tuple[float, ...] = ()
    n_tokens: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "min_k": list(self.min_k), "min_k_plus_plus": list(self.min_k_plus_plus),
                "n_tokens": list(self.n_tokens)}


def membership_scores(backend: Backend, items: Sequence[str], *, k: float = DEFAULT_K,
                      progress: ProgressCallback | None = None) -> MembershipScores:
    """Min-K% (and, when the backend gives vocabulary statistics, Min-K%++) of each item."""
    _check_k(k)
    scores = backend.token_scores(list(items), progress)
    with_stats = backend.capabilities.full_distribution and all(len(s.mean) == len(s.logprobs) for s in scores)
    return MembershipScores(
        k=k,
        min_k=tuple(min_k_percent(s.logprobs, k) for s in scores),
        min_k_plus_plus=tuple(min_k_plus_plus(s.logprobs, s.mean, s.std, k) for s in scores) if with_stats else (),
        n_tokens=tuple(len(s.logprobs) for s in scores),
    )


def membership_test(seen: Sequence[float], unseen: Sequence[float], *, name: str = "min-k++-auroc",
                    score: str = "Min-K%++") -> TestResult:
    """AUROC of ``seen`` vs ``unseen`` scores, with a one-sided Mann-Whitney U p-value.

    H0: the seen and unseen items' scores are draws from one distribution (the model has seen
    neither set, and the sets are alike). Alternative ``greater``: seen items score higher.
    Items whose score is ``nan`` (no scored token) are left out.
    """
    x = np.asarray(seen, dtype=np.float64)
    y = np.asarray(unseen, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size == 0 or y.size == 0:
        raise WeightprintError(f"membership test needs scored items of both kinds, got {x.size} seen and {y.size} unseen")
    a = auroc(x, y)
    res = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    log10p = _log10(res.pvalue)
    return TestResult(
        name=name, statistic=a, log10_pvalue=log10p,
        null_hypothesis=f"{score} scores of the benchmark items and of the known-unseen items come from one distribution",
        alternative="greater", method="Mann-Whitney U, normal approximation with tie correction (statistic: AUROC)",
        n=int(x.size + y.size), evidence={"score": score, "n_seen": int(x.size), "n_unseen": int(y.size),
                                          "mean_seen": float(x.mean()), "mean_unseen": float(y.mean())},
    )


def _log10(p: float) -> float:
    return float(math.log10(p)) if p > 0 else -330.0


# ------------------------------------------------------------------ exchangeability
def shard_bounds(n_items: int, n_shards: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each contiguous shard, sizes differing by at most one (larger first).

    Examples
    --------
    >>> shard_bounds(7, 3)
    [(0, 3), (3, 5), (5, 7)]
    """
    if not 1 <= n_shards <= n_items:
        raise ValueError(f"{n_shards} shards for {n_items} items")
    base, extra = divmod(n_items, n_shards)
    bounds, start = [], 0
    for i in range(n_shards):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _plan_shards(n_items: int, n_shards: int) -> tuple[int, str]:
    """(shards, method) for ``n_items`` items when ``n_shards`` were asked for."""
    if n_items >= 2 * n_shards:
        return n_shards, "sharded"
    if n_items // 2 >= MIN_SHARDS:
        return n_items // 2, "sharded"
    return 1, "permutation"


def _validate_exchangeability(items: Sequence[str], n_shards: int, n_permutations: int) -> None:
    if len(items) == 0:
        raise WeightprintError("empty benchmark: the exchangeability test needs at least 2 items")
    if len(items) < 2:
        raise WeightprintError(f"benchmark of {len(items)} item: the exchangeability test needs at least 2 items")
    for knob, value in (("shards", n_shards), ("permutations", n_permutations)):
        if not (isinstance(value, (int, np.integer)) and value >= 1):
            raise WeightprintError(f"`{knob}` must be a positive integer, got {value!r}")


def exchangeability_test(
    backend: Backend,
    items: Sequence[str],
    *,
    n_shards: int = DEFAULT_SHARDS,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    separator: str = "\n",
    rng: np.random.Generator | int | None = 0,
    progress: ProgressCallback | None = None,
) -> TestResult:
    """Oren et al.'s sharded likelihood comparison test of a benchmark's canonical order.

    H0: the model is independent of the benchmark's canonical order, so (for a benchmark published
    in a random order) the canonical order's log-likelihood is exchangeable with a random
    reordering's. Alternative ``greater``: the canonical order is more likely than random orders
    (the model was trained on the benchmark as published). See the module docstring for the
    construction and the fallback when there are fewer items than ``2 * n_shards``.

    Parameters
    ----------
    backend : Backend
        Must serve ``loglikelihood``.
    items : sequence of str
        The benchmark's items in canonical order.
    n_shards : int, *optional*, defaults to 50
    n_permutations : int, *optional*, defaults to 250
        Random orders per shard (drawn with replacement from all orders).
    separator : str, *optional*, defaults to a newline
        Joins the items of a shard into one text.
    rng : numpy.random.Generator or int, *optional*, defaults to 0
        Source of the random orders (an int seeds a new generator).
    progress : ProgressCallback, *optional*
        Called once per shard.

    Returns
    -------
    TestResult
        ``statistic``: the t statistic (sharded) or the canonical log-likelihood's excess over the
        mean of the random orders (permutation fallback); ``evidence`` holds the per-shard
        differences, the number of distinct orders scored and the method used.

    Raises
    ------
    WeightprintError
        Empty benchmark or a single item; bad ``n_shards``/``n_permutations``.
    """
    _validate_exchangeability(items, n_shards, n_permutations)
    seed = rng if isinstance(rng, (int, np.integer)) else None
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    progress = progress or no_progress
    n = len(items)
    shards, method = _plan_shards(n, int(n_shards))
    bounds = shard_bounds(n, shards)
    canonical_lp = np.empty(shards)
    mean_perm_lp = np.empty(shards)
    perm_lps: list[np.ndarray] = []
    n_distinct = 0
    for si, (a, b) in enumerate(bounds):
        size = b - a
        orders = [tuple(int(x) for x in gen.permutation(size)) for _ in range(int(n_permutations))]
        canonical = tuple(range(size))
        distinct = sorted(set(orders) | {canonical})  # lexicographic: neighbours share prefixes
        texts = [separator.join(items[a + j] for j in order) for order in distinct]
        lps = _sequence_logprobs(backend, texts, substep(progress, si, shards, f"shard {si + 1}/{shards}"))
        by_order = dict(zip(distinct, lps))
        canonical_lp[si] = by_order[canonical]
        drawn = np.array([by_order[o] for o in orders])
        mean_perm_lp[si] = drawn.mean()
        perm_lps.append(drawn)
        n_distinct += len(distinct)
        progress(si + 1, shards, f"shard {si + 1}/{shards}")
    evidence: dict[str, Any] = {
        "n_items": n, "n_shards": shards, "n_shards_requested": int(n_shards), "n_permutations": int(n_permutations),
        "shard_sizes": [b - a for a, b in bounds], "distinct_orders_scored": n_distinct, "separator": separator,
        "canonical_logprob": canonical_lp.tolist(), "mean_permuted_logprob": mean_perm_lp.tolist(),
    }
    h0 = "the model is independent of the benchmark's canonical order (canonical and shuffled orders are exchangeable)"
    if method == "sharded":
        diffs = canonical_lp - mean_perm_lp
        t, log10p = _one_sided_t(diffs)
        evidence.update(differences=diffs.tolist(), mean_difference=float(diffs.mean()),
                        fallback=None if shards == n_shards else
                        f"{n} items < 2 x {n_shards} shards: {shards} shards of 2-3 items")
        return TestResult(
            name="exchangeability", statistic=t, log10_pvalue=log10p, null_hypothesis=h0, alternative="greater",
            method=f"Oren et al. sharded likelihood comparison: one-sided t-test over {shards} shards, "
                   f"{n_permutations} random orders each",
            n=n, n_resamples=int(n_permutations), seed=seed, evidence=evidence,
        )
    drawn = perm_lps[0]
    count = int(np.sum(drawn >= canonical_lp[0]))
    p = (1 + count) / (drawn.size + 1)
    evidence.update(fallback=f"{n} items: fewer than {2 * MIN_SHARDS} for a sharded test; permutation test on the whole benchmark",
                    n_at_least_canonical=count)
    return TestResult(
        name="exchangeability", statistic=float(canonical_lp[0] - drawn.mean()), log10_pvalue=math.log10(p),
        null_hypothesis=h0, alternative="greater",
        method=f"Oren et al. permutation test on the whole benchmark: rank of the canonical order among "
               f"{n_permutations} random orders, p = (1 + #{{>= canonical}}) / (m + 1)",
        n=n, n_resamples=int(n_permutations), seed=seed, evidence=evidence, null_distribution=drawn,
    )


def _one_sided_t(diffs: np.ndarray) -> tuple[float, float]:
    """(t, log10 p) of the one-sided one-sample t-test of mean(diffs) > 0."""
    r = diffs.size
    sd = float(diffs.std(ddof=1))
    mean = float(diffs.mean())
    if sd == 0.0:  # every shard's difference identical (e.g. all zero): no spread to test against
        return (0.0, 0.0) if mean <= 0 else (float("inf"), -330.0)
    t = mean / (sd / math.sqrt(r))
    return t, float(stats.t.logsf(t, df=r - 1) / LN10)


def _sequence_logprobs(backend: Backend, texts: list[str], progress: ProgressCallback) -> np.ndarray:
    try:
        res = backend.loglikelihood([LoglikelihoodRequest(context="", continuation=t) for t in texts], progress)
    except BackendCapabilityError as e:
        raise BackendCapabilityError(f"{e.message}; the exchangeability test needs log-likelihoods of given text") from e
    return np.array([r.logprob for r in res], dtype=np.float64)


# ------------------------------------------------------------------ combined
@dataclass
class ContaminationResult(VerdictResult):
    """Result of :func:`check_contamination`.

    Attributes
    ----------
    verdict : {'contaminated', 'no evidence'}
    model, benchmark : str
        Labels for reports.
    n_items, n_unseen : int
    alpha : float
        Level of the verdict (Bonferroni over the tests run).
    exchangeability : TestResult or None
    membership : TestResult or None
        Min-K%++ (or Min-K% when the backend has no vocabulary statistics) AUROC, seen vs unseen.
    seen_scores, unseen_scores : MembershipScores or None
    """

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset({"contaminated"})

    verdict: str
    model: str
    benchmark: str
    n_items: int
    n_unseen: int
    alpha: float
    exchangeability: TestResult | None = None
    membership: TestResult | None = None
    seen_scores: MembershipScores | None = None
    unseen_scores: MembershipScores | None = None
    log10_pvalue: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def evidence(self) -> list[TestResult]:
        return [t for t in (self.exchangeability, self.membership) if t is not None]

    def summary(self) -> str:
        parts = []
        if self.exchangeability is not None:
            parts.append(f"exchangeability {self.exchangeability.pvalue_text()}")
        if self.membership is not None:
            parts.append(f"{self.membership.evidence.get('score', 'Min-K%++')} AUROC {self.membership.statistic:.3f} "
                         f"({self.membership.pvalue_text()})")
        tests = "; ".join(parts) or "no test run"
        return (f"{self.verdict}: {self.benchmark} in {self.model} ({self.n_items} items; {tests}; "
                f"combined {format_pvalue(self.log10_pvalue)} at alpha {self.alpha:g})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "model": self.model, "benchmark": self.benchmark, "n_items": self.n_items,
            "n_unseen": self.n_unseen, "alpha": self.alpha, "log10_pvalue": self.log10_pvalue,
            "pvalue_text": format_pvalue(self.log10_pvalue),
            "exchangeability": self.exchangeability.to_dict() if self.exchangeability else None,
            "membership": self.membership.to_dict() if self.membership else None,
            "seen_scores": self.seen_scores.to_dict() if self.seen_scores else None,
            "unseen_scores": self.unseen_scores.to_dict() if self.unseen_scores else None,
            "notes": list(self.notes),
        }


def check_contamination(
    backend: Backend,
    items: Sequence[str],
    *,
    unseen: Sequence[str] | None = None,
    n_shards: int = DEFAULT_SHARDS,
    n_permutations: int = DEFAULT_PERMUTATIONS,
    k: float = DEFAULT_K,
    separator: str = "\n",
    alpha: float = 0.01,
    exchangeability: bool = True,
    seed: int = 0,
    benchmark: str = "benchmark",
    progress: ProgressCallback | None = None,
) -> ContaminationResult:
    """Test whether ``backend``'s model was trained on a benchmark.

    H0: the model was not trained on the benchmark (as published, for the exchangeability test;
    at all, for the membership test, which also assumes the ``unseen`` items are like the
    benchmark's). Runs the exchangeability test (unless ``exchangeability=False``), the Min-K% /
    Min-K%++ scores of every item and, with ``unseen`` items, their seen-vs-unseen AUROC test.
    The verdict is ``contaminated`` when the Bonferroni-combined p-value of the tests run is below
    ``alpha``.

    Raises
    ------
    WeightprintError
        Empty benchmark, a single item (with the exchangeability test), bad knobs.
    """
    if len(items) == 0:
        raise WeightprintError(f"{benchmark}: empty benchmark (no items)")
    if not 0.0 < alpha < 1.0:
        raise WeightprintError(f"`alpha` must be in (0, 1), got {alpha!r}")
    if exchangeability:
        _validate_exchangeability(items, n_shards, n_permutations)
    progress = progress or no_progress
    steps = 1 + (1 if unseen else 0) + (1 if exchangeability else 0)
    notes: list[str] = []
    seen_scores = membership_scores(backend, items, k=k, progress=substep(progress, 0, steps, "membership scores (benchmark)"))
    unseen_scores = None
    membership = None
    if unseen:
        unseen_scores = membership_scores(backend, unseen, k=k, progress=substep(progress, 1, steps, "membership scores (unseen)"))
        if seen_scores.min_k_plus_plus and unseen_scores.min_k_plus_plus:
            membership = membership_test(seen_scores.min_k_plus_plus, unseen_scores.min_k_plus_plus)
        else:
            notes.append("backend gives no vocabulary statistics: membership test on Min-K% instead of Min-K%++")
            membership = membership_test(seen_scores.min_k, unseen_scores.min_k, name="min-k-auroc", score="Min-K%")
    exch = None
    if exchangeability:
        exch = exchangeability_test(backend, items, n_shards=n_shards, n_permutations=n_permutations,
                                    separator=separator, rng=seed,
                                    progress=substep(progress, steps - 1, steps, "exchangeability"))
        if exch.evidence.get("fallback"):
            notes.append(exch.evidence["fallback"])
    tests = [t for t in (exch, membership) if t is not None]
    log10p = combine_bonferroni([t.log10_pvalue for t in tests]) if tests else 0.0
    verdict = "contaminated" if tests and log10p < math.log10(alpha) else "no evidence"
    progress(steps, steps, "done")
    return ContaminationResult(
        verdict=verdict, model=getattr(backend, "label", "") or backend.name, benchmark=benchmark, n_items=len(items),
        n_unseen=len(unseen or ()), alpha=alpha, exchangeability=exch, membership=membership,
        seen_scores=seen_scores, unseen_scores=unseen_scores, log10_pvalue=log10p, notes=notes,
    )


