"""The one SQL layer (weightprint.store): URLs, engines, messages, schema versions, result cache.

Every check runs on SQLite files in ``tmp_path`` (milliseconds) and, where marked, again on a
throwaway PostgreSQL server (tests/_fixtures_postgres.py; skipped when none is installed).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, select, text

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_postgres import postgres_url  # noqa: E402,F401 - a pytest fixture

from weightprint import store  # noqa: E402
from weightprint.errors import RegistryError, WeightprintError  # noqa: E402
from weightprint.store import ResultCache, cache_key, migrate, normalize_url, redact, schema_version  # noqa: E402


# --------------------------------------------------------------------------------------
# URLs and messages
# --------------------------------------------------------------------------------------
def test_normalize_url_takes_plain_paths_and_maps_postgresql_to_psycopg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize_url("refs.db") == f"sqlite:///{tmp_path / 'refs.db'}"
    assert normalize_url(tmp_path / "a b.db") == f"sqlite:///{tmp_path / 'a b.db'}"
    assert normalize_url("~/x.db") == f"sqlite:///{Path.home() / 'x.db'}"
    assert normalize_url("sqlite:///rel.db") == "sqlite:///rel.db"
    assert normalize_url("sqlite://") == "sqlite://"
    assert normalize_url("postgresql://u:pw@h:5432/db") == "postgresql+psycopg://u:pw@h:5432/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"


def test_redact_hides_passwords_only():
    assert redact("postgresql+psycopg://alice:s3cr%40t@db.example/refs") == "postgresql+psycopg://alice:***@db.example/refs"
    assert redact("postgresql://alice@db/refs") == "postgresql://alice@db/refs"
    assert redact("/data/refs.db") == "/data/refs.db"
    assert redact("sqlite:////data/refs.db") == "sqlite:////data/refs.db"
    # unparseable (the port is not a number): what looks like a password is still hidden
    assert redact("postgresql://alice:hunter2@h:notaport/db") == "postgresql://alice:***@h:notaport/db"


def test_engines_are_cached_per_url_and_path(tmp_path):
    f = tmp_path / "e.db"
    e1 = store.get_engine(f)
    assert store.get_engine(str(f)) is e1 and store.get_engine(f"sqlite:///{f}") is e1
    assert store.get_engine(tmp_path / "other.db") is not e1
    with e1.connect() as conn:  # the shared settings: WAL journal, busy timeout
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == int(store.SQLITE_BUSY_TIMEOUT_S * 1000)
    store.dispose_engines()
    assert store.get_engine(f) is not e1


def test_bad_urls_and_missing_drivers_are_one_line_errors():
    with pytest.raises(WeightprintError, match=r"^bad registry URL nosuchdriver://x/y: .*nosuchdriver") as e:
        store.get_engine("nosuchdriver://x/y", what="registry")
    assert "\n" not in str(e.value)
    with pytest.raises(RegistryError, match=r"^bad registry URL"):
        store.get_engine("nosuchdriver://x/y", what="registry", error=RegistryError)
    # a driver that is not installed: the message names the URL without its password
    with pytest.raises(WeightprintError, match=r"^cannot open database mysql\+mysqldb://u:\*\*\*@h/db: the database "
                                               r"driver is not installed \(MySQLdb\)$") as e:
        store.get_engine("mysql+mysqldb://u:hunter2@h/db")
    assert "hunter2" not in str(e.value) and "\n" not in str(e.value)


def test_db_errors_turn_driver_errors_into_one_line_messages(tmp_path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}"
    with pytest.raises(WeightprintError, match=r"^cannot read fingerprint database sqlite:///.*x\.db: unable to open database file$") as e:
        with store.db_errors(url, what="fingerprint database", action="read"):
            with store.get_engine(url).connect() as conn:
                conn.execute(text("SELECT 1"))
    assert e.value.__cause__ is not None  # chained, not swallowed
    with pytest.raises(WeightprintError, match="^kept as is$"):  # our own errors pass through
        with store.db_errors(url):
            raise WeightprintError("kept as is")


def test_postgres_connect_timeout_is_set():
    pytest.importorskip("psycopg")
    url = normalize_url("postgresql://u@127.0.0.1:1/db")  # port 1: refused at once
    assert store.get_engine(url).dialect.driver == "psycopg"
    t0 = time.perf_counter()
    with pytest.raises(WeightprintError, match=r"^cannot use database postgresql\+psycopg://u@127\.0\.0\.1:1/db: "):
        with store.db_errors(url), store.get_engine(url).connect():
            pass
    assert time.perf_counter() - t0 < store.POSTGRES_CONNECT_TIMEOUT_S + 5


# --------------------------------------------------------------------------------------
# schema versions and migrations
# --------------------------------------------------------------------------------------
def _steps(log: list[int]):
    md = MetaData()
    Table("t_items", md, Column("id", Integer, primary_key=True), Column("name", String(50)))

    def v1(conn):
        log.append(1)
        md.create_all(conn)

    def v2(conn):
        log.append(2)
        conn.execute(text("ALTER TABLE t_items ADD COLUMN score INTEGER"))

    return [(1, v1), (2, v2)]


def _check_migrations(url: str):
    engine = store.get_engine(url)
    with engine.begin() as conn:  # a clean slate on a shared server
        conn.execute(text("DROP TABLE IF EXISTS t_items"))
        conn.execute(text("DROP TABLE IF EXISTS wp_schema_version"))
    assert schema_version(engine, "items") == 0
    log: list[int] = []
    steps = _steps(log)
    assert migrate(engine, "items", steps[:1]) == 1 and log == [1]
    assert migrate(engine, "items", steps[:1]) == 1 and log == [1]  # nothing pending
    assert migrate(engine, "items", steps) == 2 and log == [1, 2]  # only the new step runs
    assert migrate(engine, "items", list(reversed(steps))) == 2 and log == [1, 2]
    assert "score" in {c["name"] for c in inspect(engine).get_columns("t_items")}
    assert schema_version(engine, "items") == 2 and schema_version(engine, "other") == 0
    # components are independent
    assert migrate(engine, "other", [(1, lambda conn: None)]) == 1 and schema_version(engine, "items") == 2
    # a database written by a newer weightprint is refused, not downgraded
    with pytest.raises(WeightprintError, match=r"holds `items` schema version 2, newer than this weightprint knows \(1\)"):
        migrate(engine, "items", steps[:1])
    with pytest.raises(WeightprintError, match=r"newer than this weightprint knows \(1\)"):
        store.check_schema(engine, "items", 1)
    assert store.check_schema(engine, "items", 2) == 2

    # a failing step leaves the version and the schema as they were
    def v3(conn):
        conn.execute(text("ALTER TABLE t_items ADD COLUMN extra INTEGER"))
        raise RuntimeError("step 3 failed")

    with pytest.raises(RuntimeError, match="step 3 failed"):
        migrate(engine, "items", [*steps, (3, v3)])
    assert schema_version(engine, "items") == 2
    assert "extra" not in {c["name"] for c in inspect(engine).get_columns("t_items")}
    with pytest.raises(ValueError, match="distinct versions >= 1"):
        migrate(engine, "items", [(1, lambda c: None), (1, lambda c: None)])


def test_migrations_on_sqlite(tmp_path):
    _check_migrations(str(tmp_path / "m.db"))


def test_migrations_on_postgresql(postgres_url):
    pytest.importorskip("psycopg")
    _check_migrations(postgres_url)


_MIGRATOR = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import text
    from weightprint.store import get_engine, migrate
    url, order = sys.argv[1], sys.argv[2]
    def steps(table):
        def v1(conn):
            conn.execute(text(f"CREATE TABLE {table} (pid INTEGER)"))
        def v2(conn):
            conn.execute(text(f"INSERT INTO {table} VALUES (1)"))
            time.sleep(0.3)  # widen the window in which a second migrator could slip in
        return [(1, v1), (2, v2)]
    components = ["race_a", "race_b"] if order == "ab" else ["race_b", "race_a"]
    print(*[migrate(get_engine(url), c, steps(c)) for c in components])
    """
)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_migrators_apply_each_step_once(tmp_path, backend, request):
    """Three processes migrate two components in opposite orders, from a database without any table."""
    if backend == "postgresql":
        pytest.importorskip("psycopg")
        url = request.getfixturevalue("postgres_url")
        with store.get_engine(url).begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS race_a, race_b, wp_schema_version"))
    else:
        url = str(tmp_path / "race.db")
    script = tmp_path / "migrator.py"
    script.write_text(_MIGRATOR)
    procs = [subprocess.Popen([sys.executable, str(script), url, order], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for order in ("ab", "ba", "ab")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    assert [o[0].strip() for o in outs] == ["2 2"] * 3
    with store.get_engine(url).connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM race_a")).scalar() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM race_b")).scalar() == 1


