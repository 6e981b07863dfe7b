"""A small, dependency-free HTML report with inline SVG charts.

A :class:`Report` is a title plus :class:`Section` s; each section has a verdict line, a
statement of the test (H0, p-value), key/value rows, a table and charts. ``Report.write``
writes ``report.html`` and ``report.json`` atomically (temp file, then rename).
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from weightprint.results import to_jsonable
from weightprint.io.files import temp_file_beside

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
.sub{color:#666;margin-top:0} .verdict{font-size:1.05rem;padding:.6rem .8rem;border-radius:6px;background:#f3f4f6;margin:.6rem 0}
.verdict.evidence{background:#fff1f0;border-left:4px solid #d4380d} .verdict.clear{background:#f0f9eb;border-left:4px solid #389e0d}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem} td,th{border:1px solid #e5e7eb;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#f9fafb} td.num{text-align:right;font-variant-numeric:tabular-nums} .kv td:first-child{color:#555;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:1rem} code{background:#f3f4f6;padding:0 .25rem;border-radius:3px}
svg text{font-family:system-ui,sans-serif}
"""


@dataclass
class Section:
    """One part of a report.

    Attributes
    ----------
    heading : str
    verdict : str | None
        One sentence with the conclusion; ``evidence`` colours it.
    evidence : bool | None
        True: evidence found (red), False: none (green), None: neutral.
    test : str | None
        The test, its H0 and p-value, in words.
    facts : list[tuple[str, str]]
        Key/value rows.
    table : tuple[list[str], list[list[Any]]] | None
        Header and rows.
    charts : list[str]
        SVG strings (from :func:`bar_chart_svg` / :func:`line_chart_svg`).
    data : Any
        The machine-readable result behind the section (goes to the JSON report).
    """

    heading: str
    verdict: str | None = None
    evidence: bool | None = None
    test: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    table: tuple[list[str], list[list[Any]]] | None = None
    charts: list[str] = field(default_factory=list)
    data: Any = None

    def to_html(self) -> str:
        parts = [f"<h2>{html.escape(self.heading)}</h2>"]
        if self.verdict:
            cls = {True: " evidence", False: " clear", None: ""}[self.evidence]
            parts.append(f'<div class="verdict{cls}">{html.escape(self.verdict)}</div>')
        if self.test:
            parts.append(f"<p>{html.escape(self.test)}</p>")
        if self.facts:
            rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in self.facts)
            parts.append(f'<table class="kv">{rows}</table>')
        if self.table:
            header, rows = self.table
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if self.charts:
            parts.append('<div class="charts">' + "".join(self.charts) + "</div>")
        return "\n".join(parts)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        text = f"{v:.4g}"
        return f'<td class="num">{html.escape(text)}</td>'
    if isinstance(v, int):
        return f'<td class="num">{v:,}</td>'
    return f"<td>{html.escape(str(v))}</td>"


@dataclass
class Report:
    """A titled list of sections, written as HTML and JSON."""

    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def to_html(self) -> str:
        body = "\n".join(s.to_html() for s in self.sections)
        sub = f'<p class="sub">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>{sub}{body}</body></html>\n"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "subtitle": self.subtitle,
            "sections": [
                {
                    "heading": s.heading,
                    "verdict": s.verdict,
                    "evidence": s.evidence,
                    "test": s.test,
                    "facts": [[k, v] for k, v in s.facts],
                    "data": to_jsonable(s.data),
                }
                for s in self.sections
            ],
        }

    def write(self, html_path: str | Path, json_path: str | Path | None = None) -> None:
        """Write the HTML (and JSON) report atomically."""
        write_atomic(Path(html_path), self.to_html())
        if json_path is not None:
            write_atomic(Path(json_path), json.dumps(self.to_dict(), indent=2) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_PALETTE = ["#2f6fdf", "#d4380d", "#389e0d", "#9254de", "#d48806", "#08979c"]


def bar_chart_svg(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    xlabel: str = "",
    threshold: float | None = None,
    threshold_label: str = "",
    highlight: Sequence[bool] | None = None,
    width: int = 560,
) -> str:
    """Horizontal bar chart as an SVG string (one bar per label)."""
    n = max(len(values), 1)
    bar_h, left, top = 18, 150, 28
    height = top + n * (bar_h + 4) + 34
    finite = [v for v in values if math.isfinite(v)]
    vmax = max(finite + ([threshold] if threshold is not None else []) + [1e-12])
    # Evidence spans orders of magnitude (-log10 p of 0.3 next to 12,000): past a 50x range,
    # bar lengths follow log10(1 + v) so the small bars and the threshold stay visible.
    logscale = threshold is not None and threshold > 0 and vmax / threshold > 50
    if logscale:
        xlabel = (xlabel + " (log scale)").strip()

    def length(v: float) -> float:
        return math.log10(1 + max(v, 0.0)) if logscale else max(v, 0.0)

    scale = (width - left - 20) / length(vmax)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">{html.escape(title)}</text>',
    ]
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = top + i * (bar_h + 4)
        w = length(v if math.isfinite(v) else vmax) * scale
        color = _PALETTE[1] if highlight and highlight[i] else _PALETTE[0]
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" font-size="11">{html.escape(str(lab))[:24]}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        if w > width - left - 80:  # no room after the bar: label inside it
            out.append(f'<text x="{left + w - 4:.1f}" y="{y + 13}" text-anchor="end" font-size="10" fill="#fff">{v:.4g}</text>')
        else:
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}" font-size="10">{v:.3g}</text>')
    if threshold is not None:
        x = left + length(threshold) * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 30}" stroke="#555" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x:.1f}" y="{height - 18}" text-anchor="middle" font-size="10">{html.escape(threshold_label)}</text>')
    if xlabel:
        out.append(f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{html.escape(xlabel)}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart_svg(
    xs: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "",
    ylabel: str = "",
    width: int = 560,
    height: int = 260,
) -> str:
    """Line chart (one or more series over the same x) as an SVG string."""
    left, right, top, bottom = 50, 120, 26, 36
    pts = [v for ys in series.values() for v in ys if math.isfinite(v)]
    ymin, ymax = (min(pts), max(pts)) if pts else (0.0, 1.0)
    if ymax - ymin < 1e-12:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    xmin, xmax = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if xmax - xmin < 1e-12:
        xmax = xmin + 1

    def px(x: float) -> float:
        return left + (x - xmin) / (xmax - xmin) * (width - left - right)

    def py(y: float) -> float:
        return top + (1 - (y - ymin) / (ymax - ymin)) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{(width - right + left) / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" font-size="10">{ymax:.3g}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" font-size="10">{ymin:.3g}</text>',
        f'<text x="{left}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{xmin:g}</text>',
        f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{xmax:g}</text>',
    ]
    for k, (name, ys) in enumerate(series.items()):
        color = _PALETTE[k % len(_PALETTE)]
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(zip(xs, ys)) if math.isfinite(y)
        )
        out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        out.append(f'<text x="{width - right + 6}" y="{top + 14 * k + 8}" font-size="11" fill="{color}">{html.escape(name)[:18]}</text>')
    if xlabel:
        out.append(f'<text x="{(width - right + left) / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{html.escape(xlabel)}</text>')
    if ylabel:
        out.append(f'<text x="12" y="{(height) / 2}" font-size="11" transform="rotate(-90 12 {height / 2})" text-anchor="middle">{html.escape(ylabel)}</text>')
    out.append("</svg>")
    return "".join(out)
