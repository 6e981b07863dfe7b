"""One exception family. Every message is one line naming the object and the numbers.

``cli.py`` turns any :class:`WeightprintError` into ``error: <message>`` on stderr and
exit code 2; library code never prints or exits.
"""

from __future__ import annotations


class WeightprintError(Exception):
    """Base of every error that a user can cause (bad file, bad argument, bad key).

    Parameters
    ----------
    message : str
        One line, no trailing period, naming the file/object and what is wrong.
    hint : str, optional
        A suggestion shown after the message by the CLI (``hint: ...``).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # keep str() to the message alone
        return self.message


class ModelFormatError(WeightprintError, ValueError):
    """A model file or directory is malformed (wrong magic, truncated, lying header)."""


class GGUFFormatError(ModelFormatError):
    """A GGUF file is malformed."""


class SafetensorsFormatError(ModelFormatError):
    """A safetensors file is malformed."""


class UnsupportedQuantType(WeightprintError, ValueError):
    """A quantization type is unknown, or the requested operation is not supported for it."""


class ShapeMismatchError(WeightprintError, ValueError):
    """Tensor shapes or block sizes do not fit together."""


class TensorNotFound(WeightprintError, KeyError):
    """A tensor name is not in the model."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class MissingTokenizerError(WeightprintError):
    """A model has no tokenizer where one is needed."""


class RegistryError(WeightprintError):
    """The watermark registry or its key file is missing, wrong or inconsistent."""


class BackendError(WeightprintError):
    """A model backend (llama.cpp, transformers, HTTP endpoint) failed or is unavailable."""


class NotComparableError(WeightprintError):
    """Two models cannot be compared (different architectures with nothing in common)."""


class NonFiniteError(WeightprintError, ValueError):
    """A tensor holds NaN or infinity where finite values are required (e.g. quantization)."""
