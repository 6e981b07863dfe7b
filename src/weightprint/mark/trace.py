"""Test a leaked model against every registered copy: one correlation test per copy.

The work is one pass over the tensors the leak shares with the original: align a layer,
score the leak at the original's candidate weights for each distinct (file type, delta) among
the copies (:func:`weightprint.mark.scheme.candidate_scores`), and add the copy's Tardos score
``sum c_i h_i`` for every copy's key. Peak memory is one layer; time is one dequantization of
each model, two keyed quantizations of the original per distinct file type, one bias stream per
tensor and file type, and one ChaCha20 stream (a byte per weight) per copy and tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from weightprint.progress import ProgressCallback
from weightprint.basis import recover_residual_map
from weightprint.constants import QType, parse_file_type
from weightprint.convert import plan_tensor_types
from weightprint.errors import NotComparableError
from weightprint.io.model import Model
from weightprint.mark.align import AlignmentReport, aligned_pairs
from weightprint.mark.keys import CopyKey
from weightprint.mark.scheme import (
    DEFAULT_DELTA,
    SCHEME_VERSION,
    Accumulator,
    candidate_scores,
    code_table,
    grid_type,
    is_marked_tensor,
    key_stream,
    tardos_score,
)
from weightprint.results import TestResult, format_pvalue

NULL_HYPOTHESIS = (
    "the leaked model was not produced from this copy: the copy's key-derived code symbols "
    "are independent of where the leak sits between the original's two candidate levels"
)
METHOD = ("symmetric Tardos score with soft symbols; min(Bernstein, Hoeffding, normal + Berry-Esseen) "
          "bound on a sum of independent zero-mean terms, conditional on the scores and the biases")


@dataclass(frozen=True)
class CopyTest:
    """One candidate copy to test: a label for reports, its type and band, and its key (never serialised)."""

    issue_id: str
    recipient: str
    file_type: str
    key: CopyKey = field(repr=False, compare=False)
    delta: float = DEFAULT_DELTA


@dataclass
class TraceStatistics:
    """Raw output of :func:`correlate_leak`: one test per copy plus the alignment report."""

    tests: list[TestResult]
    alignment: AlignmentReport
    n_weights: int
    seconds: float


def copy_test_result(copy: CopyTest, acc: Accumulator, n_copies: int) -> TestResult:
    """The :class:`TestResult` of one copy (Bonferroni-corrected value in ``evidence``)."""
    lp = acc.log10_pvalue()
    corrected = min(0.0, lp + math.log10(max(n_copies, 1)))
    top = sorted(acc.per_tensor.items(), key=lambda kv: -kv[1])[:5]
    return TestResult(
        name="watermark-correlation",
        statistic=acc.z,
        log10_pvalue=lp,
        null_hypothesis=NULL_HYPOTHESIS,
        alternative="greater",
        method=METHOD,
        n=acc.n,
        evidence={
            "issue_id": copy.issue_id,
            "recipient": copy.recipient,
            "file_type": copy.file_type,
            "delta": copy.delta,
            "scheme_version": SCHEME_VERSION,
            "n_candidates": acc.n,
            "tardos_score": acc.statistic,
            "sum_scores_squared": acc.sum_sq,
            "max_term_bound": acc.bound,
            "z": acc.z,
            "n_copies_tested": n_copies,
            "log10_pvalue_bonferroni": corrected,
            "pvalue_bonferroni_text": format_pvalue(corrected),
            "top_tensors_z": {k: round(v, 3) for k, v in top},
        },
    )


def correlate_leak(
    original: Model,
    leaked: Model,
    copies: Sequence[CopyTest],
    *,
    code_key: CopyKey,
    undo_permutations: bool = True,
    recover_basis: bool = True,
    tensor_filter: Callable[[str], bool] | None = None,
    progress: ProgressCallback | None = None,
) -> TraceStatistics:
    """Correlate the leak's residual with every copy's signs.

    With ``recover_basis`` the leak is first brought back into the original's residual basis
    (:func:`weightprint.basis.recover_residual_map`: sign flips, permutations and rotations of
    the residual stream, with folded norms). The map is a function of the original and the
    leak only, never of a key, so under H0 the mapped leak is still independent of each copy's
    signs and the bound below stays valid.

    H0 (per copy): the leak was not produced from this copy, so the copy's signs are
    independent of the residual scores; the p-value is a bound on ``P(T >= t)`` valid
    conditionally on the scores (see :mod:`weightprint.mark.scheme`). The alternative
    ('greater') is that the leak carries the copy's shifts, making ``T`` large and positive.

    Raises
    ------
    NotComparableError
        When the leak shares no marked tensor (same name or fingerprint, same shape) with the
        original.
    """
    t0 = time.perf_counter()
    report = AlignmentReport()
    if recover_basis:
        try:
            rmap = recover_residual_map(original, leaked)
        except NotComparableError as e:
            report.basis = {"kind": "not recovered", "reason": str(e)}
        else:
            report.basis = rmap.to_dict()
            leaked = rmap.mapped(leaked)
    accs = [Accumulator() for _ in copies]
    groups: dict[tuple[str, float], list[int]] = {}
    for k, copy in enumerate(copies):
        groups.setdefault((copy.file_type, float(copy.delta)), []).append(k)
    plans = {ft: plan_tensor_types(original, parse_file_type(ft)) for ft, _ in groups}
    n_total = sum(1 for t in original.tensor_infos() if is_marked_tensor(t.name, tuple(t.shape)))
    done = 0
    for name, x, y in aligned_pairs(original, leaked, report, undo_permutations=undo_permutations):
        done += 1
        if progress is not None:
            progress(done, n_total, name)
        if tensor_filter is not None and not tensor_filter(name):
            continue
        # copies of different file types often share a tensor's grid (Q8_0, Q6_K...): score it once
        by_grid: dict[tuple[QType, float], list[int]] = {}
        for (ft, delta), members in groups.items():
            grid = grid_type(plans[ft].get(name), int(x.shape[-1]))
            if grid is not None:
                by_grid.setdefault((grid, delta), []).extend(members)
        tables = []
        for (grid, delta), members in by_grid.items():
            idx, c = candidate_scores(x, y, grid, delta)
            if idx.size:
                tables.append((code_table(name, x.size, idx, c, code_key), frozenset(members)))
        scored = sorted({k for _, members in tables for k in members})
        for k in scored:
            stream = key_stream(copies[k].key, name, x.size)  # one stream per copy and tensor
            for table, members in tables:
                if k in members:
                    accs[k].add(tardos_score(table, stream), table)
    if progress is not None:
        progress(n_total, n_total, "done")
    if report.n_tensors == 0:
        raise NotComparableError(
            f"leaked model {leaked.path} shares no weight matrix with source {original.path} "
            f"({len(report.shape_mismatch)} of the same name with another shape)"
        )
    tests = [copy_test_result(cp, acc, len(copies)) for cp, acc in zip(copies, accs)]
    return TraceStatistics(tests, report, report.n_weights, time.perf_counter() - t0)
