"""The one SQL layer: every database weightprint keeps goes through here.

The watermark registry (:mod:`weightprint.mark.registry`), the fingerprint database
(:mod:`weightprint.lineage.db`), the result cache (:class:`ResultCache`) and the coming scan
tables share

- **URLs**: :func:`normalize_url` takes a SQLAlchemy URL (``sqlite:///refs.db``,
  ``postgresql+psycopg://user:pw@host/db``) or a plain file path (a SQLite file);
  ``postgresql://`` and ``postgres://`` mean the ``psycopg`` (3) driver.
- **Engines**: :func:`get_engine` creates one engine per URL and process, with the same
  timeouts everywhere (:data:`SQLITE_BUSY_TIMEOUT_S`, :data:`POSTGRES_CONNECT_TIMEOUT_S`) and,
  for SQLite, WAL journaling with ``BEGIN IMMEDIATE`` transactions (concurrent writers queue
  instead of failing).
- **Messages**: :func:`redact` hides passwords; :func:`database_error` and :func:`db_errors`
  turn SQLAlchemy and driver errors into one-line :class:`~weightprint.errors.WeightprintError`
  messages naming the (redacted) URL.
- **Schema versions**: table ``wp_schema_version`` holds one row per component
  (``"registry"``, ``"fingerprints"``, ``"cache"``, ``"scan"``...); :func:`migrate` applies a
  component's pending ``(version, callable)`` steps in one locked transaction.

A new kind of table: define its SQLAlchemy ``Table`` objects, a list of migrations (version 1
creates the tables), and call ``migrate(engine, "mycomponent", MIGRATIONS)`` before first use;
see :class:`ResultCache` for a complete small example.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from weightprint.errors import WeightprintError

__all__ = [
    "POSTGRES_CONNECT_TIMEOUT_S",
    "check_schema",
    "SQLITE_BUSY_TIMEOUT_S",
    "Migration",
    "ResultCache",
    "cache_key",
    "database_error",
    "db_errors",
    "dispose_engines",
    "error_cause",
    "get_engine",
    "migrate",
    "normalize_url",
    "redact",
    "schema_version",
    "sqlite_file",
]

SQLITE_BUSY_TIMEOUT_S = 120.0
"""How long a SQLite statement waits for another process's write lock before failing."""

POSTGRES_CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt waits for the server before failing."""

SCHEMA_TABLE = "wp_schema_version"

Migration = tuple[int, Callable[[Connection], None]]
"""One schema step: ``(version, apply)``; ``apply(conn)`` runs inside the migration's transaction."""

