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

1. Monte Carlo with the +1 correction: ``p = (1 + #{T(sigma_r) >= T}) / (n_resamples + 1)``.
2. When no resample reaches the observed value (``p`` would sit at its floor), Chatterjee's
   concentration inequality for combinatorial sums (Chatterjee 2007, Stein's method for
   concentration inequalities, Prop. 1.1): for ``a`` in ``[0, 1]``,
   ``P(|T - E T| >= t) <= 2 exp(-t^2 / (4 E T + 2 t))``, with ``E T = sum(a) / d``. This bound
   holds for every ``t``; it needs no normal approximation in the far tail, and it is
   conservative. The reported p-value is ``min(floor, bound)``.

The combined rule is valid: for ``alpha`` at or above the floor the event ``p <= alpha``
requires the Monte Carlo p-value to be ``<= alpha``; below the floor it requires the bound to
be ``<= alpha``, which has probability at most ``alpha``.
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
]

NULL_RESIDUAL_EXCHANGEABLE = (
    "B was trained independently of A: B's residual-stream coordinates are exchangeable "
    "with respect to A (iid initialization, permutation-equivariant training)"
)


def rank_transform(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Ranks along ``axis`` mapped to ``(rank + 0.5) / n`` in ``(0, 1)`` (float32).

    Ties get distinct ranks in order of appearance; rank-based profiles are robust to the
    few huge "massive activation" weights that trained LLMs carry.
    """
    x = np.asarray(x)
    n = x.shape[axis]
    order = np.argsort(x, axis=axis, kind="stable")
    ranks = np.empty_like(order)
    idx = np.arange(n).reshape([-1 if k == axis else 1 for k in range(x.ndim)])
    np.put_along_axis(ranks, order, np.broadcast_to(idx, order.shape), axis=axis)
    return ((ranks.astype(np.float32) + 0.5) / np.float32(n)).astype(np.float32)


def standardize_columns(x: np.ndarray) -> np.ndarray:
    """Each column centred and scaled to unit root-mean-square (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    sd = np.sqrt((x * x).mean(axis=0, keepdims=True))
    sd[sd == 0] = 1.0
    return x / sd


def correlation_matrix(profiles_a: np.ndarray, profiles_b: np.ndarray) -> np.ndarray:
    """``S[i, j]`` = Pearson correlation between column ``i`` of A and column ``j`` of B.

    Both inputs are ``(n_observations, d)``: one profile (a column) per residual coordinate,
    observed over the same rows (matched tokens or matched layer features).
    """
    za = standardize_columns(profiles_a).astype(np.float32)
    zb = standardize_columns(profiles_b).astype(np.float32)
    out = za.T @ zb
    out *= np.float32(1.0 / za.shape[0])
    return np.clip(out, -1.0, 1.0, out=out)


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
        observed = float(np.trace(a))
        expected = float(a.sum() / d)
    else:
        observed = float(vals[rows == cols].sum())
        expected = float(vals.sum() / d)
    null = None
    exceed = 0
    if perms is not None:
        if a is not None:
            null = a[np.arange(d)[None, :], perms].sum(axis=1)
        else:
            null = _sparse_permutation_sums(rows, cols, vals, perms)
        exceed = int(np.count_nonzero(null >= observed - 1e-12 * max(1.0, abs(observed))))
        log10_mc = math.log10((1 + exceed) / (n_resamples + 1))
    else:
        log10_mc = 0.0
    bound = _chatterjee_log10(observed, expected)
    if n_resamples > 0 and exceed > 0:
        log10_p, method = log10_mc, f"Monte Carlo permutation ({n_resamples} resamples, +1 corrected)"
    else:
        log10_p = min(log10_mc, bound)
        method = (
            "Chatterjee concentration bound for permutation sums"
            + (f" (no Monte Carlo resample of {n_resamples} reached the observed value)" if n_resamples else "")
        )
    ev = {"expected_statistic": expected, "d": d, "log10_bound": bound, "mc_exceedances": exceed}
    if null is not None:
        sd = float(null.std())
        ev["z"] = (observed - float(null.mean())) / sd if sd > 0 else 0.0
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
