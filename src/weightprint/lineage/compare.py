"""Is model B derived from model A? :func:`compare_models` and :func:`compare_fingerprints`.

See ``docs/lineage.md`` for the method. In short: for every residual coordinate of A and of B
we build profiles that survive fine-tuning, quantization, hidden-unit/head permutation,
residual sign flips, vocabulary changes and dropped layers (rank profiles of per-layer weight
norms over aligned layers; embedding rows of tokens matched by string). ``S[i, j]`` correlates
profile ``i`` of A with profile ``j`` of B; the statistic is the thresholded diagonal of ``S``.

Two tests decide the verdict (Sidak's correction over both, see :func:`_sidak`):

- ``identity-basis``: B as it is; its null distribution comes from permuting B's residual
  coordinates (exact under H0; exact-tail bounds beyond the Monte Carlo floor);
- ``recovered-basis``: B's layer features after mapping B into A's residual basis with the map
  recovered from the embeddings (:func:`weightprint.basis.recover_residual_map`: a signed
  permutation or a rotation with folded norms, what a thief applies for free). The map is
  fitted on the same models, so this p-value is not exact; it is calibrated by simulation
  (``bench/bench_lineage_calibration.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.io.model import Model
from weightprint.lineage.align import LayerAlignment, align_layers
from weightprint.lineage.evidence import config_diff, jaccard, minhash_jaccard
from weightprint.lineage.features import hidden_size_of
from weightprint.lineage.fingerprint import Fingerprint, build_fingerprint, sample_tokens, shared_token_pairs
from weightprint.lineage.recover import recover_basis as _recover, recover_width as _recover_width
from weightprint.lineage.stats import (
    GRAM_MAX_TOKENS,
    NULL_RESIDUAL_EXCHANGEABLE,
    assignment_test_sparse,
    correlation_matrix,
    rank_transform,
    threshold_entries,
    token_gram_correlation,
)
from scipy import special

from weightprint.results import TestResult, VerdictResult, format_pvalue, to_jsonable
from weightprint.io.open import open_or_borrow
from weightprint.progress import ProgressCallback, no_progress

__all__ = ["LineageResult", "compare_fingerprints", "compare_models"]

Verdict = Literal["derived", "no evidence", "not comparable"]

MIN_SHARED_TOKENS = 32
DEFAULT_ALPHA = 1e-6
# What "no evidence" can still mean: the measured power of the test (bench/bench_lineage.py,
# bench/results/lineage*.json; docs/lineage.md), stated in every "no evidence" reason.
MEASURED_DETECTABLE_DRIFT = 0.40  # bench/results/lineage_symmetry.json: noise 0.05-0.40, all p < 1e-1341
POWER_NOTE = (
    f"not a proof of independence: this test detects copies of SmolLM2 perturbed up to "
    f"{MEASURED_DETECTABLE_DRIFT:.0%} relative L2 drift (measured; a 200-step fine-tune drifts 1.3%), "
    "not distillation or retraining from scratch"
)


@dataclass
class LineageResult(VerdictResult):
    """Verdict of a white-box lineage test between A (reference) and B (suspect).

    Attributes
    ----------
    a, b : str
        Labels of the two models.
    verdict : {'derived', 'no evidence', 'not comparable'}
        ``derived`` when the combined p-value is below ``alpha``; ``no evidence`` means "no
        evidence of shared weights at this level" -- not a proof of independence: the reason
        states what the test is known to detect (its measured power).
    reason : str
        One line explaining the verdict with its numbers.
    combined : TestResult | None
        The test on all weight components at once (None when not comparable).
    components : list[TestResult]
        Per-component tests (``layer-features``, ``embedding``, ``lm-head``), each valid alone.
    alpha : float
        Significance level of the verdict.
    config : dict
        Config diff ``{"differ": {key: [a, b]}, "same": [...]}``.
    tokenizer : dict
        ``vocab_size_a/b``, ``vocab_jaccard``, ``merges_jaccard`` (exact in :func:`compare_models`,
        MinHash estimates from fingerprints; ``method`` says which), ``shared_tokens`` and
        ``token_ids_preserved`` (A's tokens keep their ids in B) when exact.
    chat_template : dict
        Families of both chat templates and whether they are identical.
    layers : list[dict]
        Per matched layer pair: layers, descriptor distance, mean rank correlation of its
        features at the identity alignment, and its z-score.
    alignment : dict
        The layer alignment (pairs, unmatched layers).
    basis : dict
        The recovered map from A's residual basis to B's (``kind``: identity, sign flip,
        permutation, signed permutation, orthogonal; ``fit_quality``; ``folded_norms``), empty
        when it could not be recovered (fingerprints, too few shared tokens).
    basis_free : dict
        Evidence that does not depend on the residual basis nor on the widths:
        ``token_gram_corr``, the correlation of the two token Gram matrices over shared sample
        tokens (:func:`~weightprint.lineage.stats.token_gram_correlation`). Not a test: no exact
        null exists for it (``docs/lineage.md`` gives measured values).
    seconds : float
        Wall time of the comparison.
    """

    a: str
    b: str
    verdict: Verdict
    reason: str
    combined: TestResult | None
    components: list[TestResult] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    chat_template: dict[str, Any] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    alignment: dict[str, Any] = field(default_factory=dict)
    basis: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    basis_free: dict[str, Any] = field(default_factory=dict)

    @property
    def log10_pvalue(self) -> float:
        """log10 of the combined p-value (0.0 when not comparable)."""
        return self.combined.log10_pvalue if self.combined is not None else 0.0

    EVIDENCE_VERDICTS = frozenset({"derived"})

    @property
    def significant(self) -> bool:
        return self.verdict == "derived"

    @property
    def evidence(self) -> list[TestResult]:
        return ([self.combined] if self.combined is not None else []) + list(self.components)

    def summary(self) -> str:
        return f"{self.verdict} ({format_pvalue(self.log10_pvalue)}): {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "a": self.a,
                "b": self.b,
                "verdict": self.verdict,
                "reason": self.reason,
                "alpha": self.alpha,
                "log10_pvalue": self.log10_pvalue,
                "pvalue_text": format_pvalue(self.log10_pvalue),
                "combined": self.combined.to_dict() if self.combined is not None else None,
                "components": [c.to_dict() for c in self.components],
                "config": self.config,
                "tokenizer": self.tokenizer,
                "chat_template": self.chat_template,
                "layers": self.layers,
                "alignment": self.alignment,
                "basis": self.basis,
                "basis_free": self.basis_free,
                "seconds": self.seconds,
            }
        )


# ---------------------------------------------------------------------------- profiles
def _layer_profiles(fa: Fingerprint, fb: Fingerprint, alignment: LayerAlignment) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Stack the common features of matched layers: ``(K, d)`` profiles for A and for B."""
    d = fa.hidden_size
    rows_a: list[np.ndarray] = []
    rows_b: list[np.ndarray] = []
    owners: list[tuple[int, int, float, int]] = []
    for (i, j), dist in zip(alignment.pairs, alignment.distances):
        ra, rb = fa.layer_roles[i], fb.layer_roles[j]
        if ra == rb:
            ia = ib = None
            n = len(ra)
        else:
            common = sorted(set(ra) & set(rb))
            if not common:
                continue
            ia = [ra.index(r) for r in common]
            ib = [rb.index(r) for r in common]
            n = len(common)
        rows_a.append(fa.layer_features[i] if ia is None else fa.layer_features[i][ia])
        rows_b.append(fb.layer_features[j] if ib is None else fb.layer_features[j][ib])
        owners.append((i, j, dist, n))
    per_layer: list[dict] = []
    if rows_a:
        pa = np.concatenate(rows_a)
        pb = np.concatenate(rows_b)
        ca = pa - pa.mean(axis=1, keepdims=True)
        cb = pb - pb.mean(axis=1, keepdims=True)
        den = np.sqrt((ca * ca).sum(axis=1) * (cb * cb).sum(axis=1))
        rho = np.where(den > 0, (ca * cb).sum(axis=1) / np.where(den > 0, den, 1.0), 0.0)
        counts = np.array([o[3] for o in owners])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        means = np.add.reduceat(rho, starts) / counts
        # Under H0 each rank correlation is ~N(0, 1/(d-1)); the features of one layer are
        # dependent, so this z (one averaged correlation) is a rough per-layer indicator only.
        z = means * math.sqrt(d - 1)
        lp = special.log_ndtr(-z) / math.log(10.0)
        for (i, j, dist, n), m, zz, p in zip(owners, means.tolist(), z.tolist(), lp.tolist()):
            per_layer.append({"layer_a": i, "layer_b": j, "descriptor_distance": dist, "n_features": n,
                              "mean_rank_correlation": m, "z": zz, "log10_pvalue_normal_approx": p})
    for key in sorted(set(fa.global_features) & set(fb.global_features)):
        rows_a.append(fa.global_features[key][None, :])
        rows_b.append(fb.global_features[key][None, :])
    if not rows_a:
        return np.zeros((0, d)), np.zeros((0, d)), per_layer
    return np.concatenate(rows_a), np.concatenate(rows_b), per_layer


def _token_profiles(fa: Fingerprint, fb: Fingerprint, which: str) -> tuple[np.ndarray, np.ndarray, int]:
    ea = getattr(fa, which)
    eb = getattr(fb, which)
    if which == "head":  # a tied model's output head is its embedding
        if ea is None and eb is None:
            return np.zeros((0, 0)), np.zeros((0, 0)), 0
        ea = fa.embedding if ea is None else ea
        eb = fb.embedding if eb is None else eb
    if ea is None or eb is None:
        return np.zeros((0, 0)), np.zeros((0, 0)), 0
    ia, ib = shared_token_pairs(fa.tokens, fb.tokens)
    if ia.size < MIN_SHARED_TOKENS:
        return np.zeros((0, 0)), np.zeros((0, 0)), int(ia.size)
    ea = ea if np.array_equal(ia, np.arange(len(ea))) else ea[ia]  # the same sample tokens: no copy
    eb = eb if np.array_equal(ib, np.arange(len(eb))) else eb[ib]
    pa = ea if fa.levels else rank_transform(ea, axis=0)
    pb = eb if fb.levels else rank_transform(eb, axis=0)
    return pa, pb, int(ia.size)


def _component(name: str, s: np.ndarray, *, n_resamples: int, rng: int, extra: dict) -> TestResult:
    rows, cols, vals, tau = threshold_entries(s)
    diag = np.diag(s)
    ev = {
        "threshold": tau,
        "mean_diagonal_similarity": float(diag.mean()),
        "median_diagonal_similarity": float(np.median(diag)),
    }
    ev.update(extra)
    return assignment_test_sparse(rows, cols, vals, s.shape[0], name=name, n_resamples=n_resamples, rng=rng, evidence=ev)


def _add_similarity(acc: list[np.ndarray], s: np.ndarray, n: int) -> int:
    """Add ``s`` into the one running sum ``acc`` (float32) of ``n`` matrices; returns ``n + 1``."""
    if not acc:
        acc.append(s)
    elif n == 1:
        acc[0] = np.add(acc[0], s, dtype=np.float32)  # the first matrix is a component's own: not written into
    else:
        np.add(acc[0], s, out=acc[0])
    return n + 1


def _weight_tests(
    fa: Fingerprint, fb: Fingerprint, *, n_resamples: int, rng: int, components: bool = True
) -> tuple[TestResult | None, list[TestResult], list[dict], LayerAlignment, str]:
    alignment = align_layers(fa.descriptor_dicts(), fb.descriptor_dicts())
    comps: list[TestResult] = []
    sims: list[np.ndarray] = []  # at most one: the others are added into it (d x d each)
    n_sims = 0
    notes: list[str] = []
    pa, pb, per_layer = _layer_profiles(fa, fb, alignment)
    names: list[str] = []
    if pa.shape[0] >= 2:
        s = correlation_matrix(pa, pb)
        n_sims = _add_similarity(sims, s, n_sims)
        names.append("layer-features")
        if components:
            comps.append(
                _component(
                    "layer-features",
                    s,
                    n_resamples=n_resamples,
                    rng=rng,
                    extra={"n_features": int(pa.shape[0]), "matched_layers": len(alignment.pairs)},
                )
            )
    else:
        notes.append("no common per-layer features")
    for which, name in (("embedding", "embedding"), ("head", "lm-head")):
        if which == "head" and fa.head is None and fb.head is None:
            continue
        ta, tb, n_shared = _token_profiles(fa, fb, which)
        if ta.shape[0] == 0:
            notes.append(f"{name}: {n_shared} shared sample tokens (< {MIN_SHARED_TOKENS})")
            continue
        signed = correlation_matrix(ta, tb)
        del ta, tb
        # |corr|: a residual coordinate whose sign was flipped (embedding and every weight times
        # -1, a free change) correlates at -1. The absolute value is a function applied to each
        # (coordinate of A, coordinate of B) pair, so the permutation null stays exact.
        diag = np.diag(signed).copy()
        s = np.abs(signed, out=signed)
        del signed
        strong = np.abs(diag) > 0.5
        if components:
            extra = {"n_tokens": n_shared,
                     "negative_diagonal_share": float(np.mean(diag[strong] < 0)) if strong.any() else None,
                     "matched_coordinates": int(np.count_nonzero(strong)),
                     "flipped_coordinates": int(np.count_nonzero(diag[strong] < 0))}
            comps.append(_component(name, s, n_resamples=n_resamples, rng=rng, extra=extra))
        n_sims = _add_similarity(sims, s, n_sims)
        names.append(name)
        del s
    if not sims:
        return None, comps, per_layer, alignment, "; ".join(notes)
    s_all = sims[0] if n_sims == 1 else np.divide(sims[0], np.float32(n_sims), dtype=np.float32)
    extra: dict[str, Any] = {"components": names, "combination": "mean of component similarity matrices, one permutation test"}
    combined = _component("white-box-combined", s_all, n_resamples=n_resamples, rng=rng, extra=extra)
    return combined, comps, per_layer, alignment, "; ".join(notes)


RECOVERED_METHOD_NOTE = (
    "permutation test of the layer features in the residual basis recovered from the embeddings "
    "(signed permutation or orthogonal Procrustes); the basis is fitted on the same models, so the "
    "permutation p-value is not exact: calibrated by simulation on independent trained pairs "
    "(docs/lineage.md)"
)


def _recovered_test(
    fa: Fingerprint, fb: Fingerprint, basis: dict[str, Any], *, n_resamples: int, rng: int
) -> TestResult | None:
    """Layer-feature test of A against B seen in A's basis (B mapped by the recovered map).

    Only the layer features take part: the map was fitted on the embeddings, so an embedding
    or tied-head component in the recovered basis would test the fit on its own data.
    """
    alignment = align_layers(fa.descriptor_dicts(), fb.descriptor_dicts())
    pa, pb, _ = _layer_profiles(fa, fb, alignment)
    keep = (pa.std(axis=1) > 0) & (pb.std(axis=1) > 0)  # folded norms: constant features carry nothing
    pa, pb = pa[keep], pb[keep]
    if pa.shape[0] < 2:
        return None
    s = correlation_matrix(pa, pb)
    t = _component("recovered-basis", s, n_resamples=n_resamples, rng=rng,
                   extra={"n_features": int(pa.shape[0]), "matched_layers": len(alignment.pairs),
                          "unmatched_a": alignment.unmatched_a, "unmatched_b": alignment.unmatched_b,
                          "basis": basis, "calibration": RECOVERED_METHOD_NOTE})
    return TestResult(
        name=t.name, statistic=t.statistic, log10_pvalue=t.log10_pvalue,
        null_hypothesis=t.null_hypothesis + "; here after mapping B into A's residual basis",
        alternative=t.alternative, method=f"{t.method}, {RECOVERED_METHOD_NOTE}", n=t.n,
        n_resamples=t.n_resamples, seed=t.seed, evidence=t.evidence,
    )


def sidak_log10(log10_pvalues: list[float]) -> float:
    """log10 of Sidak's ``1 - (1 - min p)^k``, computed without cancellation for tiny p.

    Exact (uniform under H0) for independent tests. Under *any* dependence it is valid up to a
    factor ``1 + alpha / 4`` for ``k = 2``: ``P(1 - (1 - min p)^2 <= alpha) = P(min p <= c)`` with
    ``c = 1 - sqrt(1 - alpha)``, at most ``2 c`` by the union bound, and
    ``2 - 2 sqrt(1 - alpha) <= alpha + alpha^2 / 4`` (2.5e-13 above alpha = 1e-6). Bonferroni's
    ``min(1, k min p)`` is the same in the tail but piles up at p = 1 (not uniform).
    """
    k = len(log10_pvalues)
    m = min(log10_pvalues)
    if k <= 1:
        return float(m)
    if m < -8:  # 1 - (1 - p)^k = k p (1 - (k - 1) p / 2 + ...): the correction is below 1e-8 relative
        return float(m + math.log10(k))
    p = 10.0 ** m
    return float(math.log10(-math.expm1(k * math.log1p(-p))) if p < 1 else 0.0)


def _sidak(tests: list[TestResult]) -> TestResult:
    """One p-value for the verdict: Sidak's correction over the identity-basis and recovered-basis tests."""
    lp = sidak_log10([t.log10_pvalue for t in tests])
    best = min(tests, key=lambda t: t.log10_pvalue)
    ev = dict(best.evidence)
    ev.update({"tests": {t.name: t.log10_pvalue for t in tests}, "decided_by": best.name})
    return TestResult(
        name="white-box-combined", statistic=best.statistic, log10_pvalue=lp,
        null_hypothesis=NULL_RESIDUAL_EXCHANGEABLE,
        alternative="greater",
        method=(f"Sidak's correction 1 - (1 - min p)^{len(tests)} over {len(tests)} tests "
                f"({', '.join(t.name for t in tests)}); smallest: {best.method}"),
        n=best.n, n_resamples=best.n_resamples, seed=best.seed, evidence=ev,
    )


SKIP_RECOVERY_LOG10 = -8.0  # identity-basis p below 1e-8: the basis recovery cannot change the verdict


def _not_run(identity: TestResult, log10_pvalue: float, why: str) -> TestResult:
    """The recovered-basis slot of the combination when that test was not run on its own.

    Counting it (with p = 1, or with the identity-basis p when the two tests coincide) keeps the
    Sidak combination over two tests whenever a recovery was attempted, so the decision to skip
    it -- taken on the data -- cannot make the combined p-value smaller than it should be.
    """
    return TestResult(name="recovered-basis", statistic=identity.statistic, log10_pvalue=float(log10_pvalue),
                      null_hypothesis=identity.null_hypothesis, alternative="greater", method=why, n=identity.n,
                      evidence={"not_run": why})


def _basis_free(a: Fingerprint, b: Fingerprint) -> dict[str, Any]:
    """The token Gram correlation over the shared sample tokens (both embedding samples needed)."""
    if a.embedding is None or b.embedding is None:
        return {}
    ia, ib = (x[:GRAM_MAX_TOKENS] for x in shared_token_pairs(a.tokens, b.tokens))
    if ia.size < 16:
        return {}
    value = token_gram_correlation(a.embedding[ia], b.embedding[ib])
    return {"token_gram_corr": value, "n_tokens": int(ia.size),
            "method": "Pearson correlation of the two token Gram matrices X X^T (rows column-centred): unchanged by "
                      "any orthogonal change of residual basis and by the widths; evidence, not a test"}


def _basis_from_signs(done: LineageResult) -> dict[str, Any]:
    """The residual map when the recovery was skipped: identity up to the signs of the coordinates,
    as the embedding component of ``done`` (the identity-basis test, already run with its
    components) counted them from the signed correlations of matched embedding columns."""
    out: dict[str, Any] = {"skipped": True, "fit_quality": None,
                           "method": "signs of the matched embedding columns (identity-basis test already decisive)"}
    counted = next((c.evidence for c in done.components if c.name == "embedding"), None)
    if counted is None:  # too few shared sample tokens for an embedding component
        return {**out, "kind": "identity"}
    flipped, n = int(counted["flipped_coordinates"]), int(counted["matched_coordinates"])
    kind = "identity" if flipped == 0 else ("sign flip" if flipped == n else "partial sign flip")
    return {**out, "kind": kind, "flipped_coordinates": flipped, "matched_coordinates": n}


def _basis_text(basis: dict[str, Any] | None) -> str:
    if not basis:
        return ""
    kind = basis.get("kind")
    if kind is None:
        why = basis.get("not_recovered") or basis.get("sketch_not_run")
        return f"residual map not recovered ({why})" if why else ""
    words = {
        "identity": "residual basis unchanged",
        "sign flip": "residual basis sign-flipped",
        "partial sign flip": "some residual coordinates sign-flipped",
        "permutation": "residual coordinates permuted",
        "signed permutation": "residual coordinates permuted with sign flips",
        "orthogonal": "residual basis rotated (orthogonal map)",
        "width pruned": "residual channels dropped (width pruning)",
    }.get(str(kind), f"residual map {kind}")
    fold = ", norms folded into the layers" if basis.get("folded_norms") and kind == "orthogonal" else ""
    fit = basis.get("fit_quality")
    if isinstance(basis.get("fit_corr"), (int, float)):
        how = f"from the stored basis sketch, held-out corr {basis['fit_corr']:.2f}"
    else:
        how = f"held-out fit residual {fit:.3f}" if isinstance(fit, (int, float)) else "from the embedding signs"
    return f"{words}{fold} ({how})"


def _tokenizer_evidence_from_fingerprints(fa: Fingerprint, fb: Fingerprint) -> dict[str, Any]:
    return {
        "vocab_size_a": fa.vocab_size,
        "vocab_size_b": fb.vocab_size,
        "tokenizer_model_a": fa.tokenizer_model,
        "tokenizer_model_b": fb.tokenizer_model,
        "vocab_jaccard": minhash_jaccard(fa.vocab_minhash, fb.vocab_minhash),
        "merges_jaccard": minhash_jaccard(fa.merges_minhash, fb.merges_minhash),
        "method": "MinHash estimate (128 hashes)",
    }


def compare_fingerprints(
    a: Fingerprint,
    b: Fingerprint,
    *,
    n_resamples: int = 999,
    rng: np.random.Generator | int | None = None,
    alpha: float = DEFAULT_ALPHA,
    tokenizer_evidence: dict[str, Any] | None = None,
    components: bool = True,
    recovered: Fingerprint | None = None,
    restricted: Fingerprint | None = None,
    basis: dict[str, Any] | None = None,
    _reuse: LineageResult | None = None,
) -> LineageResult:
    """Lineage test between two fingerprints (full or stored). See :func:`compare_models`.

    ``components=False`` runs the combined test only (no per-component p-values): what a
    database search over many references needs. ``recovered`` is B's fingerprint in A's
    residual basis (``basis`` describes the recovered map, :meth:`ResidualMap.to_dict`): its
    layer features are tested too, and the verdict rests on Sidak's combination of the
    identity-basis and recovered-basis tests. ``restricted`` is A's fingerprint restricted to
    the residual coordinates a narrower B kept (width pruning, :func:`_recover_width`): then the
    recovered-basis test alone decides.
    """
    t0 = time.perf_counter()
    # One seed for every component: they share the cached Monte Carlo permutations.
    gen = int(rng.integers(2**62)) if isinstance(rng, np.random.Generator) else (0 if rng is None else int(rng))
    cfg = config_diff(a.config, b.config)
    tok = tokenizer_evidence if tokenizer_evidence is not None else _tokenizer_evidence_from_fingerprints(a, b)
    chat = {
        "family_a": a.chat_template_family,
        "family_b": b.chat_template_family,
        "same_family": a.chat_template_family == b.chat_template_family and a.chat_template_family != "none",
        "identical": a.chat_template_sha256 is not None and a.chat_template_sha256 == b.chat_template_sha256,
    }
    result = LineageResult(a=a.label, b=b.label, verdict="not comparable", reason="", combined=None, alpha=alpha,
                           config=cfg, tokenizer=tok, chat_template=chat, basis_free=_basis_free(a, b))
    context = _context_text(tok, chat)
    if a.hidden_size != b.hidden_size:
        result.basis = dict(basis or {})
        rec = _recovered_test(restricted, b, result.basis, n_resamples=n_resamples, rng=gen) if restricted else None
        if rec is None:
            why = f" ({basis['not_recovered']})" if basis and basis.get("not_recovered") else ""
            result.reason = (
                f"hidden sizes differ ({a.hidden_size} vs {b.hidden_size}): no shared residual stream to compare "
                f"weights{why}; {context}"
            )
        else:
            result.components = [rec] if components else []
            result.combined = TestResult(**{**rec.__dict__, "name": "white-box-combined"})
            kept = f"B keeps {b.hidden_size} of A's {a.hidden_size} residual coordinates (width pruning)"
            if result.combined.significant(alpha):
                result.verdict = "derived"
                result.reason = f"{kept}: {rec.pvalue_text()} ({rec.name}, z = {rec.evidence.get('z', 0.0):.1f}); {context}"
            else:
                result.verdict = "no evidence"
                result.reason = (f"hidden sizes differ ({a.hidden_size} vs {b.hidden_size}) and no evidence that B keeps "
                                 f"A's residual coordinates at alpha={alpha:g}: {rec.pvalue_text()}; {POWER_NOTE}; {context}")
        result.seconds = time.perf_counter() - t0
        return result
    reused = getattr(_reuse, "_weight_tests", None)  # an earlier call's, same fingerprints, seed and resamples
    if reused is not None and reused[0] == (n_resamples, gen, components):
        combined, comps, per_layer, alignment, notes = reused[1]
    else:
        combined, comps, per_layer, alignment, notes = _weight_tests(a, b, n_resamples=n_resamples, rng=gen,
                                                                     components=components)
    result._weight_tests = ((n_resamples, gen, components), (combined, comps, per_layer, alignment, notes))
    result.components = comps
    result.layers = per_layer
    result.alignment = alignment.to_dict()
    result.basis = dict(basis or {})
    if combined is None:
        result.reason = f"no weight component in common ({notes}); {context}"
        result.seconds = time.perf_counter() - t0
        return result
    identity = TestResult(**{**combined.__dict__, "name": "identity-basis"})
    tests = [identity]
    if recovered is not None:
        rec = _recovered_test(a, recovered, result.basis, n_resamples=n_resamples, rng=gen)
        tests.append(rec if rec is not None else _not_run(identity, 0.0, "no layer feature left in the recovered basis"))
    elif result.basis.get("skipped"):
        tests.append(_not_run(identity, 0.0, f"not run: the identity-basis test already gave p < 1e{SKIP_RECOVERY_LOG10:.0f}"))
    elif result.basis.get("sketch_not_run"):
        # a basis sketch was there but gave no map: the test counts as p = 1 (the decision to
        # skip it was taken on the data, so it stays in the combination)
        tests.append(_not_run(identity, 0.0, f"not run: {result.basis['sketch_not_run']}"))
    elif result.basis.get("kind") in ("identity", "sign flip"):
        # such a map changes no norm: the test in the recovered basis is the identity-basis test
        tests.append(_not_run(identity, identity.log10_pvalue, "the recovered map changes no norm: same as identity-basis"))
    if components:
        result.components = comps + tests
    final = tests[0] if len(tests) == 1 else _sidak(tests)
    result.combined = TestResult(**{**final.__dict__, "name": "white-box-combined"})
    ptxt = result.combined.pvalue_text()
    layer_note = ""
    decider = min(tests, key=lambda t: t.log10_pvalue)
    # the layer alignment of the test that decides (a rotated B aligns only in A's basis)
    un_a = decider.evidence.get("unmatched_a", alignment.unmatched_a)
    un_b = decider.evidence.get("unmatched_b", alignment.unmatched_b)
    n_matched = decider.evidence.get("matched_layers", len(alignment.pairs))
    if un_a or un_b:
        layer_note = f"; layers unmatched: A {un_a}, B {un_b}"
    basis_txt = _basis_text(basis)
    basis_note = f"; {basis_txt}" if basis_txt else ""
    basis_note += _experts_note(cfg)
    if result.combined.significant(alpha):
        best = min([*comps, *tests], key=lambda c: c.log10_pvalue)
        z = best.evidence.get("z")
        z_txt = f", z = {z:.1f}" if isinstance(z, (int, float)) else ""
        result.verdict = "derived"
        result.reason = (
            f"B shares A's weights up to a change of residual basis: {ptxt} (strongest: {best.name}, "
            f"{best.pvalue_text()}{z_txt}; {n_matched} layers matched{layer_note}{basis_note}); {context}"
        )
    else:
        result.verdict = "no evidence"
        result.reason = (
            f"no evidence that B was derived from A at alpha={alpha:g}: {ptxt} "
            f"({', '.join(t.name for t in tests)}{layer_note}{basis_note}); {POWER_NOTE}; {context}"
        )
    result.seconds = time.perf_counter() - t0
    return result


def _experts_note(cfg: dict[str, Any]) -> str:
    """``; B has 4 experts per layer where A has a dense MLP (...)`` when the expert counts differ."""
    ea, eb = cfg.get("differ", {}).get("num_local_experts", (None, None))
    ea, eb = int(ea or 0), int(eb or 0)
    if ea == eb:
        return ""
    if ea <= 1 < eb:
        return f"; B has {eb} experts per layer where A has a dense MLP (as sparse upcycling makes them)"
    if eb <= 1 < ea:
        return f"; A has {ea} experts per layer where B has a dense MLP"
    return f"; {ea} experts per layer in A, {eb} in B"


def _context_text(tok: dict[str, Any], chat: dict[str, Any]) -> str:
    vj = tok.get("vocab_jaccard")
    vj_txt = "unknown" if vj is None else f"{vj:.2f}"
    return f"vocab Jaccard {vj_txt}, chat templates {chat['family_a']} vs {chat['family_b']}"


def _validate_compare_models(n_resamples: int, alpha: float) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 0:
        raise WeightprintError(f"`n_resamples` must be a non-negative integer, got {n_resamples!r}")
    if not (0.0 < alpha < 1.0):
        raise WeightprintError(f"`alpha` must be in (0, 1), got {alpha!r}")


def compare_models(
    a: str | Path | Model,
    b: str | Path | Model,
    *,
    n_resamples: int = 999,
    rng: np.random.Generator | int | None = None,
    alpha: float = DEFAULT_ALPHA,
    max_tokens: int = 4096,
    progress: ProgressCallback | None = None,
    recover: bool = True,
) -> LineageResult:
    """Test H0 "B was trained independently of A" from the weights of both models.

    H0: B's residual-stream coordinates are exchangeable with respect to A (B was initialized
    independently of A with an iid, permutation-invariant initialization and trained by a
    permutation-equivariant optimizer). Alternative ('greater'): B keeps A's residual basis, as
    every derivative made by fine-tuning, quantization, hidden-unit/head permutation,
    vocabulary changes or layer removal does.

    Parameters
    ----------
    a, b : str | Path | Model
        Reference and suspect, any format :func:`weightprint.io.open_model` reads.
    n_resamples : int, *optional*, defaults to 999
        Monte Carlo permutations per test (a concentration bound covers the far tail).
    rng : numpy.random.Generator | int | None, *optional*
        Generator or seed (``None`` = 0, reproducible).
    alpha : float, *optional*, defaults to 1e-6
        Level below which the verdict is ``derived``.
    max_tokens : int, *optional*, defaults to 4096
        Shared tokens (matched by string) used for the embedding test.
    progress : ProgressCallback, *optional*
        Called at each of the four steps (fingerprint A, fingerprint B, basis recovery, tests).
    recover : bool, *optional*, defaults to True
        Recover the map between the residual bases (signed permutation or rotation, from the
        embeddings of shared tokens) and test B's layer features in A's basis as well.

    Returns
    -------
    LineageResult
        Verdict, reason, combined and per-component :class:`TestResult` (log10 p-values),
        config diff, tokenizer overlap (exact Jaccard), chat-template families, per-layer values.

    Raises
    ------
    WeightprintError
        A model cannot be read (the message names the file), or bad arguments.

    Examples
    --------
    >>> r = compare_models("base.gguf", "suspect.gguf")  # doctest: +SKIP
    >>> r.verdict, r.combined.pvalue_text()  # doctest: +SKIP
    ('derived', 'p < 1e-120')
    """
    _validate_compare_models(n_resamples, alpha)
    progress = progress or no_progress
    t0 = time.perf_counter()
    ma, close_a = open_or_borrow(a)
    try:
        mb, close_b = open_or_borrow(b)
        try:
            vocab_a = list(ma.tokenizer.tokens) if ma.tokenizer is not None else []
            vocab_b = list(mb.tokenizer.tokens) if mb.tokenizer is not None else []
            set_a, set_b = set(vocab_a), set(vocab_b)
            shared = set_a & set_b
            tokens = sample_tokens(vocab_a, limit=max_tokens, among=shared) if shared else []
            da, db = hidden_size_of(ma), hidden_size_of(mb)
            # Nothing to compare in the weights when the widths differ: skip reading them, keep the metadata evidence.
            same_width = not (da is not None and db is not None and da != db)
            # Different widths (width pruning): worth reading the weights only when enough shared
            # tokens can tell which of A's residual coordinates B kept.
            weights = same_width or (recover and len(shared) >= 2 * max(da or 0, db or 0))
            progress(0, 4, f"fingerprint {Path(str(ma.path)).name}")
            fa = build_fingerprint(ma, tokens=tokens if weights else [], weights=weights)
            progress(1, 4, f"fingerprint {Path(str(mb.path)).name}")
            fb = build_fingerprint(mb, tokens=tokens if weights else [], weights=weights)
            progress(2, 4, "recover the residual basis")
            recovered = restricted = basis = pre = None
            if isinstance(rng, np.random.Generator):  # one seed for both calls below
                rng = int(rng.integers(2**62))
            if weights and recover and same_width:
                # with every component: the final call below reuses these tests (a 7B width: ~10 s each)
                pre = compare_fingerprints(fa, fb, n_resamples=n_resamples, rng=rng, alpha=alpha, tokenizer_evidence={})
                if pre.combined is not None and pre.combined.log10_pvalue < SKIP_RECOVERY_LOG10:
                    basis = _basis_from_signs(pre)  # reading both embeddings whole would change nothing
                else:
                    recovered, basis = _recover(ma, mb, fa)
            elif weights:
                restricted, basis = _recover_width(fa, fb)
            merges_a = set(ma.tokenizer.merges or []) if ma.tokenizer is not None else set()
            merges_b = set(mb.tokenizer.merges or []) if mb.tokenizer is not None else set()
            tok = {
                "vocab_size_a": len(vocab_a),
                "vocab_size_b": len(vocab_b),
                "tokenizer_model_a": ma.tokenizer.model if ma.tokenizer is not None else None,
                "tokenizer_model_b": mb.tokenizer.model if mb.tokenizer is not None else None,
                "shared_tokens": len(shared),
                "vocab_jaccard": jaccard(set_a, set_b) if (set_a or set_b) else None,
                "merges_jaccard": jaccard(merges_a, merges_b) if (merges_a or merges_b) else None,
                "token_ids_preserved": bool(vocab_a) and vocab_a == vocab_b[: len(vocab_a)],
                "method": "exact",
            }
        finally:
            if close_b:
                mb.close()
    finally:
        if close_a:
            ma.close()
    progress(3, 4, "tests")
    result = compare_fingerprints(fa, fb, n_resamples=n_resamples, rng=rng, alpha=alpha, tokenizer_evidence=tok,
                                  recovered=recovered, restricted=restricted, basis=basis, _reuse=pre)
    result.a = str(a.path if isinstance(a, Model) else a)
    result.b = str(b.path if isinstance(b, Model) else b)
    result.seconds = time.perf_counter() - t0
    return result
