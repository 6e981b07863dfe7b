"""`--db` search: one null hypothesis per stored reference, corrected for their number.

H0 of each reference: the suspect was trained independently of it. The search names a
reference when its Bonferroni-corrected p-value (``min(1, n_tested * p)``) is below alpha, so
under H0 for every reference the search says ``derived`` with probability at most alpha
(family-wise), however many references the database holds. Tiny random llamas; seconds.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_lineage import add_relative_noise, array_model, random_llama  # noqa: E402

from weightprint.lineage.db import SearchResult, fingerprint_model, search_fingerprints  # noqa: E402
from weightprint.results import exit_code  # noqa: E402

N_REFS = 8
N_SUSPECTS = 40
SHAPE = dict(d=64, n_layers=3)


@pytest.fixture(scope="module")
def independent_refs(tmp_path_factory):
    db = tmp_path_factory.mktemp("search") / "refs.db"
    for i in range(N_REFS):
        fingerprint_model(array_model(random_llama(100 + i, **SHAPE)), db, label=f"ref{i}")
    return db


def _check_correction(res: SearchResult) -> None:
    """Every corrected p-value is the raw one times n_tested (capped at 1), hence never smaller."""
    assert res.n_tested == res.n_references == N_REFS
    raw = [r.log10_pvalue for r in res.ranking]
    assert raw == sorted(raw)
    for lp, adj in zip(raw, res.adjusted_log10_pvalues):
        assert adj >= lp
        assert adj == pytest.approx(min(0.0, lp + math.log10(N_REFS)), abs=1e-12)
    assert res.log10_pvalue == res.adjusted_log10_pvalues[0] >= min(raw)
    assert [t.log10_pvalue for t in res.evidence] == res.adjusted_log10_pvalues
    assert all(t.evidence["raw_log10_pvalue"] == lp for t, lp in zip(res.evidence, raw))
    # per-reference verdicts are taken at alpha / n_tested, i.e. on the corrected p-value
    for r, adj in zip(res.ranking, res.adjusted_log10_pvalues):
        assert r.alpha == pytest.approx(res.alpha / N_REFS)
        assert (r.verdict == "derived") == (adj < math.log10(res.alpha))
    assert res.verdict == ("derived" if res.log10_pvalue < math.log10(res.alpha) else "no evidence")


def test_corrected_minimum_is_calibrated_under_h0(independent_refs):
    """H0 true for all references: independent suspects against independent references.

    Without a correction the smallest of 8 uniform p-values is below 0.1 with probability
    1 - 0.9**8 = 0.57 (about 23 of 40 searches): the check below would fail. With it, at most
    alpha = 0.1 (4 of 40 expected at most; 9 or more has probability < 0.01 under Binomial(40, 0.1)).
    """
    alpha = 0.1
    raw_min, corrected, flipped = [], [], 0
    for k in range(N_SUSPECTS):
        res = search_fingerprints(array_model(random_llama(200 + k, **SHAPE), label="suspect"), independent_refs,
                                  alpha=alpha, rng=k)
        _check_correction(res)
        raw_min.append(10 ** res.ranking[0].log10_pvalue)
        corrected.append(10 ** res.log10_pvalue)
        if raw_min[-1] < alpha <= corrected[-1]:  # significant raw, not after correction: re-judged
            flipped += 1
            assert res.ranking[0].verdict != "derived" and f"alpha={alpha / N_REFS:g}" in res.ranking[0].reason
            assert res.verdict == "no evidence" and exit_code(res) == 0
    raw_min, corrected = np.array(raw_min), np.array(corrected)
    n_raw, n_corrected = int(np.sum(raw_min < alpha)), int(np.sum(corrected < alpha))
    assert stats.binom.sf(n_corrected - 1, N_SUSPECTS, alpha) > 0.01, (n_corrected, np.round(np.sort(corrected), 3))
    # the simulation can tell a missing correction: the raw minimum is below alpha far more often
    assert n_raw >= 12 and flipped >= 1, (n_raw, np.round(np.sort(raw_min), 3))
    # and the raw minimum itself behaves like the minimum of 8 uniforms: 1 - (1 - p)^8 ~ U(0, 1)
    assert stats.kstest(1 - (1 - raw_min) ** N_REFS, "uniform").pvalue > 0.01


def test_search_result_names_the_parent_after_correction(independent_refs, tmp_path):
    parent = random_llama(104, **SHAPE)  # the tensors of ref4
    res = search_fingerprints(array_model(add_relative_noise(parent, 0.2, 3), label="suspect"), independent_refs)
    _check_correction(res)
    assert res.verdict == "derived" and exit_code(res) == 1
    assert res.best is not None and res.best.a == "ref4" and res.ranking[0].verdict == "derived"
    assert res.log10_pvalue < -8 and res.log10_pvalue > res.ranking[0].log10_pvalue
    assert all(r.verdict != "derived" for r in res.ranking[1:])
    assert res.summary().startswith("derived from `ref4` (p = ") and "Bonferroni correction over 8 references" in res.summary()
    d = json.loads(json.dumps(res.to_dict()))
    assert d["verdict"] == "derived" and d["correction"] == "bonferroni" and d["n_tested"] == 8
    assert [e["a"] for e in d["ranking"]][0] == "ref4" and "adjusted_log10_pvalue" in d["ranking"][0]
    assert res.evidence[0].name == "search:ref4" and "Bonferroni-corrected over 8 references" in res.evidence[0].method


def test_search_with_no_comparable_reference(tmp_path):
    db = tmp_path / "refs.db"
    fingerprint_model(array_model(random_llama(1, d=32, n_layers=2)), db, label="narrow")
    res = search_fingerprints(array_model(random_llama(2, **SHAPE)), db)
    assert res.verdict == "not comparable" and res.n_tested == 0 and res.best is None and exit_code(res) == 0
    assert res.evidence == [] and res.log10_pvalue == 0.0
    assert res.summary() == "not comparable: none of the 1 stored references can be compared with the suspect"
    json.dumps(res.to_dict())
