"""llama.cpp (llama-cpp-python) backend for GGUF files.

One ``llama_cpp.Llama`` per backend, created with ``logits_all=True`` so that every evaluated
position's logits are kept in ``Llama.scores``; log-probabilities and the Min-K%++ statistics are
computed from them in numpy (:mod:`~weightprint.behave.backends._scoring`).

KV-cache reuse
--------------
``Llama.eval(tokens)`` appends to the sequence already in the KV cache (``Llama.n_tokens`` tokens,
their ids in ``Llama.input_ids``, their logits in ``Llama.scores``). Scoring a token sequence
therefore evaluates only its suffix after the longest common prefix with the previous sequence:
the cache is cut at the prefix (``kv_cache_seq_rm``) and the remaining tokens are evaluated. The
logits of the shared prefix are those the previous evaluation left in ``scores``; by causality
they are the logits of the new sequence at those positions too. Batch methods thus run fastest
when requests that share a context are consecutive (the order of answers is the order of
requests either way). The SWA cache of sliding-window models (Gemma 3) is made full-size
(``swa_full=True``) so that cutting it keeps every position a suffix may attend to; when llama.cpp
refuses a cut, the sequence is evaluated from scratch. ``reuse_kv=False`` always starts fresh.

Generation goes through ``create_completion`` / ``create_chat_completion`` (whose own prefix
matching uses the same cache). ``temperature=0`` is greedy; otherwise sampling is plain: top-k,
min-p and typical sampling are switched off so that only ``temperature``, ``top_p`` and ``seed``
act.

llama-cpp-python is imported when a backend is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from weightprint.behave.backends._scoring import (
    common_prefix,
    loglikelihood_from_logits,
    split_continuation,
    token_scores_from_logits,
)
from weightprint.behave.backends.base import (
    Backend,
    BackendCapabilityError,
    Capabilities,
    GenerateRequest,
    Generation,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    TokenScores,
    register_backend,
)
from weightprint.errors import ModelFormatError, WeightprintError
from weightprint.progress import ProgressCallback, no_progress

__all__ = ["LlamaCppBackend"]

LLAMA_CPP_HINT = "pip install llama-cpp-python==0.3.36 (build the wheel once; see scripts/setup.sh)"


def _is_gguf(ref: str) -> bool:
    return ref.lower().endswith(".gguf") and not ref.lower().startswith(("http://", "https://"))


@register_backend(matches=_is_gguf)
class LlamaCppBackend(Backend):
    """A GGUF file run by llama.cpp on CPU.

    Parameters
    ----------
    ref : str or Path
        The GGUF file.
    n_ctx : int, *optional*, defaults to 2048
        Context window (tokens of prompt plus completion, or of a scored text).
    n_threads : int, *optional*, defaults to 2
    n_batch : int, *optional*, defaults to 512
        Tokens per ``llama_decode`` call (at most ``n_ctx``); with ``logits_all`` llama.cpp keeps
        ``n_batch x vocab`` floats of output (512 MiB for Gemma 3's 262,144 tokens).
    seed : int, *optional*, defaults to 0
        Sampling seed of requests that give none.
    reuse_kv : bool, *optional*, defaults to True
        Evaluate only the suffix after the prefix shared with the previous sequence (see the
        module docstring).
    """

    name = "llama_cpp"

    def __init__(self, ref: str | Path, *, n_ctx: int = 2048, n_threads: int = 2, n_batch: int = 512,
                 seed: int = 0, reuse_kv: bool = True, verbose: bool = False) -> None:
        path = Path(ref)
        if not path.is_file():
            raise WeightprintError(f"{path}: no such GGUF file")
        try:
            import llama_cpp
        except ImportError as e:
            raise WeightprintError(f"{path}: llama-cpp-python is needed to run a GGUF", hint=LLAMA_CPP_HINT) from e
        try:
            self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx),
                                        n_ubatch=min(n_batch, n_ctx), logits_all=True, n_threads=n_threads,
                                        n_threads_batch=n_threads, seed=seed, swa_full=True, verbose=verbose)
        except (ValueError, RuntimeError) as e:
            raise ModelFormatError(f"{path}: llama.cpp cannot load this GGUF: {e}") from e
        self.path = path
        self.label = path.name
        self.seed = seed
        self.reuse_kv = reuse_kv
        self.n_ctx = n_ctx
        self._has_template = any(k.startswith("tokenizer.chat_template") for k in self._llm.metadata)
        self.capabilities = Capabilities(chat=self._has_template)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS, special-token text not parsed)."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _encode(self, text: str) -> list[int]:
        """Token ids with the BOS the vocabulary asks for (``tokenizer.ggml.add_bos_token``)."""
        # add_bos=True means "add what the vocabulary asks for"
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def _start_token(self) -> int:
        bos = self._llm.token_bos()
        return bos if bos >= 0 else self._llm.token_eos()

    # ------------------------------------------------------------------ evaluation
    def _logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of ``tokens`` (a view into ``Llama.scores``), reusing the cache."""
        llm = self._llm
        if len(tokens) > self.n_ctx:
            raise WeightprintError(f"{self.label}: {len(tokens)} tokens exceed the context window of {self.n_ctx}",
                                   hint="open the backend with a larger n_ctx")
        if not tokens:
            raise WeightprintError(f"{self.label}: nothing to evaluate (empty token sequence)")
        keep = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens) if self.reuse_kv else 0
        if keep < len(tokens):
            if keep > 0 and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
                llm.n_tokens = keep
            else:
                llm.reset()
            llm.eval(tokens[llm.n_tokens:])
        return llm.scores[: len(tokens)]

    def token_scores(self, texts: Sequence[str], progress: ProgressCallback | None = None, *,
                     max_tokens: int | None = None) -> list[TokenScores]:
        """Per-token log-probabilities, and the model's mean/std of log p, of each text.

        Each text is tokenized with the BOS the vocabulary asks for and cut to ``max_tokens``.
        """
        progress = progress or no_progress
        out = []
        for i, text in enumerate(texts):
            ids = self._encode(text)[:max_tokens]
            out.append(token_scores_from_logits(ids, self._logits(ids)) if len(ids) > 1
                       else token_scores_from_logits(ids, np.empty((0, 0))))
            progress(i + 1, len(texts), "token scores")
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      progress: ProgressCallback | None = None) -> list[LoglikelihoodResult]:
        """log p(continuation | context); an empty context is the BOS (or EOS) token alone."""
        progress = progress or no_progress
        out = []
        for i, r in enumerate(requests):
            ctx = self._encode(r.context) if r.context else []
            if not ctx or (len(ctx) == 1 and ctx[0] == self._llm.token_bos()):
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

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[GenerateRequest], progress: ProgressCallback | None = None) -> list[Generation]:
        progress = progress or no_progress
        out = []
        for i, r in enumerate(requests):
            out.append(self._generate_one(r))
            progress(i + 1, len(requests), "generate")
        return out

    def _generate_one(self, r: GenerateRequest) -> Generation:
        knobs: dict[str, Any] = dict(
            max_tokens=r.max_tokens, temperature=float(r.temperature), top_p=float(r.top_p), top_k=0,
            min_p=0.0, typical_p=1.0, repeat_penalty=1.0, stop=list(r.stop),
            seed=self.seed if r.seed is None else int(r.seed),
        )
        if r.chat:
            if not self._has_template:
                raise BackendCapabilityError(f"{self.label}: the GGUF has no chat template (tokenizer.chat_template)")
            if r.top_logprobs:
                knobs.update(logprobs=True, top_logprobs=int(r.top_logprobs))
            resp = self._llm.create_chat_completion(messages=[{"role": "user", "content": r.prompt}], **knobs)
            choice = resp["choices"][0]
            return _chat_generation(choice)
        if r.top_logprobs:
            knobs["logprobs"] = int(r.top_logprobs)
        resp = self._llm.create_completion(r.prompt, **knobs)
        choice = resp["choices"][0]
        lp = choice.get("logprobs")
        if not lp:
            return Generation(text=choice["text"], finish_reason=choice.get("finish_reason"))
        tops = tuple(_top_k(d or {}, r.top_logprobs) for d in lp["top_logprobs"])
        return Generation(text=choice["text"], tokens=tuple(lp["tokens"]),
                          token_logprobs=tuple(float(x) for x in lp["token_logprobs"]),
                          top_logprobs=tops, finish_reason=choice.get("finish_reason"))

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None


def _top_k(d: dict[str, float], k: int) -> dict[str, float]:
    """The k most likely entries of a llama-cpp-python ``top_logprobs`` dict (it also adds the chosen token)."""
    return dict(sorted(d.items(), key=lambda kv: -kv[1])[:k])


def _chat_generation(choice: dict[str, Any]) -> Generation:
    text = choice["message"].get("content") or ""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return Generation(text=text, finish_reason=choice.get("finish_reason"))
    return Generation(
        text=text,
        tokens=tuple(c["token"] for c in content),
        token_logprobs=tuple(float(c["logprob"]) for c in content),
        top_logprobs=tuple({t["token"]: float(t["logprob"]) for t in c.get("top_logprobs", [])} for c in content),
        finish_reason=choice.get("finish_reason"),
    )
