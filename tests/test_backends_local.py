"""The local backends (llama.cpp on GGUF, transformers on a Hugging Face directory) on real SmolLM2.

What would make these fail: greedy decoding that depends on the seed or on earlier requests;
a loglikelihood that is not the sum of the per-token log-probabilities of the same tokens; a
KV-cache reuse that keeps stale positions (numbers would differ from a fresh evaluation); a
transformers directory or tokenization that is not the same network as the GGUF (top-1 agreement
would collapse); Min-K%++ statistics that are not the moments of log p under the model.
"""

from __future__ import annotations

import numpy as np
import pytest

from weightprint.behave.backends.base import (
    BackendCapabilityError,
    GenerateRequest,
    LoglikelihoodRequest,
    open_backend,
    registered_backends,
)

llama_cpp = pytest.importorskip("llama_cpp")

TEXT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome."
PROMPT = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def gguf():
    from weightprint.testing.models import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="module")
def llama(gguf):
    # one thread: on a shared, busy machine two spinning llama.cpp threads are slower than one
    with open_backend(gguf, n_ctx=512, n_threads=1) as b:
        yield b


@pytest.fixture(scope="module")
def hf(gguf):
    pytest.importorskip("transformers")
    from weightprint.testing.derive import derived

    with open_backend(derived("hf", gguf), n_threads=1) as b:
        yield b


def test_registry_dispatch(gguf, llama):
    names = registered_backends()
    assert {"llama_cpp", "transformers"} <= set(names)
    assert type(llama).__name__ == "LlamaCppBackend" and llama.label == gguf.name


def test_greedy_generation_is_deterministic(llama):
    reqs = [GenerateRequest(PROMPT, max_tokens=8, seed=s) for s in (1, 2)]
    a, b = llama.generate(reqs)
    llama.token_scores([TEXT])  # an unrelated evaluation in between must not change anything
    (c,) = llama.generate([GenerateRequest(PROMPT, max_tokens=8, seed=3)])
    assert a.text and a.text == b.text == c.text
    assert a.finish_reason == "length"


def test_sampling_follows_the_seed(llama):
    def run(seed):
        return llama.generate([GenerateRequest(PROMPT, max_tokens=8, temperature=1.0, seed=seed)])[0].text

    assert run(7) == run(7)
    assert len({run(s) for s in (7, 8, 9)}) > 1


def test_top_logprobs_and_chat(llama):
    (g,) = llama.generate([GenerateRequest(PROMPT, max_tokens=6, top_logprobs=3)])
    assert g.tokens and len(g.tokens) == len(g.token_logprobs) == len(g.top_logprobs)
    for tok, lp, top in zip(g.tokens, g.token_logprobs, g.top_logprobs):
        assert len(top) == 3 and lp <= 0
        assert max(top.values()) == pytest.approx(lp, abs=1e-4)  # greedy: the chosen token is the best
    (c,) = llama.generate([GenerateRequest("Name three primary colors.", max_tokens=4, chat=True, top_logprobs=2)])
    assert c.text.strip() and c.top_logprobs and all(len(t) == 2 for t in c.top_logprobs)


@pytest.mark.parametrize("k", [1, 3, 5, 40])
def test_best_entries_are_llama_cpp_pythons_choice_with_ties(k):
    """The top-k selection without a full sort equals the library's full sort, ties (by the larger
    id) included: rows of few distinct values, and one shorter than k."""
    from weightprint.behave.backends.llama_cpp import _best

    rng = np.random.default_rng(k)
    for row in [rng.integers(-4, 1, size=200).astype(np.float32), np.full(50, -1.5, np.float32),
                rng.standard_normal(30).astype(np.float32)]:
        assert _best(row, k) == sorted(zip(row, range(len(row))), reverse=True)[:k]


