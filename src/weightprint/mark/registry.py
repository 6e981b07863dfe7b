"""The registry of issued copies (SQLAlchemy 2 Core; SQLite by default, PostgreSQL works).

Tables
------
``wp_registry`` (one row)
    ``registry_id``, ``scheme_version``, ``key_fingerprint`` (an HMAC of a fixed label under
    the master secret: it tells whether a key file belongs to this registry and reveals
    nothing), ``created_at``.
``wp_copies`` (one row per issued copy)
    ``issue_id`` (unique), ``recipient``, ``issued_at``, ``source_sha256``, ``source_path``,
    ``output_sha256``, ``output_path``, ``file_type``, ``scheme_version``, ``delta`` and the
    public ``key_salt``; ``(recipient, source_sha256, file_type)`` is unique.

No key material is stored: a copy's key is re-derived from the master key file with
``key_salt`` and ``issue_id`` (see :mod:`weightprint.mark.keys`).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from weightprint.errors import RegistryError
from weightprint.mark.keys import MasterKey
from weightprint.mark.scheme import SCHEME_VERSION
from weightprint.store import (
    Migration,
    check_schema,
    database_error,
    db_errors,
    error_cause,
    get_engine,
    migrate,
    normalize_url,
    sqlite_file,
)
from weightprint.store import redact as _redact  # noqa: F401 - mark.api's messages use it

DEFAULT_REGISTRY_URL = "sqlite:///weightprint-registry.db"

metadata = MetaData()

registry_table = Table(
    "wp_registry",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("registry_id", String(36), nullable=False),
    Column("scheme_version", String(32), nullable=False),
    Column("key_fingerprint", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

copies_table = Table(
    "wp_copies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("issue_id", String(36), nullable=False, unique=True),
    Column("recipient", String(200), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("source_sha256", String(64), nullable=False),
    Column("source_path", String(4096), nullable=False),
    Column("output_sha256", String(64), nullable=False),
    Column("output_path", String(4096), nullable=False),
    Column("file_type", String(16), nullable=False),
    Column("scheme_version", String(32), nullable=False),
    Column("delta", Float, nullable=False),
    Column("key_salt", String(64), nullable=False),
    UniqueConstraint("recipient", "source_sha256", "file_type", name="uq_recipient_source_type"),
)

SCHEMA_COMPONENT = "registry"
MIGRATIONS: list[Migration] = [
    # 1: the tables as first released (registries made before versioning adopt this version)
    (1, lambda conn: metadata.create_all(conn, checkfirst=True)),
]
LATEST_SCHEMA = max(v for v, _ in MIGRATIONS)
_NOT_INITIALISED_HINT = "run `weightprint mark init --registry URL` first"


@dataclass(frozen=True)
class CopyRecord:
    """One issued copy as the registry holds it (public data only)."""

    issue_id: str
    recipient: str
    issued_at: datetime
    source_sha256: str
    source_path: str
    output_sha256: str
    output_path: str
    file_type: str
    scheme_version: str
    delta: float
    key_salt: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["issued_at"] = self.issued_at.isoformat()
        d.pop("key_salt")  # public, but of no use to a reader of reports
        return d


class Registry:
    """A connection to a registry database. Use :func:`open_registry` or :func:`create_registry`."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine

    def close(self) -> None:
        """Release pooled connections (the engine itself is shared per URL, see :mod:`weightprint.store`)."""
        self.engine.dispose()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(registry_table)).mappings().first()
        except SQLAlchemyError as e:
            raise RegistryError(f"registry {_redact(self.url)} is not initialised or unreadable: {error_cause(e)}",
                                hint=_NOT_INITIALISED_HINT) from e
        if row is None:
            raise RegistryError(f"registry {_redact(self.url)} is not initialised", hint=_NOT_INITIALISED_HINT)
        return dict(row)

    def check_key(self, master: MasterKey) -> None:
        """Raise unless ``master`` is the key this registry was created with."""
        if self.header()["key_fingerprint"] != master.fingerprint():
            raise RegistryError(f"key file does not belong to registry {_redact(self.url)} (fingerprint mismatch)")

    def copies(self, *, source_sha256: str | None = None) -> list[CopyRecord]:
        stmt = select(copies_table).order_by(copies_table.c.id)
        if source_sha256 is not None:
            stmt = stmt.where(copies_table.c.source_sha256 == source_sha256)
        with db_errors(self.url, what="registry", action="read", error=RegistryError):
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        return [_record(r) for r in rows]

    def find_output(self, sha256: str) -> CopyRecord | None:
        stmt = select(copies_table).where(copies_table.c.output_sha256 == sha256)
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _record(row) if row is not None else None

    def find_copy(self, recipient: str, source_sha256: str, file_type: str) -> CopyRecord | None:
        c = copies_table.c
        stmt = select(copies_table).where(
            c.recipient == recipient, c.source_sha256 == source_sha256, c.file_type == file_type
        )
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _record(row) if row is not None else None

    # -- writing -------------------------------------------------------------------------
    def record_copy(self, record: CopyRecord, *, before_commit=None) -> None:
        """Insert one copy in a transaction; ``before_commit()`` runs after the insert succeeded.

        ``issue_copy`` passes the rename of the finished output file as ``before_commit``, so that
        a row is committed only once its file is in place. A duplicate raises RegistryError.
        """
        values = asdict(record)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(copies_table).values(**values))
                if before_commit is not None:
                    before_commit()
        except IntegrityError as e:
            raise RegistryError(
                f"recipient `{record.recipient}` already holds a {record.file_type} copy of source "
                f"{record.source_sha256[:12]} in registry {_redact(self.url)}"
            ) from e
        except SQLAlchemyError as e:
            raise database_error(self.url, e, what="registry", action="write", error=RegistryError) from e


