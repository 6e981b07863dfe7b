"""Crash safety of keys and the registry: concurrent `mark init`/`mark issue`, SIGKILL mid-issue, odd key files.

Issuers are forked from this (warm) process so that a round costs a fraction of a second; the
kills use the test hook ``WEIGHTPRINT_TEST_CRASH_AT=<step>:<seconds>`` (the issuer sleeps at a
step of :meth:`weightprint.mark.registry.Registry.record_copy`) or random delays.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_mark import write_tiny_llama  # noqa: E402

from weightprint.errors import RegistryError  # noqa: E402
from weightprint.io import file_sha256  # noqa: E402
from weightprint.mark import init_registry, issue_copy  # noqa: E402
from weightprint.mark import keys  # noqa: E402
from weightprint.mark.api import STAGING_DIR  # noqa: E402
from weightprint.mark.registry import LATEST_SCHEMA, PENDING, open_registry  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks issuing processes")
FILE_TYPE = "Q8_0"  # the fastest marked type on the tiny model
_fork = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The tiny llama, with one copy issued here so that every kernel is compiled before forking."""
    d = tmp_path_factory.mktemp("warm")
    src = write_tiny_llama(d / "src.gguf")
    init_registry(f"sqlite:///{d / 'reg.db'}", d / "m.key")
    issue_copy(src, "warm", FILE_TYPE, d / "warm.gguf", registry_url=f"sqlite:///{d / 'reg.db'}", key_file=d / "m.key")
    return src


def _check_consistent(url: str, outdir: Path) -> list:
    """No pending row left by a dead issuer, no row without its file, no file without its row."""
    with open_registry(url) as reg:  # reconciles dead issuers' pending rows
        rows = reg.copies(pending=True)
    assert all(r.status == "issued" for r in rows), [(r.recipient, r.status) for r in rows]
    for r in rows:
        assert Path(r.output_path).is_file(), f"row without file: {r.output_path}"
        assert file_sha256(r.output_path) == r.output_sha256, f"row with another file: {r.output_path}"
    recorded = {Path(r.output_path).name for r in rows}
    files = {f.name for f in outdir.glob("*.gguf")}
    assert files == recorded, (files, recorded)
    return rows


# --------------------------------------------------------------------------------------
# 20 rounds of concurrent `mark init` + `mark issue`
# --------------------------------------------------------------------------------------
def _init_and_issue(barrier, url: str, key: str, src: str, out: str, name: str, conn) -> None:
    try:
        barrier.wait(timeout=30)
        info = init_registry(url, key)
        issue_copy(src, name, FILE_TYPE, out, registry_url=url, key_file=key)
        conn.send(("ok", info.key_fingerprint, info.created_key))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(e).__name__}: {e}", False))
    finally:
        conn.close()
        os._exit(0)


def test_twenty_rounds_of_concurrent_init_and_issue_lose_no_key(source, tmp_path):
    workers = 4
    for rnd in range(20):
        d = tmp_path / f"round{rnd}"
        outdir = d / "out"
        outdir.mkdir(parents=True)
        url, key = f"sqlite:///{d / 'reg.db'}", d / "m.key"
        barrier = _fork.Barrier(workers)
        pipes, procs = [], []
        for i in range(workers):
            recv, send = _fork.Pipe(duplex=False)
            p = _fork.Process(target=_init_and_issue,
                              args=(barrier, url, str(key), str(source), str(outdir / f"r{i}.gguf"), f"r{i}", send))
            p.start()
            send.close()
            pipes.append(recv)
            procs.append(p)
        results = [r.recv() if r.poll(120) else ("error", "no answer", False) for r in pipes]
        for p in procs:
            p.join(30)
            if p.is_alive():  # hung: fail, but leave no process behind
                p.kill()
        assert all(r[0] == "ok" for r in results), (rnd, results)
        assert sum(r[2] for r in results) == 1, (rnd, "exactly one init creates the key", results)
        master = keys.load_key_file(key)  # the key is there, complete and 0600
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        with open_registry(url) as reg:
            assert reg.header()["key_fingerprint"] == master.fingerprint(), rnd
            reg.check_key(master)
        assert {r[1] for r in results} == {master.fingerprint()}, (rnd, results)
        assert not list(d.glob(".m.key.tmp-*")), "temporary key files left behind"
        rows = _check_consistent(url, outdir)
        assert sorted(r.recipient for r in rows) == [f"r{i}" for i in range(workers)]


