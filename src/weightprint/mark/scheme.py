"""The watermark: key-chosen rounding inside the quantizer, detected at the steered weights.

Embedding (scheme ``wp-round-v2``)
----------------------------------
For every marked tensor (a weight matrix with at least ``MIN_ELEMENTS`` entries) the copy's
key seeds a ChaCha20 stream that gives one sign ``s_i`` in {-1, +1} per entry (HF layout, row
major). The tensor is quantized to its target type by llama.cpp's algorithm, unchanged except
for the last step, the rounding of each weight's level coordinate ``v_i`` (its value in units of
the block's step, after the block's scale and minimum are fixed): when ``v_i`` lies within
``delta`` of a rounding boundary, strictly off the exact tie, the weight takes the neighbouring
level on the side ``s_i`` names (:func:`weightprint.quant.base.keyed_level`). These are the
*candidate* weights: a fraction about ``2 delta`` of a fixed-scale type's weights, half of
which llama.cpp would have rounded the other way. Scales, minimums, ties and all other weights
are llama.cpp's, so a copy differs from the unmarked quantization in about a fraction ``delta``
of its weights, by one level each. Float targets (F16/BF16/F32) are marked on the Q8_0 grid:
candidate weights take the value of their key-side Q8_0 level.

Detection (non-blind)
---------------------
The candidates and their two levels depend only on the original ``x``, the copy's target type
per tensor and ``delta`` (never on a key): quantizing ``x`` with every direction +1 and with
every direction -1 gives ``y_up`` and ``y_dn``, which differ exactly at the candidates. For a
leak ``y`` aligned to the original, each candidate scores where ``y`` sits between its two
levels::

    c_i = clip((y_i - (y_up_i + y_dn_i) / 2) / ((y_up_i - y_dn_i) / 2), -1, 1)

(``+1`` at the level ``s_i = +1`` picks, ``-1`` at the other), and 0 elsewhere. The statistic is
``T = sum_i c_i s_i``: for the copy itself every term is +1, so ``z = sqrt(#candidates)``.

H0: the leak was not produced from this copy. Then the key's signs are independent of ``c``
(the signs are a pseudo-random function of a key the leak never saw), so conditionally on
``c`` the statistic is a sum of independent symmetric terms ``+-c_i`` and

- ``P(T >= t) <= exp(-t^2 / (2 sum c_i^2))`` (Hoeffding), and
- ``P(T >= t) <= 1 - Phi(t / sqrt(sum c_i^2)) + 0.56 sum |c_i|^3 / (sum c_i^2)^(3/2)``
  (Berry-Esseen, Shevtsova's constant).

The p-value is the smaller of the two bounds: valid whatever the leak (no approximation),
close to uniform under H0 for p above ~1e-3 (Berry-Esseen term) and astronomically small in
the tail (Hoeffding) when the copy is the source of the leak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import special

from weightprint.constants import DEFAULT_MARK_DELTA, QType
from weightprint.errors import UnsupportedQuantType
from weightprint.mark.keys import CopyKey
from weightprint.quant import KeyedRounding, dequantize, kernel, quantize

SCHEME_VERSION = "wp-round-v2"
DEFAULT_DELTA = DEFAULT_MARK_DELTA
MIN_ELEMENTS = 4096
BERRY_ESSEEN_C = 0.56
LN10 = math.log(10.0)
FLOAT_GRID = QType.Q8_0  # the grid a float (F16/BF16/F32) copy is marked on
_FLOAT_TYPES = (QType.F32, QType.F16, QType.BF16)


def is_marked_tensor(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the scheme marks a tensor: a ``.weight`` matrix with enough entries."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    n = int(shape[0]) * int(shape[1])
    return n >= MIN_ELEMENTS and "norm" not in name


def grid_type(qtype: QType | None, cols: int) -> QType | None:
    """The grid a tensor stored as ``qtype`` (rows of ``cols`` weights) is marked on, or None.

    Grid types mark on their own grid; float types on Q8_0's; other types (dequantize-only
    IQ*/TQ*) and rows that are not whole blocks carry no mark.
    """
    grid = FLOAT_GRID if qtype is None or qtype in _FLOAT_TYPES else QType(qtype)
    try:
        k = kernel(grid)
    except UnsupportedQuantType:
        return None
    if not k.supports_rounding or cols % k.block_size:
        return None
    return grid


def sign_bits(key: CopyKey, name: str, n: int) -> np.ndarray:
    """``ceil(n/8)`` packed sign bytes for tensor ``name`` (bit 1 = +1, MSB first), from ChaCha20."""
    nbytes = (n + 7) // 8
    enc = Cipher(algorithms.ChaCha20(key.tensor_seed(name), b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(nbytes)), dtype=np.uint8)


def _directions(key: CopyKey, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The key's rounding directions (int8 ±1) of tensor ``name``, in its Hugging Face ``shape``."""
    n = int(np.prod(shape))
    bits = np.unpackbits(sign_bits(key, name, n), count=n).view(np.int8)
    return (bits * 2 - 1).reshape(shape)