_schema_metadata = MetaData()
schema_version_table = Table(
    SCHEMA_TABLE,
    _schema_metadata,
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# ---------------------------------------------------------------------------------------
# URLs and messages
# ---------------------------------------------------------------------------------------
def normalize_url(url: str | Path) -> str:
    """The SQLAlchemy URL for ``url``: a plain path becomes an absolute ``sqlite:///`` URL.

    ``postgresql://`` and ``postgres://`` (no driver named) select ``postgresql+psycopg``, the
    driver weightprint installs (``pip install 'weightprint[postgres]'``); SQLAlchemy's own
    default would be psycopg2. Any other URL is returned unchanged.

    Examples
    --------
    >>> normalize_url("postgres://u@db/refs")
    'postgresql+psycopg://u@db/refs'
    """
    s = str(url)
    if "://" not in s:
        return f"sqlite:///{Path(s).expanduser().resolve()}"
    scheme, rest = s.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return s


def redact(url: str | Path) -> str:
    """``url`` with any password replaced by ``***`` (for messages, reports and JSON)."""
    s = str(url)
    if "://" not in s:
        return s  # a plain path holds no password
    try:
        return make_url(s).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by the caller; hide what looks like a password
        return re.sub(r"(://[^/@:]*:)[^@]*@", r"\1***@", s)


def sqlite_file(url: str | Path) -> Path | None:
    """The file of a file-backed SQLite URL (None for other databases and in-memory SQLite)."""
    try:
        u = make_url(normalize_url(url))
    except Exception:  # noqa: BLE001 - get_engine reports malformed URLs
        return None
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def error_cause(e: BaseException) -> str:
    """The first line of the driver's message behind ``e`` (or its type's name when empty)."""
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else type(orig).__name__


def database_error(
    url: str | Path,
    e: BaseException,
    *,
    what: str = "database",
    action: str = "use",
    error: type[WeightprintError] = WeightprintError,
    hint: str | None = None,
) -> WeightprintError:
    """A one-line ``error`` for a failed database operation: ``cannot {action} {what} {url}: {cause}``.

    ``cause`` is the first line of the driver's message (``unable to open database file``,
    ``connection refused``...), never a traceback; the URL's password is hidden. Raise it
    ``from e`` to keep the cause chained.
    """
    return error(f"cannot {action} {what} {redact(url)}: {error_cause(e)}", hint=hint)


@contextmanager
def db_errors(
    url: str | Path,
    *,
    what: str = "database",
    action: str = "use",
    error: type[WeightprintError] = WeightprintError,
    hint: str | None = None,
) -> Iterator[None]:
    """Turn SQLAlchemy/driver errors raised inside the block into :func:`database_error`.

    A :class:`WeightprintError` raised inside passes through unchanged.

    Examples
    --------
    >>> with db_errors(url, what="registry", action="read", error=RegistryError):  # doctest: +SKIP
    ...     rows = conn.execute(stmt).all()
    """
    try:
        yield
    except WeightprintError:
        raise
    except (SQLAlchemyError, OSError) as e:
        raise database_error(url, e, what=what, action=action, error=error, hint=hint) from e


# ---------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(
    url: str | Path,
    *,
    what: str = "database",
    error: type[WeightprintError] = WeightprintError,
) -> Engine:
    """The engine for ``url`` (normalized by :func:`normalize_url`), created once per process.

    Parameters
    ----------
    url : str | Path
        SQLAlchemy URL or SQLite file path.
    what : str, *optional*, defaults to ``"database"``
        What the database is, for messages (``"registry"``, ``"fingerprint database"``).
    error : type, *optional*
        The :class:`WeightprintError` subclass to raise.

    Raises
    ------
    WeightprintError
        ``bad {what} URL ...`` for a malformed URL or unknown dialect;
        ``cannot open {what} ...`` when the URL's driver is not installed.
    """
    full = normalize_url(url)
    with _engines_lock:
        engine = _engines.get(full)
        if engine is None:
            engine = _create_engine(full, what=what, error=error)
            _engines[full] = engine
    return engine


def dispose_engines() -> None:
    """Close every cached engine's pooled connections and forget the engines (tests, forks)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for e in engines:
        e.dispose()


def _forget_engines_in_child() -> None:
    """After ``fork()``: the parent's pooled connections must not be used by the child (scan workers)."""
    global _engines_lock
    _engines_lock = threading.Lock()
    for e in _engines.values():
        e.dispose(close=False)
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_in_child)


def _create_engine(url: str, *, what: str, error: type[WeightprintError]) -> Engine:
    try:
        u = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise error(f"bad {what} URL {redact(url)}: {error_cause(e)}") from e
    kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    if u.drivername.startswith("sqlite"):
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
    elif u.drivername.startswith("postgresql") and "connect_timeout" not in u.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_S
    if connect_args:
        kwargs["connect_args"] = connect_args
    if u.drivername.startswith("postgresql"):
        kwargs["pool_pre_ping"] = True  # a server restart between two calls is not an error
    try:
        engine = create_engine(u, **kwargs)
    except ImportError as e:
        raise error(
            f"cannot open {what} {redact(url)}: the database driver is not installed ({e.name or e})",
            hint="pip install 'weightprint[postgres]'" if u.drivername.startswith("postgresql") else None,
        ) from e
    except (ArgumentError, NoSuchModuleError, ValueError, TypeError) as e:
        raise error(f"bad {what} URL {redact(url)}: {error_cause(e)}") from e
    if u.drivername.startswith("sqlite"):
        _configure_sqlite(engine)
    return engine


