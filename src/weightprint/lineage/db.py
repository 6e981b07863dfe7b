"""A database of reference fingerprints: store once, rank every reference against a suspect.

``fingerprint_model(model, db_url)`` stores a compact :class:`Fingerprint` (at most 1 MB per
1e9 parameters) of a reference model. ``search_fingerprints(suspect, db_url)`` computes the
suspect's fingerprint once, on the union of the token samples the references hold, and runs
:func:`compare_fingerprints` against every stored reference -- no reference weights needed.

The database is any SQLAlchemy URL (``sqlite:///refs.db``, ``postgresql+psycopg://...``); a
plain path is taken as a SQLite file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.io.model import Model
from weightprint.lineage.compare import DEFAULT_ALPHA, LineageResult, compare_fingerprints
from weightprint.lineage.fingerprint import (
    FORMAT_VERSION,
    Fingerprint,
    build_fingerprint,
    fingerprint_budget_bytes,
)
from weightprint.results import to_jsonable
from weightprint.io.open import open_or_borrow
from weightprint.progress import ProgressCallback, no_progress

__all__ = [
    "FingerprintResult",
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


def _normalize_url(db_url: str | Path) -> str:
    s = str(db_url)
    if "://" in s:
        return s
    return f"sqlite:///{Path(s).expanduser().resolve()}"


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the caller
        return "<malformed URL>"


def _table():
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
    return md, table


def _engine(url: str):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}
    try:
        return create_engine(url, **kwargs)
    except (ArgumentError, NoSuchModuleError, ValueError, ImportError) as e:
        raise WeightprintError(f"bad fingerprint database URL {_redact(url)}: {e}") from e


def _db_error(url: str, e: Exception) -> WeightprintError:
    orig = getattr(e, "orig", None) or e
    first = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
    return WeightprintError(f"cannot use fingerprint database {_redact(url)}: {first}")


def fingerprint_model(
    model: str | Path | Model,
    db_url: str | Path,
    *,
    label: str | None = None,
    max_bytes: int | None = None,
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
    from sqlalchemy.exc import SQLAlchemyError

    t0 = time.perf_counter()
    progress = progress or no_progress
    url = _normalize_url(db_url)
    engine = _engine(url)
    m, owned = open_or_borrow(model)
    try:
        sha = None
        p = Path(str(m.path))
        if p.is_file():
            progress(0, 3, f"sha256 {p.name}")
            from weightprint.io import file_sha256

            sha = file_sha256(p)
        name = label or p.name
        md, table = _table()
        try:
            md.create_all(engine)
            with engine.connect() as conn:
                row = conn.execute(select(table.c.label, table.c.source_sha256, table.c.blob).where(table.c.label == name)).first()
        except SQLAlchemyError as e:
            raise _db_error(url, e) from e
        finally:
            engine.dispose()
        if row is not None:
            if sha is not None and row.source_sha256 == sha:
                fp = Fingerprint.from_bytes(row.blob, source=f"{_redact(url)}:{name}")
                return FingerprintResult(name, _redact(url), len(row.blob), fingerprint_budget_bytes(fp.n_parameters),
                                         fp.n_parameters, fp.hidden_size, fp.n_layers, len(fp.tokens), sha, True,
                                         time.perf_counter() - t0)
            raise WeightprintError(
                f"fingerprint database {_redact(url)} already holds a reference labelled `{name}`",
                hint="choose another label",
            )
        progress(1, 3, f"fingerprint {name}")
        full = build_fingerprint(m, label=name)
    finally:
        if owned:
            m.close()
    budget = fingerprint_budget_bytes(full.n_parameters) if max_bytes is None else int(max_bytes)
    progress(2, 3, "store")
    n_bytes, n_tokens = store_fingerprint(full, url, source_sha256=sha, max_bytes=budget)
    progress(3, 3, "done")
    return FingerprintResult(name, _redact(url), n_bytes, budget, full.n_parameters, full.hidden_size,
                             full.n_layers, n_tokens, sha, False, time.perf_counter() - t0)


def store_fingerprint(
    fingerprint: Fingerprint,
    db_url: str | Path,
    *,
    source_sha256: str | None = None,
    max_bytes: int | None = None,
) -> tuple[int, int]:
    """Store a (full or compact) fingerprint under its label; returns ``(n_bytes, n_tokens)``.

    A full fingerprint is compacted to ``max_bytes`` (default: 1 MB per 1e9 parameters) first.
    Raises :class:`WeightprintError` when the label is already taken.
    """
    from sqlalchemy import insert, select
    from sqlalchemy.exc import IntegrityError, SQLAlchemyError

    url = _normalize_url(db_url)
    budget = fingerprint_budget_bytes(fingerprint.n_parameters) if max_bytes is None else int(max_bytes)
    compact = fingerprint if fingerprint.levels else fingerprint.compact(max_bytes=budget)
    blob = compact.to_bytes()
    if len(blob) > budget:
        raise WeightprintError(
            f"fingerprint of `{fingerprint.label}` takes {len(blob)} bytes, over the budget of {budget} bytes"
        )
    engine = _engine(url)
    md, table = _table()
    try:
        md.create_all(engine)
        with engine.begin() as conn:
            if conn.execute(select(table.c.id).where(table.c.label == fingerprint.label)).first() is not None:
                raise WeightprintError(
                    f"fingerprint database {_redact(url)} already holds a reference labelled `{fingerprint.label}`",
                    hint="choose another label",
                )
            conn.execute(insert(table).values(
                label=fingerprint.label, source_sha256=source_sha256, n_parameters=int(fingerprint.n_parameters),
                hidden_size=int(fingerprint.hidden_size), format_version=FORMAT_VERSION,
                created_at=datetime.now(timezone.utc), blob=blob,
            ))
    except IntegrityError as e:
        raise WeightprintError(
            f"fingerprint database {_redact(url)} already holds a reference labelled `{fingerprint.label}`"
        ) from e
    except SQLAlchemyError as e:
        raise _db_error(url, e) from e
    finally:
        engine.dispose()
    return len(blob), len(compact.tokens)


def _sqlite_file(url: str) -> Path | None:
    """The file of a file-backed SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
    except Exception:  # noqa: BLE001 - _engine reports malformed URLs
        return None
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _load_all(url: str) -> list[Fingerprint]:
    from sqlalchemy import inspect, select
    from sqlalchemy.exc import SQLAlchemyError

    f = _sqlite_file(url)
    if f is not None and not f.exists():  # do not create an empty database file as a side effect
        raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no such file)",
                               hint="store references with `weightprint fingerprint MODEL --db URL`")
    engine = _engine(url)
    md, table = _table()
    try:
        if not inspect(engine).has_table(TABLE):
            raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no fingerprints stored)",
                                   hint="store references with `weightprint fingerprint MODEL --db URL`")
        with engine.connect() as conn:
            rows = conn.execute(select(table.c.label, table.c.blob).order_by(table.c.id)).all()
    except SQLAlchemyError as e:
        raise _db_error(url, e) from e
    finally:
        engine.dispose()
    if not rows:
        raise WeightprintError(f"fingerprint database {_redact(url)} is empty (no fingerprints stored)",
                               hint="store references with `weightprint fingerprint MODEL --db URL`")
    return [Fingerprint.from_bytes(r.blob, source=f"{_redact(url)}:{r.label}") for r in rows]


