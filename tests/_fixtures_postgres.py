"""A throwaway PostgreSQL server for the SQL store tests (registry, fingerprints, cache).

``postgres_url`` yields ``$WEIGHTPRINT_TEST_POSTGRES_URL`` when set, otherwise starts a private
server from Debian's ``postgresql`` package (``/usr/lib/postgresql/*/bin``) on a Unix socket for
the test module, and skips when none is installed. Import it into a test module:
``from _fixtures_postgres import postgres_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    url = os.environ.get("WEIGHTPRINT_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    pg_ctl = shutil.which("pg_ctl") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))), None)
    if pg_ctl is None:
        pytest.skip("PostgreSQL tests skipped: no server (set WEIGHTPRINT_TEST_POSTGRES_URL or install postgresql)")
    bindir = Path(pg_ctl).resolve().parent
    base = Path(tempfile.mkdtemp(prefix="weightprint-pg-"))  # pytest's tmp is 0700 root: not for `postgres`
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("PostgreSQL tests skipped: running as root without `runuser`")
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL tests skipped: running as root and no `postgres` user")
        os.chmod(base, 0o755)
        for d in (base, sock):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    run = lambda *a: subprocess.run([*prefix, *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL tests skipped: initdb failed: {r.stderr.strip()[-200:]}")
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"), "-o",
            f"-k {sock} -c listen_addresses='' -c fsync=off", "start")
    if r.returncode != 0:
        pytest.skip(f"PostgreSQL tests skipped: server did not start: {r.stderr.strip()[-200:]}")
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={sock}"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
