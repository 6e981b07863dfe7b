"""The lineage graph of a scan as one self-contained HTML page (inline SVG, no scripts)."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["scan_html"]

_W, _H, _GAP_X, _GAP_Y = 170, 46, 24, 70


def _layout(nodes: list[dict[str, Any]]) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Families side by side, each a tree laid out by depth; unrelated models on a last row."""
    kids: dict[str, list[str]] = {}
    for n in nodes:
        if n["parent"]:
            kids.setdefault(n["parent"], []).append(n["id"])
    roots = [n["id"] for n in nodes if n["family"] == n["id"]]
    pos: dict[str, tuple[float, float]] = {}
    x = 0.0
    max_depth = 0

    def place(u: str, depth: int) -> float:
        nonlocal x, max_depth
        max_depth = max(max_depth, depth)
        cs = kids.get(u, [])
        if not cs:
            cx = x
            x += _W + _GAP_X
        else:
            xs = [place(c, depth + 1) for c in cs]
            cx = (xs[0] + xs[-1]) / 2
        pos[u] = (cx, depth * (_H + _GAP_Y))
        return cx

    for r in roots:
        place(r, 0)
        x += _GAP_X
    loners = [n["id"] for n in nodes if n["id"] not in pos]
    y = (max_depth + 1) * (_H + _GAP_Y) + (_GAP_Y if pos else 0)
    for i, u in enumerate(loners):
        per_row = max(1, int(max(x, 6 * (_W + _GAP_X)) // (_W + _GAP_X)))
        pos[u] = ((i % per_row) * (_W + _GAP_X), y + (i // per_row) * (_H + _GAP_Y / 2))
    width = max([p[0] for p in pos.values()], default=0) + _W + 20
    height = max([p[1] for p in pos.values()], default=0) + _H + 20
    return pos, width, height


def _short(s: str, n: int = 26) -> str:
    return s if len(s) <= n else "…" + s[-(n - 1):]


def scan_html(result: Any) -> str:
    """The HTML page of a :class:`~weightprint.scan.ScanResult` (graph, edges table, errors)."""
    d = result.to_dict()
    nodes = d["nodes"]
    pos, width, height = _layout(nodes)
    by_id = {n["id"]: n for n in nodes}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="-10 -10 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>']
    for e in d["edges"]:
        (x1, y1), (x2, y2) = pos[e["parent"]], pos[e["child"]]
        title = html.escape(f"{e['parent_name']} -> {e['child_name']}: {e['kind']}; {e['pvalue_text']}, {e['qvalue_text']}")
        svg.append(f'<g><title>{title}</title><line x1="{x1 + _W / 2:.0f}" y1="{y1 + _H:.0f}" x2="{x2 + _W / 2:.0f}" '
                   f'y2="{y2:.0f}" stroke="#555" stroke-width="1.5" marker-end="url(#arrow)"/>'
                   f'<text x="{(x1 + x2) / 2 + _W / 2 + 4:.0f}" y="{(y1 + _H + y2) / 2:.0f}" fill="#a33" font-size="9">'
                   f'{html.escape(_short(e["kind"], 34))}</text></g>')
    for n in nodes:
        x, y = pos[n["id"]]
        fill = "#e8f0fe" if n["family"] == n["id"] else ("#fff" if n["family"] else "#f3f3f3")
        name = n["names"][0] if n["names"] else n["id"]
        title = html.escape("\n".join(n["names"]) + f"\n{n['n_parameters']:,} parameters, {n['n_layers']} layers, "
                            f"hidden {n['hidden_size']}, vocab {n['vocab_size']}")
        svg.append(f'<g><title>{title}</title><rect x="{x:.0f}" y="{y:.0f}" width="{_W}" height="{_H}" rx="6" '
                   f'fill="{fill}" stroke="#345"/><text x="{x + 6:.0f}" y="{y + 18:.0f}">{html.escape(_short(name))}</text>'
                   f'<text x="{x + 6:.0f}" y="{y + 34:.0f}" fill="#666" font-size="9">{n["id"]} · {n["n_layers"]}L · '
                   f'd={n["hidden_size"]}</text></g>')
    svg.append("</svg>")
    rows = "".join(
        f"<tr><td>{html.escape(e['parent_name'])}</td><td>{html.escape(e['child_name'])}</td><td>{html.escape(e['kind'])}</td>"
        f"<td>{html.escape(e['pvalue_text'])}</td><td>{html.escape(e['qvalue_text'])}</td></tr>" for e in d["edges"])
    data = json.dumps({"nodes": nodes, "edges": d["edges"]}).replace("</", "<\\/")
    errs = "".join(f"<li>{html.escape(f['error'] or '')}</li>" for f in d["files"] if f["status"] == "error")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>weightprint scan</title><style>"
        "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 6px;font-size:12px}.graph{overflow:auto;border:1px solid #ddd}</style></head><body>"
        f"<h1>Lineage graph</h1><p>{html.escape(d['summary'])}</p><p>Database: {html.escape(d['db'])}; "
        f"executor: {html.escape(d['executor'])}; {d['seconds']:.1f} s.</p>"
        f"<div class='graph'>{''.join(svg)}</div>"
        "<h2>Parent links</h2><table><tr><th>parent</th><th>child</th><th>recovered transform</th><th>p</th>"
        f"<th>q (BY)</th></tr>{rows}</table>"
        + (f"<h2>Skipped</h2><ul>{errs}</ul>" if errs else "")
        + "<script type='application/json' id='scan-data'>" + data + "</script>"
        "</body></html>"
    )
