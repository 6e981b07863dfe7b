"""Contamination tests (Min-K%, Min-K%++, the exchangeability test) on a fake backend, and benchmark loading.

The fake backend (``_fixtures_evals``) scores words with a hash of the previous word; a
"contaminated" fake adds a bonus to n-grams of the text it memorized. H0 of the exchangeability
test holds for the untouched fake on any benchmark whose canonical order is random.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy import stats

from _fixtures_evals import FakeEvalBackend
from weightprint.errors import WeightprintError
from weightprint.evals.benchgen import contamination_benchmark, generate_items
from weightprint.evals.contamination import (
    MIN_SHARDS,
    auroc,
    check_contamination,
    exchangeability_test,
    membership_scores,
    min_k_percent,
    min_k_plus_plus,
    shard_bounds,
)
from weightprint.evals.data import BenchmarkFormatError, load_benchmark, shipped_benchmark
from weightprint.results import exit_code


def contaminated(items: list[str], **kw) -> FakeEvalBackend:
    return FakeEvalBackend(memorized="\n".join(items), **kw)


# ------------------------------------------------------------------ scores by hand
def test_min_k_by_hand():
    assert min_k_percent([-1.0, -5.0, -2.0, -4.0, -3.0], k=0.4) == -4.5
    assert min_k_percent([-1.0, -5.0, -2.0], k=0.2) == -5.0  # at least one token
    assert min_k_percent([-2.0, -1.0], k=1.0) == -1.5
    assert math.isnan(min_k_percent([], k=0.2))
    with pytest.raises(WeightprintError, match=r"^`k` must be in \(0, 1\], got 0$"):
        min_k_percent([-1.0], k=0)


def test_min_k_plus_plus_by_hand():
    # z = ((-1+2)/1, (-3+2)/2, (-4+1)/0.5) = (1, -0.5, -6); lowest 2 of 3 (k=0.7 -> floor 2.1 = 2)
    assert min_k_plus_plus([-1.0, -3.0, -4.0], [-2.0, -2.0, -1.0], [1.0, 2.0, 0.5], k=0.7) == pytest.approx(-3.25)
    assert min_k_plus_plus([-1.0, -3.0], [-1.0, -2.0], [0.0, 1.0], k=1.0) == pytest.approx(-0.5)  # sigma 0 scores 0


def test_auroc_by_hand():
    assert auroc([3.0, 2.0], [1.0, 2.0]) == 0.875
    assert auroc([1.0], [2.0]) == 0.0
    assert auroc([5, 6], [1, 2, 3]) == 1.0


def test_shard_bounds():
    assert shard_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert shard_bounds(200, 50) == [(4 * i, 4 * i + 4) for i in range(50)]


# ------------------------------------------------------------------ data
def test_shipped_benchmark_is_the_generator_output():
    seen, unseen = contamination_benchmark()
    assert shipped_benchmark("seen") == seen and shipped_benchmark("unseen") == unseen
    assert len(seen) == len(unseen) == 200 and not set(seen) & set(unseen)


def test_load_benchmark_formats(tmp_path):
    items = ["one two", "three, four", 'five "six"']
    (tmp_path / "a.json").write_text(json.dumps([{"q": t} for t in items]))
    (tmp_path / "b.json").write_text(json.dumps({"data": [{"q": t} for t in items], "version": 2}))
    (tmp_path / "c.json").write_text(json.dumps(items))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"q": t, "x": 1}) for t in items) + "\n\n")
    (tmp_path / "e.csv").write_text('q,x\none two,1\n"three, four",2\n"five ""six""",3\n')
    for name in ("a.json", "b.json", "d.jsonl", "e.csv"):
        assert load_benchmark(tmp_path / name, field="q") == items, name
    assert load_benchmark(tmp_path / "c.json") == items