def _record(row: Any) -> CopyRecord:
    d = dict(row)
    d.pop("id", None)
    issued = d["issued_at"]
    if issued.tzinfo is None:  # SQLite drops the zone; we always store UTC
        d["issued_at"] = issued.replace(tzinfo=timezone.utc)
    return CopyRecord(**d)


def _engine(url: str) -> Engine:
    return get_engine(url, what="registry", error=RegistryError)


def open_registry(url: str) -> Registry:
    """Open an existing registry (checked to be initialised); ``url`` may be a plain SQLite path.

    A registry written by an older weightprint is upgraded to the current schema.
    """
    url = normalize_url(url)
    f = sqlite_file(url)
    if f is not None and not f.is_file():  # do not leave an empty database file behind
        raise RegistryError(f"registry {_redact(url)} is not initialised (no such file)", hint=_NOT_INITIALISED_HINT)
    reg = Registry(url, _engine(url))
    try:
        current = check_schema(reg.engine, SCHEMA_COMPONENT, LATEST_SCHEMA, url=url, what="registry",
                               error=RegistryError)
        reg.header()
        if current < LATEST_SCHEMA:
            migrate(reg.engine, SCHEMA_COMPONENT, MIGRATIONS, url=url, what="registry", error=RegistryError)
    except RegistryError:
        reg.close()
        raise
    return reg


def create_registry(url: str, master: MasterKey) -> tuple[Registry, dict[str, Any], bool]:
    """Create the tables and the header row (idempotent for the same key).

    ``url`` may be a plain SQLite path. Returns the registry, its header and whether it was
    created now.
    """
    url = normalize_url(url)
    engine = _engine(url)
    reg = Registry(url, engine)
    try:
        migrate(engine, SCHEMA_COMPONENT, MIGRATIONS, url=url, what="registry", error=RegistryError)
        with db_errors(url, what="registry", action="create", error=RegistryError), engine.begin() as conn:
            row = conn.execute(select(registry_table)).mappings().first()
            if row is None:
                conn.execute(insert(registry_table).values(
                    id=1, registry_id=str(uuid.uuid4()), scheme_version=SCHEME_VERSION,
                    key_fingerprint=master.fingerprint(), created_at=datetime.now(timezone.utc),
                ))
                created = True
            else:
                created = False
                if row["key_fingerprint"] != master.fingerprint():
                    raise RegistryError(f"registry {_redact(url)} already exists with another master key")
    except RegistryError:
        reg.close()
        raise
    return reg, reg.header(), created
