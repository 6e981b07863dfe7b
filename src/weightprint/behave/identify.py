"""Identify an unknown model among candidates with as few queries to it as possible.

In the spirit of LLMmap (USENIX Security 2025), but adaptive and over the candidates at hand:
every candidate (a local model, or an endpoint whose queries do not count) answers a pool of
prompts greedily up front; then, one query at a time, the target gets the unused prompt that
best separates the candidates that are still plausible, and each candidate's score is updated:

``score_c += beta * s_c - gamma * d_c``

where ``s_c`` is the prefix similarity of the target's and the candidate's continuations
(:func:`~weightprint.behave.compare.prefix_similarity`) and ``d_c`` the mean absolute
log-probability difference of the chosen tokens over their shared token prefix (only when both
give log-probabilities; it separates a model from its own requantization, whose greedy text is
often identical). An extra hypothesis, *none of the candidates*, scores ``beta * c0`` per query
(the calibrated similarity bound of unrelated models). ``softmax(scores)`` is the confidence
reported; querying stops when the best hypothesis reaches ``confidence`` or after
``max_queries``. The separation of a prompt is the expected pairwise discrepancy
``sum_{c<d} w_c w_d ((1 - s_cd) beta + gamma d_cd)`` between the candidates' own answers,
weighted by their current confidences ``w``.

The confidence is a posterior under this scoring model, not a calibrated probability; the
ranking also lists each candidate's mean similarity and log-prob distance so a reader can judge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from weightprint.behave.backends.base import Backend, GenerateRequest, Generation, open_backend
from weightprint.behave.compare import C0_GREEDY, prefix_similarity
from weightprint.behave.suites import Prompt, load_prompts
from weightprint.errors import WeightprintError
from weightprint.progress import ProgressCallback, no_progress
from weightprint.results import VerdictResult, to_jsonable

__all__ = ["IdentifyResult", "identify_model", "NONE_OF_THEM"]

NONE_OF_THEM = "(none of the candidates)"
BETA = 10.0
GAMMA = 60.0


@dataclass(frozen=True)
class IdentifyResult(VerdictResult):
    """Result of :func:`identify_model`: ``identified`` (best candidate at the asked confidence) or ``uncertain``."""

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset({"identified"})

    target: str
    verdict: str
    best: str
    confidence: float
    queries_used: int
    ranking: tuple[dict[str, Any], ...]
    trace: tuple[dict[str, Any], ...] = ()
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.verdict}: {self.target} is {self.best} (confidence {self.confidence:.3f}) "
                f"after {self.queries_used} quer{'y' if self.queries_used == 1 else 'ies'}")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": "identify", "target": self.target, "verdict": self.verdict, "best": self.best,
                            "confidence": self.confidence, "queries_used": self.queries_used,
                            "ranking": list(self.ranking), "trace": list(self.trace), "seconds": self.seconds})


def _lp_distance(ga: Generation, gb: Generation) -> float:
    """Mean |dlogp| of the chosen tokens over the shared token prefix, scaled by the shared fraction (0 when unknown)."""
    if ga.tokens is None or gb.tokens is None or ga.token_logprobs is None or gb.token_logprobs is None:
        return 0.0
    n = 0
    tot = 0.0
    for j, (x, y) in enumerate(zip(ga.tokens, gb.tokens)):
        if x != y:
            break
        n += 1
        tot += abs(ga.token_logprobs[j] - gb.token_logprobs[j])
    return tot / max(len(ga.tokens), len(gb.tokens), 1) if n else 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def identify_model(
    target: str | Path | Backend,
    candidates: Sequence[str | Path | Backend],
    *,
    prompts: str | Path | Sequence[Prompt] = "default",
    max_queries: int = 8,
    confidence: float = 0.99,
    max_tokens: int = 16,
    prefix_pieces: int = 10,
    top_logprobs: int = 5,
    n_pool: int | None = 16,
    target_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> IdentifyResult:
    """Rank ``candidates`` as the model behind ``target``, querying ``target`` adaptively.

    Parameters
    ----------
    target : str, Path or Backend
        The unknown model (typically an endpoint URL).
    candidates : sequence of str, Path or Backend
        Known models (GGUF files, Hugging Face directories, URLs); at least two.
    prompts : *optional*
        The pool of prompts to choose from (a shipped suite name, a JSONL file or prompts).
    max_queries : int, *optional*, defaults to 8
    confidence : float, *optional*, defaults to 0.99
        Stop once the best hypothesis has this confidence.
    max_tokens, prefix_pieces, top_logprobs : int, *optional*
        Continuation length, words compared, log-probabilities asked for (where offered).
    n_pool : int, *optional*, defaults to 16
        Prompts every candidate answers up front (evenly spaced over the suite); None: all.
    target_options : dict, *optional*
        :func:`open_backend` options for the target (``model=``...).

    Returns
    -------
    IdentifyResult
    """
    progress = progress or no_progress
    t0 = time.perf_counter()
    if len(candidates) < 2:
        raise WeightprintError(f"identify needs at least 2 candidates, got {len(candidates)}")
    if max_queries < 1:
        raise WeightprintError(f"`max_queries` must be at least 1, got {max_queries}")
    plist = list(prompts) if not isinstance(prompts, (str, Path)) else load_prompts(prompts)
    if n_pool and len(plist) > n_pool:  # evenly spaced: every language of the suite stays in the pool
        plist = [plist[int(i * len(plist) / n_pool)] for i in range(n_pool)]

    def request(p: Prompt, backend: Backend) -> GenerateRequest:
        k = top_logprobs if backend.capabilities.logprobs else 0
        return GenerateRequest(prompt=p.prompt, max_tokens=max_tokens, temperature=0.0, seed=0, chat=p.chat, top_logprobs=k)

    names: list[str] = []
    answers: list[list[Generation]] = []
    for ci, ref in enumerate(candidates):
        progress(ci, len(candidates) + max_queries, f"candidate {ref}")
        backend = ref if isinstance(ref, Backend) else open_backend(ref)
        try:
            names.append(backend.label or str(ref))
            answers.append(backend.generate([request(p, backend) for p in plist]))
        finally:
            if not isinstance(ref, Backend):
                backend.close()
    names = [f"{n} #{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
    n_c, n_p = len(names), len(plist)
    # pairwise discrepancy between candidates, per prompt
    disc = np.zeros((n_p, n_c, n_c))
    for i in range(n_p):
        for c in range(n_c):
            for d in range(c + 1, n_c):
                ga, gb = answers[c][i], answers[d][i]
                v = BETA * (1 - prefix_similarity(ga.text, gb.text, prefix_pieces)) + GAMMA * _lp_distance(ga, gb)
                disc[i, c, d] = disc[i, d, c] = v

    scores = np.zeros(n_c + 1)  # last: none of the candidates
    sims = [[] for _ in range(n_c)]
    dists = [[] for _ in range(n_c)]
    used: list[int] = []
    trace: list[dict[str, Any]] = []
    tb = target if isinstance(target, Backend) else open_backend(target, **(target_options or {}))
    target_label = tb.label or str(target)
    try:
        for q in range(max_queries):
            w = _softmax(scores)[:n_c]
            util = np.array([-1.0 if i in used else float(w @ disc[i] @ w) for i in range(n_p)])
            i = int(util.argmax())
            if util[i] < 0:
                break
            used.append(i)
            progress(n_c + q, n_c + max_queries, f"query {q + 1}: {plist[i].id}")
            g = tb.generate([request(plist[i], tb)])[0]
            for c in range(n_c):
                s = prefix_similarity(g.text, answers[c][i].text, prefix_pieces)
                dd = _lp_distance(g, answers[c][i])
                sims[c].append(s)
                dists[c].append(dd)
                scores[c] += BETA * s - GAMMA * dd
            scores[n_c] += BETA * C0_GREEDY
            post = _softmax(scores)
            best = int(post.argmax())
            trace.append({"query": q + 1, "prompt": plist[i].id, "separation": float(util[i]),
                          "best": NONE_OF_THEM if best == n_c else names[best], "confidence": float(post[best])})
            if post[best] >= confidence and q + 1 >= 2:
                break
    finally:
        if not isinstance(target, Backend):
            tb.close()
    post = _softmax(scores)
    order = np.argsort(-post)
    ranking = []
    for c in order:
        c = int(c)
        if c == n_c:
            ranking.append({"candidate": NONE_OF_THEM, "confidence": float(post[c]), "mean_similarity": None, "logprob_distance": None})
        else:
            ranking.append({"candidate": names[c], "confidence": float(post[c]), "mean_similarity": float(np.mean(sims[c])),
                            "logprob_distance": float(np.mean(dists[c]))})
    best_name = ranking[0]["candidate"]
    conf = float(ranking[0]["confidence"])
    verdict = "identified" if conf >= confidence and best_name != NONE_OF_THEM else "uncertain"
    return IdentifyResult(target=target_label, verdict=verdict, best=best_name, confidence=conf,
                          queries_used=len(used), ranking=tuple(ranking), trace=tuple(trace),
                          seconds=time.perf_counter() - t0)


def describe(result: IdentifyResult) -> list[tuple[str, str]]:
    """Rows for a table: each candidate's confidence, similarity and log-prob distance."""
    rows = []
    for r in result.ranking:
        extra = "" if r["mean_similarity"] is None else f"  similarity {r['mean_similarity']:.3f}, log-prob distance {r['logprob_distance']:.4f}"
        rows.append((r["candidate"], f"{r['confidence']:.4f}{extra}"))
    return rows

