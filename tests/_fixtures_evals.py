"""A fake backend for the evals tests (in the spirit of lm-evaluation-harness's DummyLM).

Tokens are whitespace-separated words. ``log p(w_t | history)`` is a deterministic pseudo-random
number in [-7, -3) from a hash of the previous word and ``w_t`` (so different orders of the same
items get different likelihoods), plus ``bonus`` when the ``ngram`` words ending at ``w_t`` occur
in the ``memorized`` text (a model that was trained on that text). The vocabulary mean is -5
and the standard deviation 1 at every position. ``generate`` answers every prompt with
``answer(prompt)``.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

from weightprint.behave.backends.base import (
    Backend,
    Capabilities,
    GenerateRequest,
    Generation,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    TokenScores,
    register_backend,
)
from weightprint.progress import ProgressCallback, no_progress

FAKE_PREFIX = "fake-evals:"


def _base_logprob(prev: str, word: str) -> float:
    return -3.0 - (zlib.crc32(f"{prev}\x00{word}".encode()) % 4000) / 1000.0


@register_backend(matches=lambda ref: str(ref).startswith(FAKE_PREFIX))
class FakeEvalBackend(Backend):
    name = "fake-evals"
    capabilities = Capabilities()

    #: registry of behaviours for CLI tests: ``fake-evals:<key>`` opens FakeEvalBackend(**CONFIGS[key])
    CONFIGS: dict[str, dict] = {}

    def __init__(self, ref: str = "fake-evals:default", *, memorized: str = "", bonus: float = 3.0, ngram: int = 6,
                 answer: Callable[[str], str] | None = None, full_distribution: bool = True) -> None:
        key = str(ref)[len(FAKE_PREFIX):] if str(ref).startswith(FAKE_PREFIX) else ""
        cfg = dict(self.CONFIGS.get(key, {}))
        memorized = cfg.get("memorized", memorized)
        self.bonus = cfg.get("bonus", bonus)
        self.ngram = cfg.get("ngram", ngram)
        self.answer = cfg.get("answer", answer) or (lambda prompt: "")
        self.label = str(ref)
        self.capabilities = Capabilities(full_distribution=cfg.get("full_distribution", full_distribution))
        words = memorized.split()
        self._grams = {tuple(words[i:i + self.ngram]) for i in range(len(words) - self.ngram + 1)}
        self.calls: list[tuple[str, int]] = []
        self.prompts: list[str] = []

    def _logprobs(self, words: list[str]) -> list[float]:
        out = []
        for t, w in enumerate(words):
            prev = words[t - 1] if t else "<s>"
            lp = _base_logprob(prev, w)
            if t + 1 >= self.ngram and tuple(words[t + 1 - self.ngram:t + 1]) in self._grams:
                lp += self.bonus
            out.append(min(lp, -0.01))
        return out

    def tokenize(self, text: str) -> list[int]:
        return [zlib.crc32(w.encode()) for w in text.split()]

    def token_scores(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> list[TokenScores]:
        self.calls.append(("token_scores", len(texts)))
        out = []
        for i, text in enumerate(texts):
            words = text.split()
            lps = self._logprobs(words)[1:]  # the first token is not scored
            mean, std = (-5.0,) * len(lps), (1.0,) * len(lps)
            if not self.capabilities.full_distribution:
                mean, std = (), ()
            out.append(TokenScores(token_ids=tuple(self.tokenize(text)), logprobs=tuple(lps), mean=mean, std=std))
            (progress or no_progress)(i + 1, len(texts), "token scores")
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: ProgressCallback | None = None) -> list[LoglikelihoodResult]:
        self.calls.append(("loglikelihood", len(requests)))
        out = []
        for i, r in enumerate(requests):
            ctx, cont = r.context.split(), r.continuation.split()
            lps = self._logprobs(ctx + cont)[len(ctx):]
            out.append(LoglikelihoodResult(logprob=float(sum(lps)), is_greedy=False, token_logprobs=tuple(lps)))
            (progress or no_progress)(i + 1, len(requests), "loglikelihood")
        return out

    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        self.calls.append(("generate", len(requests)))
        out = []
        for i, r in enumerate(requests):
            self.prompts.append(r.prompt)
            out.append(Generation(text=self.answer(r.prompt), finish_reason="stop"))
            (progress or no_progress)(i + 1, len(requests), "generate")
        return out
