"""Registry reliability: concurrent issuers, SIGKILL mid-write, PostgreSQL.

Each check runs real issuing processes on a tiny llama GGUF (seconds).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_mark import write_tiny_llama  # noqa: E402
from _fixtures_postgres import postgres_url  # noqa: E402,F401 - a pytest fixture

from weightprint.mark import init_registry, issue_copy, trace_leak  # noqa: E402
from weightprint.mark.api import STAGING_DIR  # noqa: E402
from weightprint.mark.registry import open_registry  # noqa: E402
from weightprint.io import file_sha256  # noqa: E402

_ISSUER = textwrap.dedent(
    """
    import sys, time
    from weightprint.mark import issue_copy
    from weightprint.errors import WeightprintError
    source, url, key, outdir, delay = sys.argv[1:6]
    names = sys.argv[6:]
    def slow(done, total, name):
        time.sleep(float(delay))
    for name in names:
        try:
            issue_copy(source, name, "Q4_K_M", f"{outdir}/{name}-{__import__('os').getpid()}.gguf",
                       registry_url=url, key_file=key, progress=slow if float(delay) else None)
            print("ok", name, flush=True)
        except WeightprintError as e:
            print("refused", name, e, flush=True)
    """
)


def _issuer(tmp_path: Path, source: Path, url: str, key: Path, outdir: Path, names: list[str], delay: float = 0.0):
    script = tmp_path / "issuer.py"
    if not script.exists():
        script.write_text(_ISSUER)
    return subprocess.Popen([sys.executable, str(script), str(source), url, str(key), str(outdir), str(delay), *names],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_consistent(url: str, outdir: Path) -> list:
    """Every row has its complete file; no partial file sits at an output path."""
    with open_registry(url) as reg:
        rows = reg.copies()
    for r in rows:
        assert Path(r.output_path).is_file(), f"row without file: {r.output_path}"
        assert file_sha256(r.output_path) == r.output_sha256
    recorded = {Path(r.output_path).name for r in rows}
    for f in outdir.glob("*.gguf"):
        assert f.name in recorded, f"output file without row: {f}"
    return rows


def _setup(tmp_path: Path, url: str | None = None):
    source = write_tiny_llama(tmp_path / "src.gguf")
    url = url or f"sqlite:///{tmp_path / 'reg.db'}"
    key = tmp_path / "m.key"
    init_registry(url, key)
    outdir = tmp_path / "out"
    outdir.mkdir()
    return source, url, key, outdir


def test_four_concurrent_issuers_lose_nothing_and_duplicate_nothing(tmp_path):
    source, url, key, outdir = _setup(tmp_path)
    procs = [_issuer(tmp_path, source, url, key, outdir, [f"r{i}", "shared"]) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    text = "".join(o[0] for o in outs)
    assert text.count("ok shared") == 1 and text.count("refused shared") == 3, text
    rows = _check_consistent(url, outdir)
    assert sorted(r.recipient for r in rows) == ["r0", "r1", "r2", "r3", "shared"]
    assert len({r.issue_id for r in rows}) == 5 and len({r.key_salt for r in rows}) == 5


def test_sigkill_mid_write_leaves_no_orphan_row_and_no_partial_file(tmp_path):
    source, url, key, outdir = _setup(tmp_path)
    killed = 0
    for i, wait in enumerate([0.3, 0.8, 1.5]):
        p = _issuer(tmp_path, source, url, key, outdir, [f"victim{i}"], delay=0.05)
        deadline = time.time() + 60
        staging = outdir / STAGING_DIR
        while time.time() < deadline and not (staging.is_dir() and any(staging.rglob("*"))):
            time.sleep(0.01)
        time.sleep(wait * 0.2)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.communicate(timeout=60)
        _check_consistent(url, outdir)
    assert killed >= 2
    with open_registry(url) as reg:
        assert all(r.recipient != "victim0" for r in reg.copies())
    # the next issue removes the dead issuers' staging folders
    res = issue_copy(source, "after", "Q4_K_M", outdir / "after.gguf", registry_url=url, key_file=key)
    assert Path(res.output).is_file()
    assert not (outdir / STAGING_DIR).exists()
    _check_consistent(url, outdir)


def test_registry_accepts_a_plain_path_and_an_absent_file_stays_absent(tmp_path, monkeypatch):
    from weightprint.errors import RegistryError

    monkeypatch.chdir(tmp_path)
    source = write_tiny_llama(tmp_path / "src.gguf")
    info = init_registry("reg.db", tmp_path / "m.key")  # relative plain path: a SQLite file here
    assert info.created_registry and (tmp_path / "reg.db").is_file()
    issue_copy(source, "alice", "Q8_0", tmp_path / "alice.gguf", registry_url="reg.db", key_file=tmp_path / "m.key")
    with open_registry(f"sqlite:///{tmp_path / 'reg.db'}") as reg:  # the same file by URL
        assert [r.recipient for r in reg.copies()] == ["alice"]
    again = init_registry(str(tmp_path / "reg.db"), tmp_path / "m.key")
    assert not again.created_registry and again.registry_id == info.registry_id
    with pytest.raises(RegistryError, match=r"^registry .*none\.db is not initialised \(no such file\)$"):
        open_registry(str(tmp_path / "none.db"))
    assert not (tmp_path / "none.db").exists()


# --------------------------------------------------------------------------------------
# PostgreSQL: a throwaway server (tests/_fixtures_postgres.py) when one is installed
# --------------------------------------------------------------------------------------
def test_postgresql_registry_issue_trace_and_concurrency(tmp_path, postgres_url):
    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.begin() as conn:  # a clean schema per run
        conn.execute(text("DROP TABLE IF EXISTS wp_copies, wp_registry, wp_schema_version"))
    engine.dispose()
    source, url, key, outdir = _setup(tmp_path, postgres_url)
    procs = [_issuer(tmp_path, source, url, key, outdir, [f"p{i}", "shared"]) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    text_out = "".join(o[0] for o in outs)
    assert text_out.count("ok shared") == 1, text_out
    rows = _check_consistent(url, outdir)
    assert sorted(r.recipient for r in rows) == ["p0", "p1", "p2", "p3", "shared"]
    p2 = next(r for r in rows if r.recipient == "p2")
    v = trace_leak(p2.output_path, source=source, registry_url=url, key_file=key)
    assert v.accused_recipient == "p2" and v.n_copies == 5
