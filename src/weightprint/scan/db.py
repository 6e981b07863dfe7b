"""The scan tables, in the fingerprint database, through :mod:`weightprint.store`'s migrations.

Three tables (schema component ``"scan"``):

- ``wp_scan_fingerprints`` -- one row per distinct model *content* (SHA-256 of the file, or of
  a directory's model files): the stored fingerprint (:meth:`Fingerprint.to_bytes`), the
  blocking keys (hidden size, tokenizer hash) and the scan signature
  (:mod:`weightprint.scan.signature`). A content is fingerprinted once whatever its paths.
- ``wp_scan_files`` -- one row per scanned path: size, mtime, content hash, and ``ok`` or
  ``error`` with the one-line message. A rerun trusts a row whose size and mtime still match
  (it reads nothing), which is what makes a resumed scan recompute nothing.
- ``wp_scan_bands`` -- the locality-sensitive-hashing bands of each content's vocabulary
  MinHash: two models are a candidate pair only if they share a band (and the hidden size),
  a self-join the database answers from an index, so the pair tests stay sub-quadratic.

Writes are idempotent: a row keyed by a content hash or a path is inserted once and a retry
(a worker that died after writing) finds it there.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_COMPONENT", "ScanDB", "WHAT"]

WHAT = "fingerprint database"
SCHEMA_COMPONENT = "scan"
N_BANDS = 32  # of 4 MinHash values each (the fingerprint keeps 128)


@functools.cache
def _tables():
    from sqlalchemy import (
        BigInteger, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text,
    )

    md = MetaData()
    fps = Table(
        "wp_scan_fingerprints", md,
        Column("content_sha256", String(64), primary_key=True),
        Column("label", String(1024), nullable=False),
        Column("hidden_size", Integer, nullable=False, index=True),
        Column("n_layers", Integer, nullable=False),
        Column("n_parameters", BigInteger, nullable=False),
        Column("vocab_size", Integer, nullable=False),
        Column("tokenizer_sha256", String(64), nullable=True, index=True),
        Column("n_bytes", BigInteger, nullable=False),
        Column("seconds", Float, nullable=False),
        Column("signature", Text, nullable=False),  # JSON: grid, storage, order profile
        Column("blob", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    files = Table(
        "wp_scan_files", md,
        Column("path", String(2048), primary_key=True),
        Column("ref", String(2048), nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("mtime_ns", BigInteger, nullable=False),
        Column("content_sha256", String(64), nullable=True, index=True),
        Column("status", String(16), nullable=False),
        Column("error", Text, nullable=True),
        Column("scanned_at", DateTime(timezone=True), nullable=False),
    )
    bands = Table(
        "wp_scan_bands", md,
        Column("content_sha256", String(64), primary_key=True),
        Column("band", Integer, primary_key=True),
        Column("band_hash", String(16), nullable=False),
        Index("ix_wp_scan_bands_band_hash", "band", "band_hash"),
    )
    migrations = [(1, lambda conn: md.create_all(conn, checkfirst=True))]
    return fps, files, bands, migrations


class ScanDB:
    """The scan tables of one database (SQLite file or any SQLAlchemy URL); created on first use."""

    def __init__(self, url: str | Path) -> None:
        from weightprint import store

        self.url = store.normalize_url(url)
        f = store.sqlite_file(self.url)
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
        self.engine = store.get_engine(self.url, what=WHAT)
        self.fps, self.files, self.bands, migrations = _tables()
        store.migrate(self.engine, SCHEMA_COMPONENT, migrations, url=self.url, what=WHAT)

    def _errors(self, action: str):
        from weightprint.store import db_errors

        return db_errors(self.url, what=WHAT, action=action)

    @property
    def redacted(self) -> str:
        from weightprint.store import redact

        return redact(self.url)

    # ---------------------------------------------------------------------------- reads
    def file_row(self, path: str) -> Any:
        from sqlalchemy import select

        with self._errors("read"), self.engine.connect() as conn:
            return conn.execute(select(self.files).where(self.files.c.path == path)).first()

    def has_fingerprint(self, sha: str) -> bool:
        from sqlalchemy import select

        with self._errors("read"), self.engine.connect() as conn:
            return conn.execute(select(self.fps.c.content_sha256).where(self.fps.c.content_sha256 == sha)).first() is not None

    def files_for(self, paths: list[str]) -> dict[str, Any]:
        from sqlalchemy import select

        out: dict[str, Any] = {}
        with self._errors("read"), self.engine.connect() as conn:
            for i in range(0, len(paths), 500):
                for r in conn.execute(select(self.files).where(self.files.c.path.in_(paths[i:i + 500]))):
                    out[r.path] = r
        return out

    def fingerprint_rows(self, shas: list[str], *, blobs: bool = True) -> dict[str, Any]:
        from sqlalchemy import select

        t = self.fps
        cols = list(t.c) if blobs else [c for c in t.c if c.name != "blob"]
        out: dict[str, Any] = {}
        with self._errors("read"), self.engine.connect() as conn:
            for i in range(0, len(shas), 500):
                for r in conn.execute(select(*cols).where(t.c.content_sha256.in_(shas[i:i + 500]))):
                    out[r.content_sha256] = r
        return out

    def candidate_pairs(self, shas: set[str]) -> list[tuple[str, str]]:
        """Pairs ``(a, b)``, ``a < b``, of contents with the same hidden size and a shared band.

        The join runs in the database on the band index; only the pairs among ``shas`` (this
        scan's contents) are returned.
        """
        from sqlalchemy import and_, select

        b1, b2 = self.bands.alias("b1"), self.bands.alias("b2")
        f1, f2 = self.fps.alias("f1"), self.fps.alias("f2")
        stmt = (
            select(b1.c.content_sha256, b2.c.content_sha256).distinct()
            .select_from(
                b1.join(b2, and_(b1.c.band == b2.c.band, b1.c.band_hash == b2.c.band_hash,
                                 b1.c.content_sha256 < b2.c.content_sha256))
                .join(f1, f1.c.content_sha256 == b1.c.content_sha256)
                .join(f2, f2.c.content_sha256 == b2.c.content_sha256)
            )
            .where(f1.c.hidden_size == f2.c.hidden_size)
        )
        with self._errors("read"), self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return sorted((a, b) for a, b in rows if a in shas and b in shas)

    def counts(self) -> dict[str, int]:
        from sqlalchemy import func, select

        with self._errors("read"), self.engine.connect() as conn:
            return {name: int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
                    for name, t in (("fingerprints", self.fps), ("files", self.files), ("bands", self.bands))}

    # --------------------------------------------------------------------------- writes
    def _insert_ignore(self, conn, table, rows: list[dict[str, Any]], keys: list[str]) -> None:
        if not rows:
            return
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            conn.execute(pg_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
        elif conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            conn.execute(sqlite_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
        else:  # pragma: no cover - other dialects: check, then insert
            from sqlalchemy import and_, insert, select

            for row in rows:
                cond = and_(*[table.c[k] == row[k] for k in keys])
                if conn.execute(select(table.c[keys[0]]).where(cond)).first() is None:
                    conn.execute(insert(table).values(**row))

    def put_fingerprint(self, row: dict[str, Any], band_hashes: list[str]) -> None:
        """Insert a content's fingerprint and bands once (a second insert of the same content is a no-op)."""
        row = {**row, "created_at": datetime.now(timezone.utc)}
        bands = [{"content_sha256": row["content_sha256"], "band": i, "band_hash": h} for i, h in enumerate(band_hashes)]
        with self._errors("write"), self.engine.begin() as conn:
            self._insert_ignore(conn, self.fps, [row], ["content_sha256"])
            self._insert_ignore(conn, self.bands, bands, ["content_sha256", "band"])

    def put_file(self, *, path: str, ref: str, size: int, mtime_ns: int, content_sha256: str | None,
                 status: str, error: str | None = None) -> None:
        """Record a scanned path (replacing its earlier record: the file may have changed)."""
        from sqlalchemy import delete, insert

        row = dict(path=path, ref=ref, size=int(size), mtime_ns=int(mtime_ns), content_sha256=content_sha256,
                   status=status, error=error, scanned_at=datetime.now(timezone.utc))
        with self._errors("write"), self.engine.begin() as conn:
            conn.execute(delete(self.files).where(self.files.c.path == path))
            conn.execute(insert(self.files).values(**row))

