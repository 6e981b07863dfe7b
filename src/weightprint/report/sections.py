"""Turn result objects into report sections (a verdict, the test in words, evidence, plots).

Sections are chosen by the result's type: :func:`section` looks the type (then its base
classes) up in a registry that :func:`section_for` fills. Adding a section for a new result
type is one decorated function::

    @section_for(ScanResult)
    def scan_section(result: ScanResult, heading: str | None = None) -> Section:
        return Section(heading or "Scan", verdict=result.summary(), evidence=result.evidence_found, data=result)

Any :class:`~weightprint.results.VerdictResult` without its own section gets
:func:`verdict_section` (verdict, summary and a table of its evidence).
"""

from __future__ import annotations

import math
from typing import Callable, Protocol, TypeVar

from weightprint.inspect_model import InspectResult
from weightprint.lineage.compare import LineageResult
from weightprint.lineage.db import SearchResult
from weightprint.lineage.exact import ExactResult
from weightprint.mark.api import TraceVerdict, VerifyResult
from weightprint.report.html import Section, bar_chart_svg, line_chart_svg
from weightprint.results import TestResult, VerdictResult, format_pvalue

__all__ = ["SectionBuilder", "section", "section_for"]

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class SectionBuilder(Protocol[R_contra]):
    """Builds the report section of one result type: ``builder(result, heading=None)``."""

    def __call__(self, result: R_contra, heading: str | None = None) -> Section: ...


_BUILDERS: dict[type, SectionBuilder] = {}  # type: ignore[type-arg]


def section_for(result_type: type[R]) -> Callable[[SectionBuilder[R]], SectionBuilder[R]]:
    """Register the decorated function as the report section of ``result_type`` (and its subclasses)."""

    def register(builder: SectionBuilder[R]) -> SectionBuilder[R]:
        if result_type in _BUILDERS:
            raise ValueError(f"a report section for {result_type.__qualname__} is already registered")
        _BUILDERS[result_type] = builder
        return builder

    return register


def section(result: object, heading: str | None = None) -> Section:
    """The report section of ``result``, by its type (the nearest registered base class wins).

    Raises
    ------
    TypeError
        No section is registered for the type or any of its bases.
    """
    for cls in type(result).__mro__:
        builder = _BUILDERS.get(cls)
        if builder is not None:
            return builder(result, heading)
    raise TypeError(
        f"no report section for {type(result).__qualname__}; register one with @section_for({type(result).__name__})"
    )


def _evidence_rows(tests: list[TestResult]) -> list[list[object]]:
    return [[t.name, float(t.statistic), t.pvalue_text(), t.method, t.null_hypothesis] for t in tests]


@section_for(VerdictResult)
def verdict_section(result: VerdictResult, heading: str | None = None) -> Section:
    """Any verdict result: its verdict and summary, and the tests it rests on."""
    rows = _evidence_rows(result.evidence)
    return Section(
        heading or type(result).__name__,
        verdict=result.summary(),
        evidence=result.evidence_found,
        facts=[("verdict", str(getattr(result, "verdict")))],
        table=(["test", "statistic", "p", "method", "H0"], rows) if rows else None,
        data=result,
    )


@section_for(InspectResult)
def inspect_section(result: InspectResult, heading: str | None = None) -> Section:
    """A model's facts (from :func:`weightprint.inspect_model.inspect_model`)."""
    facts = result.facts()
    rows: list[list[object]] = [[name, s.count, s.n_elements, s.nbytes] for name, s in result.types.items()]
    return Section(
        heading or f"Model: {result.name or result.path}",
        facts=facts,
        table=(["type", "tensors", "elements", "bytes"], rows),
        data=result,
    )


