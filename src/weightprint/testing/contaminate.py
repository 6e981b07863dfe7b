"""A deliberately contaminated SmolLM2: fine-tuned on a benchmark in its canonical order.

The contamination tests (:mod:`weightprint.evals.contamination`) need a model that has seen a
benchmark, and one that has not. :func:`contaminated_smollm2` fine-tunes all weights of
SmolLM2-135M (:func:`weightprint.testing.derive.finetune`, through the :func:`derived` cache) on
the shipped ``seen`` benchmark joined in canonical order, then writes an F16 GGUF for llama.cpp.
The ``unseen`` half (same generator, same style) stays out of training.

Training windows of ``seq_len`` tokens are drawn at random offsets of the canonical-order text,
so each window holds a run of consecutive benchmark items in their canonical order; ``epochs``
sets the number of steps so that the windows cover the text about that many times.
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["CONTAMINATION_RECIPE", "contaminated_smollm2", "contamination_text"]

#: fine-tuning recipe of the contaminated model (all part of the cache key)
CONTAMINATION_RECIPE = {"epochs": 4, "lr": 2e-4, "seq_len": 128, "batch": 4, "seed": 0}

ITEM_SEPARATOR = "\n"


def contamination_text(items: list[str]) -> str:
    """The training text: the benchmark items in canonical order, one per line."""
    return ITEM_SEPARATOR.join(items) + ITEM_SEPARATOR


def contaminated_smollm2(*, epochs: int = CONTAMINATION_RECIPE["epochs"], lr: float = CONTAMINATION_RECIPE["lr"],
                         seq_len: int = CONTAMINATION_RECIPE["seq_len"], batch: int = CONTAMINATION_RECIPE["batch"],
                         seed: int = CONTAMINATION_RECIPE["seed"], items: list[str] | None = None) -> Path:
    """GGUF (F16) of SmolLM2-135M fine-tuned on ``items`` (default: the shipped seen benchmark).

    Built once per machine and cached (several minutes on 2 CPU cores); later calls return the
    cached file.

    Parameters
    ----------
    epochs : int
        Passes over the canonical-order text (steps = ceil(epochs * tokens / (seq_len * batch))).
    lr, seq_len, batch, seed
        Knobs of :func:`weightprint.testing.derive.finetune`.
    items : list of str, *optional*
        The benchmark; defaults to :func:`weightprint.evals.data.shipped_benchmark` ``("seen")``.
    """
    from weightprint.evals.data import shipped_benchmark
    from weightprint.testing.derive import derived
    from weightprint.testing.models import smollm2_path

    if items is None:
        items = shipped_benchmark("seen")
    text = contamination_text(items)
    source = smollm2_path()
    n_tokens = _count_tokens(source, text)
    steps = max(1, math.ceil(epochs * n_tokens / (seq_len * batch)))
    hf = derived("finetune", source, text=text, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
    return derived("gguf", hf, file_type="F16")


def _count_tokens(source: Path, text: str) -> int:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(source), vocab_only=True, verbose=False)
    try:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    finally:
        llm.close()
