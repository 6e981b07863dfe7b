"""Typed, range-checked reads of GGUF metadata and ``config.json`` values: :class:`Values`.

Every hyperparameter a file declares goes through one of these accessors before it is used for
arithmetic or an allocation: a string where an integer belongs, a per-layer array, ``inf``, a
zero head count or a block count of 2**32 become one :class:`~weightprint.errors.ModelFormatError`
line naming the file and the key, instead of a ``ValueError``/``ZeroDivisionError`` traceback
(or a four-billion-entry list) further on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from weightprint.errors import ModelFormatError

__all__ = ["Values", "MAX_LAYERS", "MAX_WIDTH", "MAX_HEADS", "MAX_CONTEXT", "MAX_VOCAB", "describe"]

MAX_LAYERS = 4096  # decoder blocks (the largest released models have < 200)
MAX_WIDTH = 1 << 20  # hidden, head and MLP widths
MAX_HEADS = 1 << 14
MAX_CONTEXT = 1 << 32
MAX_VOCAB = 1 << 24
MAX_EXPERTS = 1 << 16

_MISSING = object()


def describe(value: Any) -> str:
    """A short, safe description of an unexpected value for an error message."""
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {bool(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, np.ndarray):
        return f"an array of {value.size} {value.dtype}"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, Sequence):
        return f"an array of {len(value)} items"
    if value is None:
        return "null"
    return type(value).__name__


class Values:
    """Checked access to a mapping of untrusted values (GGUF metadata or a ``config.json``).

    Parameters
    ----------
    values : Mapping
        The key/values as read.
    label : str
        The file, for messages (``model.gguf``, ``dir/config.json``).
    kind : str, *optional*, defaults to "metadata key"
        How a key is called in messages (``config key`` for ``config.json``).
    prefix : str, *optional*
        Prepended to every key (``"llama."`` for ``{arch}.*`` hyperparameters).
    within : str, *optional*
        Where ``values`` sits in its file, shown before keys in messages (``"text_config."``).

    Examples
    --------
    >>> v = Values({"llama.block_count": 30}, "m.gguf", prefix="llama.")
    >>> v.int("block_count", lo=1, hi=MAX_LAYERS)
    30
    """

    def __init__(self, values: Mapping[str, Any], label: str, kind: str = "metadata key", prefix: str = "",
                 within: str = "") -> None:
        self.values = values
        self.label = label
        self.kind = kind
        self.prefix = prefix
        self.within = within

    def name(self, key: str) -> str:
        """The key as messages show it."""
        return f"{self.within}{self.prefix}{key}"

    def fail(self, key: str, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.label}: {self.kind} `{self.name(key)}` {message}")

    def has(self, key: str) -> bool:
        return self.values.get(self.prefix + key) is not None

    def raw(self, key: str) -> Any:
        return self.values.get(self.prefix + key)

    def _get(self, key: str, default: Any, required: str | None) -> Any:
        value = self.values.get(self.prefix + key, _MISSING)
        if value is _MISSING or value is None:
            if required is not None:
                raise ModelFormatError(f"{self.label}: no {self.kind} `{self.name(key)}`, needed {required}")
            return _MISSING
        return value

    def int(self, key: str, *, lo: int | None = 0, hi: int | None = None, default: Any = None,
            required: str | None = None, per_layer: bool = False) -> Any:
        """An integer in ``[lo, hi]`` (None or ``default`` when absent).

        ``per_layer``: an array of integers is accepted (llama.cpp's per-layer hyperparameters);
        all its items must be in range and the value of layer 0 is returned.
        """
        value = self._get(key, default, required)
        if value is _MISSING:
            return default
        if per_layer and isinstance(value, (np.ndarray, list, tuple)):
            if len(value) == 0:
                raise self.fail(key, "is an empty array, expected an integer per layer")
            items = np.asarray(value) if not isinstance(value, np.ndarray) else value
            if items.dtype.kind not in "iu":
                raise self.fail(key, f"is {describe(value)}, expected integers")
            if lo is not None and items.min() < lo or hi is not None and items.max() > hi:
                bad = items.min() if lo is not None and items.min() < lo else items.max()
                raise self.fail(key, f"holds {int(bad)}, outside [{lo}, {hi}]")
            return int(items.reshape(-1)[0])
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise self.fail(key, f"is {describe(value)}, expected an integer")
        value = int(value)
        if lo is not None and value < lo or hi is not None and value > hi:
            raise self.fail(key, f"is {value}, outside [{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]")
        return value

    def float(self, key: str, *, lo: float | None = None, hi: float | None = None, default: Any = None,
              required: str | None = None, positive: bool = False) -> Any:
        """A finite number in ``[lo, hi]`` (integers accepted; ``positive`` means > 0)."""
        value = self._get(key, default, required)
        if value is _MISSING:
            return default
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise self.fail(key, f"is {describe(value)}, expected a number")
        try:
            f = float(value)
        except OverflowError:
            raise self.fail(key, "is too large for a float") from None
        if not math.isfinite(f):
            raise self.fail(key, f"is {f}, expected a finite number")
        if positive and f <= 0:
            raise self.fail(key, f"is {f}, expected a positive number")
        if lo is not None and f < lo or hi is not None and f > hi:
            raise self.fail(key, f"is {f}, outside [{lo}, {hi}]")
        return f

    def str(self, key: str, *, default: Any = None, required: str | None = None) -> Any:
        value = self._get(key, default, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self.fail(key, f"is {describe(value)}, expected a string")
        return value

    def bool(self, key: str, *, default: Any = None) -> Any:
        value = self._get(key, default, None)
        if value is _MISSING:
            return default
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
            return bool(value)
        raise self.fail(key, f"is {describe(value)}, expected a boolean")

    def token_id(self, key: str, n_vocab: int) -> int | None:
        """A token id, which must index one of the ``n_vocab`` tokens present."""
        value = self.int(key, lo=None)
        if value is None:
            return None
        if not 0 <= value < n_vocab:
            raise self.fail(key, f"is {value}, but the vocabulary has {n_vocab} tokens")
        return value


def check_heads(v: Values, hidden: int | None, n_heads: int | None, n_kv: int | None, head_dim: int | None,
                keys: tuple[str, str, str]) -> None:
    """Head counts must fit the width: ``n_kv`` divides ``n_heads``; without a declared head size,
    ``n_heads`` divides ``hidden``. ``keys`` name (hidden, heads, kv heads) in messages."""
    hidden_key, heads_key, kv_key = keys
    if n_heads is not None and n_kv is not None and n_kv and n_heads % n_kv:
        raise v.fail(kv_key, f"is {n_kv}, which does not divide the {n_heads} attention heads")
    if head_dim is None and hidden is not None and n_heads and hidden % n_heads:
        raise v.fail(heads_key, f"is {n_heads}, which does not divide the width {hidden} (`{v.name(hidden_key)}`)")
