"""The one permutation test behind every white-box lineage p-value.

Null hypothesis (H0): model B was trained independently of model A, from an initialization
whose distribution does not change when the coordinates of the residual stream (the hidden
dimension ``d``) are permuted, by a training procedure that is equivariant to such
permutations (iid initialization plus SGD/Adam are). Under H0 the residual coordinates of B
are *exchangeable* with respect to A: relabelling them by a uniformly random permutation
``sigma`` gives a model with the same distribution, still independent of A.

Every white-box statistic here has the form of a linear assignment statistic

    T(sigma) = sum_i a[i, sigma(i)]

where ``a`` is a fixed ``d x d`` matrix in ``[0, 1]`` built from A and B (how strongly
coordinate ``i`` of A resembles coordinate ``j`` of B), and the observed value is
``T(identity)``. A derived model keeps A's residual basis (fine-tuning, quantization,
hidden-unit and head permutations, vocabulary changes and dropped layers do not touch it),
so its diagonal stands out. The p-value is the probability under the uniform permutation
distribution, obtained in two valid ways:

1. Monte Carlo: ``p = (#{T_r > T} + U (#{T_r = T} + 1)) / (n_resamples + 1)`` with ``U`` uniform
   (seeded), clamped below at the floor ``1 / (n_resamples + 1)``. Random tie-breaking makes the
   p-value exactly uniform under H0 even when many resamples tie with the observed value (a
   thresholded statistic is often exactly 0); the plain ``(1 + #{T_r >= T}) / (n + 1)`` is valid
   but piles up at 1.
2. When no resample reaches the observed value, an upper bound on the exact permutation tail,
   the smaller of two valid bounds (``method`` says which):

   - Chatterjee's concentration inequality for combinatorial sums (Chatterjee 2007, Stein's
     method for concentration inequalities, Prop. 1.1): for ``a`` in ``[0, 1]``,
     ``P(T - E T >= t) <= 2 exp(-t^2 / (4 E T + 2 t))``, ``E T = sum(a) / d``. Good at moderate
     deviations; it saturates near ``exp(-d / 2)`` (1e-124 at ``d = 576``) however strong the match.
   - A Chernoff bound through the permanent, ``P(T >= t) <= exp(-lam t) perm(exp(lam a)) / d!``
     with ``perm(M) <= prod_i sum_j M_ij``: tight in the far tail, where the exact probability of
     a near-perfect diagonal is of the order of ``1 / d!`` (1e-1349 at ``d = 576``).

   The reported p-value is ``min(floor, bound)``.

The combined rule is valid: for ``alpha`` at or above the floor the event ``p <= alpha``
requires the Monte Carlo p-value to be ``<= alpha``; below the floor it requires the bound to
be ``<= alpha``, which has probability at most ``alpha``. Every result also carries the exact
permutation mean and standard deviation of ``T`` (Hoeffding 1951) and ``z = (T - E T) / sd``.

Ties: every rank used here is an average rank (:func:`rank_transform`), and every other step is
applied to each coordinate pair alike, so the whole statistic is permutation-equivariant and
the null stays exact with exact ties (norm weights all 1.0 at initialisation).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from weightprint.results import LN10, TestResult

__all__ = [
    "NULL_RESIDUAL_EXCHANGEABLE",
    "assignment_test",
    "correlation_matrix",
    "rank_transform",
    "assignment_test_sparse",
    "similarity_to_unit",
    "standardize_columns",
    "threshold_entries",
    "token_gram_correlation",
]

NULL_RESIDUAL_EXCHANGEABLE = (
    "B was trained independently of A: B's residual-stream coordinates are exchangeable "
    "with respect to A (iid initialization, permutation-equivariant training)"
)


def rank_transform(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Average ranks along ``axis`` mapped to ``(rank - 0.5) / n`` in ``(0, 1)`` (float32).

    Tied values share their average rank (as ``scipy.stats.rankdata(method="average")``), so the
    transform is permutation-equivariant: ranking ``x[..., perm]`` gives the ranks of ``x``
    permuted the same way, exact ties included (norm weights all 1.0 at initialisation). A
    tie-break by index would favour the identity and break the exchangeability null.
    Rank-based profiles are robust to the few huge "massive activation" weights that trained
    LLMs carry.
    """
    x = np.asarray(x)
    moved = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    flat = moved.reshape(-1, moved.shape[-1])
    n = x.shape[axis]
    out = np.empty(flat.shape, dtype=np.float32)
    # a block of rows at a time: the sort's int64 and float64 temporaries stay a few MB
    # (4096 tokens x 4096 coordinates of a 7B embedding sample: ~500 MB at once)
    step = max(1, _RANK_BLOCK // max(n, 1))
    for start in range(0, flat.shape[0], step):
        ranks = _average_ranks_rows(flat[start:start + step])
        out[start:start + step] = (ranks - 0.5) / n
    return np.ascontiguousarray(np.moveaxis(out.reshape(moved.shape), -1, axis))


_RANK_BLOCK = 1 << 20  # values ranked at a time by rank_transform


def _average_ranks_rows(x: np.ndarray) -> np.ndarray:
    """1-based average ranks of each row of a 2-D array (float64), vectorised over rows."""
    m, n = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(n, dtype=np.float64), (m, n))
    if n > 1 and not np.any(xs[:, 1:] == xs[:, :-1]):  # no ties: ranks are positions
        avg = pos + 1.0
    else:
        new = np.ones((m, n), dtype=bool)
        new[:, 1:] = xs[:, 1:] != xs[:, :-1]
        last = np.ones((m, n), dtype=bool)
        last[:, :-1] = new[:, 1:]
        start = np.maximum.accumulate(np.where(new, pos, 0.0), axis=1)
        end = np.minimum.accumulate(np.where(last, pos, n - 1.0)[:, ::-1], axis=1)[:, ::-1]
        avg = (start + end) / 2.0 + 1.0
    ranks = np.empty((m, n), dtype=np.float64)
    np.put_along_axis(ranks, order, avg, axis=1)
    return ranks


