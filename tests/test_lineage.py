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
    drop_layer,
    permute_hidden,
    permute_residual,
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


def test_chatterjee_bound_dominates_the_permutation_tail():
    """The far-tail bound must never be smaller than the Monte Carlo tail it replaces."""
    rng = np.random.default_rng(2)
    d = 40
    a = rng.uniform(0, 0.3, size=(d, d))
    a[np.arange(d), np.arange(d)] += 0.1  # a mild diagonal: the MC tail is measurable
    r = assignment_test(a, name="t", n_resamples=20000, rng=rng, keep_null_distribution=True)
    mc_tail = (1 + np.count_nonzero(r.null_distribution >= r.statistic)) / (len(r.null_distribution) + 1)
    assert r.evidence["log10_bound"] >= math.log10(mc_tail) - 1e-9


def test_strong_diagonal_reports_the_bound_in_log_space():
    a = np.eye(500) * 0.9
    r = assignment_test(a, name="t", n_resamples=99)
    assert r.log10_pvalue < -50
    assert "Chatterjee" in r.method
    assert r.pvalue_text().startswith("p =") or r.pvalue_text().startswith("p <")


def test_assignment_test_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        assignment_test(np.zeros((3, 4)), name="t")
    with pytest.raises(ValueError, match="n_resamples"):
        assignment_test(np.zeros((3, 3)), name="t", n_resamples=-1)


def test_rank_transform_is_permutation_equivariant():
    x = np.random.default_rng(0).normal(size=(5, 30))
    perm = np.random.default_rng(1).permutation(30)
    assert np.allclose(rank_transform(x, axis=1)[:, perm], rank_transform(x[:, perm], axis=1))


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
    ["identical", "noise-10%", "noise-30%", "permuted", "dropped-layer", "permuted+noise+dropped"],
)
def test_derived_models_are_detected(base, name):
    t = {
        "identical": lambda: base,
        "noise-10%": lambda: add_relative_noise(base, 0.1, 1),
        "noise-30%": lambda: add_relative_noise(base, 0.3, 1),
        "permuted": lambda: permute_hidden(base, 2, n_heads=4, n_kv=2),
        "dropped-layer": lambda: drop_layer(base, 1),
        "permuted+noise+dropped": lambda: drop_layer(add_relative_noise(permute_hidden(base, 3, n_heads=4, n_kv=2), 0.2, 4), 2),
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
        assert c.log10_pvalue < -8, (c.name, c.log10_pvalue)


def test_residual_permutation_is_the_null_symmetry(base):
    """Permuting B's residual stream is exactly the H0 symmetry: the test must not fire."""
    r = compare_models(array_model(base), array_model(permute_residual(base, 9)))
    assert r.verdict == "independent"
    assert r.log10_pvalue > -3
    # ...but the descriptive residual matching flags it in the reason
    assert r.combined.evidence["residual_matching"]["matched_mean_similarity"] > 0.9
    assert "after a permutation B's residual coordinates match A's" in r.reason
    r0 = compare_models(array_model(base), array_model(random_llama(12, d=96, n_layers=4)))
    assert r0.combined.evidence["residual_matching"]["matched_mean_similarity"] < 0.5
    assert "after a permutation" not in r0.reason


def test_different_hidden_sizes_are_not_comparable():
    r = compare_models(array_model(random_llama(1, d=64)), array_model(random_llama(2, d=96)))
    assert r.verdict == "not comparable"
    assert r.combined is None
    assert "hidden sizes differ (64 vs 96)" in r.reason
    assert r.config["differ"]["hidden_size"] == [64, 96]


def test_independent_random_models_are_calibrated():
    """H0 true (independent iid inits): p-values show no excess below 0.05 (KS vs uniform)."""
    ps = []
    for s in range(30):
        r = compare_models(array_model(random_llama(1000 + s, d=48, n_layers=3)),
                           array_model(random_llama(2000 + s, d=48, n_layers=3)), n_resamples=199)
        ps.append(r.combined.pvalue)
        assert r.verdict == "independent"
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
    assert r0.verdict == "independent"


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
    assert all(h.verdict == "independent" for h in hits[1:])
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
