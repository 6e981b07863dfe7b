"""Run the scan's jobs (one per model, then chunks of pair tests) on Ray or a local process pool.

- **Ray** (:class:`RayExecutor`): ``"auto"`` or ``"ray://host:port"``/``"host:port"`` joins an
  existing cluster; ``"local"`` starts a private one on this machine; a driver already
  connected (``ray.init`` done by the caller) is used as it is. One task per job
  (``num_cpus=1``, optional ``memory=`` reservation so a node runs only as many as fit),
  ``max_retries`` when a worker process dies (a killed or OOM-killed worker is rescheduled; the
  jobs are idempotent), exceptions raised by a job are not retried. At most ``window`` tasks are
  in flight, the pattern Ray's docs give for submitting very many tasks.
- **Local pool** (:class:`LocalExecutor`): :class:`concurrent.futures.ProcessPoolExecutor`
  (``forkserver``, the worker modules preloaded once); when a worker dies the pool breaks, and
  the jobs not finished are submitted again to a new pool, at most ``max_retries`` times each.

Either way a job that cannot be finished is reported through ``on_fail``, never lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress
from weightprint.scan.worker import scan_one

__all__ = ["DEFAULT_MAX_RETRIES", "LocalExecutor", "RayExecutor", "run_local", "run_ray"]

DEFAULT_MAX_RETRIES = 3
_PRELOAD = ("weightprint.scan.worker", "weightprint.scan.signature", "weightprint.scan.graph",
            "weightprint.lineage.fingerprint", "weightprint.io.gguf_file", "weightprint.io.hf",
            "weightprint.io.safetensors_file", "sqlalchemy")
_ENV_PREFIXES = ("WEIGHTPRINT_", "HF_", "OLLAMA_", "NUMBA_", "OMP_")

Describe = Callable[[int], str]
OnFail = Callable[[int, str], Any]


def _set_env(env: dict[str, str]) -> None:
    """Pool initializer: the forkserver started with an older environment; use the caller's."""
    for k in [k for k in os.environ if k.startswith(_ENV_PREFIXES) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


class LocalExecutor:
    """A local process pool of ``workers`` processes (default: the CPU count)."""

    def __init__(self, workers: int | None = None, *, max_retries: int = DEFAULT_MAX_RETRIES) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.max_retries = max_retries
        self.name = f"local pool ({self.workers} workers)"

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple], *, on_fail: OnFail, describe: Describe,
            progress: ProgressCallback | None = None) -> list[Any]:
        """``[fn(*job) for job in jobs]`` in the pool, in order; ``on_fail(i, why)`` for a lost job."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        progress = progress or no_progress
        results: dict[int, Any] = {}
        attempts = dict.fromkeys(range(len(jobs)), 0)
        todo = list(range(len(jobs)))
        ctx = multiprocessing.get_context("forkserver")  # no inherited threads or locks; imports paid once
        ctx.set_forkserver_preload(list(_PRELOAD))
        while todo:
            for i in todo:
                attempts[i] += 1
            broken = False
            env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
            with ProcessPoolExecutor(max_workers=min(self.workers, len(todo)), mp_context=ctx, initializer=_set_env,
                                     initargs=(env,)) as pool:
                futures = {pool.submit(fn, *jobs[i]): i for i in todo}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        i = futures[f]
                        try:
                            results[i] = f.result()
                        except BrokenProcessPool:
                            broken = True
                            continue
                        except Exception as e:  # noqa: BLE001 - reported per job
                            results[i] = on_fail(i, f"worker failed ({type(e).__name__}: {e})")
                        progress(len(results), len(jobs), describe(i))
            todo = [i for i in todo if i not in results]
            for i in [i for i in todo if attempts[i] > self.max_retries]:
                results[i] = on_fail(i, f"worker died {attempts[i]} times")
            todo = [i for i in todo if i not in results]
            if todo and not broken:  # pragma: no cover - defensive: nothing finished and nothing broke
                raise WeightprintError(f"scan pool stopped with {len(todo)} jobs unfinished")
        return [results[i] for i in range(len(jobs))]


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address``; a context manager (connects, disconnects)."""

    def __init__(self, address: str = "auto", *, workers: int | None = None, memory_bytes: int | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES, window: int | None = None) -> None:
        self.address, self.workers, self.memory_bytes = address, workers, memory_bytes
        self.max_retries, self.window = max_retries, window
        self.name = f"ray:{address}"
        self._ray: Any = None
        self._owned = False

    def __enter__(self) -> "RayExecutor":
        try:
            import ray
        except ImportError as e:
            raise WeightprintError("`--ray` needs Ray, which is not installed", hint="pip install 'ray>=2.9'") from e
        self._ray = ray
        if ray.is_initialized():
            return self
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if self.address == "local":
            kwargs.update(num_cpus=self.workers or os.cpu_count() or 1)
        else:
            kwargs.update(address=self.address)
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightprintError(f"cannot join Ray cluster `{self.address}`: {first}",
                                   hint="start one with `ray start --head`, or scan without --ray") from e
        self._owned = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owned:
            self._ray.shutdown()
            self._owned = False

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple], *, on_fail: OnFail, describe: Describe,
            progress: ProgressCallback | None = None) -> list[Any]:
        """``[fn(*job) for job in jobs]`` as Ray tasks, in order; ``on_fail(i, why)`` for a lost job."""
        ray = self._ray
        if ray is None:
            raise RuntimeError("RayExecutor.map outside its `with` block")
        progress = progress or no_progress
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.max_retries, "retry_exceptions": False}
        if self.memory_bytes:
            options["memory"] = int(self.memory_bytes)
        task = ray.remote(fn).options(**options)
        window = self.window or max(4, 4 * int(ray.cluster_resources().get("CPU", 1)))
        results: dict[int, Any] = {}
        refs: dict[Any, int] = {}
        queue: Iterator[int] = iter(range(len(jobs)))

        def submit() -> bool:
            i = next(queue, None)
            if i is None:
                return False
            refs[task.remote(*jobs[i])] = i
            return True

        while len(refs) < window and submit():
            pass
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for r in ready:
                i = refs.pop(r)
                try:
                    results[i] = ray.get(r)
                except Exception as e:  # noqa: BLE001 - a task whose worker died more than max_retries times
                    results[i] = on_fail(i, f"worker failed after {self.max_retries} retries ({type(e).__name__})")
                progress(len(results), len(jobs), describe(i))
                submit()
        return [results[i] for i in range(len(jobs))]