def test_init_never_removes_a_key_it_did_not_create(source, tmp_path):
    """A registry made with another key: the new key made for it is removed, an existing key is not."""
    url = f"sqlite:///{tmp_path / 'reg.db'}"
    init_registry(url, tmp_path / "a.key")
    with pytest.raises(RegistryError, match="another master key"):
        init_registry(url, tmp_path / "b.key")
    assert not (tmp_path / "b.key").exists()  # made here, unchanged, never usable: removed
    keys.create_key_file(tmp_path / "c.key")
    before = (tmp_path / "c.key").read_bytes()
    with pytest.raises(RegistryError, match="another master key"):
        init_registry(url, tmp_path / "c.key")
    assert (tmp_path / "c.key").read_bytes() == before  # not made by this call: kept
    with pytest.raises(RegistryError, match="already exists"):
        keys.create_key_file(tmp_path / "c.key")
    assert (tmp_path / "c.key").read_bytes() == before
    made = keys.create_key_file_exclusive(tmp_path / "d.key")
    (tmp_path / "d.key").unlink()
    keys.create_key_file(tmp_path / "d.key")  # replaced by someone else meanwhile
    assert not made.remove_if_unchanged() and (tmp_path / "d.key").exists()
    with pytest.raises(RegistryError, match="^bad registry URL"):
        init_registry("nosuchdriver://x", tmp_path / "e.key")
    assert not (tmp_path / "e.key").exists()  # a bad URL is refused before a key is written


# --------------------------------------------------------------------------------------
# SIGKILL at each step of `mark issue`, and at random moments; then rerun
# --------------------------------------------------------------------------------------
def _issue_child(src: str, name: str, out: str, url: str, key: str, crash_at: str | None, wfd: int) -> None:
    os.dup2(wfd, 1)  # the crash hook announces itself on stdout
    sys.stdout = open(1, "w", closefd=False)  # past pytest's capture
    if crash_at:
        os.environ["WEIGHTPRINT_TEST_CRASH_AT"] = crash_at
    try:
        issue_copy(src, name, FILE_TYPE, out, registry_url=url, key_file=key)
        print("done", flush=True)
    except BaseException as e:  # noqa: BLE001
        print(f"error {type(e).__name__}: {e}", flush=True)
    finally:
        os._exit(0)


def _start_issuer(source: Path, name: str, out: Path, url: str, key: Path, crash_at: str | None = None):
    r, w = os.pipe()
    p = _fork.Process(target=_issue_child, args=(str(source), name, str(out), url, str(key), crash_at, w))
    p.start()
    os.close(w)
    return p, r


def _read_until(fd: int, needle: str, timeout: float) -> str:
    text, deadline = "", time.monotonic() + timeout
    while needle not in text and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 4096).decode()
            if not chunk:
                break
            text += chunk
    return text


@pytest.fixture()
def registry(tmp_path):
    url, key = f"sqlite:///{tmp_path / 'reg.db'}", tmp_path / "m.key"
    init_registry(url, key)
    outdir = tmp_path / "out"
    outdir.mkdir()
    return url, key, outdir


@pytest.mark.parametrize("step", ["pending", "placed", "issued"])
def test_sigkill_at_each_step_then_rerun(source, registry, step):
    """Killed after the pending row, after the move into place (before the row is marked issued), or
    after it: the registry is consistent at once, and rerunning the same command completes."""
    url, key, outdir = registry
    out = outdir / "victim.gguf"
    p, fd = _start_issuer(source, "victim", out, url, key, crash_at=f"{step}:60")
    said = _read_until(fd, f"crash point {step}", 60)
    assert f"crash point {step}" in said, said
    with open_registry(url) as reg:  # a running issuer's pending row is left alone
        live = [r for r in reg.copies(pending=True) if r.recipient == "victim"]
    assert len(live) == 1 and live[0].status == (PENDING if step != "issued" else "issued")
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    os.close(fd)
    rows = _check_consistent(url, outdir)
    assert [r.recipient for r in rows] == ([] if step == "pending" else ["victim"])
    again = issue_copy(source, "victim", FILE_TYPE, out, registry_url=url, key_file=key)  # no refusal
    assert again.output_sha256 == file_sha256(out)
    if step != "pending":
        assert again.issue_id == rows[0].issue_id and again.n_marked_weights > 0  # the copy the killed run placed
    rows = _check_consistent(url, outdir)
    assert [r.recipient for r in rows] == ["victim"] and rows[0].issue_id == again.issue_id
    issue_copy(source, "next", FILE_TYPE, outdir / "next.gguf", registry_url=url, key_file=key)
    assert not (outdir / STAGING_DIR).exists()  # the dead issuer's staging folder is gone


def test_sigkill_at_random_moments_then_rerun(source, registry):
    url, key, outdir = registry
    rng = random.Random(11)
    for i in range(8):
        out = outdir / f"v{i}.gguf"
        p, fd = _start_issuer(source, f"v{i}", out, url, key)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        os.close(fd)
        _check_consistent(url, outdir)
        issue_copy(source, f"v{i}", FILE_TYPE, out, registry_url=url, key_file=key)
        rows = _check_consistent(url, outdir)
        assert sorted(r.recipient for r in rows) == sorted(f"v{j}" for j in range(i + 1))


