"""Derived/attacked models (weightprint.testing.derive): each transform does what it claims.

Unit tests run on tiny llama models (built in about a second, cached by ``derived``); the
``slow`` tests check the real SmolLM2-135M (conversion and permutation cached once per machine).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from weightprint.errors import WeightprintError  # noqa: E402
from weightprint.testing import cache, derive, hfdir  # noqa: E402
from weightprint.testing.derive import (  # noqa: E402
    add_noise,
    calibrate_noise_for_perplexity,
    derived,
    derived_key,
    drop_layer,
    extend_vocab,
    finetune,
    hidden_unit_permutations,
    new_token_strings,
    perplexity,
    permute_hidden_units,
    read_derive_info,
    relative_drift,
    tiny_llama_pair,
    train_tiny_llama,
)

TOKENS = [5, 17, 99, 230, 512, 7, 1000, 44, 301, 12, 640, 3]


def _tensors(path: Path) -> dict[str, np.ndarray]:
    h = hfdir.HFSource(path)
    return {n: h.tensor(n) for n in h.names}


def _logits(path: Path, tokens: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return lm(torch.tensor([tokens])).logits[0].numpy()


@pytest.fixture(scope="session")
def tiny() -> Path:
    """A tiny GQA llama (4 query heads, 2 key/value heads, untied embeddings), trained 60 steps."""
    return derived("tiny_llama", None, seed=1001, steps=60)


@pytest.fixture(scope="session")
def tiny_tied() -> Path:
    return derived("tiny_llama", None, seed=1002, steps=20, tie_embeddings=True, n_heads=4, n_kv_heads=1)


# ---------------------------------------------------------------------------------------------
# permutation


@pytest.mark.parametrize("fixture", ["tiny", "tiny_tied"])
def test_permutation_preserves_logits(fixture, request, tmp_path):
    # H0: permuting MLP units and attention heads (with their KV groups) changes the function.
    src = request.getfixturevalue(fixture)
    out = permute_hidden_units(src, tmp_path / "perm", seed=7)
    a, b = _logits(src, TOKENS), _logits(out, TOKENS)
    assert np.abs(a - b).max() < 1e-4
    # ...and the weights did move.
    ta, tb = _tensors(src), _tensors(out)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert not np.array_equal(ta[name], tb[name]), name
        assert np.array_equal(np.sort(ta[name], axis=None), np.sort(tb[name], axis=None)), name
    assert np.array_equal(ta["model.embed_tokens.weight"], tb["model.embed_tokens.weight"])


def test_permutation_keeps_query_heads_with_their_kv_head(tiny):
    h = hfdir.HFSource(tiny)
    g = hfdir.geometry_of(h)
    group = g.n_heads // g.n_kv_heads
    perms = hidden_unit_permutations(tiny, seed=3)
    assert len(perms) == g.n_layers
    for p in perms:
        assert sorted(p.mlp) == list(range(g.intermediate_size))
        assert sorted(p.heads) == list(range(g.n_heads))
        for new_head, old_head in enumerate(p.heads):
            assert old_head // group == p.kv_heads[new_head // group]


def test_permutation_ground_truth_matches_output(tiny, tmp_path):
    out = permute_hidden_units(tiny, tmp_path / "perm", seed=11)
    config = json.loads((tiny / "config.json").read_text())
    p = hidden_unit_permutations(config, seed=11)[1]
    s, o = hfdir.HFSource(tiny), hfdir.HFSource(out)
    up, down = "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"
    assert np.array_equal(o.tensor(up), s.tensor(up)[p.mlp])
    assert np.array_equal(o.tensor(down), s.tensor(down)[:, p.mlp])


def test_wrong_permutation_breaks_logits(tiny, tmp_path):
    # The logits check can fail: permuting q heads without their o_proj columns changes outputs.
    h = hfdir.HFSource(tiny)
    t = _tensors(tiny)
    name = "model.layers.0.self_attn.o_proj.weight"
    d = hfdir.geometry_of(h).head_dim
    cols = np.r_[d:2 * d, 0:d, 2 * d:t[name].shape[1]]
    plan = [hfdir._Planned(n, h.shapes[n], (lambda n=n: t[n][:, cols] if n == name else t[n])) for n in h.names]
    out = tmp_path / "broken"
    out.mkdir()
    hfdir._write_safetensors(out / "model.safetensors", plan)
    hfdir._copy_tokenizer_files(tiny, out)
    (out / "config.json").write_text((tiny / "config.json").read_text())
    assert np.abs(_logits(tiny, TOKENS) - _logits(out, TOKENS)).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# noise


def test_add_noise_scale_and_reproducibility(tiny, tmp_path):
    a = add_noise(tiny, tmp_path / "a", sigma_rel=0.05, seed=1)
    b = add_noise(tiny, tmp_path / "b", sigma_rel=0.05, seed=1)
    c = add_noise(tiny, tmp_path / "c", sigma_rel=0.05, seed=2)
    src, ta, tb, tc = _tensors(tiny), _tensors(a), _tensors(b), _tensors(c)
    for name, w in src.items():
        if w.ndim == 1:
            assert np.array_equal(ta[name], w), name
            continue
        ratio = (ta[name] - w).std() / w.std()
        assert 0.045 < ratio < 0.055, (name, ratio)
        assert np.array_equal(ta[name], tb[name]), name
        assert not np.array_equal(ta[name], tc[name]), name
    assert 0.02 < relative_drift(tiny, a) <= 0.05  # norms (1-D, untouched) and means count in ||W||


def test_add_noise_rejects_negative_sigma(tiny, tmp_path):
    with pytest.raises(WeightprintError, match=r"^`sigma_rel` must be a finite number >= 0, got -0\.1$"):
        add_noise(tiny, tmp_path / "x", sigma_rel=-0.1, seed=0)
    assert not (tmp_path / "x").exists()


def test_calibrate_noise_hits_target(tiny, tmp_path):
    cal = calibrate_noise_for_perplexity(tiny, target_increase=0.05, seed=0, max_tokens=256)
    assert cal.sigma_rel > 0
    assert abs(cal.achieved_increase - 0.05) <= 0.2 * 0.05 + 1e-9, cal
    # add_noise with the calibrated sigma and the same seed gives the same perplexity
    noisy = add_noise(tiny, tmp_path / "noisy", sigma_rel=cal.sigma_rel, seed=0)
    assert perplexity(noisy, max_tokens=256) == pytest.approx(cal.perplexity_noisy, rel=1e-3)
    assert perplexity(tiny, max_tokens=256) == pytest.approx(cal.perplexity_base, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# vocabulary, layer drop


@pytest.mark.parametrize("fixture", ["tiny", "tiny_tied"])
def test_extend_vocab(fixture, request, tmp_path):
    from transformers import AutoTokenizer

    src = request.getfixturevalue(fixture)
    out = extend_vocab(src, tmp_path / "ext", n_new=100, seed=0)
    s, o = hfdir.HFSource(src), hfdir.HFSource(out)
    v = s.shapes["model.embed_tokens.weight"][0]
    assert o.shapes["model.embed_tokens.weight"] == (v + 100, s.shapes["model.embed_tokens.weight"][1])
    assert o.config["vocab_size"] == v + 100
    names = ["model.embed_tokens.weight"] + (["lm_head.weight"] if "lm_head.weight" in s else [])
    for name in names:
        old, new = s.tensor(name), o.tensor(name)
        assert new.shape[0] == v + 100
        assert np.array_equal(new[:v], old), name
        spread = np.abs(new[v:] - old.mean(axis=0)).max()
        assert 0 < spread < 0.1 * np.abs(old).max(), (name, spread)
        assert np.unique(new[v:], axis=0).shape[0] == 100
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == v + 100
    assert tok.convert_tokens_to_ids(new_token_strings(100)) == list(range(v, v + 100))
    a, b = _logits(src, TOKENS), _logits(out, TOKENS)
    assert b.shape[1] == v + 100
    assert np.abs(a - b[:, :v]).max() < 1e-5


def test_drop_layer(tiny, tmp_path):
    out = drop_layer(tiny, tmp_path / "drop", layer=0)
    s, o = _tensors(tiny), _tensors(out)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert not any(n.startswith("model.layers.1.") for n in o)
    for name, w in o.items():
        src_name = name.replace("model.layers.0.", "model.layers.1.")
        assert np.array_equal(w, s[src_name]), name
    assert _logits(out, TOKENS).shape == _logits(tiny, TOKENS).shape
    with pytest.raises(WeightprintError, match=r"layer 2 out of range 0\.\.1$"):
        drop_layer(tiny, tmp_path / "bad", layer=2)


# ---------------------------------------------------------------------------------------------
# fine-tune, tiny models, perplexity


def test_finetune_moves_weights_and_lowers_loss(tiny, tmp_path):
    r = finetune(tiny, tmp_path / "ft", steps=40, lr=2e-3, batch=8, seed=0)
    assert r.relative_drift > 0.01
    assert r.loss_after < r.loss_before
    assert r.train_loss_last < r.train_loss_first
    info = read_derive_info(r.path)
    assert info["recipe"] == "finetune"
    assert info["result"]["relative_drift"] == pytest.approx(r.relative_drift)
    assert len(info["train_losses"]) == 40


def test_tiny_models_independent_and_reproducible(tmp_path):
    a, b = tiny_llama_pair(0, steps=20)
    ta, tb = _tensors(a), _tensors(b)
    w = "model.layers.0.mlp.up_proj.weight"
    corr = np.corrcoef(ta[w].ravel(), tb[w].ravel())[0, 1]
    assert abs(corr) < 0.1, corr
    again = train_tiny_llama(tmp_path / "again", seed=0, steps=20)
    for name, x in _tensors(again).items():
        assert np.array_equal(x, ta[name]), name
    info = read_derive_info(a)
    assert info["train_losses"][-1] < info["train_losses"][0]


def test_perplexity_hf_matches_manual(tiny):
    from transformers import AutoTokenizer

    text = "It was the best of times, it was the worst of times."
    tok = AutoTokenizer.from_pretrained(str(tiny))
    ids = tok(text)["input_ids"]
    logits = _logits(tiny, ids).astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    nll = logz[:-1] - logits[np.arange(len(ids) - 1), ids[1:]]
    assert perplexity(tiny, text) == pytest.approx(float(np.exp(nll.mean())), rel=1e-4)


def test_gguf_recipe_matches_transformers_perplexity(tiny):
    # H0: the GGUF written from a derived directory computes a different function.
    pytest.importorskip("llama_cpp")
    gguf = derived("gguf", tiny, file_type="F32")
    assert gguf.name == "model.gguf" and read_derive_info(gguf.parent)["params"] == {"file_type": "F32"}
    text = derive.heldout_text(2000)
    assert perplexity(gguf, text, max_tokens=200) == pytest.approx(perplexity(tiny, text, max_tokens=200), rel=1e-3)


# ---------------------------------------------------------------------------------------------
# cache


def test_derived_is_cached_and_keyed(tiny):
    p1 = derived("noise", tiny, sigma_rel=0.01, seed=5)
    stamp = (p1 / "model.safetensors").stat().st_mtime_ns
    p2 = derived("noise", tiny, sigma_rel=0.01, seed=5)
    assert p1 == p2 and (p2 / "model.safetensors").stat().st_mtime_ns == stamp
    assert derived("noise", tiny, sigma_rel=0.01, seed=6) != p1
    assert read_derive_info(p1)["params"] == {"sigma_rel": 0.01, "seed": 5, "include_1d": False}


def test_derived_concurrent_callers_build_once(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTPRINT_CACHE", str(tmp_path))  # an empty cache: the build must happen
    calls = []
    real = cache._RECIPES["noise"]

    def counting(source, out, **kw):
        calls.append(1)
        return real(source, out, **kw)

    monkeypatch.setitem(cache._RECIPES, "noise", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(derived("noise", tiny, sigma_rel=0.001, seed=0)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert len(calls) == 1
    assert results[0].parent == tmp_path / "derived"
    leftovers = [p for p in results[0].parent.iterdir() if p.name.startswith(f".{results[0].name}.") and p.suffix == ".build"]
    assert not leftovers  # the lock file stays (removing it would race); no build directory does


def test_key_follows_recipe_code(tiny, monkeypatch):
    # H0: editing a recipe's code leaves the cached outputs it made in use.
    base = derived_key("noise", tiny, sigma_rel=0.01, seed=5)
    src = (Path(cache.__file__).parent / "recipes.py").read_text()
    assert cache.code_digest(src) == cache.code_digest(src.replace('"""Model transforms', '"""Transforms of models'))
    assert cache.code_digest(src) != cache.code_digest(src.replace("sigma_rel * float(w.std())", "sigma_rel * float(w.std()) * 2"))
    real = cache.code_digest
    monkeypatch.setattr(cache, "_code_memo", {})
    monkeypatch.setattr(cache, "code_digest", lambda text: real(text + "\nx = 1\n"))
    assert derived_key("noise", tiny, sigma_rel=0.01, seed=5) != base
    monkeypatch.setattr(cache, "code_digest", real)
    monkeypatch.setattr(cache, "_code_memo", {})
    assert derived_key("noise", tiny, sigma_rel=0.01, seed=5) == base


def test_unknown_recipe():
    with pytest.raises(WeightprintError, match=r"^unknown recipe `shuffle`; known: hf, permute"):
        derived("shuffle", None)


# ---------------------------------------------------------------------------------------------
# the real SmolLM2 (conversion and permutation cached once per machine)


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    from weightprint.testing.models import smollm2_path

    return derived("hf", smollm2_path())


@pytest.mark.slow
def test_smollm2_permutation_preserves_logits(smollm2_hf):
    from weightprint.testing.models import smollm2_path

    permuted = derived("permute", smollm2_path(), seed=1)
    tokens = [504, 2365, 5624, 2821, 253, 9726, 288, 2255, 30, 378, 2130, 28]
    a, b = _logits(smollm2_hf, tokens), _logits(permuted, tokens)
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(a).max() > 1.0


@pytest.mark.slow
def test_smollm2_conversion_perplexity_matches_llama_cpp(smollm2_hf):
    pytest.importorskip("llama_cpp")
    from weightprint.testing.models import smollm2_path

    text = derive.heldout_text(3000)
    p_hf = perplexity(smollm2_hf, text, max_tokens=256)
    p_gguf = perplexity(smollm2_path(), text, max_tokens=256)
    assert 2 < p_hf < 100
    assert p_hf == pytest.approx(p_gguf, rel=0.05)
