"""``scan_models``: fingerprint every model under some targets and draw their lineage graph."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightprint.progress import ProgressCallback, no_progress, substep
from weightprint.results import TestResult, VerdictResult, format_pvalue, to_jsonable
from weightprint.scan.db import ScanDB
from weightprint.scan.discover import discover_models
from weightprint.scan.execute import LocalExecutor, RayExecutor, scan_items
from weightprint.scan.graph import DEFAULT_FDR, Edge, build_graph

__all__ = ["DEFAULT_DB", "ScanResult", "scan_models"]

DEFAULT_DB = "weightprint-scan.db"
NULL_PAIR = "the two models were trained independently (no shared weights up to a change of residual basis)"


@dataclass
class ScanResult(VerdictResult):
    """What :func:`scan_models` found.

    Attributes
    ----------
    verdict : {'lineage found', 'no evidence'}
        ``lineage found`` when any pair of models is significantly related at the FDR level.
    targets : list[str]
    db_url : str
        The database (password hidden).
    fdr : float
        Benjamini-Yekutieli false-discovery-rate level of the reported edges.
    files : list[dict]
        One per discovered path: ``path``, ``ref``, ``status`` (``computed``, ``deduplicated``,
        ``cached``, ``error``), ``content_sha256``, ``seconds``, ``error``.
    nodes : list[dict]
        One per distinct content: ``id`` (hash prefix), ``sha256``, ``names``, sizes, ``parent``,
        ``family``, ``depth``.
    edges : list[dict]
        Parent links: ``parent``, ``child``, ``log10_pvalue``, ``log10_qvalue``, ``kind``.
    related : list[dict]
        Every significant pair (``a``, ``b``, p and q values), the parent links among them.
    n_candidate_pairs, n_tested : int
        Pairs the database pre-filter proposed, pairs with a test (same hidden size).
    counts : dict
        Files by status; ``computed`` is the number of fingerprints made by this run.
    seconds : float
    """

    verdict: str
    targets: list[str]
    db_url: str
    fdr: float
    files: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    related: list[dict[str, Any]] = field(default_factory=list)
    n_candidate_pairs: int = 0
    n_tested: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    executor: str = "local"
    seconds: float = 0.0

    EVIDENCE_VERDICTS = frozenset({"lineage found"})

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == "error"]

    @property
    def evidence(self) -> list[TestResult]:
        return [
            TestResult(
                name=f"lineage-edge:{e['parent_name']}->{e['child_name']}",
                statistic=e["statistic"],
                log10_pvalue=e["log10_qvalue"],
                null_hypothesis=NULL_PAIR,
                alternative="greater",
                method=(f"white-box fingerprint test (weightprint.lineage.compare_fingerprints); Benjamini-Yekutieli "
                        f"adjusted over {self.n_tested} pairs tested"),
                evidence={"raw_log10_pvalue": e["log10_pvalue"], "kind": e["kind"], "fdr": self.fdr},
            )
            for e in self.edges
        ]

    def parent_of(self, name: str) -> str | None:
        """The first name of the parent of the model known by ``name`` (path or reference)."""
        by_id = {n["id"]: n for n in self.nodes}
        for n in self.nodes:
            if name in n["names"]:
                p = n["parent"]
                return by_id[p]["names"][0] if p else None
        raise KeyError(name)

    def summary(self) -> str:
        c = self.counts
        fams = len({n["family"] for n in self.nodes if n["family"]})
        head = (f"{len(self.files)} models ({c.get('computed', 0)} fingerprinted, {c.get('deduplicated', 0)} duplicates, "
                f"{c.get('cached', 0)} unchanged, {c.get('error', 0)} errors); {self.n_tested} of "
                f"{len(self.nodes) * (len(self.nodes) - 1) // 2} pairs tested after the database pre-filter")
        if self.verdict == "lineage found":
            return (f"lineage found: {len(self.edges)} parent links in {fams} families, FDR {self.fdr:g} "
                    f"(Benjamini-Yekutieli); {head}")
        return f"no evidence of lineage at FDR {self.fdr:g}: {head}"

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "verdict": self.verdict, "summary": self.summary(), "targets": self.targets, "db": self.db_url,
            "fdr": self.fdr, "correction": "benjamini-yekutieli", "executor": self.executor,
            "counts": self.counts, "n_candidate_pairs": self.n_candidate_pairs, "n_tested": self.n_tested,
            "nodes": self.nodes, "edges": self.edges, "related": self.related, "files": self.files,
            "seconds": self.seconds,
        })


def scan_models(
    targets: list[str | os.PathLike[str]],
    db_url: str | Path = DEFAULT_DB,
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    worker_memory_bytes: int | None = None,
    fdr: float = DEFAULT_FDR,
    n_resamples: int = 199,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Fingerprint every model under ``targets`` into ``db_url`` and build their lineage graph.

    Parameters
    ----------
    targets : list
        Directories, ``hf-cache``, ``ollama``, or ``hf:``/``ollama:`` references
        (:func:`~weightprint.scan.discover.discover_models`).
    db_url : str | Path, *optional*
        The fingerprint database (SQLite path or SQLAlchemy URL, e.g. PostgreSQL).
    ray_address : str, *optional*
        Run on Ray: ``"auto"``, an address, or ``"local"``; None runs a local process pool.
    workers : int, *optional*
        Pool size (local pool, or ``--ray local``); default: the CPU count.
    worker_memory_bytes : int, *optional*
        Ray memory reservation per task (bounds how many run at once on a node).
    fdr : float, *optional*, defaults to 0.01
        False-discovery rate of the reported lineage edges (Benjamini-Yekutieli).
    n_resamples, seed : *optional*
        Monte Carlo permutations and seed of each pair test.

    Returns
    -------
    ScanResult
    """
    if not 0 < fdr < 1:
        from weightprint.errors import WeightprintError

        raise WeightprintError(f"--fdr must be in (0, 1), got {fdr}")
    t0 = time.perf_counter()
    progress = progress or no_progress
    db = ScanDB(db_url)
    items = discover_models(targets)
    dicts = [it.to_dict() for it in items]
    if ray_address:
        executor: LocalExecutor | RayExecutor = RayExecutor(ray_address, workers=workers,
                                                            memory_bytes=worker_memory_bytes)
    else:
        executor = LocalExecutor(workers)
    with executor:
        files = scan_items(executor, dicts, db.url, progress=substep(progress, 0, 2, "fingerprint"))
        shas = sorted({f["content_sha256"] for f in files if f["status"] != "error" and f["content_sha256"]})
        nodes, edges, n_pairs = build_graph(db, shas, fdr=fdr, n_resamples=n_resamples, seed=seed, executor=executor,
                                            progress=substep(progress, 1, 2, "graph"))
    names: dict[str, list[str]] = {}
    for f in files:
        if f["content_sha256"]:
            names.setdefault(f["content_sha256"], []).append(f["ref"])
    rows = db.fingerprint_rows(shas, blobs=False)
    node_list = [
        {"id": sha[:12], "sha256": sha, "names": names.get(sha, []),
         "hidden_size": rows[sha].hidden_size, "n_layers": rows[sha].n_layers, "vocab_size": rows[sha].vocab_size,
         "n_parameters": rows[sha].n_parameters, "n_bytes": rows[sha].n_bytes,
         "parent": n["parent"][:12] if n["parent"] else None, "family": n["family"][:12] if n["family"] else None,
         "depth": n["depth"]}
        for sha, n in sorted(nodes.items(), key=lambda kv: names.get(kv[0], [kv[0]])[0])
    ]
    first = {sha: (names.get(sha) or [sha[:12]])[0] for sha in nodes}
    tree = [_edge_dict(e, first) for e in edges if e.parent]
    related = [{"a": first[e.a], "b": first[e.b], "log10_pvalue": e.log10_pvalue, "log10_qvalue": e.log10_qvalue,
                "pvalue_text": format_pvalue(e.log10_pvalue), "parent_link": e.parent is not None}
               for e in edges if e.significant]
    counts = dict(Counter(f["status"] for f in files))
    return ScanResult(
        verdict="lineage found" if related else "no evidence", targets=[str(t) for t in targets], db_url=db.redacted,
        fdr=fdr, files=files, nodes=node_list, edges=tree, related=related, n_candidate_pairs=n_pairs,
        n_tested=len(edges), counts=counts, executor=executor.name,
        seconds=time.perf_counter() - t0,
    )


def _qtext(log10_q: float) -> str:
    """``q = 2.1e-88``: a q-value written like :func:`format_pvalue` writes a p-value."""
    text = format_pvalue(log10_q)
    return "q" + text[1:] if text.startswith("p") else text


def _edge_dict(e: Edge, first: dict[str, str]) -> dict[str, Any]:
    return {"parent": e.parent[:12], "child": e.child[:12], "parent_name": first[e.parent], "child_name": first[e.child],
            "kind": e.kind, "log10_pvalue": e.log10_pvalue, "log10_qvalue": e.log10_qvalue,
            "pvalue_text": format_pvalue(e.log10_pvalue), "qvalue_text": _qtext(e.log10_qvalue),
            "statistic": e.statistic, "drift": e.diff.get("drift"), "distance": e.distance if math.isfinite(e.distance) else None}