@pytest.mark.parametrize("k", [1, 5])
def test_fast_greedy_logprobs_equal_llama_cpp_pythons(llama, k):
    """The greedy top-k log-probabilities computed from the logits (no Python sort of the whole
    vocabulary per token) are llama-cpp-python's own: tokens, values, tie order, dict keys; on
    prompts in several languages and scripts, code, and one that stops at end of text."""
    from weightprint.behave.suites import load_prompts

    prompts = [p.prompt for p in load_prompts("default") if not p.chat][::4] + ["<|im_end|>"]
    reqs = [GenerateRequest(p, max_tokens=12, top_logprobs=k) for p in prompts]
    try:
        llama.fast_logprobs = False
        slow = llama.generate(reqs)
    finally:
        llama.fast_logprobs = True
    calls = []
    original = llama._greedy_with_logprobs
    llama._greedy_with_logprobs = lambda r, knobs: calls.append(original(r, knobs)) or calls[-1]
    try:
        fast = llama.generate(reqs)
    finally:
        del llama._greedy_with_logprobs
    assert sum(c is not None for c in calls) >= len(reqs) - 1  # the fast path answered (not the fallback)
    for p, a, b in zip(prompts, slow, fast):
        assert a.text == b.text and a.tokens == b.tokens and a.finish_reason == b.finish_reason, p
        assert a.token_logprobs == b.token_logprobs, p
        assert [list(t.items()) for t in a.top_logprobs] == [list(t.items()) for t in b.top_logprobs], p


def test_transformers_generation(hf, llama):
    greedy = GenerateRequest(PROMPT, max_tokens=6, top_logprobs=2)
    a, b = hf.generate([greedy, GenerateRequest(PROMPT, max_tokens=6, seed=5)])
    assert a.text and a.text == b.text and a.finish_reason == "length"
    assert len(a.tokens) == len(a.token_logprobs) == len(a.top_logprobs) == 6
    for lp, top in zip(a.token_logprobs, a.top_logprobs):
        assert len(top) == 2 and max(top.values()) == pytest.approx(lp, abs=1e-6)  # greedy: the best token
    sampled = [hf.generate([GenerateRequest(PROMPT, max_tokens=6, temperature=1.0, seed=s)])[0].text for s in (4, 4, 5, 6)]
    assert sampled[0] == sampled[1] and len(set(sampled)) > 1
    (c,) = hf.generate([GenerateRequest("Name three primary colors.", max_tokens=4, chat=True)])
    assert c.text.strip()
    (s,) = hf.generate([GenerateRequest(PROMPT, max_tokens=12, stop=(",",))])
    assert "," not in s.text
    # the float32 directory and the quantized GGUF mostly pick the same first greedy tokens
    (g,) = llama.generate([GenerateRequest(PROMPT, max_tokens=6)])
    assert g.text[:8] == a.text[:8]


def _check_loglikelihood_is_sum(backend):
    context, continuation = "The capital of France is", " Paris, and the capital of Spain is Madrid."
    (ll,) = backend.loglikelihood([LoglikelihoodRequest(context, continuation)])
    (ts,) = backend.token_scores([context + continuation])
    k = len(ll.token_logprobs)
    assert k >= 5
    assert ll.logprob == pytest.approx(sum(ts.logprobs[-k:]), abs=1e-3)
    assert ll.logprob == pytest.approx(sum(ll.token_logprobs), abs=1e-9)
    assert ll.logprob < 0
    # a continuation the model finds likely scores higher than a shuffled one
    (bad,) = backend.loglikelihood([LoglikelihoodRequest(context, " Madrid, Spain and the capital of is Paris.")])
    assert bad.logprob < ll.logprob - 5
    # Min-K%++ moments: mean of log p is minus an entropy, std non-negative
    assert len(ts.mean) == len(ts.std) == len(ts.logprobs) == len(ts.token_ids) - 1
    assert all(m <= 0 for m in ts.mean) and all(s >= 0 for s in ts.std)


def test_loglikelihood_is_sum_of_token_scores_llama(llama):
    _check_loglikelihood_is_sum(llama)


def test_loglikelihood_is_sum_of_token_scores_transformers(hf):
    _check_loglikelihood_is_sum(hf)


