"""Scan benchmark: files/s and MB/s of `weightprint scan` with 1 and 2 workers, against the
disk's sequential read rate measured in the same run; memory per worker; database size per
fingerprint; time of the graph (pair tests). Writes bench/results/scan.json.

Material: the synthetic hub of tests/test_scan_hub.py (42 paths, 41 contents, 2.9 GB of
SmolLM2 / Gemma 3 / tiny models). Before each timed run the page cache of every hub file is
dropped (``posix_fadvise(DONTNEED)``), so the scan reads from disk like a first scan does.

    python bench/bench_scan.py [--root DIR] [--workers 1 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def hub_files(hub) -> list[Path]:
    """Every real file behind the hub (symlinks resolved, each once)."""
    seen: dict[str, Path] = {}
    for base in (hub.hf_cache, hub.ollama, hub.tree):
        for p in base.rglob("*"):
            if p.is_file():
                seen.setdefault(os.path.realpath(p), Path(os.path.realpath(p)))
    return list(seen.values())


def drop_cache(files: list[Path]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(p, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read_mb_s(files: list[Path], *, min_bytes: int = 1 << 30) -> dict:
    """Read the largest files front to back (8 MiB reads) after dropping their cache."""
    chosen, total = [], 0
    for p in sorted(files, key=lambda p: -p.stat().st_size):
        chosen.append(p)
        total += p.stat().st_size
        if total >= min_bytes:
            break
    drop_cache(chosen)
    t0 = time.perf_counter()
    n = 0
    for p in chosen:
        with open(p, "rb", buffering=0) as f:
            while b := f.read(8 << 20):
                n += len(b)
    dt = time.perf_counter() - t0
    return {"bytes": n, "seconds": dt, "mb_s": n / dt / 1e6, "files": len(chosen)}


def run(hub, targets: list[str], workers: int, use_ray: bool, files: list[Path]) -> dict:
    from weightprint.scan.db import ScanDB
    from weightprint.scan.discover import discover_models
    from weightprint.scan.execute import run_local, run_ray
    from weightprint.scan.graph import build_graph

    with tempfile.TemporaryDirectory() as tmp:
        db = ScanDB(Path(tmp) / "scan.db")
        items = [i.to_dict() for i in discover_models(targets)]
        drop_cache(files)
        t0 = time.perf_counter()
        if use_ray:
            import ray

            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20,
                     runtime_env={"env_vars": hub.env()})
            t_ray = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = run_ray(items, db.url, address="auto")
            ray.shutdown()
        else:
            t_ray = None
            out = run_local(items, db.url, workers=workers)
        t_fp = time.perf_counter() - t0
        shas = sorted({o["content_sha256"] for o in out if o["content_sha256"]})
        t1 = time.perf_counter()
        nodes, edges, n_pairs = build_graph(db, shas)
        t_graph = time.perf_counter() - t1
        size = (Path(tmp) / "scan.db").stat().st_size
        rows = db.fingerprint_rows(shas)
        blob = sum(len(r.blob) for r in rows.values()) / len(rows)
        sig = sum(len(r.signature) for r in rows.values()) / len(rows)
        t2 = time.perf_counter()
        again = run_local(items, db.url, workers=workers)
        t_rerun = time.perf_counter() - t2
    n_bytes = sum(i["size"] for i in items)
    computed = [o for o in out if o["status"] == "computed"]
    per_file = sorted(o["seconds"] for o in computed)
    rss = [o["max_rss_kb"] for o in out if o.get("max_rss_kb")]
    big = [o for o in computed if o["bytes_read"] > 50e6]
    return {
        "load_average_1min_after": os.getloadavg()[0],
        "executor": f"ray ({workers} CPUs)" if use_ray else f"local pool ({workers} workers)",
        "workers": workers, "files": len(items), "bytes": n_bytes,
        "ray_start_seconds": t_ray,
        "fingerprint_seconds": t_fp, "files_per_s": len(items) / t_fp, "mb_per_s": n_bytes / t_fp / 1e6,
        "seconds_per_file_median": per_file[len(per_file) // 2], "seconds_per_file_max": per_file[-1],
        "models_over_50MB": {"n": len(big), "mb_per_s_each": sorted(o["bytes_read"] / o["seconds"] / 1e6 for o in big)},
        "max_rss_mb_per_worker": max(rss) / 1024 if rss else None,
        "graph_seconds": t_graph, "candidate_pairs": n_pairs, "pairs_tested": len(edges),
        "all_pairs": len(shas) * (len(shas) - 1) // 2,
        "db_bytes": size, "db_bytes_per_fingerprint": size / len(shas), "blob_bytes_per_fingerprint": blob,
        "signature_bytes_per_fingerprint": sig,
        "rerun_seconds": t_rerun, "rerun_statuses": sorted({o["status"] for o in again}),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "weightprint-bench-hub"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ray", action="store_true", help="also run on a local Ray cluster with the largest worker count")
    args = ap.parse_args()
    from weightprint.testing.hub import build_hub

    hub = build_hub(args.root)
    os.environ.update(hub.env())
    files = hub_files(hub)
    targets = ["hf-cache", "ollama", str(hub.tree)]
    load0 = os.getloadavg()[0]  # this machine is shared: a load above its CPU count slows every run
    disk = sequential_read_mb_s(files)
    print(f"disk sequential read: {disk['mb_s']:.0f} MB/s", flush=True)
    runs = []
    for w in args.workers:
        r = run(hub, targets, w, False, files)
        runs.append(r)
        print(json.dumps(r), flush=True)
    if args.ray:
        r = run(hub, targets, max(args.workers), True, files)
        runs.append(r)
        print(json.dumps(r), flush=True)
    out = {
        "bench": "scan", "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                     "load_average_1min_at_start": load0},
        "hub": {"paths": len(hub.entries), "real_files": len(files), "bytes": sum(p.stat().st_size for p in files)},
        "disk_sequential_read": disk, "runs": runs,
        "note": ("per-file work = SHA-256 of the whole file + the fingerprint (every tensor streamed once) + "
                 "one probe tensor and 16 embedding rows; the page cache is dropped before each run"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scan.json").write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / 'scan.json'}")


if __name__ == "__main__":
    main()