def signs(key: CopyKey, name: str, n: int) -> np.ndarray:
    """The ±1 pattern (float32, length ``n``) of tensor ``name`` under ``key``."""
    return _directions(key, name, (n,)).astype(np.float32)


def level_pair(values: np.ndarray, grid: QType, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(y_up, y_dn)``: ``values`` quantized to ``grid`` and back with every direction +1 / -1.

    They differ exactly at the candidate weights (within ``delta`` of a rounding boundary).
    """
    x = np.ascontiguousarray(values, dtype=np.float32)
    ones = np.ones(x.shape, dtype=np.int8)
    up = dequantize(quantize(x, grid, rounding=ones, delta=delta), grid, shape=x.shape)
    np.negative(ones, out=ones)
    dn = dequantize(quantize(x, grid, rounding=ones, delta=delta), grid, shape=x.shape)
    return up, dn


def embed_tensor(name: str, values: np.ndarray, qtype: QType | None, key: CopyKey,
                 *, delta: float = DEFAULT_DELTA) -> np.ndarray | KeyedRounding:
    """Mark one tensor of a copy whose target type for it is ``qtype``.

    Returns the values unchanged for tensors the scheme does not mark (1-D, norms, small,
    no grid); a :class:`~weightprint.quant.KeyedRounding` (the key's directions) for a grid
    target, which the quantizer applies; marked float values for a float target.

    Parameters
    ----------
    name : str
        Canonical (Hugging Face) tensor name; it selects the tensor's sign stream.
    values : numpy.ndarray
        float32 values in Hugging Face layout.
    qtype : QType or None
        The tensor's target storage type; None means a float target.
    key : CopyKey
        The copy's key.
    delta : float, *optional*, defaults to ``DEFAULT_DELTA``
        Width of the steered band around each rounding boundary, in level units.
    """
    if not is_marked_tensor(name, values.shape):
        return values
    grid = grid_type(qtype, int(values.shape[-1]))
    if grid is None:
        return values
    x = np.asarray(values, dtype=np.float32)
    dirs = _directions(key, name, x.shape)
    if qtype is not None and qtype not in _FLOAT_TYPES:
        return KeyedRounding(x, dirs, float(delta))
    up, dn = level_pair(x, grid, delta)
    return np.where(up != dn, np.where(dirs > 0, up, dn), x).astype(np.float32, copy=False)


def keyed_scores(original: np.ndarray, leaked: np.ndarray, grid: QType, delta: float) -> tuple[np.ndarray, int]:
    """Scores ``c`` (float32, flat) of a leaked tensor and the number of candidates.

    ``c_i = clip((y_i - mid_i) / half_i, -1, 1)`` at the candidates of the original on
    ``grid`` (``mid``, ``half``: centre and half-distance of the up and down levels), 0
    elsewhere and where the leak is not finite. Depends on the original, the leak, the grid and
    ``delta`` only (never on a key).
    """
    up, dn = level_pair(original, grid, delta)
    y = np.asarray(leaked, dtype=np.float32).reshape(-1)
    up = up.reshape(-1)
    dn = dn.reshape(-1)
    idx = np.flatnonzero(up != dn)
    c = np.zeros(y.size, dtype=np.float32)
    if idx.size == 0:
        return c, 0
    u = up[idx]
    d = dn[idx]
    with np.errstate(invalid="ignore", over="ignore"):
        v = (y[idx] - (u + d) * np.float32(0.5)) / ((u - d) * np.float32(0.5))
    v[~np.isfinite(v)] = 0.0
    np.clip(v, -1.0, 1.0, out=v)
    c[idx] = v
    return c, int(idx.size)


@numba.njit(cache=True, nogil=True)
def _signed_sum(c: np.ndarray, bits: np.ndarray) -> float:  # pragma: no cover - numba
    n = c.shape[0]
    acc = 0.0
    full = n // 8
    for j in range(full):
        b = bits[j]
        base = j * 8
        part = np.float32(0.0)
        for k in range(8):
            sign = np.float32(((b >> (7 - k)) & 1) * 2 - 1)
            part += c[base + k] * sign
        acc += part
    for i in range(full * 8, n):
        sign = np.float32(((bits[i >> 3] >> (7 - (i & 7))) & 1) * 2 - 1)
        acc += c[i] * sign
    return acc


@numba.njit(cache=True, nogil=True)
def _power_sums(c: np.ndarray) -> tuple[float, float]:  # pragma: no cover - numba
    s2 = 0.0
    s3 = 0.0
    for i in range(c.shape[0]):
        v = np.float64(c[i])
        a = abs(v)
        s2 += v * v
        s3 += a * a * a
    return s2, s3


def power_sums(c: np.ndarray) -> tuple[float, float]:
    """``(sum c_i^2, sum |c_i|^3)`` in float64."""
    s2, s3 = _power_sums(c)
    return float(s2), float(s3)


def correlate(c: np.ndarray, key: CopyKey, name: str) -> float:
    """``sum_i c_i s_i`` for the key's signs of tensor ``name``."""
    return float(_signed_sum(c, sign_bits(key, name, c.size)))


@dataclass
class Accumulator:
    """Running sums of one key's statistic over tensors: T, sum c^2, sum |c|^3, n."""

    statistic: float = 0.0
    sum_sq: float = 0.0
    sum_cube: float = 0.0
    n: int = 0
    per_tensor: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, t: float, sum_sq: float, sum_cube: float, n: int) -> None:
        self.statistic += t
        self.sum_sq += sum_sq
        self.sum_cube += sum_cube
        self.n += n
        if sum_sq > 0:
            self.per_tensor[name] = t / math.sqrt(sum_sq)

    @property
    def z(self) -> float:
        return self.statistic / math.sqrt(self.sum_sq) if self.sum_sq > 0 else 0.0

    def log10_pvalue(self) -> float:
        return log10_pvalue(self.statistic, self.sum_sq, self.sum_cube)


def log10_pvalue(statistic: float, sum_sq: float, sum_cube: float) -> float:
    """log10 of min(Hoeffding bound, normal tail + Berry-Esseen term) for ``P(T >= t)``.

    Both are upper bounds on the tail of a sum of independent ``±c_i`` with fair signs,
    so their minimum is a valid p-value for H0 (signs independent of the scores).
    """
    if sum_sq <= 0:
        return 0.0
    z = statistic / math.sqrt(sum_sq)
    hoeffding = -(z * z) / 2.0 / LN10 if z > 0 else 0.0
    be = BERRY_ESSEEN_C * sum_cube / sum_sq ** 1.5
    normal_tail = float(special.ndtr(-z))
    berry = math.log10(min(1.0, normal_tail + be)) if normal_tail + be > 0 else -math.inf
    return float(min(0.0, hoeffding, berry))
