"""What the local backends share: :class:`LocalBackend` and the numerics of next-token logits.

Both :mod:`~weightprint.behave.backends.llama_cpp` and :mod:`~weightprint.behave.backends.transformers`
subclass :class:`LocalBackend`, which turns their raw logits into answers, so a number they report
(a token's log-probability, the Min-K%++ mean and standard deviation) is computed by one piece of
code, in float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from weightprint.behave.backends.base import (
    Backend,
    GenerateRequest,
    Generation,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    TokenScores,
)
from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress

#: rows of logits converted to float64 at a time (bounds the temporary to ~rows x vocab x 8 bytes)
_CHUNK_ROWS = 64


def logit_stats(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row statistics of ``log_softmax(logits)``.

    Parameters
    ----------
    logits : numpy.ndarray
        ``(n, vocab)`` next-token logits, any float dtype.
    targets : numpy.ndarray
        ``(n,)`` token ids whose log-probability is wanted, one per row.

    Returns
    -------
    logprob, mean, std, is_argmax : numpy.ndarray
        ``log p(target)``; ``mu = E_{z~p}[log p(z)]`` and ``sigma = sqrt(E_{z~p}[(log p(z) - mu)^2])``
        (the Min-K%++ normalisers: expectations under the model's own next-token distribution);
        whether the target is the argmax (ties count as argmax).
    """
    n = logits.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"{targets.shape[0]} targets for {n} rows of logits")
    lp = np.empty(n)
    mu = np.empty(n)
    sd = np.empty(n)
    top = np.empty(n, dtype=bool)
    for s in range(0, n, _CHUNK_ROWS):
        x = np.asarray(logits[s:s + _CHUNK_ROWS], dtype=np.float64)
        t = targets[s:s + _CHUNK_ROWS]
        m = x.max(axis=1, keepdims=True)
        logz = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
        logp = x - logz[:, None]
        p = np.exp(logp)
        rows = np.arange(x.shape[0])
        lp[s:s + x.shape[0]] = logp[rows, t]
        e1 = (p * logp).sum(axis=1)
        e2 = (p * (logp - e1[:, None]) ** 2).sum(axis=1)
        mu[s:s + x.shape[0]] = e1
        sd[s:s + x.shape[0]] = np.sqrt(e2)
        top[s:s + x.shape[0]] = x[rows, t] >= m[:, 0]
    return lp, mu, sd, top


def token_scores_from_logits(token_ids: Sequence[int], logits: np.ndarray) -> TokenScores:
    """:class:`TokenScores` of ``token_ids`` given the logits at every position (row t predicts token t+1)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.size < 2:
        return TokenScores(token_ids=tuple(int(i) for i in ids), logprobs=(), mean=(), std=())
    lp, mu, sd, _ = logit_stats(logits[: ids.size - 1], ids[1:])
    return TokenScores(token_ids=tuple(int(i) for i in ids), logprobs=tuple(lp.tolist()),
                       mean=tuple(mu.tolist()), std=tuple(sd.tolist()))


def loglikelihood_from_logits(token_ids: Sequence[int], n_context: int, logits: np.ndarray) -> LoglikelihoodResult:
    """log p(tokens[n_context:] | tokens[:n_context]) from the logits at every position."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if not 1 <= n_context <= ids.size:
        raise ValueError(f"context of {n_context} tokens in a sequence of {ids.size}")
    lp, mu, _, top = logit_stats(logits[n_context - 1: ids.size - 1], ids[n_context:])
    return LoglikelihoodResult(logprob=float(lp.sum()), is_greedy=bool(top.all()), token_logprobs=tuple(lp.tolist()),
                               expected_logprobs=tuple(mu.tolist()))


def split_continuation(context_ids: list[int], whole_ids: list[int], continuation_ids: list[int]) -> tuple[list[int], int]:
    """``(tokens, n_context)`` of a loglikelihood request, as lm-evaluation-harness splits it.

    The continuation is tokenized together with its context (so a word boundary merges as the
    model would see it) when the context's tokens are a prefix of the whole's; otherwise the
    separately tokenized continuation is appended to the context.
    """
    n = len(context_ids)
    if whole_ids[:n] == context_ids and len(whole_ids) > n:
        return whole_ids, n
    return context_ids + continuation_ids, n


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first occurrence of any stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LocalBackend(Backend):
    """A backend that holds the model in this process and sees its logits.

    Subclasses provide :meth:`tokenize`, :meth:`_encode` (ids with the model's own BOS
    convention), :meth:`_bos`, :meth:`_start_token`, :meth:`_logits` (logits at every position of
    a token sequence) and :meth:`_generate_one`; the batch methods are written once here.
    """

    #: longest token sequence accepted (None: no limit of ours)
    n_ctx: int | None = None

    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _check_length(self, ids: Sequence[int]) -> None:
        """Refuse an empty sequence, or one longer than ``n_ctx``, with a one-line error."""
        if not ids:
            raise WeightprintError(f"{self.label}: nothing to evaluate (empty token sequence)")
        if self.n_ctx is not None and len(ids) > self.n_ctx:
            raise WeightprintError(f"{self.label}: {len(ids)} tokens exceed the context window of {self.n_ctx}",
                                   hint="open the backend with a larger n_ctx")

    def _bos(self) -> int | None:
        """The BOS token id, or None."""
        raise NotImplementedError

    def _start_token(self) -> int:
        """The token an empty context stands for: BOS, else EOS."""
        raise NotImplementedError

    def _logits(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _generate_one(self, r: GenerateRequest) -> Generation:
        raise NotImplementedError

    def token_scores(self, texts: Sequence[str], progress: ProgressCallback | None = None, *,
                     max_tokens: int | None = None) -> list[TokenScores]:
        """Per-token log-probabilities, and the model's mean/std of log p, of each text.

        Each text is tokenized with the model's own BOS convention and cut to ``max_tokens``.
        """
        progress = progress or no_progress
        out = []
        for i, text in enumerate(texts):
            ids = self._encode(text)[:max_tokens]
            out.append(token_scores_from_logits(ids, self._logits(ids) if len(ids) > 1 else np.empty((0, 0))))
            progress(i + 1, len(texts), "token scores")
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: ProgressCallback | None = None) -> list[LoglikelihoodResult]:
        """log p(continuation | context); an empty context is the BOS (or EOS) token alone."""
        progress = progress or no_progress
        out = []
        for i, r in enumerate(requests):
            ctx = self._encode(r.context) if r.context else []
            if not ctx or ctx == [self._bos()]:
                ctx = [self._start_token()]
                whole = ctx + self.tokenize(r.continuation)
            else:
                whole = self._encode(r.context + r.continuation)
            ids, n = split_continuation(ctx, whole, self.tokenize(r.continuation))
            if len(ids) == n:
                raise WeightprintError(f"{self.label}: empty continuation in loglikelihood request {i}")
            out.append(loglikelihood_from_logits(ids, n, self._logits(ids)))
            progress(i + 1, len(requests), "loglikelihood")
        return out

    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        """Complete each request (see the subclass for how sampling is set up)."""
        progress = progress or no_progress
        out = []
        for i, r in enumerate(requests):
            out.append(self._generate_one(r))
            progress(i + 1, len(requests), "generate")
        return out
