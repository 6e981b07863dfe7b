"""Backends: one :class:`~weightprint.behave.backends.base.Backend` per way of running a model."""

from weightprint.behave.backends.base import (
    Backend,
    BackendCapabilityError,
    Capabilities,
    GenerateRequest,
    Generation,
    LoglikelihoodRequest,
    LoglikelihoodResult,
    TokenScores,
    open_backend,
    register_backend,
    registered_backends,
)

__all__ = [
    "Backend", "BackendCapabilityError", "Capabilities", "GenerateRequest", "Generation",
    "LoglikelihoodRequest", "LoglikelihoodResult", "TokenScores", "open_backend", "register_backend",
    "registered_backends",
]
