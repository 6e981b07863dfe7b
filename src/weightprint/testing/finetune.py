"""Full fine-tuning on CPU (AdamW on the shipped corpus), and the training loop tiny models share.

:func:`finetune` writes a Hugging Face directory and records its measured result
(:class:`FinetuneResult`) in ``weightprint_derive.json``; :func:`relative_drift` measures how far
the weights moved, streamed tensor by tensor.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.behave.backends.transformers import load_causal_lm, torch_threads
from weightprint.errors import WeightprintError
from weightprint.results import to_jsonable
from weightprint.testing.corpus import heldout_text, training_text
from weightprint.testing.hfdir import HFSource, _copy_tokenizer_files, _output_dir, _write_info, as_hf_dir
from weightprint.testing.perplexity import default_threads


@dataclass(frozen=True)
class FinetuneResult:
    """Result of :func:`finetune`.

    Attributes
    ----------
    path : Path
        The fine-tuned Hugging Face directory.
    relative_drift : float
        ``sqrt(sum ||W' - W||^2) / sqrt(sum ||W||^2)`` over all tensors.
    loss_before, loss_after : float
        Mean cross-entropy on fixed held-out windows before and after training.
    train_loss_first, train_loss_last : float
        Mean training loss over the first and last 10 % of steps.
    steps, batch, seq_len : int
    lr : float
    seed : int
    seconds : float
        Wall time of the training loop.
    cpu_seconds : float
        CPU time of this process during the training loop (all threads); on a busy machine the
        better measure of cost.
    threads : int
        torch threads used.
    """

    path: Path
    relative_drift: float
    loss_before: float
    loss_after: float
    train_loss_first: float
    train_loss_last: float
    steps: int
    batch: int
    seq_len: int
    lr: float
    seed: int
    seconds: float
    cpu_seconds: float = float("nan")
    threads: int = 0

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({**asdict(self), "path": str(self.path)})


def _windows(ids: np.ndarray, seq_len: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if ids.size <= seq_len + 1:
        raise WeightprintError(f"training text has {ids.size} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    starts = rng.integers(0, ids.size - seq_len, size=n)
    return np.stack([ids[s:s + seq_len] for s in starts])


def _train(lm: Any, ids: np.ndarray, *, steps: int, lr: float, seq_len: int, batch: int, seed: int,
           weight_decay: float = 0.0) -> list[float]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF1]))
    opt = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    lm.train()
    losses = []
    for _ in range(steps):
        x = torch.from_numpy(_windows(ids, seq_len, batch, rng)).long()
        loss = lm(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    lm.eval()
    return losses


def _eval_loss(lm: Any, windows: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        x = torch.from_numpy(windows).long()
        return float(lm(input_ids=x, labels=x).loss)


def relative_drift(a: Any, b: Any) -> float:
    """``sqrt(sum ||B - A||^2) / sqrt(sum ||A||^2)`` over the tensors the two models share, streamed."""
    num = den = 0.0
    with HFSource(as_hf_dir(a)) as A, HFSource(as_hf_dir(b)) as B:
        for name in A.names:
            if name not in B or A.shapes[name] != B.shapes[name]:
                continue
            wa = A.tensor(name).astype(np.float64)
            wb = B.tensor(name).astype(np.float64)
            num += float(((wb - wa) ** 2).sum())
            den += float((wa ** 2).sum())
    if den == 0.0:
        raise WeightprintError(f"{A.path}: no shared nonzero tensors with {B.path}")
    return math.sqrt(num / den)


def finetune(
    model: Any,
    out: str | Path,
    *,
    steps: int = 200,
    lr: float = 1e-4,
    seq_len: int = 64,
    batch: int = 1,
    seed: int = 0,
    threads: int | None = None,
    text: str | None = None,
    eval_windows: int = 8,
) -> FinetuneResult:
    """Fine-tune ALL weights of ``model`` with AdamW on CPU and write the result.

    Training windows of ``seq_len`` tokens are drawn (``seed``) from the shipped public-domain
    corpus minus its held-out tail; ``loss_before``/``loss_after`` are measured on fixed windows
    of the held-out tail. Gradients are clipped to norm 1; no weight decay; float32 throughout.
    The result is also written to ``weightprint_derive.json`` in ``out``.

    Parameters
    ----------
    model : str, Path or Model
        Source: a Hugging Face directory or a GGUF file (converted once, cached).
    out : str or Path
        Output directory (must not exist).
    steps, lr, seq_len, batch, seed : *optional*
        Training knobs (fused AdamW, betas (0.9, 0.999), no weight decay, gradient clip 1).
    threads : int, *optional*
        ``torch.set_num_threads`` during training; default :func:`default_threads` (2, or 1
        when the machine is busy). Not part of the :func:`derived` cache key.
    text : str, *optional*
        Training text instead of the shipped corpus.
    eval_windows : int, *optional*, defaults to 8

    Returns
    -------
    FinetuneResult
    """
    import torch

    for knob, value in (("steps", steps), ("seq_len", seq_len), ("batch", batch)):
        if not (isinstance(value, int) and value > 0):
            raise WeightprintError(f"`{knob}` must be a positive integer, got {value!r}")
    src = as_hf_dir(model)
    out = Path(out)
    with torch_threads(default_threads() if threads is None else threads), _output_dir(out) as tmp:
        torch.manual_seed(seed)
        lm, tok = load_causal_lm(src)
        train_ids = np.asarray(tok(text if text is not None else training_text(),
                                   add_special_tokens=False)["input_ids"], dtype=np.int64)
        held = np.asarray(tok(heldout_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
        evals = _windows(held, seq_len, eval_windows, np.random.default_rng(12345))
        loss_before = _eval_loss(lm, evals)
        t0, c0 = time.perf_counter(), time.process_time()
        losses = _train(lm, train_ids, steps=steps, lr=lr, seq_len=seq_len, batch=batch, seed=seed)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        loss_after = _eval_loss(lm, evals)
        lm.save_pretrained(str(tmp))
        _copy_tokenizer_files(src, tmp)
        del lm
        drift = relative_drift(src, tmp)
        k = max(1, steps // 10)
        result = FinetuneResult(
            path=out, relative_drift=drift, loss_before=loss_before, loss_after=loss_after,
            train_loss_first=float(np.mean(losses[:k])), train_loss_last=float(np.mean(losses[-k:])),
            steps=steps, batch=batch, seq_len=seq_len, lr=lr, seed=seed, seconds=seconds,
            cpu_seconds=cpu_seconds, threads=torch.get_num_threads(),
        )
        _write_info(tmp, {"recipe": "finetune", "source": str(src),
                          "params": {"steps": steps, "lr": lr, "seq_len": seq_len, "batch": batch, "seed": seed},
                          "result": {k: v for k, v in result.to_dict().items() if k != "path"},
                          "train_losses": losses})
    return result


