"""transformers backend for Hugging Face directories, on CPU torch in float32.

Texts are scored with one forward pass per sequence (no KV cache is kept between requests); the
log-probabilities and Min-K%++ statistics are computed in numpy from the raw logits by the same
code as the llama.cpp backend (:mod:`~weightprint.behave.backends._scoring`).

Generation uses ``model.generate`` with an explicit ``GenerationConfig`` (the directory's own
sampling defaults, such as ``top_k=50`` or a repetition penalty, are not applied): greedy at
``temperature=0``, otherwise plain sampling with ``temperature`` and ``top_p`` under
``torch.manual_seed(seed)`` (the global RNG is restored afterwards). Token log-probabilities are
those of the raw logits, as llama.cpp reports them.

torch and transformers are imported when a backend is created.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from weightprint.behave.backends._scoring import LocalBackend, logit_stats, truncate_at_stop
from weightprint.behave.backends.base import BackendCapabilityError, Capabilities, GenerateRequest, Generation, register_backend
from weightprint.errors import ModelFormatError, WeightprintError

__all__ = ["TransformersBackend", "load_causal_lm", "torch_threads"]

TORCH_HINT = "pip install -e '.[torch]' (CPU torch 2.13.0 and transformers)"


def _is_hf_dir(ref: str) -> bool:
    p = Path(ref)
    return p.is_dir() and (p / "config.json").is_file()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the duration of the block, then the old value."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a Hugging Face directory: ``AutoModelForCausalLM`` in float32, eval mode."""
    path = Path(path)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as e:
        raise WeightprintError(f"{path}: torch and transformers are needed to run a Hugging Face directory",
                               hint=TORCH_HINT) from e
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our callers own the terminal (rich progress on stderr)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, KeyError) as e:
        raise ModelFormatError(f"{path}: transformers cannot load this directory: {e}") from e
    lm.eval()
    return lm, tok


@register_backend(matches=_is_hf_dir)
class TransformersBackend(LocalBackend):
    """A Hugging Face directory run by transformers (float32, CPU).

    Parameters
    ----------
    ref : str or Path
        The directory (``config.json``, weights, tokenizer files).
    n_ctx : int, *optional*
        Longest sequence accepted (a longer one raises, as in the llama.cpp backend); default:
        no limit beyond the model's own.
    n_threads : int, *optional*, defaults to 2
        torch threads during each call (restored afterwards).
    seed : int, *optional*, defaults to 0
        Sampling seed of requests that give none.
    """

    name = "transformers"

    def __init__(self, ref: str | Path, *, n_ctx: int | None = None, n_threads: int = 2, seed: int = 0) -> None:
        path = Path(ref)
        if not _is_hf_dir(str(path)):
            raise ModelFormatError(f"{path}: not a Hugging Face directory (no config.json)")
        self.path = path
        self.label = path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.seed = seed
        self._lm, self._tok = load_causal_lm(path)
        self.capabilities = Capabilities(chat=getattr(self._tok, "chat_template", None) is not None)

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def _encode(self, text: str) -> list[int]:
        """Token ids with the tokenizer's own special tokens (its BOS convention)."""
        return list(self._tok(text)["input_ids"])

    def _bos(self) -> int | None:
        return self._tok.bos_token_id

    def _start_token(self) -> int:
        tok = self._tok
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    # ------------------------------------------------------------------ evaluation
    def _logits(self, ids: list[int]) -> np.ndarray:
        import torch

        self._check_length(ids)
        with torch_threads(self.n_threads), torch.no_grad():
            out = self._lm(input_ids=torch.tensor([ids], dtype=torch.long))
        return out.logits[0].float().numpy()

    def _prompt_ids(self, r: GenerateRequest) -> list[int]:
        if not r.chat:
            return self._encode(r.prompt)
        if not self.capabilities.chat:
            raise BackendCapabilityError(f"{self.label}: the tokenizer has no chat template")
        text = self._tok.apply_chat_template([{"role": "user", "content": r.prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return self.tokenize(text)  # the template writes its own special tokens

    def _generate_one(self, r: GenerateRequest) -> Generation:
        import torch
        from transformers import GenerationConfig

        ids = self._prompt_ids(r)
        sample = r.temperature > 0
        eos = self._lm.generation_config.eos_token_id
        cfg = GenerationConfig(
            max_new_tokens=r.max_tokens, do_sample=sample, temperature=float(r.temperature) if sample else None,
            top_p=float(r.top_p) if sample else None, top_k=0 if sample else None, repetition_penalty=1.0,
            eos_token_id=eos, pad_token_id=self._tok.pad_token_id if self._tok.pad_token_id is not None else
            (eos[0] if isinstance(eos, list) else eos), stop_strings=list(r.stop) or None,
            output_logits=True, return_dict_in_generate=True,
        )
        seed = self.seed if r.seed is None else int(r.seed)
        with torch_threads(self.n_threads), torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self._lm.generate(torch.tensor([ids], dtype=torch.long), generation_config=cfg,
                                    tokenizer=self._tok if r.stop else None)
        gen = out.sequences[0, len(ids):].tolist()
        logits = torch.cat(out.logits, dim=0).float().numpy() if gen else np.empty((0, 0))
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        finish = "length"
        if gen and gen[-1] in eos_ids:
            finish = "stop"
            gen, logits = gen[:-1], logits[:-1]
        text, stopped = truncate_at_stop(self._tok.decode(gen, skip_special_tokens=True), r.stop)
        finish = "stop" if stopped else finish
        lp = logit_stats(logits, np.asarray(gen, dtype=np.int64))[0] if gen else np.empty(0)
        tops = None
        if r.top_logprobs and gen:
            k = int(r.top_logprobs)
            tops = tuple(_top_logprobs(row, k, self._tok) for row in logits)
        return Generation(text=text, tokens=tuple(self._tok.decode([t]) for t in gen),
                          token_logprobs=tuple(lp.tolist()), top_logprobs=tops, finish_reason=finish)

    def close(self) -> None:
        self._lm = None


def _top_logprobs(logits: np.ndarray, k: int, tok: Any) -> dict[str, float]:
    x = logits.astype(np.float64)
    m = x.max()
    logp = x - (m + np.log(np.exp(x - m).sum()))
    idx = np.argpartition(-logp, min(k, logp.size - 1))[:k]
    idx = idx[np.argsort(-logp[idx])]
    return {tok.decode([int(i)]): float(logp[i]) for i in idx}
