"""Reports: HTML with inline SVG and a JSON twin, written atomically; p-values in log space."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from weightprint.report import Report, Section, bar_chart_svg, line_chart_svg, write_atomic
from weightprint.results import TestResult, combine_bonferroni, combine_fisher, format_pvalue, log10_hoeffding_bound


def test_report_writes_html_and_json(tmp_path: Path) -> None:
    r = Report("Title <&>", subtitle="sub")
    r.add(Section("Part", verdict="accused `x`", evidence=True, facts=[("k", "v")],
                  table=(["a", "b"], [[1, 0.5]]), charts=[bar_chart_svg(["x", "y"], [3.0, 1.0], title="t", threshold=2.0)],
                  data={"arr": np.arange(3), "inf": float("inf")}))
    r.write(tmp_path / "r.html", tmp_path / "r.json")
    html = (tmp_path / "r.html").read_text()
    assert "Title &lt;&amp;&gt;" in html and "<svg" in html and 'class="verdict evidence"' in html
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["sections"][0]["data"] == {"arr": [0, 1, 2], "inf": "inf"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"]


def test_write_atomic_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomic(tmp_path / "out.txt", 42)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_bar_chart_log_axis_keeps_small_bars_visible() -> None:
    svg = bar_chart_svg(["a", "b"], [12870.0, 0.6], title="t", threshold=9.8)
    assert "log scale" in svg
    widths = [float(part.split('"')[0]) for part in svg.split('width="')[2:4]]
    assert widths[1] > 5  # the small bar is still visible next to a 12,870 one


def test_line_chart_handles_constant_series() -> None:
    svg = line_chart_svg([0, 1, 2], {"z": [1.0, 1.0, 1.0]}, title="flat")
    assert svg.startswith("<svg") and "nan" not in svg


def test_pvalues_in_log_space() -> None:
    r = TestResult("t", 40.0, -350.0, "H0")
    assert r.pvalue == 0.0 and r.pvalue_text() == "p < 1e-349" and r.significant(1e-300)
    assert format_pvalue(math.log10(0.031)) == "p = 0.031"
    # Hoeffding: P(sum r s >= t) <= exp(-t^2 / 2 sum r^2)
    assert log10_hoeffding_bound(10.0, 50.0) == pytest.approx(-1.0 / math.log(10))
    assert log10_hoeffding_bound(-1.0, 50.0) == 0.0
    # Fisher on two p = 0.05: chi2(4) sf of -2 ln(0.0025)
    assert 10 ** combine_fisher([math.log10(0.05)] * 2) == pytest.approx(0.01747, rel=1e-3)
    assert combine_bonferroni([-3.0, -1.0]) == pytest.approx(-3 + math.log10(2))


# ------------------------------------------------------------------ sections chosen by result type
from dataclasses import dataclass  # noqa: E402

from weightprint.report.sections import section, section_for  # noqa: E402
from weightprint.results import VerdictResult  # noqa: E402


def _lineage(verdict: str = "derived"):
    from weightprint.lineage.compare import LineageResult

    test = TestResult("layer-features", 9.0, -40.0, "B was trained independently of A", method="permutation")
    return LineageResult("a.gguf", "b.gguf", verdict, "shares A's basis", test, components=[test],
                         layers=[{"z": 1.0}, {"z": 5.0}, {"z": 3.0}])


def test_section_dispatches_on_the_result_type() -> None:
    r = section(_lineage(), heading="2. Is it ours?")
    assert r.heading == "2. Is it ours?" and r.evidence is True and r.verdict.startswith("derived")
    assert r.charts and r.charts[0].startswith("<svg") and r.table is not None
    assert section(_lineage("no evidence")).evidence is False


@dataclass
class _ScanResult(VerdictResult):
    verdict: str
    EVIDENCE_VERDICTS = frozenset({"suspicious"})


def test_a_new_result_type_gets_the_generic_verdict_section_then_its_own() -> None:
    generic = section(_ScanResult("suspicious"))
    assert generic.evidence is True and generic.verdict == "suspicious" and generic.heading == "_ScanResult"

    @dataclass
    class Special(_ScanResult):
        pass

    @section_for(Special)
    def special_section(result: Special, heading: str | None = None) -> Section:
        return Section(heading or "special", verdict=f"special {result.verdict}")

    assert section(Special("clean")).verdict == "special clean"
    assert section(_ScanResult("clean")).verdict == "clean"  # the base class keeps the generic one
    with pytest.raises(ValueError, match="already registered"):
        section_for(Special)(special_section)


def test_unknown_result_type_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="no report section for int; register one with @section_for"):
        section(3)


def test_report_of_sections_is_self_contained(tmp_path: Path) -> None:
    r = Report("t")
    r.add(section(_lineage()))
    r.write(tmp_path / "r.html", tmp_path / "r.json")
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and "<style>" in html
    assert "src=" not in html and "<link" not in html and "<script" not in html  # nothing fetched
    assert json.loads((tmp_path / "r.json").read_text())["sections"][0]["data"]["verdict"] == "derived"