def _retry_locked(step: Callable[[], Any], timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> Any:
    """Run ``step``, retrying while SQLite says "database is locked".

    Switching a new database to WAL needs an exclusive lock, and SQLite answers a concurrent
    switch (several processes creating one registry) with SQLITE_BUSY at once, without its busy
    handler; so the switch is retried here, with a short growing sleep, up to ``timeout_s``.
    """
    import sqlite3

    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, full sync, and ``BEGIN IMMEDIATE``: a writer takes the lock when its transaction starts.

    With Python's default deferred transactions, two processes that read then write deadlock
    and one fails at once with "database is locked"; taking the lock up front makes them wait
    (up to :data:`SQLITE_BUSY_TIMEOUT_S`) instead.
    """

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take the lock
        cur = dbapi_conn.cursor()
        _retry_locked(lambda: cur.execute("PRAGMA journal_mode=WAL"))
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):  # pragma: no cover - trivial
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# ---------------------------------------------------------------------------------------
# schema versions
# ---------------------------------------------------------------------------------------
def schema_version(engine: Engine, component: str) -> int:
    """The schema version of ``component`` stored in the database (0 when none is recorded).

    Reads only: a database without the version table reports 0 and is left untouched.
    """
    if not inspect(engine).has_table(SCHEMA_TABLE):
        return 0
    with engine.connect() as conn:
        v = conn.execute(
            select(schema_version_table.c.version).where(schema_version_table.c.component == component)
        ).scalar()
    return int(v) if v is not None else 0


# One PostgreSQL advisory lock for every component's migrations: they also share the creation of
# ``wp_schema_version``, which two concurrent CREATE TABLEs would race on. A stable 63-bit key.
_MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"weightprint:schema").digest()[:8], "big") >> 1


def migrate(
    engine: Engine,
    component: str,
    migrations: Sequence[Migration],
    *,
    url: str | None = None,
    what: str = "database",
    error: type[WeightprintError] = WeightprintError,
) -> int:
    """Bring ``component``'s tables to the newest version in ``migrations``; returns that version.

    Every pending step ``(version, apply)`` (those above the recorded version, in increasing
    order) runs in one transaction together with the update of ``wp_schema_version``: either
    all of them are applied or none. Concurrent callers are serialized (SQLite: ``BEGIN
    IMMEDIATE``; PostgreSQL: an advisory transaction lock), so the second one finds
    the work done. Steps must therefore be written for the version they upgrade from; version 1
    creates the tables (``checkfirst``, so databases made before versioning adopt version 1).

    Raises
    ------
    WeightprintError (``error``)
        The database was written by a newer weightprint (its version is above every step
        known here), or the database is unreachable.
    """
    steps = sorted(migrations, key=lambda m: m[0])
    versions = [v for v, _ in steps]
    if not steps or versions[0] < 1 or len(set(versions)) != len(versions):
        raise ValueError(f"migrations of `{component}` need distinct versions >= 1, got {versions}")
    latest = versions[-1]
    where = redact(url if url is not None else engine.url.render_as_string(hide_password=True))
    t = schema_version_table
    with db_errors(where, what=what, action="open", error=error):
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            _schema_metadata.create_all(conn, checkfirst=True)
            recorded = conn.execute(select(t.c.version).where(t.c.component == component)).scalar()
            current = int(recorded) if recorded is not None else 0
            if current > latest:
                raise _newer_schema(where, component, current, latest, what=what, error=error)
            if current == latest:
                return current
            for v, apply in steps:
                if v > current:
                    apply(conn)
            now = datetime.now(timezone.utc)
            if recorded is None:
                conn.execute(insert(t).values(component=component, version=latest, updated_at=now))
            else:
                conn.execute(t.update().where(t.c.component == component).values(version=latest, updated_at=now))
    return latest


def check_schema(
    engine: Engine,
    component: str,
    latest: int,
    *,
    url: str | None = None,
    what: str = "database",
    error: type[WeightprintError] = WeightprintError,
) -> int:
    """Read-only check that ``component``'s recorded version is not newer than ``latest``; returns it."""
    where = redact(url if url is not None else engine.url.render_as_string(hide_password=True))
    with db_errors(where, what=what, action="read", error=error):
        current = schema_version(engine, component)
    if current > latest:
        raise _newer_schema(where, component, current, latest, what=what, error=error)
    return current


def _newer_schema(where: str, component: str, current: int, latest: int, *, what: str,
                  error: type[WeightprintError]) -> WeightprintError:
    return error(
        f"{what} {where} holds `{component}` schema version {current}, newer than this weightprint knows ({latest})",
        hint="upgrade weightprint",
    )


# ---------------------------------------------------------------------------------------
# result cache
# ---------------------------------------------------------------------------------------
CACHE_TABLE = "wp_cache"
_cache_metadata = MetaData()
cache_table = Table(
    CACHE_TABLE,
    _cache_metadata,
    Column("namespace", String(128), primary_key=True),
    Column("key_sha256", String(64), primary_key=True),
    Column("key", Text, nullable=False),
    Column("kind", String(8), nullable=False),  # "json" or "bytes"
    Column("value", LargeBinary, nullable=False),  # zlib-compressed
    Column("created_at", DateTime(timezone=True), nullable=False),
)

CACHE_MIGRATIONS: list[Migration] = [
    (1, lambda conn: _cache_metadata.create_all(conn, checkfirst=True)),
]


def cache_key(*parts: Any) -> str:
    """A stable key for JSON-serialisable ``parts`` (canonical JSON, sorted keys, then SHA-256).

    Examples
    --------
    >>> cache_key("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4}) == \\
    ...     cache_key("POST", "/v1/completions", {"max_tokens": 4, "prompt": "hi"})
    True
    """
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


_MISSING = object()


class ResultCache:
    """A persistent key -> value cache in one namespace of a database (e.g. HTTP responses).

    Values are ``bytes`` (returned as bytes) or anything ``json.dumps`` accepts (returned
    decoded). The table ``wp_cache`` is created on the first write; reading a cache that does
    not exist yet is a miss and creates nothing. Writers in several processes may share one
    cache: a put of an existing key replaces its value.

    Parameters
    ----------
    url : str | Path
        SQLAlchemy URL or SQLite file path.
    namespace : str
        Separates the users of one database (``"http:api.example.com"``, ``"evals"``).

    Examples
    --------
    >>> cache = ResultCache(tmp_path / "cache.db", "http")  # doctest: +SKIP
    >>> cache.put(cache_key("GET", url), {"status": 200, "body": "..."})  # doctest: +SKIP
    >>> cache.get(cache_key("GET", url))  # doctest: +SKIP
    {'status': 200, 'body': '...'}
    """

    WHAT = "result cache"

    def __init__(self, url: str | Path, namespace: str) -> None:
        if not namespace or len(namespace) > 128:
            raise WeightprintError(f"cache namespace must be 1 to 128 characters, got {len(namespace)}")
        self.url = normalize_url(url)
        self.namespace = namespace
        self._ready = False

    def __repr__(self) -> str:
        return f"ResultCache({redact(self.url)!r}, {self.namespace!r})"

    # -- plumbing ------------------------------------------------------------------------
    def _engine(self) -> Engine:
        return get_engine(self.url, what=self.WHAT)

    def _exists(self) -> bool:
        """False when nothing was ever written (no file, or no table): a read is then a miss."""
        if self._ready:
            return True
        f = sqlite_file(self.url)
        if f is not None and not f.exists():
            return False
        with db_errors(self.url, what=self.WHAT, action="read"):
            return inspect(self._engine()).has_table(CACHE_TABLE)

    def _ensure(self) -> Engine:
        engine = self._engine()
        if not self._ready:
            f = sqlite_file(self.url)
            if f is not None:
                f.parent.mkdir(parents=True, exist_ok=True)
            migrate(engine, "cache", CACHE_MIGRATIONS, url=self.url, what=self.WHAT)
            self._ready = True
        return engine

    def _where(self, key: str):
        c = cache_table.c
        return (c.namespace == self.namespace) & (c.key_sha256 == hashlib.sha256(key.encode()).hexdigest())

    # -- API -----------------------------------------------------------------------------
    def get(self, key: str, default: Any = None, *, max_age_s: float | None = None) -> Any:
        """The value stored under ``key``, or ``default`` (missing, or older than ``max_age_s``)."""
        if not self._exists():
            return default
        c = cache_table.c
        with db_errors(self.url, what=self.WHAT, action="read"):
            with self._engine().connect() as conn:
                row = conn.execute(select(c.kind, c.value, c.created_at).where(self._where(key))).first()
        if row is None:
            return default
        if max_age_s is not None:
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
            if (datetime.now(timezone.utc) - created).total_seconds() > max_age_s:
                return default
        try:
            raw = zlib.decompress(row.value)
            return raw if row.kind == "bytes" else json.loads(raw)
        except (zlib.error, ValueError) as e:
            raise WeightprintError(
                f"{self.WHAT} {redact(self.url)} holds a corrupt value in namespace `{self.namespace}`: {e}",
                hint="clear the cache",
            ) from e

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def put(self, key: str, value: Any) -> None:
        """Store ``value`` (bytes, or JSON-serialisable) under ``key``, replacing any old value."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            kind, raw = "bytes", bytes(value)
        else:
            try:
                raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                 allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise WeightprintError(f"cannot cache a {type(value).__name__} under `{key[:80]}`: {e}") from e
            kind = "json"
        row = dict(namespace=self.namespace, key_sha256=hashlib.sha256(key.encode()).hexdigest(), key=key,
                   kind=kind, value=zlib.compress(raw, 6), created_at=datetime.now(timezone.utc))
        engine = self._ensure()
        with db_errors(self.url, what=self.WHAT, action="write"):
            for attempt in range(3):
                try:
                    with engine.begin() as conn:
                        conn.execute(delete(cache_table).where(self._where(key)))
                        conn.execute(insert(cache_table).values(**row))
                    return
                except IntegrityError:  # another process inserted the same key in between
                    if attempt == 2:
                        raise
                    time.sleep(0.05 * (attempt + 1))

    def get_or_compute(self, key: str, compute: Callable[[], Any], *, max_age_s: float | None = None) -> Any:
        """The cached value, or ``compute()`` stored and returned (what a cached backend call does)."""
        hit = self.get(key, _MISSING, max_age_s=max_age_s)
        if hit is not _MISSING:
            return hit
        value = compute()
        self.put(key, value)
        return value

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        if not self._exists():
            return False
        with db_errors(self.url, what=self.WHAT, action="write"):
            with self._ensure().begin() as conn:
                return conn.execute(delete(cache_table).where(self._where(key))).rowcount > 0

    def clear(self) -> int:
        """Remove every entry of this namespace (other namespaces are kept); returns how many."""
        if not self._exists():
            return 0
        with db_errors(self.url, what=self.WHAT, action="write"):
            with self._ensure().begin() as conn:
                return conn.execute(delete(cache_table).where(cache_table.c.namespace == self.namespace)).rowcount

    def __len__(self) -> int:
        if not self._exists():
            return 0
        with db_errors(self.url, what=self.WHAT, action="read"):
            with self._engine().connect() as conn:
                return int(conn.execute(
                    select(func.count()).select_from(cache_table).where(cache_table.c.namespace == self.namespace)
                ).scalar() or 0)