def test_min_k_moments_match_torch(hf):
    """mean/std against torch's own log_softmax on the same tokens (not our numpy code)."""
    import torch

    (ts,) = hf.token_scores([TEXT])
    with torch.no_grad():
        logp = torch.log_softmax(hf._lm(input_ids=torch.tensor([list(ts.token_ids)])).logits[0].double(), -1)[:-1]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sd = ((p * (logp - mu[:, None]) ** 2).sum(-1)).sqrt()
    lp = logp[torch.arange(logp.shape[0]), torch.tensor(ts.token_ids[1:])]
    np.testing.assert_allclose(ts.logprobs, lp.numpy(), atol=1e-4)
    np.testing.assert_allclose(ts.mean, mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(ts.std, sd.numpy(), atol=1e-4)


def test_transformers_and_llama_cpp_agree(llama, hf):
    (a,) = llama.token_scores([TEXT])
    (b,) = hf.token_scores([TEXT])
    assert a.token_ids == b.token_ids
    ids = list(a.token_ids)
    top_l = llama._logits(ids).argmax(-1)
    top_h = hf._logits(ids).argmax(-1)
    agreement = float((top_l == top_h).mean())
    # llama.cpp quantizes activations to 8 bits (FACTS.md): close, not equal
    assert agreement >= 0.9, agreement
    assert np.corrcoef(a.logprobs, b.logprobs)[0, 1] > 0.99
    assert abs(np.mean(a.logprobs) - np.mean(b.logprobs)) < 0.1


def test_kv_reuse_matches_fresh_evaluation(gguf, llama):
    texts = [TEXT, TEXT + " The capital of Spain is Madrid.", "A different text entirely.", TEXT,
             "The capital of France is Paris. The capital of Spain is Madrid, of course."]
    evaluated: list[int] = []
    real_eval = llama._llm.eval

    def counting_eval(tokens):
        evaluated.append(len(tokens))
        return real_eval(tokens)

    llama._llm.eval = counting_eval
    try:
        llama.token_scores(["warm-up text"])
        evaluated.clear()
        reused = llama.token_scores(texts)
    finally:
        del llama._llm.eval
    n = [len(s.token_ids) for s in reused]
    # second text: only its suffix after the first; fourth: the whole again (the third diverged at once)
    assert evaluated[0] == n[0]
    assert evaluated[1] == n[1] - n[0]
    assert 0 < evaluated[4] < n[4] - 5  # cut inside the cache at the shared prefix, then the new suffix
    assert sum(evaluated) < sum(n)
    with open_backend(gguf, n_ctx=512, n_threads=1, reuse_kv=False) as fresh:
        ref = fresh.token_scores(texts)
    for r, f in zip(reused, ref):
        assert r.token_ids == f.token_ids
        np.testing.assert_allclose(r.logprobs, f.logprobs, atol=1e-5)  # measured: identical
        np.testing.assert_allclose(r.mean, f.mean, atol=1e-5)


def test_no_kv_reuse_on_sliding_window_models():
    """Gemma 3's interleaved SWA cache does not survive a cut (measured): the backend must not reuse it."""
    from weightprint.testing.models import gemma3_path

    texts = [TEXT, "The capital of France is Paris. The capital of Spain is Madrid, of course."]
    with open_backend(gemma3_path(), n_ctx=128, n_threads=1) as g:
        assert g.sliding_window and not g.reuse_kv
        after = g.token_scores(texts)[1]
        alone = g.token_scores(texts[1:])[0]
    np.testing.assert_allclose(after.logprobs, alone.logprobs, atol=1e-4)


def test_errors(llama, tmp_path):
    from weightprint.errors import WeightprintError

    with pytest.raises(WeightprintError, match="no such GGUF"):
        open_backend(tmp_path / "missing.gguf")
    with pytest.raises(WeightprintError, match="context window"):
        llama.token_scores(["word " * 600])
    assert llama.tokenize("Hello") and llama.tokenize("Hello")[0] != llama._llm.token_bos()
    assert isinstance(BackendCapabilityError("x"), WeightprintError)
