"""One interface for every way of running a model, in the spirit of lm-evaluation-harness.

A :class:`Backend` answers batches of requests; each concrete backend (llama.cpp for GGUF,
transformers for Hugging Face directories, OpenAI-compatible HTTP) is a subclass registered
with :func:`register_backend`, and :func:`open_backend` picks one for a model reference.
Callers (``behave/`` tests, ``evals/``) only ever see this module's types.

Not every backend can do everything: an HTTP endpoint may return text only. ``capabilities``
says what a backend offers; a method it cannot serve raises :class:`BackendCapabilityError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback

__all__ = [
    "Backend", "BackendCapabilityError", "Capabilities", "GenerateRequest", "Generation",
    "LoglikelihoodRequest", "LoglikelihoodResult", "TokenScores", "open_backend", "register_backend",
    "registered_backends",
]


class BackendCapabilityError(WeightprintError):
    """A backend was asked for something it cannot do (log-probabilities from a text-only API)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can answer.

    logprobs : per-token log-probabilities of generated or given text
    top_logprobs : the top-k alternatives at each position (k up to ``max_top_logprobs``)
    echo : scoring a given text (prompt log-probabilities), needed for ``loglikelihood``
    full_distribution : mean and variance of log p over the whole vocabulary at each position
        (:meth:`Backend.token_scores`, needed by Min-K%++)
    sampling : honours ``temperature`` and ``seed``
    chat : applies a chat template (``GenerateRequest.chat``)
    """

    logprobs: bool = True
    top_logprobs: bool = True
    echo: bool = True
    full_distribution: bool = True
    sampling: bool = True
    chat: bool = True
    max_top_logprobs: int = 20


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """log p(continuation | context)."""

    context: str
    continuation: str


@dataclass(frozen=True)
class LoglikelihoodResult:
    """``logprob`` = sum of the continuation's token log-probabilities; ``is_greedy`` when each
    continuation token is the argmax; ``token_logprobs`` per continuation token;
    ``expected_logprobs`` per continuation token, ``E_{z~p}[log p(z)]`` under the model's own
    next-token distribution there (minus its entropy; empty when the backend cannot tell)."""

    logprob: float
    is_greedy: bool
    token_logprobs: tuple[float, ...] = ()
    expected_logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class GenerateRequest:
    """One completion. ``temperature=0`` is greedy; ``chat=True`` wraps ``prompt`` as one user
    message in the model's chat template (after a system message ``system``, when given);
    ``top_logprobs=k`` asks for the k best alternatives."""

    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    chat: bool = False
    top_logprobs: int = 0
    system: str | None = None


@dataclass(frozen=True)
class Generation:
    """A completion: its text, and, when the backend gives them, its tokens and log-probabilities."""

    text: str
    tokens: tuple[str, ...] | None = None
    token_logprobs: tuple[float, ...] | None = None
    top_logprobs: tuple[dict[str, float], ...] | None = None
    finish_reason: str | None = None


@dataclass(frozen=True)
class TokenScores:
    """Per-position scores of a text (position t predicts token t+1; the first token is not scored).

    ``logprobs[t] = log p(x_{t+1} | x_{<=t})``; ``mean[t]`` and ``std[t]`` are the mean and standard
    deviation of ``log p(z | x_{<=t})`` over the vocabulary z drawn from the model itself (Min-K%++).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


class Backend(ABC):
    """A model that answers batches of requests. Use as a context manager (``close`` frees it).

    Subclasses set ``name`` (the registry key), ``capabilities``, and implement ``generate``,
    and where they can ``loglikelihood``, ``token_scores`` and ``tokenize``. Batch methods take
    a sequence and an optional :data:`~weightprint.progress.ProgressCallback` and return one
    answer per request, in order.
    """

    name: ClassVar[str] = ""
    capabilities: Capabilities = Capabilities()

    #: label of the model behind the backend (file name, model id), for reports
    label: str = ""

    @abstractmethod
    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        """Complete each request."""

    def loglikelihood(
        self, requests: Sequence[LoglikelihoodRequest], progress: ProgressCallback | None = None
    ) -> list[LoglikelihoodResult]:
        """log p(continuation | context) for each request."""
        raise BackendCapabilityError(f"{self.label or self.name}: backend `{self.name}` cannot score given text")

    def token_scores(self, texts: Sequence[str], progress: ProgressCallback | None = None, *,
                     max_tokens: int | None = None) -> list[TokenScores]:
        """Per-token log-probabilities (and vocabulary mean/std where available) of each text,
        each cut to its first ``max_tokens`` tokens when given."""
        raise BackendCapabilityError(f"{self.label or self.name}: backend `{self.name}` cannot score tokens")

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        raise BackendCapabilityError(f"{self.label or self.name}: backend `{self.name}` cannot tokenize")

    def close(self) -> None:
        """Free the model (idempotent)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------ registry
_BACKENDS: dict[str, type[Backend]] = {}
_MATCHERS: list[tuple[Callable[[str], bool], str]] = []


def register_backend(cls: type[Backend] | None = None, *, matches: Callable[[str], bool] | None = None):
    """Class decorator: register a backend under ``cls.name``; ``matches(ref)`` says whether it
    serves a model reference by default (checked in registration order)."""

    def deco(c: type[Backend]) -> type[Backend]:
        if not c.name:
            raise TypeError(f"{c.__name__} has no `name`")
        _BACKENDS[c.name] = c
        if matches is not None:
            _MATCHERS.append((matches, c.name))
        return c

    return deco(cls) if cls is not None else deco


def registered_backends() -> dict[str, type[Backend]]:
    """Backend name -> class, after importing the built-in backends."""
    _import_builtin()
    return dict(_BACKENDS)


def _import_builtin() -> None:
    # importing registers them; each imports its heavy dependency lazily
    import importlib

    for mod in ("llama_cpp", "transformers", "openai_http"):
        try:
            importlib.import_module(f"weightprint.behave.backends.{mod}")
        except ModuleNotFoundError as e:  # a backend module not written yet
            if e.name != f"weightprint.behave.backends.{mod}":
                raise


def open_backend(ref: str | Path, *, backend: str | None = None, **options: Any) -> Backend:
    """Open a backend for ``ref``: a URL (OpenAI-compatible), a GGUF file (llama.cpp) or a
    Hugging Face directory (transformers); ``backend=`` forces one by name."""
    _import_builtin()
    text = str(ref)
    if backend is None:
        for matches, name in _MATCHERS:
            if matches(text):
                backend = name
                break
    if backend is None:
        raise WeightprintError(f"{text}: no backend serves this model reference", hint="give a .gguf file, a Hugging Face directory or an http(s):// URL")
    if backend not in _BACKENDS:
        raise WeightprintError(f"unknown backend `{backend}` (known: {', '.join(sorted(_BACKENDS))})")
    return _BACKENDS[backend](ref, **options)
