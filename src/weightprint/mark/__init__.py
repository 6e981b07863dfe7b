"""Mark and trace: per-recipient watermarked quantized copies, a registry, leak attribution.

- :func:`init_registry` creates a registry (SQLAlchemy URL) and a 0600 master key file.
- :func:`issue_copy` writes a recipient's marked GGUF (the mark is in the rounding decisions
  of quantization) and records it.
- :func:`trace_leak` tests a leaked model (any format, permuted or renamed) against every
  registered copy: one :class:`~weightprint.results.TestResult` per copy, Bonferroni-corrected.
- :func:`verify_file` checks a file by sha256, then by watermark.

The scheme and its null hypothesis are documented in ``docs/watermark.md`` and
:mod:`weightprint.mark.scheme`.
"""

from weightprint.mark.api import (
    DEFAULT_ALPHA,
    IssueResult,
    RecipientTest,
    RegistryInfo,
    TraceVerdict,
    VerifyResult,
    init_registry,
    issue_copy,
    model_sha256,
    trace_leak,
    verify_file,
)
from weightprint.mark.registry import DEFAULT_REGISTRY_URL
from weightprint.mark.scheme import DEFAULT_DELTA, SCHEME_VERSION

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_DELTA",
    "DEFAULT_REGISTRY_URL",
    "SCHEME_VERSION",
    "IssueResult",
    "RecipientTest",
    "RegistryInfo",
    "TraceVerdict",
    "VerifyResult",
    "init_registry",
    "issue_copy",
    "model_sha256",
    "trace_leak",
    "verify_file",
]
