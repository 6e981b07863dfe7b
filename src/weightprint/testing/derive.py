"""Derived and attacked models, reproducible and cached: the test material of lineage and tracing.

This module re-exports the toolkit, which lives in modules by purpose:

- :mod:`weightprint.testing.recipes` -- model transforms: :func:`permute_hidden_units`,
  :func:`add_noise` (and :func:`calibrate_noise_for_perplexity`), :func:`extend_vocab`,
  :func:`drop_layer`
- :mod:`weightprint.testing.finetune` -- :func:`finetune`, a full AdamW fine-tune on CPU
- :mod:`weightprint.testing.tiny` -- :func:`train_tiny_llama` / :func:`tiny_llama_pair`
- :mod:`weightprint.testing.cache` -- :func:`derived`, the per-machine cache keyed by recipe,
  parameters, source content and recipe code
- :mod:`weightprint.testing.hfdir` -- reading sources through :mod:`weightprint.io`, writing
  derived directories, :func:`to_gguf`
- :mod:`weightprint.testing.perplexity` -- :func:`perplexity` through the behave backends
- :mod:`weightprint.testing.corpus` -- the shipped public-domain text

torch and transformers are imported inside the functions that need them.

Examples
--------
>>> from weightprint.testing.models import smollm2_path
>>> from weightprint.testing.derive import derived
>>> permuted = derived("permute", smollm2_path(), seed=1)          # doctest: +SKIP
>>> tuned = derived("finetune", smollm2_path(), steps=200, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from weightprint.testing.cache import RECIPES, derived, derived_key, recipe_code_digest, source_fingerprint
from weightprint.testing.corpus import CORPUS_FILES, corpus_text, heldout_text
from weightprint.testing.finetune import FinetuneResult, finetune, relative_drift
from weightprint.testing.hfdir import GGUF_FILE, INFO_FILE, HFSource, as_hf_dir, read_derive_info, to_gguf
from weightprint.testing.perplexity import default_threads, perplexity
from weightprint.testing.recipes import (
    LayerPermutation,
    NoiseCalibration,
    add_noise,
    calibrate_noise_for_perplexity,
    drop_layer,
    extend_vocab,
    hidden_unit_permutations,
    new_token_strings,
    permute_hidden_units,
)
from weightprint.testing.tiny import TINY_TOKENIZER_FILE, build_tiny_tokenizer, tiny_llama_pair, tiny_tokenizer_path, train_tiny_llama

__all__ = [
    "CORPUS_FILES", "GGUF_FILE", "INFO_FILE", "RECIPES", "TINY_TOKENIZER_FILE", "FinetuneResult", "HFSource",
    "LayerPermutation", "NoiseCalibration", "add_noise", "as_hf_dir", "build_tiny_tokenizer",
    "calibrate_noise_for_perplexity", "corpus_text", "default_threads", "derived", "derived_key", "drop_layer",
    "extend_vocab", "finetune", "heldout_text", "hidden_unit_permutations", "new_token_strings", "perplexity",
    "permute_hidden_units", "read_derive_info", "recipe_code_digest", "relative_drift", "source_fingerprint",
    "tiny_llama_pair", "tiny_tokenizer_path", "to_gguf", "train_tiny_llama",
]
