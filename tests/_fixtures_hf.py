"""Shared helpers for the Hugging Face io tests: HF directories derived from the real GGUFs.

Each directory is built once per machine under ``cache_dir()/hf/`` and keyed by a recipe hash
(source file name and size, dtype, and the source code of the writer modules), so a change in
the writer rebuilds it and an unchanged writer reuses it across sessions.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

from weightprint.testing.models import cache_dir

_WRITER_MODULES = ("safetensors_file.py", "hf.py", "hf_config.py", "tokenizer.py", "gguf_file.py", "names.py")

# Strings whose ids must agree between llama.cpp and transformers: ASCII, numbers, whitespace
# runs, code, accented Latin, CJK, emoji, Greek, and each model's chat special tokens.
TOKENIZER_TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days; 3.14159 is pi.",
    "  leading spaces and\ttabs\n\nnewlines   trailing  ",
    "Ünïcödé: 日本語のテキスト, emoji 🤖🎉, Ελληνικά, Привет",
    "def f(x):\n    return x**2  # comment",
    "don't won't I'm they'll",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
]


def _recipe_hash(source: Path, dtype: str, max_shard_bytes: int) -> str:
    import weightprint.io as io_pkg

    h = hashlib.sha256()
    h.update(f"{source.name}:{source.stat().st_size}:{dtype}:{max_shard_bytes}".encode())
    io_dir = Path(io_pkg.__file__).parent
    for name in _WRITER_MODULES:
        p = io_dir / name
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def hf_dir_from_gguf(source: Path, dtype: str, *, max_shard_bytes: int = 5 * 10**9) -> Path:
    """A HF directory written by ``write_hf_dir`` from ``source`` (cached by recipe hash)."""
    from weightprint.io.gguf_file import GGUFModel
    from weightprint.io.hf import write_hf_dir

    root = cache_dir() / "hf"
    out = root / f"{source.stem}-{dtype}-{_recipe_hash(source, dtype, max_shard_bytes)}"
    if (out / "config.json").is_file():
        return out
    for stale in root.glob(f"{source.stem}-{dtype}-*"):  # built by an older writer
        shutil.rmtree(stale, ignore_errors=True)
    with GGUFModel(source) as model:
        write_hf_dir(model, out, dtype=dtype, overwrite=True, max_shard_bytes=max_shard_bytes)
    return out


@functools.lru_cache(maxsize=2)
def causal_lm(directory: Path):
    """``AutoModelForCausalLM`` in float32 from ``directory``, loaded once per session."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.eval()
    return model


def forward_logits(model, ids: list[int]):
    """Next-token logits (float64 numpy, one row per position) of ``model`` on ``ids``.

    Runs torch on one thread: on a busy 2-core machine OpenMP threads that wait for each other
    make a 45-token forward pass 5-10x slower (measured 5.6 s vs 0.8 s); the setting is restored.
    """
    import numpy as np
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy().astype(np.float64)
    finally:
        torch.set_num_threads(before)


def llama_for_logits(llama_cpp_module, path: Path, n_ctx: int = 256):
    """llama.cpp on ``path`` keeping every position's logits, single-threaded (see forward_logits)."""
    return llama_cpp_module.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=1, n_threads_batch=1, verbose=False)


@functools.lru_cache(maxsize=2)
def auto_tokenizer(directory: Path):
    """``AutoTokenizer`` from ``directory``, loaded once per session."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(directory)


def llama_token_ids(llm, text: str, *, add_bos: bool) -> list[int]:
    """llama.cpp's ids for ``text`` (special tokens parsed)."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


