"""Report sections of the evals results (EQ-Bench runs, contamination tests).

Importing this module registers the sections with :func:`weightprint.report.sections.section_for`.
"""

from __future__ import annotations

import math

from weightprint.evals.contamination import ContaminationResult
from weightprint.evals.eqbench import EqBenchResult
from weightprint.report.html import Section, bar_chart_svg
from weightprint.report.sections import section_for

__all__ = ["contamination_section", "eqbench_section"]


@section_for(ContaminationResult)
def contamination_section(result: ContaminationResult, heading: str | None = None) -> Section:
    """The verdict, each test in words with its p-value, and the per-shard / per-item evidence."""
    facts = [("verdict", result.verdict), ("model", result.model), ("benchmark", result.benchmark),
             ("items", str(result.n_items)), ("known-unseen items", str(result.n_unseen)),
             ("alpha (Bonferroni over the tests run)", f"{result.alpha:g}")]
    rows = []
    words = []
    for t in result.evidence:
        rows.append([t.name, f"{t.statistic:.4g}", t.pvalue_text(), t.method, t.null_hypothesis])
        words.append(f"{t.name}: H0 = {t.null_hypothesis}; {t.method}; {t.pvalue_text()}.")
    charts = []
    ex = result.exchangeability
    if ex is not None:
        facts.append(("shards x orders", f"{ex.evidence['n_shards']} x {ex.evidence['n_permutations']} "
                                         f"({ex.evidence['distinct_orders_scored']} distinct orders scored)"))
        if ex.evidence.get("fallback"):
            facts.append(("fallback", ex.evidence["fallback"]))
        diffs = ex.evidence.get("differences")
        if diffs:
            charts.append(bar_chart_svg([str(i + 1) for i in range(len(diffs))], diffs,
                                        title="log p(canonical order) - mean log p(shuffled), per shard",
                                        xlabel="nats", threshold=0.0, highlight=[d > 0 for d in diffs]))
    if result.membership is not None:
        ev = result.membership.evidence
        facts.append((f"{ev.get('score')} AUROC (seen vs unseen)", f"{result.membership.statistic:.3f}"))
        facts.append((f"mean {ev.get('score')} seen / unseen", f"{ev.get('mean_seen'):.3f} / {ev.get('mean_unseen'):.3f}"))
    for note in result.notes:
        facts.append(("note", note))
    return Section(
        heading or f"Contamination: {result.benchmark}",
        verdict=result.summary(), evidence=result.evidence_found, test=" ".join(words) or None,
        facts=facts, table=(["test", "statistic", "p", "method", "H0"], rows) if rows else None,
        charts=charts, data=result,
    )


@section_for(EqBenchResult)
def eqbench_section(result: EqBenchResult, heading: str | None = None) -> Section:
    """The score, the parse-failure rate, and every question's ratings and score."""
    facts = [("model", result.model), ("EQ-Bench v2 score", f"{result.score:.2f}"),
             ("parse failures", f"{100 * result.parse_failure_rate:.1f}% of {result.n_questions}"),
             ("score with unparseable answers as 0 (lm-evaluation-harness)", f"{result.score_unparseable_as_zero:.2f}"),
             ("settings", ", ".join(f"{k}={v}" for k, v in result.settings.items()))]
    if result.resumed:
        facts.append(("answers resumed from an earlier run", str(result.resumed)))
    rows = [[q.id, "-" if q.ratings is None else ", ".join(f"{r:g}" for r in q.ratings),
             "unparseable" if q.score is None else f"{q.score:.3f}", q.answer[:120]] for q in result.questions]
    scored = [q for q in result.questions if q.score is not None and math.isfinite(q.score)]
    charts = [bar_chart_svg([q.id for q in scored], [q.score for q in scored], title="score per question (10 = perfect)",
                            threshold=0.0)] if scored else []
    return Section(heading or "EQ-Bench v2", verdict=result.summary(), evidence=None,
                   facts=facts, table=(["question", "ratings", "score", "answer"], rows), charts=charts, data=result)
