"""The unit of work of a scan: fingerprint one model file or directory into the database.

:func:`scan_one` is what a Ray task or a pool process runs. It is idempotent: it reads the
file's record first (same size and mtime: nothing to do), hashes the content (a content
already fingerprinted under another path is not fingerprinted again), and only then opens
the model. Memory stays bounded by the model reader's streaming (one tensor at a time).
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

__all__ = ["KILL_ONCE_ENV", "scan_one"]

KILL_ONCE_ENV = "WEIGHTPRINT_SCAN_KILL_ONCE"
"""Fault injection for tests: a path; the first worker to create it dies between its two writes."""


def _band_hashes(minhash: Any, n_bands: int) -> list[str]:
    import hashlib

    import numpy as np

    if minhash is None:
        return ["no-tokenizer"] * 1
    m = np.asarray(minhash, dtype=np.uint64)
    rows = max(1, len(m) // n_bands)
    return [hashlib.sha256(m[i * rows:(i + 1) * rows].tobytes()).hexdigest()[:16] for i in range(n_bands)]


def _tokenizer_sha(model: Any) -> str | None:
    import hashlib

    tok = model.tokenizer
    if tok is None or not tok.tokens:
        return None
    h = hashlib.sha256()
    for t in tok.tokens:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _maybe_die() -> None:
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(137)


def scan_one(item: dict[str, Any], db_url: str) -> dict[str, Any]:
    """Fingerprint ``item`` (a :class:`ScanItem` as a dict) into ``db_url``; returns what happened.

    Returns ``{"path", "ref", "status", "content_sha256", "seconds", "bytes_read", "error",
    "max_rss_kb", "pid"}`` with ``status`` one of ``cached`` (record unchanged: nothing read),
    ``deduplicated`` (content already fingerprinted: hashed only), ``computed``, ``error``.
    """
    from weightprint.errors import WeightprintError
    from weightprint.io.hashing import model_sha256
    from weightprint.scan.db import N_BANDS, ScanDB

    t0 = time.perf_counter()
    path, ref = item["path"], item["ref"]
    out: dict[str, Any] = {"path": path, "ref": ref, "status": "error", "content_sha256": None, "seconds": 0.0,
                           "bytes_read": 0, "error": None, "pid": os.getpid()}
    db = ScanDB(db_url)

    def done(**kw: Any) -> dict[str, Any]:
        out.update(kw)
        out["seconds"] = time.perf_counter() - t0
        out["max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return out

    if item.get("error"):
        db.put_file(path=path, ref=ref, size=0, mtime_ns=0, content_sha256=None, status="error", error=item["error"])
        return done(error=item["error"])
    row = db.file_row(path)
    if (row is not None and row.status == "ok" and row.size == item["size"] and row.mtime_ns == item["mtime_ns"]
            and row.content_sha256 and db.has_fingerprint(row.content_sha256)):
        return done(status="cached", content_sha256=row.content_sha256, error=None)
    try:
        sha = model_sha256(path)
        out["bytes_read"] = int(item["size"])
        if db.has_fingerprint(sha):
            db.put_file(path=path, ref=ref, size=item["size"], mtime_ns=item["mtime_ns"], content_sha256=sha, status="ok")
            return done(status="deduplicated", content_sha256=sha)
        fp_row, bands = _fingerprint(path, ref, sha, int(item["size"]), n_bands=N_BANDS)
    except WeightprintError as e:
        msg = str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop a scan of thousands: report it, go on
        msg = f"{path}: cannot fingerprint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    else:
        db.put_fingerprint(fp_row, bands)
        _maybe_die()
        db.put_file(path=path, ref=ref, size=item["size"], mtime_ns=item["mtime_ns"], content_sha256=sha, status="ok")
        return done(status="computed", content_sha256=sha)
    db.put_file(path=path, ref=ref, size=item["size"], mtime_ns=item["mtime_ns"], content_sha256=None, status="error",
                error=msg)
    return done(error=msg)


def _fingerprint(path: str, ref: str, sha: str, size: int, *, n_bands: int) -> tuple[dict[str, Any], list[str]]:
    from weightprint.io.open import open_model
    from weightprint.lineage.fingerprint import build_fingerprint, fingerprint_budget_bytes
    from weightprint.scan.signature import model_signature

    t0 = time.perf_counter()
    with open_model(Path(path)) as m:
        full = build_fingerprint(m, label=ref)
        sig = model_signature(m, total_bytes=size, tokens=full.tokens)
        tok_sha = _tokenizer_sha(m)
    compact = full.compact(max_bytes=fingerprint_budget_bytes(full.n_parameters))
    blob = compact.to_bytes()
    row = dict(content_sha256=sha, label=ref[:1024], hidden_size=int(full.hidden_size), n_layers=int(full.n_layers),
               n_parameters=int(full.n_parameters), vocab_size=int(full.vocab_size), tokenizer_sha256=tok_sha,
               n_bytes=int(size), seconds=time.perf_counter() - t0, signature=json.dumps(sig), blob=blob)
    return row, _band_hashes(full.vocab_minhash, n_bands)