# --------------------------------------------------------------------------------------
# result cache
# --------------------------------------------------------------------------------------
def _check_cache(url: str):
    a, b = ResultCache(url, "http:a"), ResultCache(url, "http:b")
    a.clear(), b.clear()
    k = cache_key("POST", "/v1/completions", {"prompt": "Grüß dich", "max_tokens": 4})
    assert a.get(k) is None and a.get(k, "dflt") == "dflt" and k not in a and len(a) == 0
    value = {"choices": [{"text": " hello", "logprobs": [-0.25, -1.5]}], "usage": {"total_tokens": 9}}
    a.put(k, value)
    assert a.get(k) == value and k in a and len(a) == 1
    assert b.get(k) is None and len(b) == 0  # namespaces are separate
    a.put(k, {"replaced": True})
    assert a.get(k) == {"replaced": True} and len(a) == 1
    blob = bytes(range(256)) * 40
    a.put("raw", blob)
    assert a.get("raw") == blob and isinstance(a.get("raw"), bytes)
    assert ResultCache(url, "http:a").get(k) == {"replaced": True}  # persistent across instances
    calls = []
    assert b.get_or_compute("x", lambda: calls.append(1) or [1, 2]) == [1, 2]
    assert b.get_or_compute("x", lambda: calls.append(1) or [3]) == [1, 2] and calls == [1]
    assert a.get(k, max_age_s=3600) == {"replaced": True}
    time.sleep(0.05)
    assert a.get(k, max_age_s=0.01) is None
    assert a.delete(k) and not a.delete(k) and a.get(k) is None
    assert a.clear() == 1 and len(a) == 0 and len(b) == 1
    with pytest.raises(WeightprintError, match=r"^cannot cache a set under `bad`"):
        a.put("bad", {1, 2})
    with pytest.raises(WeightprintError, match=r"^cannot cache a dict under `nan`"):
        a.put("nan", {"x": float("nan")})