def _died(item: dict[str, Any], why: str) -> dict[str, Any]:
    return {"path": item["path"], "ref": item["ref"], "status": "error", "content_sha256": None, "seconds": 0.0,
            "bytes_read": 0, "error": f"{item['path']}: {why}", "pid": None, "max_rss_kb": None}


def scan_items(executor: LocalExecutor | RayExecutor, items: list[dict[str, Any]], db_url: str, *,
               progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """:func:`~weightprint.scan.worker.scan_one` over ``items`` on ``executor`` (one job per model)."""
    if not items:
        return []
    return executor.map(scan_one, [(it, db_url) for it in items], on_fail=lambda i, why: _died(items[i], why),
                        describe=lambda i: items[i]["ref"], progress=progress)


def run_local(items: list[dict[str, Any]], db_url: str, *, workers: int | None = None,
              max_retries: int = DEFAULT_MAX_RETRIES, progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Scan ``items`` with a local process pool of ``workers`` processes (default: CPU count)."""
    return scan_items(LocalExecutor(workers, max_retries=max_retries), items, db_url, progress=progress)


def run_ray(items: list[dict[str, Any]], db_url: str, *, address: str = "auto", workers: int | None = None,
            memory_bytes: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES, window: int | None = None,
            progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Scan ``items`` as Ray tasks on the cluster at ``address`` (see the module docstring)."""
    with RayExecutor(address, workers=workers, memory_bytes=memory_bytes, max_retries=max_retries,
                     window=window) as ex:
        return scan_items(ex, items, db_url, progress=progress)
