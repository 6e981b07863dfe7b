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
    public ``key_salt``; ``(recipient, source_sha256, file_type)`` is unique. Since schema 2:
    ``status`` (``pending`` or ``issued``), ``owner`` (``host|pid|start time`` of the issuing
    process while pending) and the counts ``n_marked_tensors`` / ``n_marked_weights``.

Issuing is crash safe (:meth:`Registry.record_copy`): the row is committed as ``pending``, the
finished file renamed into place, then the row marked ``issued``. A process killed in between
leaves a pending row whose owner is dead; the next :func:`open_registry` reconciles it (file in
place with the recorded sha256 -> ``issued``; otherwise the row is removed), so there is never a
row without its file, nor an issued file without its row.

No key material is stored: a copy's key is re-derived from the master key file with
``key_salt`` and ``issue_id`` (see :mod:`weightprint.mark.keys`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
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


def _copy_columns_v1() -> list[Column]:
    return [
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
    ]


def _unique_copy() -> UniqueConstraint:
    return UniqueConstraint("recipient", "source_sha256", "file_type", name="uq_recipient_source_type")


copies_table = Table(
    "wp_copies",
    metadata,
    *_copy_columns_v1(),
    Column("status", String(16), nullable=False, server_default="issued"),
    Column("owner", String(300), nullable=True),
    Column("n_marked_tensors", Integer, nullable=True),
    Column("n_marked_weights", Integer, nullable=True),
    _unique_copy(),
)

PENDING, ISSUED = "pending", "issued"
_V2_COLUMNS = {  # added by schema 2 (crash-safe issuing)
    "status": "status VARCHAR(16) NOT NULL DEFAULT 'issued'",
    "owner": "owner VARCHAR(300)",
    "n_marked_tensors": "n_marked_tensors INTEGER",
    "n_marked_weights": "n_marked_weights INTEGER",
}


def _create_v1(conn) -> None:
    """The tables as first released, without the columns later versions add."""
    v1 = MetaData()
    registry_table.to_metadata(v1)
    Table(copies_table.name, v1, *_copy_columns_v1(), _unique_copy())
    v1.create_all(conn, checkfirst=True)


def _add_v2_columns(conn) -> None:
    have = {c["name"] for c in inspect(conn).get_columns(copies_table.name)}
    for name, ddl in _V2_COLUMNS.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {copies_table.name} ADD COLUMN {ddl}"))


SCHEMA_COMPONENT = "registry"
MIGRATIONS: list[Migration] = [
    # 1: the tables as first released (registries made before versioning adopt this version)
    (1, _create_v1),
    # 2: pending/issued rows for crash-safe issuing, the issuing process, the mark's counts
    (2, _add_v2_columns),
]
STALE_FOREIGN_PENDING_S = 24 * 3600.0
"""A pending row written on another host is taken as abandoned after this long (its process cannot be checked)."""
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
    n_marked_tensors: int | None = None
    n_marked_weights: int | None = None
    status: str = ISSUED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["issued_at"] = self.issued_at.isoformat()
        d.pop("key_salt")  # public, but of no use to a reader of reports
        return d


def _proc_stat(pid: int) -> tuple[str, str]:
    """State and start time (clock ticks since boot) of process ``pid`` (Linux), or ("", "") where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            tail = f.read().rsplit(b")", 1)[1].split()
        return tail[0].decode(), tail[19].decode()
    except (OSError, IndexError, ValueError):
        return "", ""


def _process_start(pid: int) -> str:
    return _proc_stat(pid)[1]


def process_token() -> str:
    """``host|pid|start time`` of this process: who owns a pending row (a reused pid is told apart)."""
    return f"{socket.gethostname()}|{os.getpid()}|{_process_start(os.getpid())}"


def owner_alive(owner: str | None, since: datetime, *, now: datetime | None = None) -> bool:
    """Whether the process that wrote a pending row may still be running.

    Same host: its pid exists and (where known) started at the recorded time. Another host:
    assumed running until :data:`STALE_FOREIGN_PENDING_S` has passed.
    """
    host, _, rest = (owner or "").partition("|")
    pid_text, _, start = rest.partition("|")
    if host != socket.gethostname() or not pid_text.isdigit():
        now = now or datetime.now(timezone.utc)
        since = since if since.tzinfo is not None else since.replace(tzinfo=timezone.utc)
        return (now - since).total_seconds() < STALE_FOREIGN_PENDING_S
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return False
    state, started = _proc_stat(pid)
    if state in ("Z", "X"):  # killed, not yet reaped
        return False
    return not start or started in ("", start)


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

    def copies(self, *, source_sha256: str | None = None, pending: bool = False) -> list[CopyRecord]:
        """The issued copies (with ``pending``: also those being issued now, or left by a crash)."""
        stmt = select(copies_table).order_by(copies_table.c.id)
        if not pending:
            stmt = stmt.where(copies_table.c.status == ISSUED)
        if source_sha256 is not None:
            stmt = stmt.where(copies_table.c.source_sha256 == source_sha256)
        with db_errors(self.url, what="registry", action="read", error=RegistryError):
            with self.engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        return [_record(r) for r in rows]

    def find_output(self, sha256: str) -> CopyRecord | None:
        stmt = select(copies_table).where(copies_table.c.output_sha256 == sha256, copies_table.c.status == ISSUED)
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _record(row) if row is not None else None

    def find_copy(self, recipient: str, source_sha256: str, file_type: str) -> CopyRecord | None:
        """The copy of ``recipient`` (issued, or pending: being issued by a running process)."""
        c = copies_table.c
        stmt = select(copies_table).where(
            c.recipient == recipient, c.source_sha256 == source_sha256, c.file_type == file_type
        )
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        return _record(row) if row is not None else None

    def issued_at(self, output: str | Path, recipient: str, file_type: str) -> CopyRecord | None:
        """The issued copy of ``recipient`` recorded at ``output`` when that file is still the issued one (sha256)."""
        from weightprint.io import file_sha256

        c = copies_table.c
        stmt = select(copies_table).where(c.output_path == str(Path(output).resolve()), c.recipient == recipient,
                                          c.file_type == file_type, c.status == ISSUED)
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return None
        try:
            same = file_sha256(row["output_path"]) == row["output_sha256"]
        except OSError:
            same = False
        return _record(row) if same else None

    # -- writing -------------------------------------------------------------------------
    def record_copy(self, record: CopyRecord, *, before_commit: Callable[[], None] | None = None) -> None:
        """Record one copy crash-safely: commit it ``pending``, run ``before_commit()``, mark it ``issued``.

        ``issue_copy`` passes the rename of the finished output file as ``before_commit``. A
        duplicate raises RegistryError before anything is renamed. If ``before_commit`` or the final
        update fails, the pending row is removed (when the database still answers); a process
        killed in between leaves a pending row that the next :func:`open_registry` reconciles.
        """
        self.begin_issue(record)
        try:
            if before_commit is not None:
                before_commit()
            self.finish_issue(record.issue_id)
        except BaseException:
            try:
                self.abandon_issue(record.issue_id)
            except RegistryError:
                pass  # left pending: reconciled by the next open (file present and matching -> issued)
            raise

    def begin_issue(self, record: CopyRecord) -> None:
        """Commit ``record`` as a pending row owned by this process."""
        values = asdict(record)
        values.update(status=PENDING, owner=process_token())
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(copies_table).values(**values))
        except IntegrityError as e:
            raise RegistryError(
                f"recipient `{record.recipient}` already holds a {record.file_type} copy of source "
                f"{record.source_sha256[:12]} in registry {_redact(self.url)}"
            ) from e
        except SQLAlchemyError as e:
            raise database_error(self.url, e, what="registry", action="write", error=RegistryError) from e
        _crash_point("pending")

    def finish_issue(self, issue_id: str) -> None:
        """Mark a pending row issued (its file is in place)."""
        _crash_point("placed")
        c = copies_table.c
        with db_errors(self.url, what="registry", action="write", error=RegistryError), self.engine.begin() as conn:
            n = conn.execute(update(copies_table).where(c.issue_id == issue_id, c.status == PENDING)
                             .values(status=ISSUED, owner=None)).rowcount
        if n != 1:
            raise RegistryError(f"issue {issue_id} is no longer pending in registry {_redact(self.url)}")
        _crash_point("issued")

    def abandon_issue(self, issue_id: str) -> None:
        """Remove a pending row (its file was never placed, or was removed)."""
        c = copies_table.c
        with db_errors(self.url, what="registry", action="write", error=RegistryError), self.engine.begin() as conn:
            conn.execute(delete(copies_table).where(c.issue_id == issue_id, c.status == PENDING))

    def reconcile(self) -> dict[str, int]:
        """Settle the pending rows of dead issuers: file in place with its sha256 -> issued, else removed.

        Rows of running issuers are left alone. Returns ``{"issued": n, "removed": m}``.
        """
        from weightprint.io import file_sha256

        c = copies_table.c
        with db_errors(self.url, what="registry", action="read", error=RegistryError), self.engine.connect() as conn:
            rows = conn.execute(select(copies_table).where(c.status == PENDING)).mappings().all()
        done = {"issued": 0, "removed": 0}
        for row in rows:
            if owner_alive(row["owner"], row["issued_at"]):
                continue
            path = Path(row["output_path"])
            try:
                placed = path.is_file() and file_sha256(path) == row["output_sha256"]
            except OSError:
                placed = False
            where = (c.issue_id == row["issue_id"], c.status == PENDING, c.owner == row["owner"])
            with db_errors(self.url, what="registry", action="write", error=RegistryError), self.engine.begin() as conn:
                if placed:
                    n = conn.execute(update(copies_table).where(*where).values(status=ISSUED, owner=None)).rowcount
                else:
                    n = conn.execute(delete(copies_table).where(*where)).rowcount
            done["issued" if placed else "removed"] += n
        return done


def _crash_point(step: str) -> None:
    """Tests only: ``WEIGHTPRINT_TEST_CRASH_AT=<step>:<seconds>`` sleeps at a step of issuing (to be killed there)."""
    spec = os.environ.get("WEIGHTPRINT_TEST_CRASH_AT")
    if spec:
        at, _, seconds = spec.partition(":")
        if at == step:
            print(f"crash point {step}", flush=True)
            time.sleep(float(seconds or 60))


class RegistryKeyMismatch(RegistryError):
    """The registry exists and was created with another master key."""


def check_url(url: str) -> str:
    """Normalize ``url`` and refuse a malformed one or a missing driver (before anything is written)."""
    url = normalize_url(url)
    _engine(url)
    return url


def _record(row: Any) -> CopyRecord:
    d = dict(row)
    d.pop("id", None)
    d.pop("owner", None)
    issued = d["issued_at"]
    if issued.tzinfo is None:  # SQLite drops the zone; we always store UTC
        d["issued_at"] = issued.replace(tzinfo=timezone.utc)
    return CopyRecord(**d)


def _engine(url: str) -> Engine:
    return get_engine(url, what="registry", error=RegistryError)


def open_registry(url: str) -> Registry:
    """Open an existing registry (checked to be initialised); ``url`` may be a plain SQLite path.

    A registry written by an older weightprint is upgraded to the current schema, and the
    pending rows of issuers that died are reconciled (:meth:`Registry.reconcile`).
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
        try:
            reg.reconcile()
        except RegistryError:
            pass  # a read-only registry: the pending rows wait for the next writer
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
                    raise RegistryKeyMismatch(f"registry {_redact(url)} already exists with another master key")
    except RegistryError:
        reg.close()
        raise
    return reg, reg.header(), created
