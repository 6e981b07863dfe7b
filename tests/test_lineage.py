"""White-box lineage on synthetic models (fast): statistics, derivations, calibration, fingerprint DB.

H0 of every test here: B was trained independently of A (B's residual coordinates are
exchangeable with respect to A). Alternative: B keeps A's residual basis (derived).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from _fixtures_lineage import (
    add_relative_noise,
    array_model,
    plant_outliers,
    drop_layer,
    merge_lora,
    prune_width,
    permute_hidden,
    random_llama,
    rescale_norms,
    toy_vocab,
)
from weightprint.errors import WeightprintError
from weightprint.lineage import Fingerprint, build_fingerprint, compare_fingerprints, compare_models
from weightprint.lineage.align import align_layers
from weightprint.lineage.db import fingerprint_model, list_fingerprints, search_fingerprints
from weightprint.lineage.fingerprint import fingerprint_budget_bytes
from weightprint.lineage.stats import assignment_test, rank_transform, similarity_to_unit


# ------------------------------------------------------------------------------- statistics
def test_assignment_test_is_calibrated_under_exchangeability():
    """H0 true by construction (a random matrix, identity is one uniform draw): p ~ U(0, 1)."""
    rng = np.random.default_rng(1)
    ps = []
    for _ in range(200):
        s = rng.normal(size=(24, 24)) / 5
        a, _ = similarity_to_unit(np.clip(s, -1, 1))
        ps.append(assignment_test(a, name="t", n_resamples=199, rng=rng).pvalue)
    ps = np.array(ps)
    # valid: no excess of small p-values (discreteness makes the test conservative, never liberal)
    assert np.mean(ps <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(ps))
    assert stats.kstest(ps, "uniform", alternative="greater").pvalue > 0.01


def _exact_tail(a: np.ndarray) -> float:
    """P(sum_i a[i, sigma(i)] >= trace(a)) over all d! permutations (small d only)."""
    import itertools

    d = a.shape[0]
    t = np.trace(a)
    sums = np.array([a[np.arange(d), list(p)].sum() for p in itertools.permutations(range(d))])
    return float(np.mean(sums >= t - 1e-12))


@pytest.mark.parametrize("diag", [0.2, 0.6, 1.0])
def test_both_tail_bounds_dominate_the_exact_permutation_tail(diag):
    """Each far-tail bound must be >= the exact tail (enumerated over all 8! permutations)."""
    rng = np.random.default_rng(int(diag * 10))
    d = 8
    a = np.where(rng.random((d, d)) < 0.25, rng.uniform(0, 0.5, (d, d)), 0.0)
    a[np.arange(d), np.arange(d)] = np.maximum(a[np.arange(d), np.arange(d)], diag)
    exact = math.log10(_exact_tail(a))
    r = assignment_test(a, name="t", n_resamples=0)
    assert r.evidence["log10_bound_chatterjee"] >= exact - 1e-9
    assert r.evidence["log10_bound_permanent"] >= exact - 1e-9
    assert r.log10_pvalue >= exact - 1e-9
    # exact mean and sd of the permutation distribution (Hoeffding), checked by enumeration
    import itertools

    sums = np.array([a[np.arange(d), list(p)].sum() for p in itertools.permutations(range(d))])
    assert r.evidence["expected_statistic"] == pytest.approx(sums.mean())
    assert r.evidence["sd_statistic"] == pytest.approx(sums.std())


def test_strong_matches_are_resolved_beyond_the_chatterjee_floor():
    """No shared floor: a perfect and a partial diagonal at d = 500 get different p-values, both
    far below Chatterjee's saturation (~1e-108 here), with the permanent bound named."""
    perfect = assignment_test(np.eye(500), name="t", n_resamples=99)
    partial = np.eye(500)
    partial[:250, :250] = 0.0
    half = assignment_test(partial + np.roll(np.eye(500), 1, axis=1) * 0.5, name="t", n_resamples=99)
    assert "permanent" in perfect.method
    assert perfect.log10_pvalue < -1000
    assert perfect.evidence["log10_bound_chatterjee"] > -115
    assert perfect.log10_pvalue < half.log10_pvalue - 100
    assert perfect.pvalue_text().startswith("p < 1e-")
    assert perfect.evidence["z"] == pytest.approx((500 - 1) / 1.0, rel=1e-3)