def list_fingerprints(db_url: str | Path) -> list[dict[str, Any]]:
    """Labels and sizes of the stored references (raises on an empty database)."""
    url = _normalize_url(db_url)
    return [
        {"label": fp.label, "n_parameters": fp.n_parameters, "hidden_size": fp.hidden_size, "n_layers": fp.n_layers,
         "n_tokens": len(fp.tokens)}
        for fp in _load_all(url)
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
) -> list[LineageResult]:
    """Rank every stored reference by the p-value of "the suspect was trained independently of it".

    H0 for each reference is the one of :func:`weightprint.lineage.compare_models`; the
    suspect's features are computed once, from its weights, and each reference is compared
    through its stored fingerprint alone.

    Parameters
    ----------
    suspect : str | Path | Model
        The model under suspicion.
    db_url : str | Path
        SQLAlchemy URL or SQLite file path.
    n_resamples : int, *optional*, defaults to 199
        Monte Carlo permutations per test (fewer than :func:`compare_models`'s 999 to keep a
        search over many references fast; the concentration bound covers the far tail).
    rng, alpha : *optional*
        As in :func:`compare_models`; each reference gets the same seed.
    components : bool, *optional*, defaults to False
        Also run the per-component tests (slower; the combined test alone decides the rank).
    progress : ProgressCallback, *optional*
        Called before the suspect's fingerprint and before each reference's comparison.

    Returns
    -------
    list[LineageResult]
        One per reference (``a`` = reference label, ``b`` = suspect), smallest p-value first;
        ``not comparable`` ones last.

    Raises
    ------
    WeightprintError
        Unreadable suspect, bad URL, or an empty database.
    """
    progress = progress or no_progress
    url = _normalize_url(db_url)
    refs = _load_all(url)
    tokens: list[str] = list(dict.fromkeys(t for fp in refs for t in fp.tokens))
    m, owned = open_or_borrow(suspect)
    progress(0, len(refs) + 1, "fingerprint the suspect")
    try:
        fs = build_fingerprint(m, tokens=tokens)
    finally:
        if owned:
            m.close()
    seed = int(rng.integers(2**62)) if isinstance(rng, np.random.Generator) else (0 if rng is None else int(rng))
    results: list[LineageResult] = []
    for i, ref in enumerate(refs, 1):
        progress(i, len(refs) + 1, f"compare with {ref.label}")
        r = compare_fingerprints(ref, fs, n_resamples=n_resamples, rng=seed, alpha=alpha, components=components)
        r.b = str(suspect.path if isinstance(suspect, Model) else suspect)
        results.append(r)
    results.sort(key=lambda r: (r.combined is None, r.log10_pvalue))
    return results