def test_a_pending_row_of_another_host_waits(source, registry):
    """A pending row whose issuer cannot be checked (another host) is left until it is a day old."""
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from weightprint.mark.registry import copies_table

    url, key, outdir = registry
    out = outdir / "far.gguf"
    issue_copy(source, "far", FILE_TYPE, out, registry_url=url, key_file=key)
    with open_registry(url) as reg, reg.engine.begin() as conn:
        conn.execute(update(copies_table).values(status=PENDING, owner="elsewhere|1|1",
                                                 issued_at=datetime.now(timezone.utc)))
    out.unlink()
    with open_registry(url) as reg:
        assert [r.status for r in reg.copies(pending=True)] == [PENDING]
        with reg.engine.begin() as conn:
            conn.execute(update(copies_table).values(issued_at=datetime.now(timezone.utc) - timedelta(days=2)))
    with open_registry(url) as reg:
        assert reg.copies(pending=True) == []


def test_a_version_1_registry_is_migrated_and_keeps_its_copies(source, tmp_path):
    import sqlite3

    from weightprint.mark.registry import _create_v1
    from weightprint.store import get_engine, migrate

    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    engine = get_engine(url, what="registry", error=RegistryError)
    migrate(engine, "registry", [(1, _create_v1)], url=url)
    cols = {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(wp_copies)")}
    assert "status" not in cols
    with pytest.raises(RegistryError):  # not initialised yet: no header row
        open_registry(url)
    init_registry(url, tmp_path / "m.key")  # the header row; the schema moves to the latest version
    issue_copy(source, "alice", FILE_TYPE, tmp_path / "alice.gguf", registry_url=url, key_file=tmp_path / "m.key")
    with sqlite3.connect(db) as con:
        version = con.execute("SELECT version FROM wp_schema_version WHERE component = 'registry'").fetchone()[0]
        status = con.execute("SELECT status FROM wp_copies").fetchall()
    assert version == LATEST_SCHEMA == 2 and status == [("issued",)]


# --------------------------------------------------------------------------------------
# key files that are not regular files: one line, never a hang
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "symlink-to-fifo"])
def test_key_file_must_be_a_regular_file(tmp_path, kind):
    path = tmp_path / "m.key"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/null")
    else:
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    t0 = time.monotonic()
    with pytest.raises(RegistryError, match=r"^key file .* is not a regular file \((a FIFO|a directory|a character "
                                            r"device)\)$"):
        keys.load_key_file(path)
    assert time.monotonic() - t0 < 5


def test_cli_with_a_fifo_key_file_is_one_line_and_returns(source, tmp_path):
    from typer.testing import CliRunner

    from weightprint.cli import app

    fifo = tmp_path / "m.key"
    os.mkfifo(fifo)
    registry = f"sqlite:///{tmp_path / 'r.db'}"
    expected = f"error: key file {fifo} is not a regular file (a FIFO)"
    init = CliRunner().invoke(app, ["mark", "init", "--registry", registry, "--key-file", str(fifo)])
    assert init.exit_code == 2 and init.stderr.splitlines()[0] == expected, init.stderr
    assert not (tmp_path / "r.db").exists()
    env = {**os.environ, "WEIGHTPRINT_QUIET": "1"}  # the real console script: it returns, never blocks on the FIFO
    p = subprocess.run([sys.executable, "-m", "weightprint", "mark", "issue", str(source), "--recipient", "x",
                        "--out", str(tmp_path / "x.gguf"), "--registry", registry, "--key-file", str(fifo)],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.splitlines()[0] == expected, p.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # left as it was


def test_concurrent_issuers_to_one_output_path_never_replace_each_other(source, registry):
    url, key, outdir = registry
    out = outdir / "same.gguf"
    started = [_start_issuer(source, f"w{i}", out, url, key) for i in range(3)]
    said = []
    for p, fd in started:
        said.append(_read_until(fd, "\n", 120))
        p.join(30)
        if p.is_alive():
            p.kill()
        os.close(fd)
    assert sum(s.startswith("done") for s in said) == 1, said
    assert all(s.startswith(("done", "error WeightprintError: output")) for s in said), said
    rows = _check_consistent(url, outdir)
    assert len(rows) == 1 and file_sha256(out) == rows[0].output_sha256


def test_crash_hook_is_inert_without_the_variable(monkeypatch):
    from weightprint.mark import registry

    monkeypatch.delenv("WEIGHTPRINT_TEST_CRASH_AT", raising=False)
    t0 = time.monotonic()
    registry._crash_point("placed")
    assert time.monotonic() - t0 < 0.1
