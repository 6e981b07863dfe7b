"""The lineage graph of a scan: candidate pairs, pair tests, FDR control, one parent per model.

1. **Candidates** (:meth:`ScanDB.candidate_pairs`): pairs with the same hidden size that share
   a band of their vocabulary MinHash -- a database join, so a hub of N models tests about
   the sum over blocks of ``size**2``, not ``N**2``.
2. **Tests**: :func:`weightprint.lineage.compare_fingerprints` on each candidate pair (H0:
   "the two models were trained independently"), the combined test only, in chunks of
   :data:`PAIR_CHUNK` pairs run on the scan's executor (Ray tasks or the local pool).
3. **Correction**: Benjamini-Yekutieli over the pairs tested, valid under the arbitrary
   dependence of tests that share models; an edge is significant when its adjusted p-value
   (q-value) is at most ``fdr``: among the edges reported, the expected fraction of false ones
   is at most ``fdr``.
4. **Parents**: significant edges form families (connected components). In each family the
   root is the model closest to all others (the medoid of a distance that counts structural
   steps -- permuted hidden units, dropped layers, changed vocabulary -- plus the drift of the
   sampled embedding rows), never one that lost layers or gained tokens against a relative;
   among re-encodings of the same weights (drift below :data:`TIE_DRIFT`) the most likely
   source by :func:`~weightprint.scan.signature.source_rank`. Then each model is linked to
   its nearest relative already in the tree (Prim), preferring the earlier generation on ties.

Direction is a point estimate: for pure re-encodings (requantize/dequantize) the weights alone
cannot always say which came first (docs/scale.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.lineage.compare import compare_fingerprints
from weightprint.lineage.fingerprint import Fingerprint
from weightprint.progress import ProgressCallback, no_progress
from weightprint.scan.db import ScanDB
from weightprint.scan.signature import compare_signatures, source_rank

__all__ = ["DEFAULT_FDR", "TIE_DRIFT", "Edge", "benjamini_yekutieli", "build_graph", "run_pair_tests"]

DEFAULT_FDR = 0.01
TIE_DRIFT = 0.02
"""Embedding drift below which two related models count as re-encodings of the same weights."""
UNKNOWN_DRIFT = 1.0
PAIR_CHUNK = 32


@dataclass
class Edge:
    """A tested pair. ``parent``/``child`` are set on the edges of the parent tree."""

    a: str
    b: str
    log10_pvalue: float
    statistic: float
    log10_qvalue: float = 0.0
    significant: bool = False
    diff: dict[str, Any] = field(default_factory=dict)
    distance: float = math.inf
    parent: str | None = None
    child: str | None = None
    kind: str = ""


def benjamini_yekutieli(log10_p: list[float]) -> list[float]:
    """log10 of the Benjamini-Yekutieli adjusted p-values (valid under any dependence)."""
    m = len(log10_p)
    if m == 0:
        return []
    c = float(np.sum(1.0 / np.arange(1, m + 1)))
    lp = np.asarray(log10_p, dtype=np.float64)
    order = np.argsort(lp)
    ranks = np.arange(1, m + 1)
    adj = lp[order] + math.log10(m * c) - np.log10(ranks)
    adj = np.minimum.accumulate(adj[::-1])[::-1]  # monotone step-up
    out = np.empty(m)
    out[order] = np.minimum(adj, 0.0)
    return out.tolist()


def _distance(diff: dict[str, Any]) -> float:
    drift = diff.get("drift")
    return ((UNKNOWN_DRIFT if drift is None else float(drift)) + float(bool(diff.get("permuted")))
            + float(diff.get("layers_dropped") or 0) + float(bool(diff.get("vocab_changed"))))


_FLOAT = {24: "float32", 11: "float16", 8: "bfloat16"}


def _reencoding(sp: dict[str, Any], sc: dict[str, Any]) -> str:
    """What a re-encoding of the same weights did, from the two signatures."""
    gp, gc = sp.get("grid_bits"), sc.get("grid_bits")
    bp, bc = sp.get("stored_bits") or 0.0, sc.get("stored_bits") or 0.0
    if gp is None and gc is not None:
        return f"quantized ({gc}-bit grid)"
    if gp is not None and gc is not None and gc != gp:
        return f"requantized ({gp}-bit -> {gc}-bit grid)"
    if gp is not None and gc == gp:
        if bc > bp * 1.2:
            return f"dequantized (values stay on the {gp}-bit grid)"
        return "re-encoded (same grid)"
    if gp is None and gc is None:
        mp, mc = sp.get("mantissa_bits") or 24, sc.get("mantissa_bits") or 24
        if mc < mp:
            return f"cast to {_FLOAT.get(mc, f'{mc}-bit mantissa')}"
        return "re-encoded"
    return "re-encoded (off the grid)"


def _kind(diff: dict[str, Any], sp: dict[str, Any], sc: dict[str, Any]) -> str:
    drift = diff.get("drift")
    if drift is not None and drift < TIE_DRIFT:
        parts = [_reencoding(sp, sc)]
    else:
        parts = [f"weights changed (fine-tuned, drift {drift:.3f})" if drift is not None else "weights related"]
    if diff.get("permuted"):
        parts.append("hidden units permuted")
    if diff.get("layers_dropped"):
        parts.append(f"pruned ({diff['layers_dropped']} layer(s) dropped)")
    if diff.get("vocab_changed"):
        parts.append(f"vocabulary changed ({diff.get('vocab_a')} -> {diff.get('vocab_b')})")
    return " + ".join(parts)


def run_pair_tests(db_url: str, pairs: list[tuple[str, str]], n_resamples: int, seed: int) -> list[dict[str, Any] | None]:
    """The pair tests of one chunk (a Ray task or pool job): fingerprints read from the database.

    One dict per pair (``log10_pvalue``, ``statistic``, the unmatched layers), None when the
    two models cannot be compared (no weight component in common).
    """
    db = ScanDB(db_url)
    rows = db.fingerprint_rows(sorted({s for pair in pairs for s in pair}))
    fps = {sha: Fingerprint.from_bytes(r.blob, source=f"{db.redacted}:{r.label}") for sha, r in rows.items()}
    out: list[dict[str, Any] | None] = []
    for a, b in pairs:
        r = compare_fingerprints(fps[a], fps[b], n_resamples=n_resamples, rng=seed, components=False)
        out.append(None if r.combined is None else {
            "log10_pvalue": r.log10_pvalue, "statistic": float(r.combined.statistic),
            "unmatched_a": r.alignment.get("unmatched_a"), "unmatched_b": r.alignment.get("unmatched_b")})
    return out


def _chunks(pairs: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def build_graph(
    db: ScanDB,
    shas: list[str],
    *,
    fdr: float = DEFAULT_FDR,
    n_resamples: int = 199,
    seed: int = 0,
    executor: Any = None,
    chunk_size: int = PAIR_CHUNK,
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, dict[str, Any]], list[Edge], int]:
    """Nodes (by content hash), tested edges, and the number of candidate pairs.

    The pair tests run in chunks of ``chunk_size`` on ``executor`` (a
    :class:`~weightprint.scan.execute.LocalExecutor` or ``RayExecutor``), or here when None.
    Each node gets ``parent`` (content hash or None), ``family`` (the root's hash) and
    ``depth``; edges of the parent tree get ``parent``/``child``/``kind``.
    """
    progress = progress or no_progress
    rows = db.fingerprint_rows(shas)
    fps: dict[str, Fingerprint] = {}
    sigs: dict[str, dict[str, Any]] = {}
    for sha, r in rows.items():
        fps[sha] = Fingerprint.from_bytes(r.blob, source=f"{db.redacted}:{r.label}")
        sigs[sha] = json.loads(r.signature)
    nodes = {sha: {"parent": None, "family": None, "depth": 0} for sha in rows}
    pairs = db.candidate_pairs(set(rows))
    chunks = _chunks(pairs, chunk_size)
    jobs = [(db.url, c, n_resamples, seed) for c in chunks]
    if executor is None:
        tested = []
        for k, job in enumerate(jobs):
            progress(k, len(jobs), f"pair tests {k * chunk_size}/{len(pairs)}")
            tested.append(run_pair_tests(*job))
    else:
        def lost(i: int, why: str) -> list[None]:
            raise WeightprintError(f"pair tests {i * chunk_size}..{i * chunk_size + len(chunks[i])} failed: {why}")

        tested = executor.map(run_pair_tests, jobs, on_fail=lost, progress=progress,
                              describe=lambda i: f"pair tests {min(len(pairs), (i + 1) * chunk_size)}/{len(pairs)}")
    progress(len(jobs), len(jobs), "pair tests")
    edges: list[Edge] = []
    for (a, b), t in zip(pairs, (t for chunk in tested for t in chunk)):
        if t is None:
            continue
        e = Edge(a, b, t["log10_pvalue"], t["statistic"])
        e.diff = {"alignment": {"unmatched_a": t["unmatched_a"], "unmatched_b": t["unmatched_b"]}}
        edges.append(e)
    for e, q in zip(edges, benjamini_yekutieli([e.log10_pvalue for e in edges])):
        e.log10_qvalue = q
        e.significant = q <= math.log10(fdr)
        if e.significant:
            e.diff = compare_signatures(fps[e.a], fps[e.b], sigs[e.a], sigs[e.b], e.diff["alignment"])
            e.distance = _distance(e.diff)
    _assign_parents(nodes, [e for e in edges if e.significant], fps, sigs)
    return nodes, edges, len(pairs)


def _assign_parents(nodes: dict[str, dict[str, Any]], sig_edges: list[Edge], fps: dict[str, Fingerprint],
                    sigs: dict[str, dict[str, Any]]) -> None:
    adj: dict[str, dict[str, Edge]] = {n: {} for n in nodes}
    for e in sig_edges:
        adj[e.a][e.b] = e
        adj[e.b][e.a] = e
    seen: set[str] = set()
    for start in sorted(nodes):
        if start in seen or not adj[start]:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            u = stack.pop()
            comp.append(u)
            for v in adj[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        root = _root(sorted(comp), adj, fps, sigs)
        _prim(root, comp, adj, nodes, sigs)


def _root(comp: list[str], adj: dict[str, dict[str, Edge]], fps: dict[str, Fingerprint],
          sigs: dict[str, dict[str, Any]]) -> str:
    far = 1.0 + max((e.distance for u in comp for e in adj[u].values()), default=0.0)

    def structural_child(u: str) -> bool:
        return any(fps[v].n_layers > fps[u].n_layers or (fps[u].vocab_size > fps[v].vocab_size) for v in adj[u])

    eligible = [u for u in comp if not structural_child(u)] or comp
    total = {u: sum(adj[u][v].distance if v in adj[u] else far for v in comp if v != u) for u in eligible}
    best = min(total.values())
    tied = [u for u in eligible if total[u] <= best + TIE_DRIFT * max(1, len(comp) - 1)]
    return min(tied, key=lambda u: (source_rank(sigs[u]), total[u], u))


def _prim(root: str, comp: list[str], adj: dict[str, dict[str, Edge]], nodes: dict[str, dict[str, Any]],
          sigs: dict[str, dict[str, Any]]) -> None:
    depth = {root: 0}
    nodes[root].update(parent=None, family=root, depth=0)
    rest = set(comp) - {root}
    while rest:
        cands = [(adj[u][v].distance, u, v) for u in depth for v in adj[u] if v in rest]
        best = min(d for d, _, _ in cands)
        d, u, v = min((c for c in cands if c[0] <= best + TIE_DRIFT),
                      key=lambda c: (depth[c[1]], source_rank(sigs[c[2]]), c[0], source_rank(sigs[c[1]]), c[1], c[2]))
        e = adj[u][v]
        e.parent, e.child = u, v
        diff = e.diff if e.a == u else _swap(e.diff)
        e.kind = _kind(diff, sigs[u], sigs[v])
        depth[v] = depth[u] + 1
        nodes[v].update(parent=u, family=root, depth=depth[v])
        rest.discard(v)


def _swap(diff: dict[str, Any]) -> dict[str, Any]:
    out = dict(diff)
    out["layers_a"], out["layers_b"] = diff.get("layers_b"), diff.get("layers_a")
    out["vocab_a"], out["vocab_b"] = diff.get("vocab_b"), diff.get("vocab_a")
    return out
