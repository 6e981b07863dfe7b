"""White-box lineage: is model B derived from model A? (see ``docs/lineage.md``)

- :func:`compare_models` -- a p-value verdict (``derived`` / ``no evidence`` / ``not comparable``)
  from the weights of two models, robust to fine-tuning, requantization, hidden-unit and head
  permutation, vocabulary changes and dropped layers, with per-component evidence.
- :func:`fingerprint_model` / :func:`search_fingerprints` -- compact fingerprints in a database;
  rank all stored references against a suspect without their weights.
- :func:`exact_derivation` -- is this quantized file exactly SOURCE quantized by llama.cpp?
"""

from weightprint.lineage.compare import LineageResult, compare_fingerprints, compare_models
from weightprint.lineage.db import (
    FingerprintResult,
    SearchResult,
    fingerprint_model,
    list_fingerprints,
    search_fingerprints,
    store_fingerprint,
)
from weightprint.lineage.exact import ExactResult, TensorDifference, exact_derivation
from weightprint.lineage.fingerprint import Fingerprint, build_fingerprint

__all__ = [
    "ExactResult",
    "Fingerprint",
    "FingerprintResult",
    "LineageResult",
    "SearchResult",
    "TensorDifference",
    "build_fingerprint",
    "compare_fingerprints",
    "compare_models",
    "exact_derivation",
    "fingerprint_model",
    "list_fingerprints",
    "search_fingerprints",
    "store_fingerprint",
]
