"""A database of reference fingerprints: store once, rank every reference against a suspect.

``fingerprint_model(model, db_url)`` stores a compact :class:`Fingerprint` (at most 1 MB per
1e9 parameters) of a reference model. ``search_fingerprints(suspect, db_url)`` computes the
suspect's fingerprint once, on the union of the token samples the references hold, and runs
:func:`compare_fingerprints` against every stored reference -- no reference weights needed.

The database is any SQLAlchemy URL (``sqlite:///refs.db``, ``postgresql+psycopg://...``); a
plain path is taken as a SQLite file (see :mod:`weightprint.store`, which holds the engines,
timeouts, messages and schema versions of every database weightprint keeps).

A search tests one null hypothesis per reference; its verdict rests on the smallest p-value
after a Bonferroni correction over the references compared (:class:`SearchResult`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.io.model import Model
from weightprint.lineage.compare import (
    DEFAULT_ALPHA,
    SKIP_RECOVERY_LOG10,
    LineageResult,
    _basis_from_signs,
    compare_fingerprints,
)
from weightprint.lineage.fingerprint import (
    FORMAT_VERSION,
    Fingerprint,
    basis_sketch_bytes,
    basis_sketch_tokens,
    build_fingerprint,
    fingerprint_budget_bytes,
)
from weightprint.lineage.features import hidden_size_of
from weightprint.lineage.recover import map_from_sketch
from weightprint.results import TestResult, VerdictResult, format_pvalue, to_jsonable
from weightprint.io.open import open_or_borrow
from weightprint.progress import ProgressCallback, no_progress

__all__ = [
    "FingerprintResult",
    "SearchResult",
    "fingerprint_model",
    "list_fingerprints",
    "search_fingerprints",
    "store_fingerprint",
]

TABLE = "weightprint_fingerprints"


@dataclass(frozen=True)
class FingerprintResult:
    """What :func:`fingerprint_model` stored.

    Attributes
    ----------
    label : str
        Name of the reference in the database.
    db_url : str
        The database (password hidden).
    n_bytes : int
        Size of the stored fingerprint.
    budget_bytes : int
        The size budget (1 MB per 1e9 parameters).
    n_parameters, hidden_size, n_layers, n_tokens : int
        What the fingerprint covers.
    source_sha256 : str | None
        SHA-256 of the model file (None for directories and in-memory models).
    already_stored : bool
        True when the same file was stored before (nothing was written).
    seconds : float
    """

    label: str
    db_url: str
    n_bytes: int
    budget_bytes: int
    n_parameters: int
    hidden_size: int
    n_layers: int
    n_tokens: int
    source_sha256: str | None
    already_stored: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self.__dict__)


@dataclass
class SearchResult(VerdictResult):
    """Verdict of :func:`search_fingerprints`: is the suspect derived from any stored reference?

    One null hypothesis per reference ("the suspect was trained independently of it", as in
    :func:`weightprint.lineage.compare_models`). A search over many references would find a small
    p-value by chance, so each reference's p-value is corrected for the number of references
    compared: ``p_adjusted = min(1, n_tested * p)`` (Bonferroni, valid whatever the dependence
    between the tests; for the "any reference" verdict Holm's step-down rejects exactly the
    same). The family-wise error rate -- the chance of naming any reference under H0 -- is then
    at most ``alpha``.

    Attributes
    ----------
    suspect : str
        The suspect model.
    db_url : str
        The database (password hidden).
    verdict : {'derived', 'no evidence', 'not comparable'}
        ``derived`` when some reference's corrected p-value is below ``alpha``; ``no evidence``
        otherwise (not a proof of independence); ``not comparable`` when no stored reference
        could be compared with the suspect.
    alpha : float
        Family-wise significance level of the verdict.
    ranking : list[LineageResult]
        One per reference, smallest p-value first, ``not comparable`` ones last. Each one's
        ``verdict`` and ``alpha`` are at the per-test level ``alpha / n_tested``, so a reference
        is ``derived`` exactly when its corrected p-value is below ``alpha``.
    adjusted_log10_pvalues : list[float]
        log10 of the corrected p-value of each entry of ``ranking`` (0.0 when not comparable).
    n_references : int
        References stored in the database.
    n_tested : int
        References compared (those with a combined test): the size of the correction.
    seconds : float
        Wall time of the search.
    """

    suspect: str
    db_url: str
    verdict: str
    alpha: float
    ranking: list[LineageResult] = field(default_factory=list)
    adjusted_log10_pvalues: list[float] = field(default_factory=list)
    n_references: int = 0
    n_tested: int = 0
    seconds: float = 0.0

    EVIDENCE_VERDICTS = frozenset({"derived"})
    CORRECTION = "bonferroni"

    @property
    def best(self) -> LineageResult | None:
        """The reference with the smallest p-value (None when none was comparable)."""
        return self.ranking[0] if self.ranking and self.ranking[0].combined is not None else None

    @property
    def log10_pvalue(self) -> float:
        """log10 of the smallest corrected p-value (0.0 when none was comparable)."""
        return self.adjusted_log10_pvalues[0] if self.best is not None else 0.0

    @property
    def evidence(self) -> list[TestResult]:
        """One test per compared reference, with its corrected p-value, in ranking order."""
        out = []
        for r, adj in zip(self.ranking, self.adjusted_log10_pvalues):
            c = r.combined
            if c is None:
                continue
            out.append(TestResult(
                name=f"search:{r.a}",
                statistic=c.statistic,
                log10_pvalue=adj,
                null_hypothesis=f"the suspect was trained independently of reference `{r.a}` ({c.null_hypothesis})",
                alternative=c.alternative,
                method=f"{c.method}; Bonferroni-corrected over {self._n_refs_text()}",
                n=c.n,
                n_resamples=c.n_resamples,
                seed=c.seed,
                evidence={"reference": r.a, "raw_log10_pvalue": c.log10_pvalue, "n_tested": self.n_tested,
                          "correction": self.CORRECTION},
            ))
        return out

    def _n_refs_text(self) -> str:
        return f"{self.n_tested} reference{'' if self.n_tested == 1 else 's'}"

    def summary(self) -> str:
        best = self.best
        if best is None:
            return (f"not comparable: none of the {self.n_references} stored references can be compared "
                    f"with the suspect")
        raw = format_pvalue(best.log10_pvalue)
        adj = format_pvalue(self.log10_pvalue)
        if self.verdict == "derived":
            n_derived = sum(r.verdict == "derived" for r in self.ranking)
            more = f"; {n_derived - 1} more reference(s) also significant" if n_derived > 1 else ""
            return (f"derived from `{best.a}` ({adj} after Bonferroni correction over {self._n_refs_text()}, "
                    f"raw {raw}){more}")
        return (f"no evidence at alpha={self.alpha:g}: closest reference `{best.a}`, {adj} after Bonferroni "
                f"correction over {self._n_refs_text()} (raw {raw})")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({
            "suspect": self.suspect,
            "db": self.db_url,
            "verdict": self.verdict,
            "summary": self.summary(),
            "alpha": self.alpha,
            "correction": self.CORRECTION,
            "n_references": self.n_references,
            "n_tested": self.n_tested,
            "log10_pvalue": self.log10_pvalue,
            "pvalue_text": format_pvalue(self.log10_pvalue),
            "ranking": [
                {**r.to_dict(), "adjusted_log10_pvalue": adj, "adjusted_pvalue_text": format_pvalue(adj)}
                for r, adj in zip(self.ranking, self.adjusted_log10_pvalues)
            ],
            "seconds": self.seconds,
        })


WHAT = "fingerprint database"
SCHEMA_COMPONENT = "fingerprints"
_EMPTY_HINT = "store references with `weightprint fingerprint MODEL --db URL`"


@functools.cache
def _table():
    """The fingerprints table and its migrations (SQLAlchemy is imported on first use only)."""
    from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table

    md = MetaData()
    table = Table(
        TABLE,
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("label", String(512), nullable=False, unique=True),
        Column("source_sha256", String(64), nullable=True),
        Column("n_parameters", Integer, nullable=False),
        Column("hidden_size", Integer, nullable=False),
        Column("format_version", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("blob", LargeBinary, nullable=False),
    )
    migrations = [
        # 1: the table as first released (databases made before versioning adopt this version)
        (1, lambda conn: md.create_all(conn, checkfirst=True)),
    ]
    return table, migrations


def _open(db_url: str | Path, *, create: bool):
    """``(url, engine, table)`` of the fingerprint database; ``create`` makes or upgrades the table."""
    from weightprint import store

    url = store.normalize_url(db_url)
    engine = store.get_engine(url, what=WHAT)
    table, migrations = _table()
    if create:
        store.migrate(engine, SCHEMA_COMPONENT, migrations, url=url, what=WHAT)
    else:
        store.check_schema(engine, SCHEMA_COMPONENT, max(v for v, _ in migrations), url=url, what=WHAT)
    return url, engine, table


def _redact(url: str) -> str:
    from weightprint.store import redact

    return redact(url)


def _db_errors(url: str):
    from weightprint.store import db_errors

    return db_errors(url, what=WHAT)


def fingerprint_model(
    model: str | Path | Model,
    db_url: str | Path,
    *,
    label: str | None = None,
    max_bytes: int | None = None,
    basis_sketch: bool = False,
    progress: ProgressCallback | None = None,
) -> FingerprintResult:
    """Store the compact fingerprint of a reference model in a database.

    Parameters
    ----------
    model : str | Path | Model
        The reference, any format :func:`weightprint.io.open_model` reads.
    db_url : str | Path
        SQLAlchemy URL or SQLite file path; the table is created when missing.
    label : str, *optional*
        Name of the reference; defaults to the file name.
    max_bytes : int, *optional*
        Size cap; defaults to 1 MB per 1e9 parameters.
    basis_sketch : bool, *optional*, defaults to False
        Also store the 2-bit embedding rows of ``1.5 d`` tokens (``0.375 d^2`` bytes on top of
        the budget), so that :func:`search_fingerprints` can recover a change of the suspect's
        residual basis (a rotation with folded norms, a permutation) against this reference.
    progress : ProgressCallback, *optional*
        Called at each step (hash, fingerprint, store).

    Returns
    -------
    FingerprintResult

    Raises
    ------
    WeightprintError
        Unreadable model, bad URL, or ``label`` already used by a different model.
    """
    from sqlalchemy import select

    t0 = time.perf_counter()
    progress = progress or no_progress
    url, engine, table = _open(db_url, create=True)
    m, owned = open_or_borrow(model)
    try:
        sha = None
        p = Path(str(m.path))
        if p.is_file():
            progress(0, 3, f"sha256 {p.name}")
            from weightprint.io import file_sha256

            sha = file_sha256(p)
        name = label or p.name
        with _db_errors(url), engine.connect() as conn:
            row = conn.execute(select(table.c.label, table.c.source_sha256, table.c.blob).where(table.c.label == name)).first()
        if row is not None:
            if sha is not None and row.source_sha256 == sha:
                fp = Fingerprint.from_bytes(row.blob, source=f"{_redact(url)}:{name}")
                if basis_sketch and fp.basis_rows is None:
                    raise WeightprintError(
                        f"fingerprint database {_redact(url)} holds `{name}` without a basis sketch",
                        hint="store it again under another --label with --basis-sketch",
                    )
                return FingerprintResult(name, _redact(url), len(row.blob), fingerprint_budget_bytes(fp.n_parameters),
                                         fp.n_parameters, fp.hidden_size, fp.n_layers, len(fp.tokens), sha, True,
                                         time.perf_counter() - t0)
            raise WeightprintError(
                f"fingerprint database {_redact(url)} already holds a reference labelled `{name}`",
                hint="choose another label",
            )
        progress(1, 3, f"fingerprint {name}")
        n_sample = max(2048, basis_sketch_tokens(hidden_size_of(m) or 0)) if basis_sketch else 2048
        full = build_fingerprint(m, label=name, max_tokens=n_sample)
    finally:
        if owned:
            m.close()
    budget = fingerprint_budget_bytes(full.n_parameters) if max_bytes is None else int(max_bytes)
    progress(2, 3, "store")
    n_bytes, n_tokens = store_fingerprint(full, url, source_sha256=sha, max_bytes=budget, basis_sketch=basis_sketch)
    if basis_sketch:
        budget += basis_sketch_bytes(full.hidden_size)
    return FingerprintResult(name, _redact(url), n_bytes, budget, full.n_parameters, full.hidden_size,
                             full.n_layers, n_tokens, sha, False, time.perf_counter() - t0)


def store_fingerprint(
    fingerprint: Fingerprint,
    db_url: str | Path,
    *,
    source_sha256: str | None = None,
    max_bytes: int | None = None,
    basis_sketch: bool = False,
) -> tuple[int, int]:
    """Store a (full or compact) fingerprint under its label; returns ``(n_bytes, n_tokens)``.

    A full fingerprint is compacted to ``max_bytes`` (default: 1 MB per 1e9 parameters) first;
    ``basis_sketch`` adds the basis sketch on top of that budget (:func:`basis_sketch_bytes`).
    Raises :class:`WeightprintError` when the label is already taken.
    """
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    from weightprint.store import database_error

    budget = fingerprint_budget_bytes(fingerprint.n_parameters) if max_bytes is None else int(max_bytes)
    compact = fingerprint if fingerprint.levels else fingerprint.compact(max_bytes=budget, basis_sketch=basis_sketch)
    if compact.basis_rows is not None:
        budget += basis_sketch_bytes(compact.hidden_size)
    blob = compact.to_bytes()
    if len(blob) > budget:
        raise WeightprintError(
            f"fingerprint of `{fingerprint.label}` takes {len(blob)} bytes, over the budget of {budget} bytes"
        )
    url, engine, table = _open(db_url, create=True)
    taken = WeightprintError(
        f"fingerprint database {_redact(url)} already holds a reference labelled `{fingerprint.label}`",
        hint="choose another label",
    )
    try:
        with engine.begin() as conn:
            if conn.execute(select(table.c.id).where(table.c.label == fingerprint.label)).first() is not None:
                raise taken
            conn.execute(insert(table).values(
                label=fingerprint.label, source_sha256=source_sha256, n_parameters=int(fingerprint.n_parameters),
                hidden_size=int(fingerprint.hidden_size), format_version=FORMAT_VERSION,
                created_at=datetime.now(timezone.utc), blob=blob,
            ))
    except IntegrityError as e:  # another process stored the label in between
        raise taken from e
    except SQLAlchemyError as e:
        raise database_error(url, e, what=WHAT) from e
    return len(blob), len(compact.tokens)


def _load_all(db_url: str | Path) -> tuple[str, list[Fingerprint]]:
    """The normalized URL and every stored fingerprint, in storage order (raises when there is none)."""
    from sqlalchemy import inspect, select

    from weightprint.store import normalize_url, sqlite_file

    url = normalize_url(db_url)
    f = sqlite_file(url)
    if f is not None and not f.exists():  # do not create an empty database file as a side effect
        raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no such file)", hint=_EMPTY_HINT)
    with _db_errors(url):
        url, engine, table = _open(url, create=False)
        if not inspect(engine).has_table(TABLE):
            raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no fingerprints stored)",
                                   hint=_EMPTY_HINT)
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.label, table.c.blob).order_by(table.c.id)).all()
    if not rows:
        raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no fingerprints stored)",
                               hint=_EMPTY_HINT)
    return url, [Fingerprint.from_bytes(r.blob, source=f"{_redact(url)}:{r.label}") for r in rows]


def list_fingerprints(db_url: str | Path) -> list[dict[str, Any]]:
    """Labels and sizes of the stored references (raises on an empty database)."""
    return [
        {"label": fp.label, "n_parameters": fp.n_parameters, "hidden_size": fp.hidden_size, "n_layers": fp.n_layers,
         "n_tokens": len(fp.tokens)}
        for fp in _load_all(db_url)[1]
    ]


def search_fingerprints(
    suspect: str | Path | Model,
    db_url: str | Path,
    *,
    n_resamples: int = 199,
    rng: np.random.Generator | int | None = None,
    alpha: float = DEFAULT_ALPHA,
    components: bool = False,
    progress: ProgressCallback | None = None,
) -> SearchResult:
    """Test the suspect against every stored reference; H0 for each: "trained independently of it".

    H0 for each reference is the one of :func:`weightprint.lineage.compare_models`; the
    suspect's features are computed once, from its weights, and each reference is compared
    through its stored fingerprint alone. The verdict controls the family-wise error rate at
    ``alpha``: each p-value is Bonferroni-corrected over the references compared.

    Parameters
    ----------
    suspect : str | Path | Model
        The model under suspicion.
    db_url : str | Path
        SQLAlchemy URL or SQLite file path.
    n_resamples : int, *optional*, defaults to 199
        Monte Carlo permutations per test (fewer than :func:`compare_models`'s 999 to keep a
        search over many references fast; the concentration bound covers the far tail).
    rng : *optional*
        As in :func:`compare_models`; each reference gets the same seed.
    alpha : float, *optional*
        Family-wise significance level: the chance that a search names any reference when the
        suspect is independent of all of them is at most ``alpha``.
    components : bool, *optional*, defaults to False
        Also run the per-component tests (slower; the combined test alone decides the rank).
    progress : ProgressCallback, *optional*
        Called before the suspect's fingerprint and before each reference's comparison.

    Returns
    -------
    SearchResult
        The verdict, and ``ranking``: one :class:`LineageResult` per reference (``a`` =
        reference label, ``b`` = suspect), smallest p-value first, ``not comparable`` ones last.

    Raises
    ------
    WeightprintError
        Unreadable suspect, bad URL, or an empty database.
    """
    t0 = time.perf_counter()
    progress = progress or no_progress
    url, refs = _load_all(db_url)
    tokens: list[str] = list(dict.fromkeys(t for fp in refs for t in (*fp.tokens, *fp.basis_tokens)))
    m, owned = open_or_borrow(suspect)
    try:
        progress(0, len(refs) + 1, "fingerprint the suspect")
        fs = build_fingerprint(m, tokens=tokens)
        seed = int(rng.integers(2**62)) if isinstance(rng, np.random.Generator) else (0 if rng is None else int(rng))
        suspect_name = str(suspect.path if isinstance(suspect, Model) else suspect)
        in_basis: dict[str, tuple[Fingerprint | None, dict[str, Any]]] = {}

        def compare(ref: Fingerprint, level: float) -> LineageResult:
            r = compare_fingerprints(ref, fs, n_resamples=n_resamples, rng=seed, alpha=level, components=components)
            if ref.basis_rows is not None and r.combined is not None and ref.hidden_size == fs.hidden_size:
                # A reference stored with a basis sketch: the suspect may be a copy whose residual
                # basis was changed (rotation with folded norms, permutation). Recover the map
                # from the sketch and test the layer features in the reference's basis too,
                # unless the identity-basis test already decides (as compare_models does).
                if r.log10_pvalue < SKIP_RECOVERY_LOG10:
                    basis: dict[str, Any] = _basis_from_signs(r)
                    fb = None
                else:
                    if ref.label not in in_basis:
                        in_basis[ref.label] = map_from_sketch(ref, fs, m)
                    fb, basis = in_basis[ref.label]
                    if fb is None:
                        basis = {**basis, "sketch_not_run": basis.get("not_recovered", "no map")}
                r = compare_fingerprints(ref, fs, n_resamples=n_resamples, rng=seed, alpha=level,
                                         components=components, recovered=fb, basis=basis, _reuse=r)
            r.b = suspect_name
            return r

        pairs: list[tuple[LineageResult, Fingerprint]] = []
        for i, ref in enumerate(refs, 1):
            progress(i, len(refs) + 1, f"compare with {ref.label}")
            pairs.append((compare(ref, alpha), ref))
        pairs.sort(key=lambda p: (p[0].combined is None, p[0].log10_pvalue))
        results = [r for r, _ in pairs]

        # Bonferroni over the references actually tested. A reference is significant after the
        # correction iff its raw p < alpha / n_tested; the few that were `derived` at the raw level
        # only are compared again at the corrected level (same seed, same p-value) so that their
        # verdict and reason state the corrected decision.
        n_tested = sum(r.combined is not None for r in results)
        shift = math.log10(n_tested) if n_tested else 0.0
        level = alpha / max(n_tested, 1)
        adjusted: list[float] = []
        for k, (r, ref) in enumerate(pairs):
            if r.combined is None:
                adjusted.append(0.0)
                continue
            adj = min(0.0, r.log10_pvalue + shift)
            if r.verdict == "derived" and not adj < math.log10(alpha):
                r = results[k] = compare(ref, level)
            r.alpha = level
            adjusted.append(adj)
        if n_tested == 0:
            verdict = "not comparable"
        else:
            verdict = "derived" if any(a < math.log10(alpha) for a in adjusted) else "no evidence"
        return SearchResult(suspect=suspect_name, db_url=_redact(url), verdict=verdict, alpha=alpha, ranking=results,
                            adjusted_log10_pvalues=adjusted, n_references=len(refs), n_tested=n_tested,
                            seconds=time.perf_counter() - t0)
    finally:
        if owned:
            m.close()