@section_for(TraceVerdict)
def trace_section(verdict: TraceVerdict, heading: str | None = None) -> Section:
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
    rows: list[list[object]] = [
        [t.recipient, t.issue_id, t.file_type, float(t.result.statistic), t.result.pvalue_text(),
         format_pvalue(t.log10_pvalue_bonferroni), "ACCUSED" if t.accused else ""]
        for t in tests
    ]
    null = tests[0].result.null_hypothesis.rstrip(". ") + "." if tests else ""
    return Section(
        heading or "Leak trace",
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


@section_for(LineageResult)
def lineage_section(result: LineageResult, heading: str | None = None) -> Section:
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
    basis = result.basis or {}
    if basis.get("kind"):
        facts.append(("residual map (B in A's basis)", str(basis["kind"])))
    gram = (result.basis_free or {}).get("token_gram_corr")
    if isinstance(gram, float):
        facts.append(("token Gram correlation (basis-free evidence, not a test)",
                      f"{gram:.3f} over {result.basis_free.get('n_tokens')} shared tokens"))
    differ = (result.config or {}).get("differ", {})
    for k, v in list(differ.items())[:12]:
        facts.append((f"config {k}", f"{v[0]} vs {v[1]}"))
    rows = _evidence_rows(result.components)
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


@section_for(ExactResult)
def exact_section(result: ExactResult, heading: str | None = None) -> Section:
    """A :class:`weightprint.lineage.exact.ExactResult`: is QUANT exactly SOURCE quantized by llama.cpp."""
    facts: list[tuple[str, str]] = [
        ("source", result.source), ("quant", result.quant), ("file type", result.file_type or "unknown"),
        ("tensors identical", f"{result.n_identical:,} of {result.n_tensors:,}"),
        ("tensor types", ", ".join(f"{k}×{v}" for k, v in sorted(result.types.items()))),
        ("importance matrix", "yes" if result.imatrix else "no"),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    if result.missing_in_quant:
        facts.append(("missing in quant", ", ".join(result.missing_in_quant[:12])))
    rows: list[list[object]] = [[d.name, d.qtype, d.reason] for d in result.differing[:50]]
    return Section(
        heading or f"Exact derivation: {result.quant} from {result.source}",
        verdict=f"{result.verdict}: {result.reason}",
        evidence=result.exact,
        test="Every tensor of QUANT is compared byte for byte with SOURCE requantized by llama.cpp's algorithm "
             "to the tensor's stored type (a deterministic check, no p-value).",
        facts=facts,
        table=(["tensor", "type", "why not identical"], rows) if rows else None,
        data=result,
    )


@section_for(VerifyResult)
def verify_section(result: VerifyResult, heading: str | None = None) -> Section:
    """A :class:`weightprint.mark.api.VerifyResult`: exact copy by sha256, else the watermark trace."""
    if result.trace is not None and result.match == "watermark":
        inner = trace_section(result.trace, heading)
        inner.verdict = result.summary()
        inner.facts = [("file", result.path), ("sha256", result.sha256), *inner.facts]
        inner.data = result
        return inner
    facts: list[tuple[str, str]] = [("file", result.path), ("sha256", result.sha256), ("match", result.verdict)]
    if result.record is not None:
        facts += [("recipient", result.record.recipient), ("issue", result.record.issue_id)]
    if result.note:
        facts.append(("note", result.note))
    return Section(
        heading or f"Verify: {result.path}",
        verdict=result.summary(),
        evidence=result.evidence_found,
        facts=facts,
        data=result,
    )


@section_for(SearchResult)
def search_section(result: SearchResult, heading: str | None = None) -> Section:
    """A :class:`weightprint.lineage.db.SearchResult`: every stored reference ranked, Bonferroni-corrected."""
    pairs = list(zip(result.ranking, result.adjusted_log10_pvalues))
    compared = [(r, adj) for r, adj in pairs if r.combined is not None]
    charts = []
    if compared:
        charts.append(bar_chart_svg(
            [r.a for r, _ in compared[:20]],
            [min(-adj, 1e6) for _, adj in compared[:20]],
            title="evidence per stored reference (−log10 corrected p)",
            xlabel="−log10 p, corrected (bar past the dashed line = derived)",
            threshold=-math.log10(result.alpha),
            threshold_label=f"alpha {result.alpha:g}",
            highlight=[r.verdict == "derived" for r, _ in compared[:20]],
        ))
    rows: list[list[object]] = [
        [i, r.a, r.verdict, format_pvalue(r.log10_pvalue), format_pvalue(adj) if r.combined is not None else "n/a", r.reason]
        for i, (r, adj) in enumerate(pairs, 1)
    ]
    null = result.best.combined.null_hypothesis if result.best is not None and result.best.combined is not None else ""
    return Section(
        heading or f"Lineage search: {result.suspect}",
        verdict=result.summary(),
        evidence=result.evidence_found,
        test=(f"For each stored reference, H0: {null.rstrip('. ')}. p-values are corrected for the "
              f"{result.n_tested} references compared (Bonferroni): the chance of naming any reference "
              f"under H0 is at most alpha = {result.alpha:g}.") if null else None,
        facts=[("suspect", result.suspect), ("database", result.db_url),
               ("references stored / compared", f"{result.n_references} / {result.n_tested}"),
               ("seconds", f"{result.seconds:.1f}")],
        table=(["rank", "reference", "verdict", "p", "p (corrected)", "reason"], rows),
        charts=charts,
        data=result,
    )