def test_load_benchmark_errors(tmp_path):
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(BenchmarkFormatError, match=r"bad.json: invalid JSON at line 1 column 3"):
        load_benchmark(tmp_path / "bad.json")
    (tmp_path / "f.jsonl").write_text('{"text": "a"}\n{"question": "b"}\n')
    with pytest.raises(BenchmarkFormatError, match=r"f.jsonl: record 2 has no field `text` \(fields: question\)$"):
        load_benchmark(tmp_path / "f.jsonl")
    (tmp_path / "n.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(BenchmarkFormatError, match=r"n.jsonl: record 1 field `text` is a int, not text$"):
        load_benchmark(tmp_path / "n.jsonl")
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(BenchmarkFormatError, match=r"x.txt: cannot tell the format from the extension `.txt`$"):
        load_benchmark(tmp_path / "x.txt")
    (tmp_path / "p.parquet").write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(BenchmarkFormatError, match=r"p.parquet: reading Parquet needs `pyarrow`, which is not installed$"):
            load_benchmark(tmp_path / "p.parquet")
    else:
        with pytest.raises(BenchmarkFormatError, match=r"p.parquet: not a readable Parquet file"):
            load_benchmark(tmp_path / "p.parquet")


# ------------------------------------------------------------------ exchangeability
def test_exchangeability_detects_a_memorized_order():
    items = generate_items(200, seed=7)
    res = exchangeability_test(contaminated(items), items, n_shards=50, n_permutations=50)
    assert res.pvalue < 1e-6 and res.statistic > 0
    assert res.evidence["n_shards"] == 50 and res.evidence["fallback"] is None
    clean = exchangeability_test(FakeEvalBackend(), items, n_shards=50, n_permutations=50)
    assert clean.pvalue > 0.01


def test_exchangeability_null_is_uniform():
    """H0: an untouched model, benchmarks in random canonical order -> p ~ U(0, 1) (KS test)."""
    backend = FakeEvalBackend()
    pvals = [exchangeability_test(backend, generate_items(40, seed=1000 + s), n_shards=10, n_permutations=20,
                                  rng=s).pvalue for s in range(60)]
    assert stats.kstest(pvals, "uniform").pvalue > 0.01


def test_exchangeability_scores_each_distinct_order_once_in_lexicographic_order():
    items = generate_items(12, seed=3)
    seen: list[str] = []

    class Recording(FakeEvalBackend):
        def loglikelihood(self, requests, progress=None):
            seen.extend(r.continuation for r in requests)
            return super().loglikelihood(requests, progress)

    res = exchangeability_test(Recording(), items, n_shards=50, n_permutations=100)  # 12 // 2 < MIN_SHARDS -> whole
    assert res.evidence["n_shards"] == 1 and "permutation test on the whole benchmark" in res.evidence["fallback"]
    assert len(seen) == len(set(seen)) == res.evidence["distinct_orders_scored"] <= 101
    order = [tuple(items.index(x) for x in text.split("\n")) for text in seen]
    assert order == sorted(order) and tuple(range(12)) in order


def test_exchangeability_fallbacks_and_errors():
    items = generate_items(30, seed=5)
    res = exchangeability_test(FakeEvalBackend(), items, n_shards=50, n_permutations=10)
    assert res.evidence["n_shards"] == 15 >= MIN_SHARDS
    assert res.evidence["fallback"] == "30 items < 2 x 50 shards: 15 shards of 2-3 items"
    few = exchangeability_test(contaminated(items[:6]), items[:6], n_shards=50, n_permutations=99)
    assert few.evidence["n_shards"] == 1 and few.n_resamples == 99
    assert few.pvalue == pytest.approx((1 + few.evidence["n_at_least_canonical"]) / 100)
    assert few.pvalue < 0.05  # 6! = 720 orders: the memorized one is rarely matched
    with pytest.raises(WeightprintError, match=r"^empty benchmark: the exchangeability test needs at least 2 items$"):
        exchangeability_test(FakeEvalBackend(), [])
    with pytest.raises(WeightprintError, match=r"^benchmark of 1 item: the exchangeability test needs at least 2 items$"):
        exchangeability_test(FakeEvalBackend(), ["a b"])
    with pytest.raises(WeightprintError, match=r"^`shards` must be a positive integer, got 0$"):
        exchangeability_test(FakeEvalBackend(), items, n_shards=0)


# ------------------------------------------------------------------ combined verdict
def test_check_contamination_verdicts():
    seen, unseen = generate_items(80, seed=11), generate_items(80, seed=12)
    dirty = check_contamination(contaminated(seen), seen, unseen=unseen, n_shards=20, n_permutations=30)
    assert dirty.verdict == "contaminated" and exit_code(dirty) == 1
    assert dirty.membership.statistic > 0.65 and dirty.exchangeability.pvalue < 0.01
    assert "contaminated:" in dirty.summary() and "AUROC" in dirty.summary()
    clean = check_contamination(FakeEvalBackend(), seen, unseen=unseen, n_shards=20, n_permutations=30)
    assert clean.verdict == "no evidence" and exit_code(clean) == 0
    assert 0.3 < clean.membership.statistic < 0.7
    d = clean.to_dict()
    assert d["verdict"] == "no evidence" and len(d["seen_scores"]["min_k_plus_plus"]) == 80
    json.dumps(d)
    with pytest.raises(WeightprintError, match=r"^bench.jsonl: empty benchmark \(no items\)$"):
        check_contamination(FakeEvalBackend(), [], benchmark="bench.jsonl")


def test_membership_without_vocabulary_statistics_falls_back_to_min_k():
    seen, unseen = generate_items(30, seed=1), generate_items(30, seed=2)
    backend = contaminated(seen, full_distribution=False)
    assert membership_scores(backend, seen).min_k_plus_plus == ()
    res = check_contamination(backend, seen, unseen=unseen, exchangeability=False)
    assert res.membership.name == "min-k-auroc" and res.exchangeability is None
    assert any("Min-K% instead of Min-K%++" in n for n in res.notes)
    assert res.verdict == "contaminated"
