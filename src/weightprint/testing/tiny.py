"""Tiny llama-architecture models, independently seeded: the null of lineage tests.

The shipped byte-level BPE tokenizer (``data/tiny_tokenizer.json``, 1024 tokens, trained on the
shipped corpus) keeps them at about 0.2 M parameters; each trains in about a second.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.behave.backends.transformers import torch_threads
from weightprint.errors import WeightprintError
from weightprint.testing.corpus import corpus_text, training_text
from weightprint.testing.finetune import _train, _windows
from weightprint.testing.hfdir import _output_dir, _write_info
from weightprint.testing.perplexity import default_threads

TINY_TOKENIZER_FILE = "tiny_tokenizer.json"


def tiny_tokenizer_path() -> Path:
    """The shipped byte-level BPE tokenizer (1024 tokens, trained on the shipped corpus)."""
    path = Path(str(resources.files("weightprint") / "data" / TINY_TOKENIZER_FILE))
    if not path.is_file():
        raise WeightprintError(f"shipped tokenizer `{TINY_TOKENIZER_FILE}` is missing from weightprint/data")
    return path


def build_tiny_tokenizer(out: str | Path, vocab_size: int = 1024) -> Path:
    """Train the byte-level BPE tokenizer that ships as ``data/tiny_tokenizer.json`` (maintainers only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_text().split("\n\n"), trainer=trainer)
    out = Path(out)
    tok.save(str(out))
    return out


def _save_tiny_tokenizer(tokenizer_file: Path, out: Path) -> Any:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|pad|>")
    tok.save_pretrained(str(out))
    return tok


def train_tiny_llama(
    out: str | Path,
    seed: int,
    steps: int = 60,
    *,
    hidden_size: int = 64,
    n_layers: int = 2,
    intermediate_size: int = 128,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    tie_embeddings: bool = False,
    lr: float = 3e-3,
    seq_len: int = 64,
    batch: int = 8,
    tokenizer: str | Path | None = None,
    threads: int = 1,
    teacher: str | Path | None = None,
) -> Path:
    """Initialise a tiny llama-architecture model with ``seed`` and train it briefly on the shipped text.

    Two calls with different seeds give independent models (the null of lineage tests); the
    same seed gives the same weights. With the default shipped 1024-token tokenizer a model
    has about 0.2 M parameters and trains in about a second.

    Parameters
    ----------
    out : str or Path
        Output directory (must not exist).
    seed : int
        Seed of the initialisation and of the training windows.
    steps : int, *optional*, defaults to 60
        AdamW steps (0 = initialisation only).
    hidden_size, n_layers, intermediate_size, n_heads, n_kv_heads, tie_embeddings : *optional*
        Architecture.
    lr, seq_len, batch : *optional*
        Training knobs (fused AdamW, no weight decay, gradient clip 1).
    threads : int, *optional*, defaults to 1
        Tiny matrices gain nothing from more threads. Not part of the :func:`derived` key.
    tokenizer : str or Path, *optional*
        A ``tokenizer.json``; defaults to :func:`tiny_tokenizer_path`.
    teacher : str or Path, *optional*
        A Hugging Face directory of a model with the same vocabulary: the student (initialised
        with ``seed``, independently of the teacher) is trained by distillation, the KL
        divergence from the teacher's next-token distribution, instead of on the text's tokens.

    Returns
    -------
    Path
        ``out``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok_file = Path(tokenizer) if tokenizer is not None else tiny_tokenizer_path()
    out = Path(out)
    with torch_threads(default_threads() if threads is None else threads), _output_dir(out) as tmp:
        tok = _save_tiny_tokenizer(tok_file, tmp)
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
            max_position_embeddings=max(256, seq_len), rms_norm_eps=1e-5, tie_word_embeddings=tie_embeddings,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        lm = LlamaForCausalLM(config)
        losses: list[float] = []
        if steps:
            ids = np.asarray(tok(training_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
            if teacher is None:
                losses = _train(lm, ids, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
            else:
                teacher_lm = LlamaForCausalLM.from_pretrained(str(teacher), dtype=torch.float32).eval()
                if teacher_lm.config.vocab_size != config.vocab_size:
                    raise WeightprintError(f"{teacher}: vocabulary of {teacher_lm.config.vocab_size} tokens, "
                                           f"the student's has {config.vocab_size}")
                losses = _distill(lm, teacher_lm, ids, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
        lm.save_pretrained(str(tmp))
        _write_info(tmp, {"recipe": "tiny_llama", "params": {
            "seed": seed, "steps": steps, "hidden_size": hidden_size, "n_layers": n_layers,
            "intermediate_size": intermediate_size, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
            "tie_embeddings": tie_embeddings, "lr": lr, "seq_len": seq_len, "batch": batch,
            "tokenizer": str(tok_file), "teacher": None if teacher is None else str(teacher)}, "train_losses": losses})
    return out


def _distill(lm: Any, teacher: Any, ids: np.ndarray, *, steps: int, lr: float, seq_len: int, batch: int,
             seed: int) -> list[float]:
    """:func:`~weightprint.testing.finetune._train`'s loop (same windows, optimizer and clipping)
    with the KL divergence from ``teacher``'s next-token distribution at every position as the
    loss (temperature 1). Kept apart from ``_train``: the fine-tune recipe's cache key is the
    code of its module, and every cached fine-tune would otherwise be rebuilt."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF1]))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0, fused=True)
    lm.train()
    losses = []
    for _ in range(steps):
        x = torch.from_numpy(_windows(ids, seq_len, batch, rng)).long()
        with torch.no_grad():
            target = torch.log_softmax(teacher(input_ids=x).logits.float(), dim=-1)
        pred = torch.log_softmax(lm(input_ids=x).logits.float(), dim=-1)
        loss = torch.nn.functional.kl_div(pred.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    lm.eval()
    return losses


def tiny_llama_pair(seed: int, steps: int = 60, **params: Any) -> tuple[Path, Path]:
    """Two independently seeded tiny llama models (seeds ``2*seed`` and ``2*seed + 1``), cached.

    Parameters
    ----------
    seed : int
        Pair index; pairs with different ``seed`` share no model.
    steps, **params
        Passed to :func:`train_tiny_llama`.

    Returns
    -------
    tuple of Path
    """
    from weightprint.testing.cache import derived

    return (derived("tiny_llama", None, seed=2 * seed, steps=steps, **params),
            derived("tiny_llama", None, seed=2 * seed + 1, steps=steps, **params))


