"""Database search under a changed residual basis: the stored basis sketch (issue 9).

A reference stored with ``basis_sketch=True`` keeps 2-bit embedding rows of ``1.5 d`` tokens;
``search_fingerprints`` recovers an orthogonal map from them and tests the layer features in the
reference's basis. Also: the within-block symmetries (``testing.symmetry.block_symmetries``)
preserve the function, so a thief may apply them for free.
"""

from __future__ import annotations

import numpy as np
import pytest

from weightprint.convert import convert
from weightprint.errors import WeightprintError
from weightprint.io import open_model
from weightprint.lineage.db import fingerprint_model, search_fingerprints
from weightprint.lineage.fingerprint import (
    BASIS_LEVELS,
    Fingerprint,
    _pack,
    _unpack,
    basis_sketch_bytes,
    basis_sketch_tokens,
    build_fingerprint,
)
from weightprint.testing.symmetry import block_symmetries, residual_transform


@pytest.fixture(scope="module")
def tiny_pair():
    from weightprint.testing.derive import tiny_llama_pair

    return tiny_llama_pair(7001, steps=150, threads=1, n_layers=4)


@pytest.mark.parametrize("levels", [4, 16])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 97])
def test_pack_unpack_round_trip(levels, n):
    rng = np.random.default_rng(n * levels)
    bins = rng.integers(0, levels, n)
    x = (bins + 0.5) / levels
    packed = _pack(x, levels)
    assert packed.size == -(-n * {4: 2, 16: 4}[levels] // 8)
    np.testing.assert_array_equal(np.round(_unpack(packed, (n,), levels) * levels - 0.5).astype(int), bins)


def test_stored_sketch_round_trip_and_size(tiny_pair):
    a, _ = tiny_pair
    with open_model(a) as m:
        full = build_fingerprint(m)
    d = full.hidden_size
    stored = full.compact(basis_sketch=True)
    n_b = basis_sketch_tokens(d)
    assert stored.basis_tokens == full.tokens[:n_b] and stored.basis_rows.shape == (n_b, d)
    # each coordinate's quartile over the sketch tokens: 4 levels, equally filled up to ties
    assert set(np.unique(stored.basis_rows)) <= {(k + 0.5) / BASIS_LEVELS for k in range(BASIS_LEVELS)}
    counts = np.stack([(stored.basis_rows == (k + 0.5) / BASIS_LEVELS).sum(axis=0) for k in range(4)])
    assert np.all(np.abs(counts - n_b / 4) <= 2)
    again = Fingerprint.from_bytes(stored.to_bytes())
    assert again.basis_tokens == stored.basis_tokens
    np.testing.assert_array_equal(again.basis_rows, stored.basis_rows)
    plain = full.compact()
    assert plain.basis_rows is None and Fingerprint.from_bytes(plain.to_bytes()).basis_rows is None
    extra = len(stored.to_bytes()) - len(plain.to_bytes())
    assert 0 < extra <= basis_sketch_bytes(d)
    few = build_fingerprint(open_model(a), max_tokens=n_b - 1)
    with pytest.raises(WeightprintError, match="basis sketch needs the embedding rows"):
        few.compact(basis_sketch=True)


def _rotated(source, out, *, blocks: bool):
    with open_model(source) as m:
        view = block_symmetries(m, seed=1) if blocks else m
        convert(residual_transform(view, "rotate", seed=2), out, file_type="F32")
    return out


def test_search_finds_a_rotated_copy_only_through_the_sketch(tiny_pair, tmp_path):
    """A trained tiny llama, rotated (norms folded, head untied) after the within-block symmetries:
    the identity-basis test sees nothing; the sketch recovers the map."""
    a, b = tiny_pair
    suspect = _rotated(a, tmp_path / "rot.gguf", blocks=True)
    db, plain = tmp_path / "sketch.db", tmp_path / "plain.db"
    stored = fingerprint_model(a, db, label="A", basis_sketch=True)
    assert stored.n_bytes <= stored.budget_bytes
    fingerprint_model(b, db, label="B", basis_sketch=True)
    fingerprint_model(a, plain, label="A")
    r = search_fingerprints(suspect, db)
    assert r.verdict == "derived"
    top, other = r.ranking
    assert top.a == "A" and top.log10_pvalue < -8, top.reason
    assert top.basis["kind"] == "orthogonal" and top.basis["fit_corr"] > 0.6 and top.basis["token_gram_corr"] > 0.8
    assert "rotated" in top.reason and "basis sketch" in top.reason
    # B (independent) is still tested in two ways; its embedding geometry differs, so no map is fitted
    assert other.verdict == "no evidence" and other.basis["token_gram_corr"] < 0.6 and "fit_corr" not in other.basis
    assert "Sidak" in other.combined.method and "recovered-basis" in other.combined.method
    r0 = search_fingerprints(suspect, plain)
    assert r0.verdict == "no evidence", r0.ranking[0].reason
    # the same file again: already stored; asking for a sketch it was stored without is an error
    fingerprint_model(suspect, plain, label="R")
    assert fingerprint_model(suspect, plain, label="R").already_stored
    with pytest.raises(WeightprintError, match="without a basis sketch"):
        fingerprint_model(suspect, plain, label="R", basis_sketch=True)


def test_sketch_search_keeps_h0_pairs_quiet(tmp_path):
    """Independent trained pairs searched against a database holding only A with its sketch:
    no `derived` (bench/bench_lineage_search_sketch.py runs 140 pairs)."""
    from weightprint.testing.derive import tiny_llama_pair

    ps = []
    for seed in range(7000, 7006):
        a, b = tiny_llama_pair(seed, steps=150, threads=1, n_layers=4)
        db = tmp_path / f"{seed}.db"
        fingerprint_model(a, db, label="A", basis_sketch=True)
        r = search_fingerprints(b, db, rng=seed)
        assert r.verdict == "no evidence", r.ranking[0].reason
        ps.append(r.ranking[0].log10_pvalue)
    assert min(ps) > -3, ps


def test_token_gram_correlation_is_basis_free():
    from weightprint.lineage.stats import token_gram_correlation
    from weightprint.testing.symmetry import random_orthogonal

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 32)) @ rng.standard_normal((32, 32))
    rotated = 3.0 * x @ random_orthogonal(32, 1)
    assert token_gram_correlation(x, rotated) == pytest.approx(1.0, abs=1e-12)
    wider = np.concatenate([x, np.zeros((200, 8))], axis=1)  # width does not matter
    assert token_gram_correlation(x, wider) == pytest.approx(1.0, abs=1e-12)
    assert abs(token_gram_correlation(x, rng.standard_normal((200, 32)))) < 0.1
    assert np.isnan(token_gram_correlation(x[:2], x[:2]))


def test_block_symmetries_preserve_the_function(tiny_pair, tmp_path, llama_cpp_module):
    """MLP unit scaling, V/O per-head mixing and Q/K rotary-pair scaling change the weights a lot
    and the logits not at all (llama.cpp, float32)."""
    a, _ = tiny_pair
    with open_model(a) as m:
        convert(m, tmp_path / "a.gguf", file_type="F32")
        view = block_symmetries(m, seed=3)
        convert(view, tmp_path / "b.gguf", file_type="F32")
        name = "model.layers.1.self_attn.v_proj.weight"
        moved = np.linalg.norm(view.tensor(name) - m.tensor(name)) / np.linalg.norm(m.tensor(name))
    assert moved > 0.5
    outs = []
    for p in ("a.gguf", "b.gguf"):
        llm = llama_cpp_module.Llama(str(tmp_path / p), logits_all=True, n_ctx=64, n_threads=1, verbose=False)
        ids = list(range(5, 40))
        llm.eval(ids)
        outs.append(np.array(llm.scores[:len(ids)], dtype=np.float64))
    scale = np.abs(outs[0]).max()
    assert np.abs(outs[0] - outs[1]).max() < 2e-3 * scale
