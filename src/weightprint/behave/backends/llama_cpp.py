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
requests either way). When llama.cpp refuses a cut, the sequence is evaluated from scratch;
``reuse_kv=False`` always starts fresh.

Models with sliding-window attention (``{arch}.attention.sliding_window`` in the metadata, e.g.
Gemma 3) never reuse the cache: measured on Gemma 3 270M with llama-cpp-python 0.3.36, cutting its
interleaved SWA cache and evaluating a different suffix gave log-probabilities up to 0.05 nats
(0.4 after a cut to the BOS alone) away from a fresh evaluation, even with a full-size SWA cache.
On SmolLM2 (no SWA) reuse gives exactly the fresh numbers (tests/test_backends_local.py).

Generation goes through ``create_completion`` / ``create_chat_completion`` (whose own prefix
matching uses the same cache). ``temperature=0`` is greedy; otherwise sampling is plain: top-k,
min-p and typical sampling are switched off so that only ``temperature``, ``top_p`` and ``seed``
act.

llama-cpp-python is imported when a backend is created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from weightprint.behave.backends._scoring import LocalBackend, common_prefix
from weightprint.behave.backends.base import BackendCapabilityError, Capabilities, GenerateRequest, Generation, register_backend
from weightprint.errors import ModelFormatError, WeightprintError

__all__ = ["LlamaCppBackend"]

LLAMA_CPP_HINT = "pip install llama-cpp-python==0.3.36 (build the wheel once; see scripts/setup.sh)"


def _is_gguf(ref: str) -> bool:
    return ref.lower().endswith(".gguf") and not ref.lower().startswith(("http://", "https://"))


@register_backend(matches=_is_gguf)
class LlamaCppBackend(LocalBackend):
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
        module docstring); always off for sliding-window models.
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
                                        n_threads_batch=n_threads, seed=seed, verbose=verbose)
        except (ValueError, RuntimeError) as e:
            raise ModelFormatError(f"{path}: llama.cpp cannot load this GGUF: {e}") from e
        self.path = path
        self.label = path.name
        self.seed = seed
        self.sliding_window = any(k.endswith(".attention.sliding_window") for k in self._llm.metadata)
        self.reuse_kv = reuse_kv and not self.sliding_window
        #: greedy top-k log-probabilities computed here (:meth:`_greedy_with_logprobs`); False: by llama-cpp-python
        self.fast_logprobs = True
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

    def _bos(self) -> int | None:
        bos = self._llm.token_bos()
        return bos if bos >= 0 else None

    def _start_token(self) -> int:
        bos = self._bos()
        return bos if bos is not None else self._llm.token_eos()

    # ------------------------------------------------------------------ evaluation
    def _logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position of ``tokens`` (a view into ``Llama.scores``), reusing the cache."""
        llm = self._llm
        self._check_length(tokens)
        keep = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens) if self.reuse_kv else 0
        if keep < len(tokens):
            if keep > 0 and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
                llm.n_tokens = keep
            else:
                llm.reset()
            llm.eval(tokens[llm.n_tokens:])
        return llm.scores[: len(tokens)]

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
        if r.top_logprobs and r.temperature == 0 and not r.stop and self.fast_logprobs:
            fast = self._greedy_with_logprobs(r, knobs)
            if fast is not None:
                return fast
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

    def _greedy_with_logprobs(self, r: GenerateRequest, knobs: dict[str, Any]) -> Generation | None:
        """A greedy completion with its top-k log-probabilities, computed here with numpy from the
        logits llama.cpp returned, as llama-cpp-python computes them (``logits_to_logprobs``, the k
        best by log-probability then by the larger token id, the token strings it detokenizes,
        the chosen token added to its dict), but without its Python sort of the whole vocabulary
        at every generated token (62% of a 16-token SmolLM2 generation). None when the result
        cannot be checked against the library's own text (the caller then asks the library)."""
        from llama_cpp import Llama, LogitsProcessorList

        llm = self._llm
        rows: list[np.ndarray] = []
        first: list[int] = []

        def capture(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if not first:
                first.append(len(input_ids))  # the prompt's tokens: the first call comes after them
            rows.append(np.array(scores, dtype=np.float32, copy=True))
            return scores

        resp = llm.create_completion(r.prompt, logits_processor=LogitsProcessorList([capture]), **knobs)
        choice = resp["choices"][0]
        if not rows:
            return None
        n_prompt = first[0]
        ids = llm.input_ids[: llm.n_tokens].tolist()
        completion = ids[n_prompt:]
        if choice.get("finish_reason") == "length":
            completion.append(int(np.argmax(rows[-1])))  # greedy: the last token was sampled, not evaluated
        if not completion or len(completion) > len(rows):
            return None
        detok = llm.detokenize
        if detok(completion, prev_tokens=ids[:n_prompt]).decode("utf-8", errors="ignore") != choice["text"]:
            return None
        logprobs = Llama.logits_to_logprobs(np.stack(rows[: len(completion)]))
        k, bos = int(r.top_logprobs), llm.token_bos()
        tokens, chosen, tops = [], [], []
        for idx, token in enumerate(completion):
            if token == bos:
                continue
            row, prev = logprobs[idx], completion[:idx]
            token_str = detok([token], prev_tokens=prev).decode("utf-8", errors="ignore")
            top = {detok([i], prev_tokens=prev).decode("utf-8", errors="ignore"): v for v, i in _best(row, k)}
            top[token_str] = row[token]
            tokens.append(token_str)
            chosen.append(float(row[token]))
            tops.append(_top_k(top, k))
        return Generation(text=choice["text"], tokens=tuple(tokens), token_logprobs=tuple(chosen),
                          top_logprobs=tuple(tops), finish_reason=choice.get("finish_reason"))

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None


def _best(row: np.ndarray, k: int) -> list[tuple[Any, int]]:
    """``sorted(zip(row, range(len(row))), reverse=True)[:k]`` (llama-cpp-python's choice of the
    top log-probabilities: by value, ties by the larger id) without sorting the whole row."""
    kth = np.partition(row, -k)[-k] if k < row.size else row.min()
    cand = np.nonzero(row >= kth)[0]
    return sorted(zip(row[cand], cand.tolist()), reverse=True)[:k]


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
