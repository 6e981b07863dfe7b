"""Contamination tests and EQ-Bench on the real SmolLM2-135M through llama.cpp.

The contaminated model is SmolLM2 fine-tuned on the shipped 200-item benchmark in canonical
order (:func:`weightprint.testing.contaminate.contaminated_smollm2`, built once and cached; the
200 unseen items of the same style stay out of training). Budgets here are reduced; the authors'
full budget (50 shards x 250 orders) runs in ``bench/bench_contamination.py``.
"""

from __future__ import annotations

import os

import pytest
from scipy import stats

from weightprint.evals.benchgen import generate_items
from weightprint.evals.contamination import check_contamination, exchangeability_test
from weightprint.evals.data import shipped_benchmark

#: An acceptance run: many minutes per test on 2 cores, so outside the default suite (which stays
#: under 20 minutes); WEIGHTPRINT_SLOW_TESTS=1 runs it. `bench/bench_contamination.py` records the same numbers.
ACCEPTANCE_RUN = pytest.mark.skipif(
    os.environ.get("WEIGHTPRINT_SLOW_TESTS") != "1",
    reason="acceptance run on real models (minutes per test); set WEIGHTPRINT_SLOW_TESTS=1 to run it",
)
pytestmark = [pytest.mark.usefixtures("llama_cpp_module"), ACCEPTANCE_RUN]


def _open(path):
    """llama.cpp with 1 thread on a busy machine (2 spinning threads under load run ~10x slower)."""
    from weightprint.behave.backends import open_backend
    from weightprint.testing.perplexity import default_threads

    return open_backend(path, n_threads=default_threads())


@pytest.fixture(scope="module")
def original(smollm2):
    with _open(smollm2) as b:
        yield b


@pytest.fixture(scope="module")
def contaminated():
    from weightprint.testing.contaminate import contaminated_smollm2

    with _open(contaminated_smollm2()) as b:
        yield b


@pytest.fixture(scope="module")
def benchmark():
    return shipped_benchmark("seen"), shipped_benchmark("unseen")


def test_contaminated_model_is_caught(contaminated, benchmark):
    """H0 (not trained on the benchmark) is false here: both tests must reject it."""
    seen, unseen = benchmark
    res = check_contamination(contaminated, seen, unseen=unseen, exchangeability=False)
    ex = exchangeability_test(contaminated, seen, n_shards=100, n_permutations=30)  # shards of 2 items: cheap
    assert ex.pvalue < 0.01, ex.evidence["mean_difference"]
    assert res.membership.statistic >= 0.8
    assert res.verdict == "contaminated"


def test_original_model_is_not_accused(original, benchmark):
    """H0 holds (SmolLM2 never saw these invented items): no rejection, AUROC near 1/2."""
    seen, unseen = benchmark
    res = check_contamination(original, seen, unseen=unseen, exchangeability=False)
    ex = exchangeability_test(original, seen, n_shards=100, n_permutations=30)
    assert ex.pvalue > 0.05, ex.evidence["mean_difference"]
    assert 0.4 <= res.membership.statistic <= 0.6
    assert res.verdict == "no evidence"


def test_exchangeability_is_calibrated_under_h0(original):
    """H0: the untouched model on freshly generated benchmarks -> p-values ~ U(0, 1) (KS p > 0.01)."""
    pvals = [exchangeability_test(original, generate_items(20, seed=90_000 + r), n_shards=10, n_permutations=20,
                                  rng=r).pvalue for r in range(20)]
    assert stats.kstest(pvals, "uniform").pvalue > 0.01, pvals


def test_eqbench_sample_completes(original):
    from weightprint.evals.eqbench import run_eqbench, sample_questions

    res = run_eqbench(original, sample_questions()[:2], max_tokens=40)
    assert res.n_questions == 2 and 0.0 <= res.parse_failure_rate <= 1.0
    assert all(q.answer for q in res.questions)
    assert res.n_parsed == 0 or res.score > -200
