"""Recovery of a change of residual basis (weightprint.basis) on a tiny model and on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

from weightprint.basis import recover_residual_map, residual_role
from weightprint.errors import NotComparableError
from weightprint.io.model import Model
from weightprint.quant import dequantize, quantize
from weightprint.testing.symmetry import ModelView, TransformedModel, random_orthogonal, residual_transform

from _fixtures_lineage import ArrayModel, array_model, random_llama

D = 64


class Requantized(ModelView):
    """``inner`` with every matrix rounded to ``qtype`` and back, lazily (a requantized leak)."""

    def __init__(self, inner: Model, qtype: str = "Q8_0") -> None:
        super().__init__(inner)
        self.qtype = qtype

    def values(self, name, x):
        if x.ndim == 2 and x.shape[1] % 32 == 0:
            x = dequantize(quantize(x, self.qtype), self.qtype, shape=x.shape)
        return x


@pytest.fixture(scope="module")
def tiny() -> ArrayModel:
    t = random_llama(3, d=D, vocab=1024)
    # trained-like embeddings: a few strong directions, so that columns are not exchangeable
    rng = np.random.default_rng(1)
    t["model.embed_tokens.weight"] = (t["model.embed_tokens.weight"] * rng.uniform(0.2, 3.0, D)).astype(np.float32)
    return array_model(t, label="tiny")


def _max_rel_error(a: Model, b: Model, rmap) -> float:
    worst = 0.0
    for info in b.tensor_infos():
        if info.name not in a.tensor_names():
            continue
        role, _ = residual_role(info.name, tuple(info.shape), rmap.hidden)
        if role == "norm" and rmap.folded:
            continue  # folded into the readers
        x = a.tensor(info.name)
        y = rmap.to_a(info.name, b.tensor(info.name))
        worst = max(worst, float(np.abs(x - y).max() / (np.abs(x).max() or 1.0)))
    return worst


@pytest.mark.parametrize("kind, expected", [("identity", "identity"), ("sign_flip", "sign flip"),
                                            ("permute", "permutation"), ("rotate", "orthogonal")])
def test_recovers_exact_transforms(tiny, kind, expected):
    b = tiny if kind == "identity" else residual_transform(tiny, kind, seed=5)
    rmap = recover_residual_map(tiny, b)
    assert rmap.kind == expected
    assert rmap.scale == 1.0
    assert rmap.fit_quality < 1e-5
    assert _max_rel_error(tiny, b, rmap) < 1e-5
    if kind == "identity":
        assert rmap.is_identity and rmap.mapped(b) is b
    if kind in ("sign_flip", "permute"):
        # a signed permutation maps back bit for bit
        name = "model.layers.1.mlp.down_proj.weight"
        assert np.array_equal(rmap.to_a(name, b.tensor(name)), tiny.tensor(name))
    if kind != "identity":
        assert rmap.identity_residual > 0.5


def test_signed_permutation_with_folded_norms(tiny):
    d = D
    rng = np.random.default_rng(9)
    b = TransformedModel(tiny, perm=rng.permutation(d), signs=rng.choice([-1.0, 1.0], d), fold_norms=True)
    rmap = recover_residual_map(tiny, b)
    assert rmap.kind == "signed permutation"
    assert _max_rel_error(tiny, b, rmap) < 1e-5


@pytest.mark.parametrize("kind", ["sign_flip", "permute", "rotate"])
def test_recovers_through_quantization(tiny, kind):
    b = Requantized(residual_transform(tiny, kind, seed=11), "Q8_0")
    rmap = recover_residual_map(tiny, b)
    assert rmap.kind == {"sign_flip": "sign flip", "permute": "permutation", "rotate": "orthogonal"}[kind]
    assert rmap.fit_quality < 0.02  # Q8_0 noise: ~0.4% of a row's scale
    if kind == "rotate":
        truth = random_orthogonal(D, 11)
        assert np.abs(rmap.matrix - truth).max() < 5e-3
    # mapped back, the leak is as close to the original as a plain Q8_0 round trip
    plain = Requantized(tiny, "Q8_0")
    name = "model.layers.0.self_attn.q_proj.weight"
    x = tiny.tensor(name)
    err_mapped = np.linalg.norm(rmap.to_a(name, b.tensor(name)) - x)
    err_plain = np.linalg.norm(plain.tensor(name) - x)
    assert err_mapped < 3 * err_plain


def test_unrelated_models_fit_badly(tiny):
    other = array_model(random_llama(4, d=D, vocab=1024), label="other")
    rmap = recover_residual_map(tiny, other)
    assert rmap.fit_quality > 0.5


def test_rescaled_residual(tiny):
    t = {k: tiny.tensor(k) for k in tiny.tensor_names()}
    b_t = dict(t)
    b_t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"] * 2.0
    for k in t:
        if k.endswith(("o_proj.weight", "down_proj.weight")):
            b_t[k] = t[k] * 2.0
    b = ArrayModel(b_t, config=tiny.config, tokens=tiny.tokenizer.tokens, path="scaled")
    rmap = recover_residual_map(tiny, b)
    assert rmap.kind == "identity" and abs(rmap.scale - 2.0) < 1e-6
    name = "model.layers.0.mlp.down_proj.weight"
    np.testing.assert_allclose(rmap.to_a(name, b.tensor(name)), t[name], rtol=1e-6)


def test_shared_tokens_matched_by_string(tiny):
    """A reordered vocabulary (same strings, other ids) is matched by string."""
    order = np.random.default_rng(2).permutation(1024)
    t = {k: tiny.tensor(k) for k in tiny.tensor_names()}
    t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][order]
    b = ArrayModel(t, config=tiny.config, tokens=[tiny.tokenizer.tokens[i] for i in order], path="reordered")
    rmap = recover_residual_map(tiny, residual_transform(b, "permute", seed=1))
    assert rmap.kind == "permutation" and rmap.fit_quality < 1e-5


def test_too_few_shared_tokens(tiny):
    t = {k: tiny.tensor(k) for k in tiny.tensor_names()}
    b = ArrayModel(t, config=tiny.config, tokens=[f"other{i}" for i in range(1024)], path="disjoint")
    with pytest.raises(NotComparableError, match="shares 0 tokens"):
        recover_residual_map(tiny, b)


# ------------------------------------------------------------------------- real SmolLM2
@pytest.fixture(scope="module")
def smol():
    from weightprint.io import open_model
    from weightprint.testing.models import smollm2_path

    with open_model(smollm2_path()) as m:
        yield m


@pytest.mark.slow
@pytest.mark.parametrize("kind, expected", [("sign_flip", "sign flip"), ("permute", "permutation"),
                                            ("rotate", "orthogonal")])
def test_smollm2_recovery(smol, kind, expected):
    b = Requantized(residual_transform(smol, kind, seed=7), "Q8_0")
    rmap = recover_residual_map(smol, b, refine=8)
    assert rmap.kind == expected
    assert rmap.fit_quality < 0.02
    if kind == "rotate":
        truth = random_orthogonal(576, 7)
        assert np.abs(rmap.matrix - truth).max() < 2e-3
    name = "model.layers.3.mlp.down_proj.weight"
    x = smol.tensor(name)
    err = np.linalg.norm(rmap.to_a(name, b.tensor(name)) - x) / np.linalg.norm(x)
    assert err < 0.02


@pytest.mark.slow
def test_smollm2_identity(smol):
    rmap = recover_residual_map(smol, smol)
    assert rmap.kind == "identity" and rmap.is_identity


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["permute", "rotate"])
def test_mapped_views_read_rows_and_blocks_as_their_tensors(smol, kind):
    """The row-wise reads of a model seen through a recovered map (the fingerprint and the
    basis fit use them so that no embedding or reader is held whole) give the rows of the
    mapped tensor; so does ``Model.row_blocks`` of the quantized file itself."""
    from weightprint.lineage.recover import _RotatedBack

    b = residual_transform(smol, kind, seed=7)
    rmap = recover_residual_map(smol, b, refine=False)
    views = [rmap.mapped(b)] + ([_RotatedBack(b, rmap)] if kind == "rotate" else [])
    rows = np.array([0, 5, 1000, 49151])
    for view in views:
        for name in ("model.embed_tokens.weight", "model.layers.2.mlp.up_proj.weight", "model.layers.2.mlp.down_proj.weight"):
            whole = view.tensor(name)
            blocks = np.concatenate(list(view.row_blocks(name, max_elements=100_000)))
            np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)
            ids = rows[rows < whole.shape[0]]
            np.testing.assert_allclose(view.read_rows(name, ids), whole[ids], rtol=1e-6, atol=1e-6)
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"):
        want = smol.tensor(name)
        got = np.concatenate(list(smol.row_blocks(name, max_elements=50_000)))
        np.testing.assert_array_equal(got.reshape(want.shape), want)
