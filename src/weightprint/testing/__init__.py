"""Helpers for tests, demos and benchmarks: real models from PyPI packages, derived models."""
