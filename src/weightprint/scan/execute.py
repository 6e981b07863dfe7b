"""Run :func:`~weightprint.scan.worker.scan_one` over many items: on Ray, or a local process pool.

- **Ray** (``ray_address``): ``"auto"`` or ``"ray://host:port"``/``"host:port"`` joins an
  existing cluster; ``"local"`` starts a private one on this machine. One task per model
  (``num_cpus=1``, optional ``memory=`` reservation so a node runs only as many as fit),
  ``max_retries`` when a worker process dies (a killed or OOM-killed worker is rescheduled;
  the task is idempotent). At most ``window`` tasks are in flight, the pattern Ray's docs
  give for submitting very many tasks. A driver already connected (``ray.init`` done by the
  caller) is used as it is.
- **Local pool**: :class:`concurrent.futures.ProcessPoolExecutor` (``forkserver``, the worker
  modules preloaded once); when a worker
  dies the pool breaks, and the items not finished are submitted again to a new pool, at
  most ``max_retries`` times each.

Either way an item that cannot be finished is reported as an ``error`` result, never lost.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress
from weightprint.scan.worker import scan_one

__all__ = ["DEFAULT_MAX_RETRIES", "run_local", "run_ray"]

DEFAULT_MAX_RETRIES = 3
_PRELOAD = ("weightprint.scan.worker", "weightprint.scan.signature", "weightprint.lineage.fingerprint",
            "weightprint.io.gguf_file", "weightprint.io.hf", "weightprint.io.safetensors_file", "sqlalchemy")


_ENV_PREFIXES = ("WEIGHTPRINT_", "HF_", "OLLAMA_", "NUMBA_", "OMP_")


def _set_env(env: dict[str, str]) -> None:
    """Pool initializer: the forkserver started with an older environment; use the caller's."""
    for k in [k for k in os.environ if k.startswith(_ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


def _died(item: dict[str, Any], why: str) -> dict[str, Any]:
    return {"path": item["path"], "ref": item["ref"], "status": "error", "content_sha256": None, "seconds": 0.0,
            "bytes_read": 0, "error": f"{item['path']}: {why}", "pid": None, "max_rss_kb": None}


def run_local(items: list[dict[str, Any]], db_url: str, *, workers: int | None = None,
              max_retries: int = DEFAULT_MAX_RETRIES, progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Scan ``items`` with a local process pool of ``workers`` processes (default: CPU count)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    progress = progress or no_progress
    workers = max(1, workers or os.cpu_count() or 1)
    results: dict[int, dict[str, Any]] = {}
    attempts = {i: 0 for i in range(len(items))}
    todo = list(range(len(items)))
    ctx = multiprocessing.get_context("forkserver")  # no inherited threads or locks; imports paid once
    ctx.set_forkserver_preload(list(_PRELOAD))
    while todo:
        for i in todo:
            attempts[i] += 1
        broken = False
        env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_set_env,
                                 initargs=(env,)) as pool:
            futures = {pool.submit(scan_one, items[i], db_url): i for i in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    i = futures[f]
                    try:
                        results[i] = f.result()
                    except BrokenProcessPool:
                        broken = True
                    except Exception as e:  # noqa: BLE001 - reported per item
                        results[i] = _died(items[i], f"worker failed ({type(e).__name__}: {e})")
                    if i in results:
                        progress(len(results), len(items), items[i]["ref"])
        todo = [i for i in todo if i not in results]
        for i in [i for i in todo if attempts[i] > max_retries]:
            results[i] = _died(items[i], f"worker died {attempts[i]} times")
        todo = [i for i in todo if i not in results]
        if todo and not broken:  # pragma: no cover - defensive: nothing finished and nothing broke
            raise WeightprintError(f"scan pool stopped with {len(todo)} items unfinished")
    return [results[i] for i in range(len(items))]


def _connect_ray(address: str, workers: int | None) -> tuple[Any, bool]:
    try:
        import ray
    except ImportError as e:
        raise WeightprintError("`--ray` needs Ray, which is not installed", hint="pip install 'ray>=2.9'") from e
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address == "local":
        kwargs.update(num_cpus=workers or os.cpu_count() or 1)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightprintError(f"cannot join Ray cluster `{address}`: {first}",
                               hint="start one with `ray start --head`, or scan without --ray") from e
    return ray, True


def run_ray(items: list[dict[str, Any]], db_url: str, *, address: str = "auto", workers: int | None = None,
            memory_bytes: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES, window: int | None = None,
            progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Scan ``items`` as Ray tasks on the cluster at ``address`` (see the module docstring)."""
    progress = progress or no_progress
    ray, owned = _connect_ray(address, workers)
    try:
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": max_retries, "retry_exceptions": False}
        if memory_bytes:
            options["memory"] = int(memory_bytes)
        task = ray.remote(scan_one).options(**options)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        window = window or max(4, 4 * cpus)
        results: dict[int, dict[str, Any]] = {}
        refs: dict[Any, int] = {}
        queue: Iterator[int] = iter(range(len(items)))

        def submit() -> bool:
            i = next(queue, None)
            if i is None:
                return False
            refs[task.remote(items[i], db_url)] = i
            return True

        while len(refs) < window and submit():
            pass
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for r in ready:
                i = refs.pop(r)
                try:
                    results[i] = ray.get(r)
                except Exception as e:  # noqa: BLE001 - a task that died more than max_retries times
                    results[i] = _died(items[i], f"worker failed after {max_retries} retries ({type(e).__name__})")
                progress(len(results), len(items), items[i]["ref"])
                submit()
        return [results[i] for i in range(len(items))]
    finally:
        if owned:
            ray.shutdown()

