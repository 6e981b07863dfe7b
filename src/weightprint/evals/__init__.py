"""Evaluations on any backend: the EQ-Bench v2 runner and benchmark-contamination tests.

- :mod:`weightprint.evals.eqbench`: ``run_eqbench`` (questions in EQ-Bench v2 JSON, robust
  parsing of the emotion ratings, v2 scoring, resumable runs).
- :mod:`weightprint.evals.contamination`: Min-K% / Min-K%++ membership scores with AUROC, and
  the exchangeability test of Oren et al. (ICLR 2024), combined by ``check_contamination``.
- :mod:`weightprint.evals.data`: benchmark loading (JSON, JSONL, CSV, Parquet).
"""