def standardize_columns(x: np.ndarray) -> np.ndarray:
    """Each column centred and scaled to unit root-mean-square (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    sd = np.sqrt((x * x).mean(axis=0, keepdims=True))
    sd[sd == 0] = 1.0
    return x / sd


def _standardized_float32(x: np.ndarray) -> np.ndarray:
    """:func:`standardize_columns` as float32, a block of columns at a time (each column is
    standardized on its own: the float64 temporaries stay a few MB)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    step = max(1, _RANK_BLOCK // max(x.shape[0], 1))
    for start in range(0, x.shape[1], step):
        out[:, start:start + step] = standardize_columns(x[:, start:start + step])
    return out


def correlation_matrix(profiles_a: np.ndarray, profiles_b: np.ndarray) -> np.ndarray:
    """``S[i, j]`` = Pearson correlation between column ``i`` of A and column ``j`` of B.

    Both inputs are ``(n_observations, d)``: one profile (a column) per residual coordinate,
    observed over the same rows (matched tokens or matched layer features).
    """
    za = _standardized_float32(profiles_a)
    zb = _standardized_float32(profiles_b)
    out = za.T @ zb
    out *= np.float32(1.0 / za.shape[0])
    return np.clip(out, -1.0, 1.0, out=out)


GRAM_MAX_TOKENS = 256


def token_gram_correlation(rows_a: np.ndarray, rows_b: np.ndarray, *, max_tokens: int = GRAM_MAX_TOKENS) -> float:
    """Pearson correlation of the off-diagonal entries of two token Gram matrices.

    ``rows_a`` ``(n, d_a)`` and ``rows_b`` ``(n, d_b)`` are the embedding rows of the same ``n``
    tokens in two models (any widths); each is column-centred and ``X X^T`` taken over the first
    ``max_tokens`` rows. The Gram matrix does not change under any orthogonal map of the residual
    basis (rotation, permutation, sign flips) nor a global scale: a basis-free comparison. It has
    no exact null: independent models that learned the same language share token similarities
    (SmolLM2 vs Gemma 3 measure 0.32, see ``docs/lineage.md``), so it is evidence and a gate, not
    a p-value.
    """
    n = min(len(rows_a), len(rows_b), int(max_tokens))
    if n < 3:
        return float("nan")
    xa = np.asarray(rows_a[:n], dtype=np.float64)
    xb = np.asarray(rows_b[:n], dtype=np.float64)
    xa = xa - xa.mean(axis=0)
    xb = xb - xb.mean(axis=0)
    iu = np.triu_indices(n, 1)
    ga, gb = (xa @ xa.T)[iu], (xb @ xb.T)[iu]
    ga -= ga.mean()
    gb -= gb.mean()
    den = float(np.sqrt((ga * ga).sum() * (gb * gb).sum()))
    return float((ga * gb).sum() / den) if den > 0 else float("nan")


def similarity_to_unit(s: np.ndarray, *, quantile: float | None = None) -> tuple[np.ndarray, float]:
    """Map a similarity matrix (entries ``<= 1``) to ``a`` in ``[0, 1]`` by thresholding.

    ``a = clip((s - tau) / (1 - tau), 0, 1)`` with ``tau`` the ``1 - 2/d`` quantile of all
    entries of ``s`` (or ``quantile``). ``tau`` depends only on the multiset of entries, which
    a permutation of B's coordinates does not change, so the null distribution is unaffected;
    thresholding removes the bulk of unrelated pairs and sharpens the concentration bound.
    """
    d = s.shape[0]
    q = 1.0 - 2.0 / d if quantile is None else quantile
    flat = np.asarray(s, dtype=np.float32).ravel()
    k = int(round(min(max(q, 0.0), 1.0) * (flat.size - 1)))
    tau = float(np.partition(flat, k)[k])  # an order statistic: invariant to permuting columns
    tau = min(tau, 0.99)
    a = np.clip((s - tau) / (1.0 - tau), 0.0, 1.0)
    return a, tau


def threshold_entries(s: np.ndarray, *, quantile: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The non-zero entries of ``similarity_to_unit(s)`` as ``(rows, cols, values, tau)``.

    Same map as :func:`similarity_to_unit` without building the dense ``d x d`` result.
    """
    d = s.shape[0]
    q = 1.0 - 2.0 / d if quantile is None else quantile
    flat = np.asarray(s, dtype=np.float32).ravel()
    k = int(round(min(max(q, 0.0), 1.0) * (flat.size - 1)))
    tau = min(float(np.partition(flat, k)[k]), 0.99)
    idx = np.flatnonzero(flat > tau)
    vals = np.minimum((flat[idx].astype(np.float64) - tau) / (1.0 - tau), 1.0)
    return idx // d, idx % d, vals, tau


def _chatterjee_log10(observed: float, expected: float) -> float:
    t = observed - expected
    if t <= 0:
        return 0.0
    return min(0.0, math.log10(2.0) - (t * t) / (4.0 * expected + 2.0 * t) / LN10)


def _permanent_chernoff_log10(rows: np.ndarray, vals: np.ndarray, d: int, observed: float) -> float:
    """log10 of a Chernoff bound on ``P(T >= observed)`` through the permanent.

    For a uniform permutation ``E exp(lam T) = perm(exp(lam a)) / d!`` exactly, and for a
    non-negative matrix ``perm(M) <= prod_i sum_j M_ij`` (every term of the permanent is a term
    of the product). Markov's inequality then gives, for every ``lam >= 0``,

        log P(T >= t) <= -lam t + sum_i log(d - n_i + sum_{j: a_ij > 0} exp(lam a_ij)) - log d!

    (``n_i`` non-zero entries in row ``i``); the right side is convex in ``lam`` and minimised
    numerically. Loose in the bulk, but tight in the far tail where Chatterjee's bound saturates
    near ``exp(-d / 2)``: a perfect diagonal of a sparse ``a`` gets about ``prod_i n_i / d!``,
    the exact probability of the union of the permutations that reach it.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import gammaln

    if rows.size == 0 or observed <= 0:
        return 0.0
    n = np.bincount(rows, minlength=d).astype(np.float64)
    log_d_fact = float(gammaln(d + 1))

    def objective(lam: float) -> float:
        terms = lam * vals
        top = np.zeros(d)
        np.maximum.at(top, rows, terms)
        acc = np.zeros(d)
        np.add.at(acc, rows, np.exp(terms - top[rows]))
        return float(-lam * observed + np.sum(top + np.log((d - n) * np.exp(-top) + acc)) - log_d_fact)

    best = minimize_scalar(objective, bounds=(0.0, 1000.0), method="bounded", options={"xatol": 1e-6})
    return min(0.0, float(best.fun) / LN10)


def permutation_moments(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, d: int) -> tuple[float, float]:
    """Exact mean and variance of ``T = sum_i a[i, sigma(i)]`` under a uniform permutation.

    Hoeffding (1951): ``E T = sum(a) / d`` and ``Var T = sum_ij r_ij^2 / (d - 1)`` with ``r`` the
    doubly centred ``a`` (``a_ij - a_i. - a_.j + a_..``); computed from the non-zero entries.
    """
    vals = np.asarray(vals, dtype=np.float64)
    total = float(vals.sum())
    row = np.bincount(rows, weights=vals, minlength=d) / d
    col = np.bincount(cols, weights=vals, minlength=d) / d
    grand = total / (d * d)
    ss = float((vals * vals).sum() - d * (row * row).sum() - d * (col * col).sum() + d * d * grand * grand)
    return total / d, max(ss, 0.0) / (d - 1)


def _draw_permutations(rng: np.random.Generator, d: int, n: int) -> np.ndarray:
    """``n`` uniform random permutations of ``range(d)``, one per row (int32)."""
    out = np.empty((n, d), dtype=np.int32)
    batch = max(1, 2_000_000 // d)
    for start in range(0, n, batch):
        k = min(batch, n - start)
        out[start : start + k] = np.argsort(rng.random((k, d)), axis=1)
    return out


@functools.lru_cache(maxsize=8)
def _cached_permutations(d: int, n: int, seed: int) -> np.ndarray:
    perms = _draw_permutations(np.random.default_rng(seed), d, n)
    perms.setflags(write=False)
    return perms


def _sparse_permutation_sums(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, perms: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(perms.shape[0])
    hits = perms[:, rows] == cols[None, :].astype(perms.dtype)
    return np.where(hits, vals[None, :], 0.0).sum(axis=1)


def permutation_sums(a: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """``sum_i a[i, perms[r, i]]`` for every row ``r`` of ``perms``.

    Thresholded matrices are sparse (about ``2 d`` non-zero entries of ``d^2``), so the sum is
    taken over the non-zero entries only: ``sum_{(i, j): a_ij > 0} a_ij [perms[r, i] == j]``.
    """
    d = a.shape[0]
    rows, cols = np.nonzero(a)
    if rows.size > d * d // 8:
        return a[np.arange(d)[None, :], perms].sum(axis=1)
    if rows.size == 0:
        return np.zeros(perms.shape[0])
    hits = perms[:, rows] == cols[None, :].astype(perms.dtype)
    return np.where(hits, a[rows, cols][None, :], 0.0).sum(axis=1)


def assignment_test(
    a: np.ndarray,
    *,
    name: str,
    null_hypothesis: str = NULL_RESIDUAL_EXCHANGEABLE,
    n_resamples: int = 999,
    rng: np.random.Generator | int | None = None,
    evidence: dict | None = None,
    keep_null_distribution: bool = False,
) -> TestResult:
    """Permutation test of H0 for the linear assignment statistic ``T = trace(a)``.

    H0: the columns of ``a`` (B's residual coordinates) are exchangeable, i.e. ``T`` has the
    distribution of ``sum_i a[i, sigma(i)]`` for a uniformly random permutation ``sigma``.
    The alternative is ``'greater'``: a derived model has a diagonal larger than chance.

    Parameters
    ----------
    a : numpy.ndarray
        Square ``(d, d)`` matrix with entries in ``[0, 1]``.
    name : str
        Test name for the result.
    null_hypothesis : str, *optional*
        H0 in words.
    n_resamples : int, *optional*, defaults to 999
        Monte Carlo permutations; 0 uses the concentration bound alone.
    rng : numpy.random.Generator | int | None, *optional*
        Generator or seed for the permutations (``None`` = seed 0, so results are reproducible).
    evidence : dict, *optional*
        Extra JSON-safe values stored in the result.

    Returns
    -------
    TestResult
        ``statistic`` = observed ``T``; ``method`` says whether the Monte Carlo p-value or the
        Chatterjee bound was reported.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"assignment_test needs a square matrix of size >= 2, got shape {a.shape}")
    if n_resamples < 0:
        raise ValueError(f"`n_resamples` must be a non-negative integer, got {n_resamples}")
    d = a.shape[0]
    rows, cols = np.nonzero(a)
    if rows.size > d * d // 8:  # dense: sum the gathered entries directly
        return _assignment_test(
            a=a, rows=None, cols=None, vals=None, d=d, name=name, null_hypothesis=null_hypothesis,
            n_resamples=n_resamples, rng=rng, evidence=evidence, keep_null_distribution=keep_null_distribution,
        )
    return _assignment_test(
        a=None, rows=rows, cols=cols, vals=a[rows, cols], d=d, name=name, null_hypothesis=null_hypothesis,
        n_resamples=n_resamples, rng=rng, evidence=evidence, keep_null_distribution=keep_null_distribution,
    )


def assignment_test_sparse(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    d: int,
    *,
    name: str,
    null_hypothesis: str = NULL_RESIDUAL_EXCHANGEABLE,
    n_resamples: int = 999,
    rng: np.random.Generator | int | None = None,
    evidence: dict | None = None,
    keep_null_distribution: bool = False,
) -> TestResult:
    """:func:`assignment_test` for a matrix given by its non-zero entries ``a[rows, cols] = vals``."""
    if d < 2:
        raise ValueError(f"assignment_test needs a square matrix of size >= 2, got d={d}")
    if n_resamples < 0:
        raise ValueError(f"`n_resamples` must be a non-negative integer, got {n_resamples}")
    return _assignment_test(
        a=None, rows=np.asarray(rows), cols=np.asarray(cols), vals=np.asarray(vals, dtype=np.float64), d=int(d),
        name=name, null_hypothesis=null_hypothesis, n_resamples=n_resamples, rng=rng, evidence=evidence,
        keep_null_distribution=keep_null_distribution,
    )


def _assignment_test(
    *, a, rows, cols, vals, d, name, null_hypothesis, n_resamples, rng, evidence, keep_null_distribution
) -> TestResult:
    seed = None
    if isinstance(rng, np.random.Generator):
        perms = _draw_permutations(rng, d, n_resamples) if n_resamples else None
    else:
        seed = 0 if rng is None else int(rng)
        perms = _cached_permutations(d, n_resamples, seed) if n_resamples else None
    if a is not None:
        rows, cols = np.nonzero(a)
        vals = a[rows, cols]
    observed = float(vals[rows == cols].sum())
    expected, variance = permutation_moments(rows, cols, vals, d)
    null = None
    exceed = 0
    if perms is not None:
        if a is not None:
            null = a[np.arange(d)[None, :], perms].sum(axis=1)
        else:
            null = _sparse_permutation_sums(rows, cols, vals, perms)
        tol = 1e-12 * max(1.0, abs(observed))
        exceed = int(np.count_nonzero(null >= observed - tol))
        greater = int(np.count_nonzero(null > observed + tol))
        # Randomized tie handling: (#greater + U (#equal + 1)) / (n + 1) is exactly uniform under
        # H0 (the observed value is one more draw from the permutation distribution), where the
        # plain (1 + #(>=)) / (n + 1) is conservative when many resamples tie (e.g. T = 0).
        # Clamped at the floor 1 / (n + 1), which keeps the switch to the tail bound below valid.
        u = float(np.random.default_rng([0 if seed is None else seed, d, n_resamples, 7]).random())
        floor = 1.0 / (n_resamples + 1)
        log10_mc = math.log10(max(floor, (greater + u * (exceed - greater + 1)) / (n_resamples + 1)))
    else:
        log10_mc = 0.0
    chatterjee = _chatterjee_log10(observed, expected)
    if n_resamples > 0 and exceed > 0:
        log10_p = log10_mc
        method = f"Monte Carlo permutation ({n_resamples} resamples, ties broken at random, +1 corrected)"
        permanent = None
    else:
        permanent = _permanent_chernoff_log10(rows, vals, d, observed)
        bound = min(chatterjee, permanent)
        which = "permanent Chernoff bound" if permanent < chatterjee else "Chatterjee concentration bound"
        log10_p = min(log10_mc, bound)
        method = f"{which} on the exact permutation tail" + (
            f" (no Monte Carlo resample of {n_resamples} reached the observed value)" if n_resamples else ""
        )
    sd = math.sqrt(variance)
    ev = {
        "expected_statistic": expected,
        "sd_statistic": sd,
        "z": (observed - expected) / sd if sd > 0 else 0.0,
        "d": d,
        "log10_bound_chatterjee": chatterjee,
        "log10_bound_permanent": permanent,
        "mc_exceedances": exceed,
    }
    if evidence:
        ev.update(evidence)
    return TestResult(
        name=name,
        statistic=observed,
        log10_pvalue=float(log10_p),
        null_hypothesis=null_hypothesis,
        alternative="greater",
        method=method,
        n=d,
        n_resamples=n_resamples,
        seed=seed,
        evidence=ev,
        null_distribution=null if keep_null_distribution else None,
    )
