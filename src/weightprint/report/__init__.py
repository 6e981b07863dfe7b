"""Reports: every result renders as JSON for machines and HTML (with inline SVG plots) for people."""

from weightprint.report.html import Report, Section, bar_chart_svg, line_chart_svg, write_atomic

__all__ = ["Report", "Section", "bar_chart_svg", "line_chart_svg", "write_atomic"]