def test_result_cache_on_sqlite(tmp_path):
    f = tmp_path / "sub" / "cache.db"
    c = ResultCache(f, "http")
    assert c.get("k") is None and len(c) == 0 and c.clear() == 0 and not c.delete("k")
    assert not f.exists() and not f.parent.exists()  # reads create nothing
    c.put("k", [1])
    assert f.is_file() and schema_version(store.get_engine(f), "cache") == 1
    _check_cache(str(f))


def test_result_cache_on_postgresql(postgres_url):
    pytest.importorskip("psycopg")
    _check_cache(postgres_url)


def test_result_cache_reports_corrupt_values_and_bad_namespaces(tmp_path):
    f = tmp_path / "c.db"
    c = ResultCache(f, "ns")
    c.put("k", {"a": 1})
    with store.get_engine(f).begin() as conn:
        conn.execute(store.cache_table.update().values(value=b"not zlib"))
    with pytest.raises(WeightprintError, match=r"^result cache sqlite:///.*c\.db holds a corrupt value in namespace `ns`"):
        c.get("k")
    with pytest.raises(WeightprintError, match="cache namespace must be 1 to 128 characters, got 0"):
        ResultCache(f, "")


def test_result_cache_shared_by_processes(tmp_path):
    f = tmp_path / "shared.db"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(
        """
        import sys
        from weightprint.store import ResultCache
        c = ResultCache(sys.argv[1], "ns")
        for i in range(20):
            c.put(f"k{i}", {"writer": sys.argv[2], "i": i})
            c.put("same", sys.argv[2])
        """
    ))
    procs = [subprocess.Popen([sys.executable, str(script), str(f), str(w)], stderr=subprocess.PIPE, text=True)
             for w in range(3)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errs]
    c = ResultCache(f, "ns")
    assert len(c) == 21 and c.get("same") in {"0", "1", "2"}
    assert all(c.get(f"k{i}")["i"] == i for i in range(20))


def test_cache_key_is_canonical():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and len(cache_key("x")) == 64


def test_fingerprint_table_is_versioned(tmp_path):
    """The fingerprint DB records its schema; a plain path works like a sqlite:/// URL."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _fixtures_lineage import array_model, random_llama

    from weightprint.lineage.db import fingerprint_model, list_fingerprints

    f = tmp_path / "refs.db"
    fingerprint_model(array_model(random_llama(1, d=32, n_layers=2)), f, label="x")
    assert schema_version(store.get_engine(f), "fingerprints") == 1
    assert [r["label"] for r in list_fingerprints(f"sqlite:///{f}")] == ["x"]
    with store.get_engine(f).begin() as conn:
        conn.execute(text("UPDATE wp_schema_version SET version = 9 WHERE component = 'fingerprints'"))
    with pytest.raises(WeightprintError, match=r"holds `fingerprints` schema version 9, newer than this weightprint knows"):
        list_fingerprints(f)
    with store.get_engine(f).connect() as conn:  # the old rows are untouched
        assert conn.execute(select(text("label")).select_from(text("weightprint_fingerprints"))).scalar() == "x"


def test_a_forked_child_gets_its_own_engine(tmp_path):
    import os

    f = tmp_path / "fork.db"
    cache = ResultCache(f, "ns")
    cache.put("k", "parent")
    parent_engine = store.get_engine(f)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a fresh engine, and the parent's data is readable through it
        ok = store.get_engine(f) is not parent_engine and ResultCache(f, "ns").get("k") == "parent"
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert store.get_engine(f) is parent_engine and cache.get("k") == "parent"


def _open_and_write(url: str, ready, out) -> None:
    try:
        from sqlalchemy import text as sql_text

        from weightprint import store as st

        eng = st.get_engine(url)
        ready.wait()
        with eng.begin() as c:
            c.execute(sql_text("create table if not exists t (x integer)"))
        out.put("ok")
    except Exception as e:  # noqa: BLE001 - reported to the parent
        out.put(repr(e)[:200])


def test_many_processes_opening_a_new_sqlite_database_at_once_never_see_locked(tmp_path):
    """Switching a fresh database to WAL races between processes (SQLite answers BUSY without its
    busy handler); measured before the retry: 1 'database is locked' in 90 openings."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(10):
        url = f"sqlite:///{tmp_path}/race{round_}.db"
        ready, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(url, ready, out)) for _ in range(6)]
        for p in procs:
            p.start()
        ready.set()
        for p in procs:
            p.join(120)
        failures += [r for r in (out.get(timeout=10) for _ in procs) if r != "ok"]
    assert failures == []
