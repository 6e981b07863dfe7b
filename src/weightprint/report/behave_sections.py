"""Report sections of the black-box results (:mod:`weightprint.behave`): compare, identify, template.

Importing this module registers the sections with :func:`weightprint.report.sections.section_for`.
"""

from __future__ import annotations

from weightprint.behave.compare import CompareResult
from weightprint.behave.compare import describe as describe_compare
from weightprint.behave.identify import IdentifyResult
from weightprint.behave.template import TemplateResult
from weightprint.report.html import Section, bar_chart_svg
from weightprint.report.sections import section_for

__all__ = ["compare_section", "identify_section", "template_section"]


@section_for(CompareResult)
def compare_section(result: CompareResult, heading: str | None = None) -> Section:
    """Verdict, the unrelated-null test, drift statistics, and per-prompt similarities."""
    t = result.unrelated_test
    sims = [float(r.get("similarity", r.get("cross", 0.0))) for r in result.per_prompt]
    chart = bar_chart_svg([str(r["id"]) for r in result.per_prompt], sims, title="prefix similarity per prompt",
                          xlabel="similarity (0 = first word differs, 1 = identical)",
                          threshold=float(result.statistics["c0"]), threshold_label="null bound c0")
    rows = [[r["id"], r.get("lang", ""), f"{float(r.get('similarity', r.get('cross', 0.0))):.2f}",
             str(r.get("a", ""))[:80], str(r.get("b", ""))[:80]] for r in result.per_prompt]
    return Section(
        heading or f"Compare: {result.a} vs {result.b}",
        verdict=result.summary(),
        evidence=result.evidence_found,
        test=f"H0: {t.null_hypothesis}; {t.method}; {t.pvalue_text()}",
        facts=describe_compare(result),
        table=(["prompt", "lang", "similarity", "A", "B"], rows),
        charts=[chart],
        data=result,
    )


@section_for(IdentifyResult)
def identify_section(result: IdentifyResult, heading: str | None = None) -> Section:
    """Ranking of the candidates, queries used and confidence."""
    rows = [[r["candidate"], f"{r['confidence']:.4f}",
             "" if r["mean_similarity"] is None else f"{r['mean_similarity']:.3f}",
             "" if r["logprob_distance"] is None else f"{r['logprob_distance']:.4f}"] for r in result.ranking]
    return Section(
        heading or f"Identify: {result.target}",
        verdict=result.summary(),
        evidence=result.evidence_found,
        facts=[("best", result.best), ("confidence", f"{result.confidence:.4f}"), ("queries used", str(result.queries_used))],
        table=(["candidate", "confidence", "mean similarity", "log-prob distance"], rows),
        data=result,
    )


@section_for(TemplateResult)
def template_section(result: TemplateResult, heading: str | None = None) -> Section:
    """The chat-template family and, from behaviour, each family's score."""
    return Section(
        heading or f"Chat template: {result.model}",
        verdict=result.summary(),
        evidence=None,
        facts=[("family", result.verdict), ("source", result.source)] + [(f, f"{s:.3f}") for f, s in result.scores.items()],
        data=result,
    )
