"""A disk cache in front of any backend's ``generate``: answers keyed by (model identity, request).

The HTTP backend caches its own responses; this wrapper gives local backends (llama.cpp,
transformers) the same property, so a benchmark or a calibration over many model pairs computes
each model's answers once. A local model's identity is its resolved path, size and modification
time (a changed file is a new model), plus the backend's name and options.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from weightprint.behave.backends.base import Backend, GenerateRequest, Generation, LoglikelihoodRequest, LoglikelihoodResult
from weightprint.progress import ProgressCallback, no_progress
from weightprint.results import to_jsonable

__all__ = ["CachedBackend", "model_identity"]

CACHE_NAMESPACE = "behave_generate"


def model_identity(ref: str | Path) -> str:
    """``path|size|mtime_ns`` of a local file or directory (its newest file), or the reference itself."""
    p = Path(ref)
    if not p.exists():
        return str(ref)
    p = p.resolve()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    size = sum(f.stat().st_size for f in files)
    mtime = max((f.stat().st_mtime_ns for f in files), default=0)
    return f"{p}|{size}|{mtime}"


class CachedBackend(Backend):
    """Wraps ``inner``; ``generate`` answers from ``cache`` (a :class:`weightprint.store.ResultCache`
    URL or path) when it has seen the request for this model, else asks ``inner`` and stores."""

    name = "cached"

    def __init__(self, inner: Backend, cache: str | Path, identity: str) -> None:
        from weightprint.store import ResultCache

        self.inner = inner
        self.identity = identity
        self.label = inner.label
        self._cache = ResultCache(cache, CACHE_NAMESPACE)
        self.hits = 0

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    def __getattr__(self, name: str) -> Any:  # is_sampling, tokenize... of the inner backend
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _key(self, r: GenerateRequest) -> str:
        from weightprint.store import cache_key

        return cache_key(self.inner.name, self.identity, dataclasses.asdict(r))

    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        progress = progress or no_progress
        out: list[Generation | None] = []
        missing: list[int] = []
        for i, r in enumerate(requests):
            hit = self._cache.get(self._key(r))
            if hit is None:
                missing.append(i)
                out.append(None)
            else:
                self.hits += 1
                out.append(_from_json(hit))
        done = len(requests) - len(missing)
        for i in missing:  # one at a time, each stored at once: an interrupted run keeps what it computed
            g = self.inner.generate([requests[i]])[0]
            self._cache.put(self._key(requests[i]), to_jsonable(dataclasses.asdict(g)))  # numpy scalars -> floats
            out[i] = g
            done += 1
            progress(done, len(requests), "generate")
        progress(len(requests), len(requests), "generate")
        return out  # type: ignore[return-value]

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: ProgressCallback | None = None) -> list[LoglikelihoodResult]:
        return self.inner.loglikelihood(requests, progress)  # scores are cheap and not cached

    def close(self) -> None:
        self.inner.close()


def _from_json(d: dict[str, Any]) -> Generation:
    def tup(x):
        return tuple(x) if x is not None else None

    return Generation(text=d["text"], tokens=tup(d.get("tokens")), token_logprobs=tup(d.get("token_logprobs")),
                      top_logprobs=tuple(d["top_logprobs"]) if d.get("top_logprobs") is not None else None,
                      finish_reason=d.get("finish_reason"))
