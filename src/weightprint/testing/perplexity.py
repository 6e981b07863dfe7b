"""Perplexity of a text under a model, through the behave backends; torch thread policy.

:func:`perplexity` opens the model with :func:`weightprint.behave.backends.open_backend`
(llama.cpp for a GGUF, transformers for a Hugging Face directory) or takes an open backend, and
scores the text with :meth:`~weightprint.behave.backends.base.Backend.token_scores`.
:func:`_perplexity_torch` scores a transformers model held in memory (noise calibration changes
its weights in place between calls).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from weightprint.errors import WeightprintError
from weightprint.testing.corpus import heldout_text
from weightprint.testing.hfdir import _source_path


def default_threads(max_threads: int = 2) -> int:
    """Threads for torch: up to ``max_threads``, but 1 when the machine is already busy.

    On a shared 2-core machine, 2 OpenMP threads competing with other processes run 10x slower
    than 1 thread (measured: 60-85 s against 2.5 s per SmolLM2 training step at load 10).
    """
    n = min(max_threads, os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return 1
    return n if load < (os.cpu_count() or 1) else 1


def perplexity(
    model: Any, text: str | None = None, *, max_tokens: int = 512, threads: int | None = None
) -> float:
    """Perplexity of ``text`` under a model.

    Parameters
    ----------
    model : str, Path, Model or Backend
        A GGUF file (llama.cpp) or a Hugging Face directory (transformers, F32), opened with
        :func:`~weightprint.behave.backends.open_backend` and closed again; or an open local
        backend (its ``token_scores`` must take ``max_tokens=``, as the llama.cpp and
        transformers backends do).
    text : str, *optional*
        Defaults to :func:`~weightprint.testing.corpus.heldout_text`.
    max_tokens : int, *optional*, defaults to 512
        The text is cut to this many tokens (one context window, including a BOS token where
        the tokenizer adds one, as Gemma's does).
    threads : int, *optional*
        Defaults to :func:`default_threads` (for a model opened here).

    Returns
    -------
    float
        ``exp(mean negative log-likelihood)`` of tokens 2..n given their prefix.
    """
    from weightprint.behave.backends import Backend, open_backend

    text = heldout_text() if text is None else text
    if isinstance(model, Backend):
        return _backend_perplexity(model, text, max_tokens)
    path = _source_path(model)
    n = default_threads() if threads is None else threads
    with open_backend(path, n_ctx=max_tokens + 8, n_threads=n) as backend:
        return _backend_perplexity(backend, text, max_tokens)


def _backend_perplexity(backend: Any, text: str, max_tokens: int) -> float:
    (scores,) = backend.token_scores([text], max_tokens=max_tokens)
    if len(scores.token_ids) < 2:
        raise WeightprintError(f"text has {len(scores.token_ids)} tokens; perplexity needs at least 2")
    return float(math.exp(-float(np.mean(scores.logprobs))))


def _encode_text(tok: Any, text: str, max_tokens: int) -> Any:
    import torch

    ids = tok(text)["input_ids"][:max_tokens]  # the tokenizer's own BOS convention
    if len(ids) < 2:
        raise WeightprintError(f"text has {len(ids)} tokens; perplexity needs at least 2")
    return torch.tensor([ids], dtype=torch.long)


def _perplexity_torch(lm: Any, ids: Any) -> float:
    import torch

    with torch.no_grad():
        out = lm(input_ids=ids, labels=ids)
    return float(torch.exp(out.loss))


def heldout_kl(teacher: Any, student: Any, n_windows: int = 16, seq_len: int = 64) -> float:
    """Mean KL(teacher || student) per position on windows of the held-out text, for two
    Hugging Face llama directories with the same vocabulary (teacher's tokenizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(teacher))
    ids = tok(heldout_text(), add_special_tokens=False, return_tensors="pt").input_ids[0]
    starts = np.linspace(0, ids.numel() - seq_len - 1, n_windows).astype(int)
    x = torch.stack([ids[s:s + seq_len] for s in starts])
    with torch.no_grad():
        t = torch.log_softmax(LlamaForCausalLM.from_pretrained(str(teacher)).eval()(input_ids=x).logits, -1)
        s = torch.log_softmax(LlamaForCausalLM.from_pretrained(str(student)).eval()(input_ids=x).logits, -1)
    return float(torch.nn.functional.kl_div(s.flatten(0, 1), t.flatten(0, 1), log_target=True, reduction="batchmean"))
