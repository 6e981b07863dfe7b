"""Shared numerics of the local backends: log-softmax statistics of next-token logits, in numpy.

Both :mod:`~weightprint.behave.backends.llama_cpp` and :mod:`~weightprint.behave.backends.transformers`
hand raw logits here, so a number they report (a token's log-probability, the Min-K%++ mean and
standard deviation) is computed by one piece of code in float64.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from weightprint.behave.backends.base import LoglikelihoodResult, TokenScores

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
    lp, _, _, top = logit_stats(logits[n_context - 1: ids.size - 1], ids[n_context:])
    return LoglikelihoodResult(logprob=float(lp.sum()), is_greedy=bool(top.all()), token_logprobs=tuple(lp.tolist()))


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