def test_sidak_combination():
    """1 - (1 - min p)^2, stable in log space; uniform for independent uniform p-values."""
    from weightprint.lineage.compare import sidak_log10

    assert 10 ** sidak_log10([math.log10(0.3), math.log10(0.6)]) == pytest.approx(1 - 0.7**2)
    assert sidak_log10([-1000.0, -0.1]) == pytest.approx(-1000.0 + math.log10(2))
    assert sidak_log10([0.0, 0.0]) == 0.0
    rng = np.random.default_rng(5)
    u = rng.random((2000, 2))
    combined = np.array([10 ** sidak_log10(list(np.log10(x))) for x in u])
    assert stats.kstest(combined, "uniform").pvalue > 0.01


def test_assignment_test_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        assignment_test(np.zeros((3, 4)), name="t")
    with pytest.raises(ValueError, match="n_resamples"):
        assignment_test(np.zeros((3, 3)), name="t", n_resamples=-1)


def test_rank_transform_is_permutation_equivariant_with_exact_ties():
    """Ties (norm weights all 1.0 at init, 4-bit stored profiles) get average ranks: ranking a
    permuted vector gives the permuted ranks. An index-order tie-break fails this."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(5, 30)).astype(np.float32)  # many exact ties
    x[0] = 1.0  # a constant row
    for seed in range(5):
        perm = np.random.default_rng(seed).permutation(30)
        assert np.array_equal(rank_transform(x, axis=1)[:, perm], rank_transform(x[:, perm], axis=1))
    assert np.all(rank_transform(x, axis=1)[0] == 0.5)


def test_random_inits_with_exact_ties_are_calibrated():
    """H0 true: independent inits whose norm weights are exactly 1.0. With index-order ranks the
    identity was favoured and every pair got the Monte Carlo floor (p = 0.001)."""
    ps = []
    for s in range(20):
        a = random_llama(3000 + s, d=48, n_layers=3, norm_std=0.0)
        b = random_llama(4000 + s, d=48, n_layers=3, norm_std=0.0)
        r = compare_models(array_model(a), array_model(b), n_resamples=199, rng=s)
        assert r.verdict == "no evidence", r.reason
        ps.append(next(c for c in r.components if c.name == "identity-basis").pvalue)
    ps = np.array(ps)
    assert np.count_nonzero(ps <= 0.01) <= 2  # Binomial(20, 0.01): P(> 2) < 0.002
    assert stats.kstest(ps, "uniform").pvalue > 0.01, np.round(np.sort(ps), 3)


def test_layer_alignment_finds_the_dropped_layer():
    base = random_llama(3, n_layers=6)
    fa = build_fingerprint(array_model(base))
    fb = build_fingerprint(array_model(drop_layer(base, 2)))
    al = align_layers(fa.descriptor_dicts(), fb.descriptor_dicts())
    assert al.unmatched_a == [2]
    assert al.pairs == [(0, 0), (1, 1), (3, 2), (4, 3), (5, 4)]


# ------------------------------------------------------------------------------- derivations
@pytest.fixture(scope="module")
def base():
    return random_llama(11, d=96, n_layers=4)


@pytest.mark.parametrize(
    "name",
    ["identical", "noise-10%", "noise-30%", "permuted", "dropped-layer", "permuted+noise+dropped", "lora-r8-50%", "two-layers-dropped"],
)
def test_derived_models_are_detected(base, name):
    t = {
        "identical": lambda: base,
        "noise-10%": lambda: add_relative_noise(base, 0.1, 1),
        "noise-30%": lambda: add_relative_noise(base, 0.3, 1),
        "permuted": lambda: permute_hidden(base, 2, n_heads=4, n_kv=2),
        "dropped-layer": lambda: drop_layer(base, 1),
        "permuted+noise+dropped": lambda: drop_layer(add_relative_noise(permute_hidden(base, 3, n_heads=4, n_kv=2), 0.2, 4), 2),
        "lora-r8-50%": lambda: merge_lora(base, 8, 0.5, 6),
        "two-layers-dropped": lambda: drop_layer(drop_layer(add_relative_noise(base, 0.1, 7), 2), 0),
    }[name]()
    r = compare_models(array_model(base, label="A"), array_model(t, label="B"))
    assert r.verdict == "derived", r.reason
    assert r.log10_pvalue < -8
    json.dumps(r.to_dict())


def test_vocabulary_extension_and_reordering_match_tokens_by_string(base):
    vocab = toy_vocab(512)
    emb = base["model.embed_tokens.weight"]
    order = np.random.default_rng(5).permutation(512)
    extra = np.random.default_rng(6).normal(size=(100, emb.shape[1])).astype(np.float32)
    t = dict(base)
    t["model.embed_tokens.weight"] = np.concatenate([emb[order], extra])
    b = array_model(t, vocab=[vocab[i] for i in order] + [f"new{i}" for i in range(100)], label="B")
    r = compare_models(array_model(base, vocab=vocab, label="A"), b)
    emb_test = next(c for c in r.components if c.name == "embedding")
    assert emb_test.log10_pvalue < -8
    assert r.tokenizer["shared_tokens"] == 512
    assert r.tokenizer["vocab_jaccard"] == pytest.approx(512 / 612)
    assert r.verdict == "derived"


def test_norm_rescaling_is_still_derived(base):
    """Function-preserving per-coordinate rescaling (HuRef's scaling attack: norm weight times c_i,
    next matrices' columns divided by c_i): the effective column norms do not move, and the
    embedding is untouched."""
    r = compare_models(array_model(base), array_model(rescale_norms(base, 4)))
    assert r.verdict == "derived", r.reason
    for c in r.components:
        if "not_run" not in c.evidence:  # the recovered-basis test is skipped once the identity one decides
            assert c.log10_pvalue < -8, (c.name, c.log10_pvalue)


@pytest.mark.parametrize(
    ("kind", "expected_kind", "words"),
    [
        ("sign_flip", "sign flip", "sign-flipped"),
        ("permute", "permutation", "residual coordinates permuted"),
        ("rotate", "orthogonal", "rotated"),
    ],
)
def test_residual_symmetries_are_detected_and_named(base, kind, expected_kind, words):
    """The thief's free changes of residual basis, each on top of hidden-unit/head permutation
    and 10% noise (a rotation also folds the norms and unties the head): still derived, and the
    reason names the recovered transform."""
    from weightprint.testing.symmetry import residual_transform

    noisy = add_relative_noise(permute_hidden(base, 3, n_heads=4, n_kv=2), 0.1, 2)
    b = residual_transform(array_model(noisy, label="B"), kind, seed=5)
    r = compare_models(array_model(base, label="A"), b)
    assert r.verdict == "derived", r.reason
    assert r.log10_pvalue < -8
    assert r.basis["kind"] == expected_kind
    assert words in r.reason
    identity = next(c for c in r.components if c.name == "identity-basis")
    recovered = next(c for c in r.components if c.name == "recovered-basis")
    if kind != "sign_flip":  # the identity-basis (exact) test alone cannot see these
        assert identity.log10_pvalue > -3
    else:  # it can: the recovery is skipped, counted as p = 1 in the combination (Sidak over 2)
        assert r.basis["skipped"] and recovered.evidence["not_run"]
        assert r.log10_pvalue == pytest.approx(identity.log10_pvalue + math.log10(2))
    json.dumps(r.to_dict())


def test_independent_models_with_shared_outlier_coordinates_are_not_derived():
    """The recovered-basis trap: two independent models that both have 'massive activation'
    coordinates (at different places). A fitted map can pair the outliers; that must not make
    the pair look derived."""
    lps = []
    for s in range(12):
        rng = np.random.default_rng(s)
        ta = plant_outliers(random_llama(5000 + s, d=48, n_layers=3), list(rng.choice(48, 3, replace=False)))
        tb = plant_outliers(random_llama(6000 + s, d=48, n_layers=3), list(rng.choice(48, 3, replace=False)))
        r = compare_models(array_model(ta), array_model(tb), n_resamples=199, rng=s)
        assert r.verdict == "no evidence", r.reason
        lps.append(r.log10_pvalue)
    assert min(lps) > -3, lps


def test_width_pruning_is_derived(base):
    """80 of 96 residual channels kept (and 10% noise): the kept coordinates are found from the
    embedding columns and A's layer features, restricted to them, match B's."""
    keep = np.sort(np.random.default_rng(3).choice(96, 80, replace=False))
    b = array_model(prune_width(add_relative_noise(base, 0.1, 5), keep), label="B")
    r = compare_models(array_model(base, label="A"), b)
    assert r.verdict == "derived", r.reason
    assert r.log10_pvalue < -8
    assert r.basis["kind"] == "width pruned" and r.basis["kept"] == 80
    assert "width pruning" in r.reason


def test_different_hidden_sizes_are_not_comparable():
    r = compare_models(array_model(random_llama(1, d=64)), array_model(random_llama(2, d=96)))
    assert r.verdict == "not comparable"
    assert r.combined is None
    assert "hidden sizes differ (64 vs 96)" in r.reason
    assert r.config["differ"]["hidden_size"] == [64, 96]
    # an independent *narrower* model: no coordinate of A matches B's, so nothing to test
    r2 = compare_models(array_model(random_llama(1, d=96)), array_model(random_llama(2, d=64)))
    assert r2.verdict == "not comparable", r2.reason
    assert "no residual coordinate of A matches B's" in r2.reason


def test_independent_random_models_are_calibrated():
    """H0 true (independent iid inits): p-values show no excess below 0.05 (KS vs uniform)."""
    ps = []
    for s in range(30):
        r = compare_models(array_model(random_llama(1000 + s, d=48, n_layers=3)),
                           array_model(random_llama(2000 + s, d=48, n_layers=3)), n_resamples=199)
        ps.append(r.combined.pvalue)
        assert r.verdict == "no evidence"
    ps = np.array(ps)
    assert np.count_nonzero(ps <= 0.05) <= 5  # Binomial(30, 0.05): P(> 5) < 0.01
    assert stats.kstest(ps, "uniform", alternative="greater").pvalue > 0.01


def test_compare_models_validates_arguments(base):
    with pytest.raises(WeightprintError, match="n_resamples"):
        compare_models(array_model(base), array_model(base), n_resamples=-5)
    with pytest.raises(WeightprintError, match="alpha"):
        compare_models(array_model(base), array_model(base), alpha=2.0)


# ------------------------------------------------------------------------------- fingerprints
def test_fingerprint_round_trip_and_budget():
    t = random_llama(7, d=128, n_layers=6, ffn=384, vocab=2048)
    m = array_model(t)
    full = build_fingerprint(m)
    blob = full.compact().to_bytes()
    assert len(blob) <= fingerprint_budget_bytes(full.n_parameters)
    back = Fingerprint.from_bytes(blob)
    assert back.levels == 16 and back.n_layers == 6 and back.hidden_size == 128
    assert back.tokens == full.tokens[: len(back.tokens)]
    r = compare_fingerprints(back, build_fingerprint(array_model(add_relative_noise(t, 0.2, 1))))
    assert r.verdict == "derived", r.reason
    r0 = compare_fingerprints(back, build_fingerprint(array_model(random_llama(8, d=128, n_layers=6, ffn=384, vocab=2048))))
    assert r0.verdict == "no evidence"


def test_fingerprint_from_bytes_rejects_garbage():
    with pytest.raises(WeightprintError, match="not a weightprint fingerprint"):
        Fingerprint.from_bytes(b"not a fingerprint", source="x")


def test_fingerprint_database_ranks_the_parent_first(tmp_path):
    db = tmp_path / "refs.db"
    parent = random_llama(21, d=64, n_layers=3)
    for i, t in enumerate([random_llama(30 + i, d=64, n_layers=3) for i in range(3)] + [parent]):
        res = fingerprint_model(array_model(t, label=f"ref{i}"), db, label=f"ref{i}")
        assert res.n_bytes <= res.budget_bytes and not res.already_stored
        json.dumps(res.to_dict())
    assert [x["label"] for x in list_fingerprints(db)] == ["ref0", "ref1", "ref2", "ref3"]
    found = search_fingerprints(array_model(add_relative_noise(parent, 0.2, 3), label="suspect"), f"sqlite:///{db}")
    assert found.verdict == "derived" and found.n_tested == 4
    hits = found.ranking
    assert hits[0].a == "ref3" and hits[0].verdict == "derived"
    assert all(h.verdict == "no evidence" for h in hits[1:])
    assert hits[0].log10_pvalue < -8
    json.dumps([h.to_dict() for h in hits])


def test_fingerprint_database_errors(tmp_path):
    with pytest.raises(WeightprintError, match="is empty"):
        search_fingerprints(array_model(random_llama(1)), tmp_path / "empty.db")
    db = tmp_path / "refs.db"
    fingerprint_model(array_model(random_llama(1)), db, label="x")
    with pytest.raises(WeightprintError, match="already holds a reference labelled `x`"):
        fingerprint_model(array_model(random_llama(2)), db, label="x")
    with pytest.raises(WeightprintError, match="bad fingerprint database URL"):
        fingerprint_model(array_model(random_llama(1)), "nosuchdriver://x/y", label="y")


def test_unreadable_model_is_a_one_line_error(tmp_path, base):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"garbage, not a model")
    with pytest.raises(WeightprintError, match="bad.gguf") as e:
        compare_models(array_model(base), bad)
    assert "\n" not in str(e.value)
    with pytest.raises(WeightprintError, match="nonexistent.gguf"):
        compare_models(tmp_path / "nonexistent.gguf", array_model(base))


def test_exact_derivation_needs_a_gguf_quant(base):
    from weightprint.lineage import exact_derivation

    with pytest.raises(WeightprintError, match="exact derivation needs a GGUF file as QUANT, got memory"):
        exact_derivation(array_model(base), array_model(base))
