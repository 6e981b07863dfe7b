"""Turn result objects into report sections (a verdict, the test in words, evidence, plots)."""

from __future__ import annotations

import math
from typing import Any

from weightprint.report.html import Section, bar_chart_svg, line_chart_svg
from weightprint.results import format_pvalue


def inspect_section(result: Any, heading: str | None = None) -> Section:
    """A model's facts (from :func:`weightprint.inspect_model.inspect_model`)."""
    facts = result.facts()
    rows = [[name, s.count, s.n_elements, s.nbytes] for name, s in result.types.items()]
    return Section(
        heading or f"Model: {result.name or result.path}",
        facts=facts,
        table=(["type", "tensors", "elements", "bytes"], rows),
        data=result,
    )


def trace_section(verdict: Any, heading: str = "Leak trace") -> Section:
    """A :class:`weightprint.mark.api.TraceVerdict`: per-recipient evidence, accusation, bound."""
    tests = sorted(verdict.tests, key=lambda t: t.result.log10_pvalue)
    labels = [t.recipient for t in tests]
    strength = [min(-t.result.log10_pvalue, 1e6) for t in tests]
    threshold = -math.log10(verdict.alpha) + math.log10(max(verdict.n_copies, 1))
    chart = bar_chart_svg(
        labels,
        strength,
        title="evidence per registered copy (−log10 p)",
        xlabel="−log10 p (bar past the dashed line = accused)",
        threshold=threshold,
        threshold_label=f"alpha {verdict.alpha:g} / {verdict.n_copies}",
        highlight=[t.accused for t in tests],
    )
    rows = [
        [t.recipient, t.issue_id, t.file_type, float(t.result.statistic), t.result.pvalue_text(),
         format_pvalue(t.log10_pvalue_bonferroni), "ACCUSED" if t.accused else ""]
        for t in tests
    ]
    null = tests[0].result.null_hypothesis.rstrip(". ") + "." if tests else ""
    return Section(
        heading,
        verdict=verdict.summary(),
        evidence=bool(verdict.accused),
        test=(
            f"For each registered copy, H0: {null} p-values are corrected for the {verdict.n_copies} copies "
            f"tested (Bonferroni): the false-accusation probability is at most alpha = {verdict.alpha:g}."
        ),
        facts=[("leaked file", verdict.leaked), ("original", verdict.source),
               ("weights compared", f"{verdict.n_weights:,}"), ("seconds", f"{verdict.seconds:.1f}")],
        table=(["recipient", "issue", "type", "z", "p", "p (corrected)", ""], rows),
        charts=[chart],
        data=verdict,
    )


def lineage_section(result: Any, heading: str | None = None) -> Section:
    """A :class:`weightprint.lineage.compare.LineageResult`: verdict, components, per-layer plot."""
    heading = heading or f"Lineage: {result.b} vs {result.a}"
    combined = format_pvalue(result.log10_pvalue) if result.combined is not None else "n/a (no weight test possible)"
    facts: list[tuple[str, str]] = [("verdict", result.verdict), ("combined p-value", combined)]
    tok = result.tokenizer or {}
    for key in ("vocab_size_a", "vocab_size_b", "vocab_jaccard", "merges_jaccard"):
        if key in tok:
            facts.append((f"tokenizer {key}", str(tok[key])))
    chat = result.chat_template or {}
    if chat:
        facts.append(("chat template", f"{chat.get('family_a')} vs {chat.get('family_b')}"
                      + (" (identical)" if chat.get("identical") else "")))
    differ = (result.config or {}).get("differ", {})
    for k, v in list(differ.items())[:12]:
        facts.append((f"config {k}", f"{v[0]} vs {v[1]}"))
    rows = [[c.name, float(c.statistic), c.pvalue_text(), c.method, c.null_hypothesis] for c in result.components]
    charts = []
    layers = result.layers or []
    zs = [row.get("z") for row in layers if isinstance(row.get("z"), (int, float))]
    if zs:
        charts.append(line_chart_svg(list(range(len(zs))), {"z": zs}, title="per-layer evidence (z-score)",
                                     xlabel="matched layer pair", ylabel="z"))
    null = result.combined.null_hypothesis if result.combined is not None else ""
    return Section(
        heading,
        verdict=f"{result.verdict}: {result.reason}",
        evidence=result.verdict == "derived",
        test=f"H0: {null}" if null else None,
        facts=facts,
        table=(["component", "statistic", "p", "method", "H0"], rows) if rows else None,
        charts=charts,
        data=result,
    )
