"""compare / identify / template statistics on fake backends (fast), and the prompt suites.

H0 of the same-model test: the two sides are unrelated models (mean prefix similarity <= c0).
Its p-value is a Chernoff-Hoeffding bound: checked here against the exact binomial tail and,
by simulation at the boundary of H0, for P(p <= alpha) <= alpha.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
from scipy import stats

from weightprint.behave.backends.base import Backend, Capabilities, GenerateRequest, Generation, LoglikelihoodResult
from weightprint.behave.compare import (
    C0_GREEDY, CompareResult, Side, chernoff_log10_pvalue, compare_answers, compare_models, prefix_similarity, text_pieces,
)
from weightprint.behave.identify import identify_model
from weightprint.behave.suites import Prompt, load_prompts, shipped_suites
from weightprint.errors import WeightprintError
from weightprint.results import exit_code

WORDS = [f"w{i}" for i in range(400)]


class FakeModel(Backend):
    """A deterministic 'model': continuation words drawn from a hash of (model seed, prompt, position).

    ``drift`` in [0, 1]: at each position, with that probability (a hash coin) the word comes
    from a second seed, as a fine-tuned copy would differ here and there; ``lp_noise`` shifts
    the reported log-probabilities; ``sample`` makes temperature > 0 requests random.
    """

    name = "fake"

    def __init__(self, seed: int, *, drift: float = 0.0, drift_seed: int = 999, lp_noise: float = 0.0,
                 logprobs: bool = True, sample_noise: float = 0.3) -> None:
        self.seed, self.drift, self.drift_seed, self.lp_noise = seed, drift, drift_seed, lp_noise
        self.sample_noise = sample_noise
        self.capabilities = Capabilities(logprobs=logprobs, max_top_logprobs=5 if logprobs else 0)
        self.label = f"fake{seed}" + (f"~{drift}" if drift else "") + (f"+{lp_noise}" if lp_noise else "")
        self.calls = 0

    @staticmethod
    def _h(*parts) -> int:
        return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")

    def _word(self, seed, prompt, j, ctx):
        # Zipf-ish: small ids far more likely, so unrelated models sometimes agree
        u = (self._h(seed, prompt, j, ctx) % 10_000) / 10_000
        return WORDS[int(len(WORDS) * u ** 3)]

    def generate(self, requests, progress=None):
        out = []
        for r in requests:
            self.calls += 1
            words, lps = [], []
            for j in range(r.max_tokens):
                ctx = " ".join(words[-2:])
                seed = self.seed
                if self.drift and (self._h("coin", self.drift_seed, r.prompt, j, ctx) % 1000) / 1000 < self.drift:
                    seed = self.drift_seed
                if r.temperature > 0 and (self._h("s", r.seed, r.prompt, j) % 1000) / 1000 < self.sample_noise:
                    seed = ("sample", r.seed, self.seed)
                words.append(self._word(seed, r.prompt, j, ctx))
                lps.append(-0.5 - (self._h(self.seed, r.prompt, j) % 100) / 100 + self.lp_noise)
            toks = tuple(" " + w for w in words)
            k = r.top_logprobs if self.capabilities.logprobs else 0
            out.append(Generation(text="".join(toks), tokens=toks if k else None, token_logprobs=tuple(lps) if k else None,
                                  top_logprobs=tuple({t: lp} for t, lp in zip(toks, lps)) if k else None))
        return out


PROMPTS = [Prompt(id=f"p{i}", prompt=f"prompt number {i}") for i in range(24)]


# ------------------------------------------------------------------ pieces and similarity
def test_text_pieces_split_words_cjk_and_punctuation():
    assert text_pieces(" Hello, world!") == ["Hello", ",", "world", "!"]
    assert text_pieces("北京是中国的首都。") == list("北京是中国的首都") + ["。"]
    assert text_pieces("Привет,  мир") == ["Привет", ",", "мир"]


def test_prefix_similarity():
    assert prefix_similarity("a b c d", "a b c d", 4) == 1.0
    assert prefix_similarity("a b x d", "a b c d", 4) == 0.5
    assert prefix_similarity("x", "y", 4) == 0.0
    assert prefix_similarity("a b", "a b", 4) == 1.0  # both stopped early: the end agrees too
    assert prefix_similarity("a b", "a b c", 4) == 0.5


# ------------------------------------------------------------------ the p-value
@pytest.mark.parametrize("c0", [0.1, 0.25, 0.5])
def test_chernoff_bound_dominates_the_exact_binomial_tail(c0):
    n = 24
    for k in range(n + 1):
        bound = 10 ** chernoff_log10_pvalue(k / n, c0, n)
        exact = stats.binom.sf(k - 1, n, c0)
        assert bound >= exact * (1 - 1e-9), (k, bound, exact)


def test_pvalue_is_valid_at_the_boundary_of_the_null():
    """H0 at its boundary: every prompt's similarity has mean c0 (Bernoulli and Beta shapes).
    The rejection rate at alpha must not exceed alpha (it is a bound, so it is conservative)."""
    rng = np.random.default_rng(0)
    n, trials = 24, 4000
    for draw in (lambda: rng.random((trials, n)) < C0_GREEDY,
                 lambda: rng.beta(1.0, (1 - C0_GREEDY) / C0_GREEDY, (trials, n))):
        means = draw().mean(axis=1)
        logp = np.array([chernoff_log10_pvalue(m, C0_GREEDY, n) for m in means])
        for alpha in (0.01, 0.05, 0.2):
            assert np.mean(logp <= math.log10(alpha)) <= alpha


# ------------------------------------------------------------------ verdicts on fake models
def _compare(a, b, **kw):
    return compare_models(a, b, prompts=PROMPTS, **kw)


def test_same_model_is_same_with_a_tiny_pvalue():
    r = _compare(FakeModel(1), FakeModel(1))
    assert r.verdict == "same" and r.unrelated_test.log10_pvalue < -6
    assert r.statistics["exact_agreement"] == 1.0 and r.statistics["logprob_distance"] == 0.0
    assert exit_code(r) == 1
    json.dumps(r.to_dict())


def test_unrelated_models_are_different():
    r = _compare(FakeModel(1), FakeModel(2))
    assert r.verdict == "different" and r.unrelated_test.log10_pvalue > -3
    assert exit_code(r) == 0


def test_shifted_logprobs_with_the_same_text_are_related():
    r = _compare(FakeModel(1), FakeModel(1, lp_noise=0.3))
    assert r.verdict == "related"
    assert r.statistics["logprob_distance"] == pytest.approx(0.3)


def test_drifted_copy_is_related_not_same():
    r = _compare(FakeModel(1, logprobs=False), FakeModel(1, drift=0.04, logprobs=False))
    assert r.verdict == "related", r.summary()
    assert 0.3 < r.statistics["mean_similarity"] < 0.9


def test_sampled_regime_same_related_different():
    kw = dict(sampled=True, n_samples=4)
    fake = dict(logprobs=False, sample_noise=0.1)
    same = _compare(FakeModel(1, **fake), FakeModel(1, **fake), **kw)
    assert same.verdict == "same", same.summary()
    assert same.mode == "sampled" and same.tests[1].name == "same-distribution"
    assert same.unrelated_test.n == 24 * 4  # disjoint sample pairs
    diff = _compare(FakeModel(1, **fake), FakeModel(2, **fake), **kw)
    assert diff.verdict == "different", diff.summary()
    rel = _compare(FakeModel(1, **fake), FakeModel(1, drift=0.05, **fake), **kw)
    assert rel.verdict != "different", rel.summary()  # a slightly drifted copy is never called different


class SamplingFake(Backend):
    """A sampling 'model' with a known distribution: each next word is drawn from a Dirichlet
    categorical over 60 words, fixed by (model seed, prompt, previous word); ``loglikelihood``
    scores a text under it. ``text_only``: an endpoint that only returns sampled text."""

    name = "samplingfake"

    def __init__(self, seed: int, *, text_only: bool = False, mix: float = 0.0, prompt_blind: bool = False,
                 concentration: float = 0.3) -> None:
        self.seed, self.mix, self.prompt_blind, self.concentration = seed, mix, prompt_blind, concentration
        self.capabilities = Capabilities(logprobs=not text_only, echo=not text_only, top_logprobs=not text_only,
                                         max_top_logprobs=0 if text_only else 5)
        self.label = f"sampler{seed}" + (" (text only)" if text_only else "") + (f"~{mix}" if mix else "")

    def _probs(self, prompt: str, prev: str) -> np.ndarray:
        if self.prompt_blind:  # a model that does not read its prompt
            prompt = ""

        def dist(seed):
            h = int.from_bytes(hashlib.sha256(repr((seed, prompt, prev)).encode()).digest()[:8], "little")
            d = np.random.default_rng(h).dirichlet(np.full(60, self.concentration)) + 1e-9  # no exact zeros
            return d / d.sum()
        p = dist(self.seed)
        return (1 - self.mix) * p + self.mix * dist(self.seed + 1000) if self.mix else p

    def generate(self, requests, progress=None):
        out = []
        for r in requests:
            if r.top_logprobs and self.capabilities.logprobs and r.temperature == 0:
                # a scorer asked for its top-k next words at the prompt (the probe tests)
                p = self._probs(r.prompt, "")
                top = np.argsort(-p)[:r.top_logprobs]
                first = {" " + WORDS[i]: float(np.log(p[i])) for i in top}
                out.append(Generation(text=" " + WORDS[top[0]], tokens=(" " + WORDS[top[0]],),
                                      token_logprobs=(float(np.log(p[top[0]])),), top_logprobs=(first,)))
                continue
            rng = np.random.default_rng([r.seed or 0, self.seed, int(hashlib.sha256(r.prompt.encode()).hexdigest()[:8], 16)])
            words, prev = [], ""
            for _ in range(r.max_tokens):
                prev = WORDS[int(rng.choice(60, p=self._probs(r.prompt, prev)))]
                words.append(prev)
            out.append(Generation(text="".join(" " + w for w in words)))
        return out

    def loglikelihood(self, requests, progress=None):
        out = []
        for r in requests:
            prev, lp = "", 0.0
            for w in r.continuation.split():
                lp += math.log(self._probs(r.context, prev)[WORDS.index(w)])
                prev = w
            out.append(LoglikelihoodResult(logprob=lp, is_greedy=False))
        return out


def test_likelihood_test_on_a_text_only_sampling_endpoint():
    """A text-only endpoint that samples gives no common prefixes to count; a local model scores
    its samples against its own: one model -> same, another -> different."""
    kw = dict(sampled=True, n_samples=30)  # 720 pairs: at a true mean of 1/2 the bound needs ~400 against c0 = 0.4
    same = _compare(SamplingFake(1, text_only=True), SamplingFake(1), **kw)
    assert same.verdict == "same", same.summary()
    lk = next(t for t in same.tests if t.name == "unrelated-null-likelihood")
    assert lk.n == 24 * 30 and 0.4 <= lk.statistic <= 0.6 and lk.log10_pvalue < -3.5
    assert same.statistics["likelihood_scorer"] == "sampler1"
    diff = _compare(SamplingFake(1, text_only=True), SamplingFake(2), **kw)
    assert diff.verdict == "different", diff.summary()
    assert next(t for t in diff.tests if t.name == "unrelated-null-likelihood").statistic < 0.2
    # a copy that moved a little (1% of its next-word distribution from elsewhere) is still found
    near = _compare(SamplingFake(1), SamplingFake(1, mix=0.01, text_only=True), **kw)
    assert near.verdict in ("same", "related"), near.summary()
    # neither side can score: no likelihood test
    none = _compare(SamplingFake(1, text_only=True), SamplingFake(1, text_only=True), **kw)
    assert "unrelated-null-likelihood" not in [t.name for t in none.tests]


def test_likelihood_observations_have_mean_one_half_for_one_model():
    """H0 of 'same' behind the rule: one model's samples are exchangeable with the scorer's own."""
    from weightprint.behave.compare import collect_answers, likelihood_observations

    a, b = SamplingFake(3), SamplingFake(3, text_only=True)
    kw = dict(sampled=True, max_tokens=6, n_samples=8, temperature=1.0, top_logprobs=0)
    own = collect_answers(a, PROMPTS, seed=0, **kw)
    other = collect_answers(b, PROMPTS, seed=10_000, **kw)
    ev = likelihood_observations(a, PROMPTS, own, other)
    obs = ev.observations
    assert obs.shape == (24, 8)
    assert abs(obs.mean() - 0.5) < 3 * 0.5 / math.sqrt(obs.size)
    assert ev.applicable and ev.own_specific > 0.9


def test_likelihood_test_needs_a_scorer_that_reads_its_prompts():
    """A scorer whose answers do not depend on the prompt sees every text alike: two unrelated
    prompt-blind 'models' would look like one (the 60-step tiny llamas did). The test is then not
    used, and the verdict rests on the other tests."""
    kw = dict(sampled=True, n_samples=12)
    r = _compare(SamplingFake(1, prompt_blind=True), SamplingFake(1, prompt_blind=True, text_only=True), **kw)
    assert "unrelated-null-likelihood" not in [t.name for t in r.tests]
    assert r.statistics["likelihood_applicable"] is False and r.statistics["likelihood_scorer_prompt_specific"] < 0.9
    # the same pair reading its prompts: the test applies
    r = _compare(SamplingFake(1), SamplingFake(1, text_only=True), **kw)
    assert r.statistics["likelihood_applicable"] is True


def test_calibration_on_unrelated_fake_pairs_never_same():
    verdicts = [_compare(FakeModel(i), FakeModel(100 + i)).verdict for i in range(12)]
    assert "same" not in verdicts and verdicts.count("related") <= 1


def test_compare_answers_checks_lengths():
    side = Side("a", [[Generation(text="x")]], False, 1)
    with pytest.raises(WeightprintError, match="cannot compare 1 and 1 answers to 2 prompts"):
        compare_answers(side, side, PROMPTS[:2], sampled=False, prefix_pieces=4)


def test_compare_result_is_a_verdict_with_evidence():
    r = _compare(FakeModel(1), FakeModel(1))
    assert isinstance(r, CompareResult)
    assert r.evidence[0].name == "unrelated-null"
    assert "H0: unrelated" in r.summary()


# ------------------------------------------------------------------ identify
def test_identify_finds_the_target_among_near_copies_in_few_queries():
    cands = [FakeModel(1), FakeModel(1, lp_noise=0.05), FakeModel(1, drift=0.1), FakeModel(2), FakeModel(3)]
    target = FakeModel(1)
    r = identify_model(target, cands, prompts=PROMPTS, max_queries=8)
    assert r.best == "fake1" and r.verdict == "identified"
    assert r.queries_used <= 8 and target.calls == r.queries_used
    assert r.ranking[0]["confidence"] >= 0.99


def test_identify_says_none_for_an_unknown_target():
    r = identify_model(FakeModel(7), [FakeModel(1), FakeModel(2), FakeModel(3)], prompts=PROMPTS, max_queries=8)
    assert r.verdict == "uncertain" or r.best == "(none of the candidates)"
    assert exit_code(r) == 0 or r.best == "(none of the candidates)"


# ------------------------------------------------------------------ suites
def test_shipped_suite_is_multilingual():
    assert "default" in shipped_suites()
    ps = load_prompts("default")
    assert {p.lang for p in ps} >= {"en", "ru", "de", "fr", "zh", "code"}
    assert len({p.id for p in ps}) == len(ps) >= 30


def test_user_suite_and_its_errors(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"id": "a", "prompt": "one"}\n\n{"prompt": "two", "lang": "en"}\n', encoding="utf-8")
    ps = load_prompts(f)
    assert [p.prompt for p in ps] == ["one", "two"] and ps[1].id == "p3"
    f.write_text('{"id": "a", "prompt": "one"}\n{"id": "a", "prompt": "two"}\n')
    with pytest.raises(WeightprintError, match=r"s.jsonl: line 2 repeats the id `a`$"):
        load_prompts(f)
    f.write_text('{"prompt": ""}\n')
    with pytest.raises(WeightprintError, match=r"line 1 has no non-empty string `prompt`$"):
        load_prompts(f)
    f.write_text('not json\n')
    with pytest.raises(WeightprintError, match=r"line 1 is not JSON"):
        load_prompts(f)
    with pytest.raises(WeightprintError, match=r"nope.jsonl: no such prompt file$"):
        load_prompts(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------ command line
def test_cli_compare_two_endpoints_json(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from _fixtures_behave import FaultServer
    from weightprint.cli import app

    monkeypatch.setenv("WEIGHTPRINT_CACHE", str(tmp_path))
    with FaultServer() as srv:
        res = CliRunner().invoke(app, ["compare", srv.url, srv.url + "/v1", "--json", "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 1, res.output
    d = json.loads(res.stdout)
    assert d["verdict"] == "same" and d["mode"] == "greedy" and d["n_prompts"] == len(load_prompts())
    assert (tmp_path / "http_cache.db").is_file()  # answers cached under $WEIGHTPRINT_CACHE
    assert "prefix similarity per prompt" in (tmp_path / "r.html").read_text()


def test_cli_compare_missing_file_is_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from weightprint.cli import app

    res = CliRunner().invoke(app, ["compare", str(tmp_path / "nope.gguf"), str(tmp_path / "b.gguf")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {tmp_path / 'nope.gguf'}: no such GGUF file"


def test_cli_endpoint_failure_is_one_line_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from _fixtures_behave import FaultServer
    from weightprint.cli import app

    monkeypatch.setenv("WEIGHTPRINT_CACHE", str(tmp_path))
    with FaultServer(default="400") as srv:
        res = CliRunner().invoke(app, ["template", srv.url, "--model", "m"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0] == f"error: {srv.url}/v1/completions: HTTP 400 Bad Request: bad request: unknown field"


def test_cached_backend_answers_once(tmp_path):
    from weightprint.behave.cached import CachedBackend

    inner = FakeModel(3)
    reqs = [GenerateRequest(prompt=f"p{i}", max_tokens=5, top_logprobs=2) for i in range(4)]
    first = CachedBackend(inner, tmp_path / "c.db", "fake3").generate(reqs)
    again = CachedBackend(inner, tmp_path / "c.db", "fake3").generate(reqs)
    assert inner.calls == 4 and again == first
    CachedBackend(inner, tmp_path / "c.db", "another-model").generate(reqs[:1])
    assert inner.calls == 5


# ------------------------------------------------------------------ context-specific top-k and the probes
def test_generic_tokens_are_left_out_of_the_topk_overlap():
    """Two 'models' that share only their frequent tokens (what independent models with one
    tokenizer do) overlap a lot on raw top-5 sets and not at all once those are left out; a copy
    that keeps the context-specific candidates still overlaps."""
    from weightprint.behave.compare import generic_tokens, specific_topk_overlaps

    frequent = [",", " the", ".", "\n"]
    a = [frozenset(frequent[:3] + [f"a{i}", f"a{i}b"]) for i in range(40)]
    b = [frozenset(frequent[1:] + [f"b{i}"]) for i in range(40)]
    raw = np.mean([len(x & y) / len(x | y) for x, y in zip(a, b)])
    assert raw > 0.2
    assert generic_tokens(a) == frozenset(frequent[:3]) and generic_tokens(b) == frozenset(frequent[1:])
    assert np.all(specific_topk_overlaps(a, b) == 0.0)
    copy = [frozenset(frequent[:2] + [f"a{i}", f"a{i}b", f"c{i}"]) for i in range(40)]
    assert np.allclose(specific_topk_overlaps(a, copy), 2 / 3)
    # a context without a top-k on one side is no observation
    ov = specific_topk_overlaps(a[:3] + [None], copy[:3] + [copy[3]])
    assert np.isnan(ov[3]) and not np.isnan(ov[:3]).any()
    # a token in two top-k sets out of three is generic too (>= 10% of contexts and >= 2)
    assert generic_tokens([frozenset("x"), frozenset("x"), frozenset("y")]) == frozenset("x")


def test_topk_test_per_language_bounds_and_bonferroni():
    from weightprint.behave.compare import C0_TOPK, C0_TOPK_BY_LANG, chernoff_log10_pvalue, topk_test

    code_c0 = C0_TOPK_BY_LANG["code"]
    langs = ["en"] * 60 + ["code"] * 60
    # code well above its bound, English at its bound: the evidence is the code group's, corrected for 3 tests
    x = np.array([C0_TOPK] * 60 + [code_c0 + 0.3] * 60)
    t = topk_test(x, langs)
    by = t.evidence["by_language"]
    assert by["code"]["c0"] == code_c0 and by["en"]["c0"] == C0_TOPK
    assert by["en"]["log10_pvalue"] == pytest.approx(0.0)
    expect = chernoff_log10_pvalue(code_c0 + 0.3, code_c0, 60) + math.log10(3)
    assert t.log10_pvalue == pytest.approx(expect) and t.evidence["strongest_language"] == "code"
    # the pooled test's bound is the mean of the contexts' bounds
    assert t.evidence["pooled"]["c0"] == pytest.approx((C0_TOPK + code_c0) / 2)
    # every group at its bound: no evidence at all
    at_null = topk_test(np.array([C0_TOPK] * 60 + [code_c0] * 60), langs)
    assert at_null.log10_pvalue == pytest.approx(0.0)
    # a group smaller than MIN_LANGUAGE_GROUP joins only the pooled test
    small = topk_test(np.array([1.0] * 5 + [C0_TOPK] * 60), ["zh"] * 5 + ["en"] * 60)
    assert small.evidence["by_language"]["zh"]["log10_pvalue"] is None
    assert topk_test(np.array([np.nan, np.nan]), ["en", "en"]) is None


def test_topk_test_is_valid_at_the_boundary_of_the_null():
    """Observations in [0, 1] with every language's mean exactly at its bound: the combined test
    rejects at most alpha of the time."""
    from weightprint.behave.compare import C0_TOPK, C0_TOPK_BY_LANG, topk_test

    rng = np.random.default_rng(1)
    langs = ["en"] * 40 + ["code"] * 40 + ["ru"] * 40
    means = np.array([C0_TOPK] * 40 + [C0_TOPK_BY_LANG["code"]] * 40 + [C0_TOPK] * 40)
    trials = 2000
    logp = np.array([topk_test((rng.random(120) < means).astype(float), langs).log10_pvalue for _ in range(trials)])
    for alpha in (0.01, 0.05, 0.2):
        assert np.mean(logp <= math.log10(alpha)) <= alpha


def test_probe_tops_join_the_topk_test():
    """A fake fine-tune that writes new text from the first word but keeps the next-token
    candidates of its base at many probe contexts is `related` through the top-k test alone."""
    from weightprint.behave.compare import collect_answers, compare_answers

    kw = dict(sampled=False, max_tokens=8, n_samples=1, temperature=0.0, top_logprobs=5, seed=0)
    a, b = collect_answers(FakeModel(1), PROMPTS, **kw), collect_answers(FakeModel(2), PROMPTS, **kw)
    plain = compare_answers(a, b, PROMPTS, sampled=False, prefix_pieces=10)
    assert plain.verdict == "different" and plain.statistics["probe_prompts"] == 0
    langs = ["en"] * 150 + ["code"] * 150
    base = [frozenset({",", f"x{i}", f"y{i}", f"z{i}"}) for i in range(300)]
    kept = [frozenset({",", f"x{i}", f"y{i}", f"w{i}"}) for i in range(300)]  # 2 of 4 specific kept: 0.5
    probed = compare_answers(a, b, PROMPTS, sampled=False, prefix_pieces=10, probe_tops=(langs, base, kept))
    topk = next(t for t in probed.tests if t.name == "unrelated-null-topk")
    assert topk.evidence["probe_prompts"] == 300 and topk.n == len(PROMPTS) + 300
    assert topk.evidence["strongest_language"] == "code"
    assert probed.verdict == "related" and topk.log10_pvalue < -3
    from weightprint.behave.compare import describe

    shown = dict(describe(probed))["  unrelated-null-topk by language"]
    assert "code 0.50/0.33" in shown and "en " in shown
    # the same overlap at the English bound's level is no evidence
    loose = [frozenset({",", f"x{i}", f"w{i}", f"v{i}"}) for i in range(300)]  # 1 of 5 specific: 0.2
    assert compare_answers(a, b, PROMPTS, sampled=False, prefix_pieces=10,
                           probe_tops=(["en"] * 300, base, loose)).verdict == "different"


def test_probes_are_asked_only_with_logprobs_on_both_sides_and_when_needed():
    n_probes = len(load_prompts("probes"))
    with_lp = FakeModel(1), FakeModel(2)
    r = _compare(*with_lp)
    assert r.statistics["probe_prompts"] == n_probes and with_lp[0].calls == len(PROMPTS) + n_probes
    assert r.queries == {"a": len(PROMPTS) + n_probes, "b": len(PROMPTS) + n_probes}
    assert not r.statistics["probes_not_needed"]
    text_only = FakeModel(1, logprobs=False), FakeModel(2)
    r = _compare(*text_only)
    assert r.statistics["probe_prompts"] == 0 and text_only[0].calls == len(PROMPTS)
    off = FakeModel(1), FakeModel(2)
    assert _compare(*off, probes=None).statistics["probe_prompts"] == 0 and off[0].calls == len(PROMPTS)
    # one model: the suite prompts' prefix test rejects H0 at alpha / 2 already; the probes could not
    # change the verdict and are not asked
    same = FakeModel(1), FakeModel(1)
    r = _compare(*same)
    assert r.verdict == "same" and r.statistics["probes_not_needed"] and same[0].calls == len(PROMPTS)


def test_shipped_probe_suite():
    ps = load_prompts("probes")
    assert "probes" in shipped_suites() and len(ps) == 316 and len({p.id for p in ps}) == 316
    langs = [p.lang for p in ps]
    assert {lang: langs.count(lang) for lang in set(langs)} == {"en": 43, "ru": 44, "de": 44, "fr": 44, "zh": 44, "code": 97}
    assert len({p.prompt for p in ps}) == 316 and not {p.prompt for p in ps} & {p.prompt for p in load_prompts("default")}


def test_probe_membership_on_a_text_only_sampling_endpoint():
    """The endpoint's most frequent sampled next word at each code probe is among the local
    scorer's top-5 there: for one model nearly always, for an unrelated one rarely. Only the probes
    whose language has a bound (code) are sampled. Alone it rejects H0 (the likelihood test is
    weak with 4 samples per prompt): the verdict is then `related`, never `same`."""
    from weightprint.behave.compare import C0_MEMBERSHIP_BY_LANG, PROBE_SAMPLES

    probes = [Prompt(id=f"q{i}", prompt=f"probe {i}", lang="code" if i % 2 else "en") for i in range(600)]
    kw = dict(sampled=True, n_samples=4, probes=probes)

    def tests(r):
        return {t.name: t for t in r.tests}

    peaked = dict(concentration=0.05)  # most of the mass on a few next words, as a real model's
    one = _compare(SamplingFake(1, text_only=True, **peaked), SamplingFake(1, **peaked), **kw)
    m = tests(one)["unrelated-null-probe-membership"]
    assert m.n == 300 and m.evidence["samples_per_probe"] == PROBE_SAMPLES and set(m.evidence["by_language"]) == {"code"}
    assert m.statistic > C0_MEMBERSHIP_BY_LANG["code"] and m.log10_pvalue < -6
    assert one.queries["a"] == len(PROMPTS) * 4 + 300 * PROBE_SAMPLES  # the endpoint: code probes only
    assert not tests(one)["unrelated-null-likelihood"].significant(1e-3 / 3)
    assert one.verdict == "related", one.summary()
    diff = _compare(SamplingFake(1, text_only=True, **peaked), SamplingFake(2, **peaked), **kw)
    assert diff.verdict == "different"
    assert tests(diff)["unrelated-null-probe-membership"].statistic < C0_MEMBERSHIP_BY_LANG["code"] / 2
    off = _compare(SamplingFake(1, text_only=True), SamplingFake(1), sampled=True, n_samples=4, probes=None)
    assert "unrelated-null-probe-membership" not in tests(off)
