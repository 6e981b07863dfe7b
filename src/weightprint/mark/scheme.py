"""The watermark: key-chosen rounding inside quantization, detected by correlation.

Embedding (scheme ``wp-round-v1``)
---------------------------------
For every marked tensor (a weight matrix with at least ``MIN_ELEMENTS`` entries) the copy's
key seeds a ChaCha20 stream that gives one sign ``s_i`` in {-1, +1} per entry (HF layout, row
major). Before the tensor is quantized to its target type, each weight is shifted by::

    x_i' = x_i + delta * step_i * s_i

where ``step_i`` is the quantization step of the target type in the weight's block (e.g.
``amax/8`` per 32 weights for Q4_0, ``(max - min)/15`` per 32 for Q4_K). The shift decides the
rounding of the weights that sit within ``delta * step`` of a rounding boundary: about a
fraction ``delta`` of them move one level in the key's direction, the others keep their value.
The quantization error energy grows by a factor ``1 + 12 delta^2`` (0.5% at delta = 0.02).

Detection (non-blind)
---------------------
With the original ``x`` and a leak ``y`` aligned to it, the residual ``r = y - x`` is turned
into scores ``c_i = clip(r_i / u_i / m_t, -CLIP, CLIP)`` where ``u_i`` is a type-free block
scale of the original (``amax/127`` per 32 weights) and ``m_t`` a robust scale of tensor ``t``;
both come from ``x`` and ``y`` only. The statistic is ``T = sum_i c_i s_i``.

H0: the leak was not produced from this copy. Then the key's signs are independent of ``c``
(the signs are a pseudo-random function of a key the leak never saw), so conditionally on
``c`` the statistic is a sum of independent symmetric terms ``+-c_i`` and

- ``P(T >= t) <= exp(-t^2 / (2 sum c_i^2))`` (Hoeffding), and
- ``P(T >= t) <= 1 - Phi(t / sqrt(sum c_i^2)) + 0.56 sum |c_i|^3 / (sum c_i^2)^(3/2)``
  (Berry-Esseen, Shevtsova's constant).

The p-value is the smaller of the two bounds: valid whatever the leak (no approximation),
close to uniform under H0 for p above ~1e-4 (Berry-Esseen term) and astronomically small in
the tail (Hoeffding) when the copy is the source of the leak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy import special

from weightprint.constants import QType
from weightprint.mark.keys import CopyKey

SCHEME_VERSION = "wp-round-v1"
DEFAULT_DELTA = 0.02
MIN_ELEMENTS = 4096
CLIP = 4.0
_SCALE_SAMPLE = 1 << 16  # entries (a fixed stride) used for a tensor's robust scale
BERRY_ESSEEN_C = 0.56
LN10 = math.log(10.0)

# (block size, kind, levels): step = amax/levels ("sym") or (max(0,max) - min(0,min))/levels ("asym")
_STEP_RULES: dict[QType, tuple[int, str, float]] = {
    QType.Q8_0: (32, "sym", 127.0),
    QType.Q4_0: (32, "sym", 8.0),
    QType.Q4_1: (32, "asym", 15.0),
    QType.Q5_0: (32, "sym", 16.0),
    QType.Q5_1: (32, "asym", 31.0),
    QType.Q2_K: (16, "asym", 3.0),
    QType.Q3_K: (16, "sym", 4.0),
    QType.Q4_K: (32, "asym", 15.0),
    QType.Q5_K: (32, "asym", 31.0),
    QType.Q6_K: (16, "sym", 32.0),
}
# Float targets have no rounding grid worth the name: mark them at the Q8_0 step (a shift
# below Q8_0's own rounding noise), so that a float copy still carries a detectable mark.
_FLOAT_RULE = (32, "sym", 127.0)
_DEFAULT_RULE = (32, "sym", 8.0)  # other quantized types (IQ*, TQ*): a 4-bit-like grid
_UNIT_RULE = (32, "sym", 127.0)  # detection's type-free block scale


def is_marked_tensor(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the scheme marks a tensor: a ``.weight`` matrix with enough entries."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    n = int(shape[0]) * int(shape[1])
    return n >= MIN_ELEMENTS and "norm" not in name


def step_rule(qtype: QType | None) -> tuple[int, str, float]:
    if qtype is None or qtype in (QType.F32, QType.F16, QType.BF16):
        return _FLOAT_RULE
    return _STEP_RULES.get(qtype, _DEFAULT_RULE)


def block_steps(values: np.ndarray, rule: tuple[int, str, float]) -> np.ndarray:
    """Per-block quantization step of a 2-D float32 array, shape ``(rows, n_blocks)``.

    Blocks run along the last axis (GGML rows); a row whose length is not a multiple of the
    block size is treated as one block.
    """
    block, kind, levels = rule
    rows, cols = values.shape
    if cols % block:
        block = cols
    v = values.reshape(rows, cols // block, block)
    if kind == "sym":
        step = np.abs(v).max(axis=2) / np.float32(levels)
    else:
        step = (np.maximum(v.max(axis=2), 0) - np.minimum(v.min(axis=2), 0)) / np.float32(levels)
    return step.astype(np.float32, copy=False)


def _expand(step: np.ndarray, cols: int) -> np.ndarray:
    return np.repeat(step, cols // step.shape[1], axis=1)


def sign_bits(key: CopyKey, name: str, n: int) -> np.ndarray:
    """``ceil(n/8)`` packed sign bytes for tensor ``name`` (bit 1 = +1, MSB first), from ChaCha20."""
    nbytes = (n + 7) // 8
    enc = Cipher(algorithms.ChaCha20(key.tensor_seed(name), b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(nbytes)), dtype=np.uint8)


def signs(key: CopyKey, name: str, n: int) -> np.ndarray:
    """The ±1 pattern (float32, length ``n``) of tensor ``name`` under ``key``."""
    bits = np.unpackbits(sign_bits(key, name, n), count=n)
    return bits.astype(np.float32) * 2.0 - 1.0


def embed_tensor(name: str, values: np.ndarray, qtype: QType | None, key: CopyKey,
                 *, delta: float = DEFAULT_DELTA) -> np.ndarray:
    """Shift a float32 tensor by ``delta * step * s`` before it is quantized to ``qtype``.

    Tensors the scheme does not mark (1-D, norms, small) are returned unchanged.

    Parameters
    ----------
    name : str
        Canonical (Hugging Face) tensor name; it selects the tensor's sign stream.
    values : numpy.ndarray
        float32 values in Hugging Face layout.
    qtype : QType or None
        The tensor's target storage type (selects the step); None means a float target.
    key : CopyKey
        The copy's key.
    delta : float, *optional*, defaults to ``DEFAULT_DELTA``
        Shift in units of the local quantization step.
    """
    if not is_marked_tensor(name, values.shape):
        return values
    x = np.asarray(values, dtype=np.float32)
    rows, cols = x.shape
    rule = step_rule(qtype)
    block, kind, levels = rule
    if cols % block:
        block = cols
    flat = np.ascontiguousarray(x).reshape(-1)
    bits = sign_bits(key, name, flat.size)
    out = _embed_blocks(flat, bits, block, np.float32(delta), np.float32(levels), kind == "sym")
    return out.reshape(rows, cols)


@numba.njit(cache=True, nogil=True)
def _embed_blocks(x: np.ndarray, bits: np.ndarray, block: int, delta: np.float32, levels: np.float32,
                  sym: bool) -> np.ndarray:  # pragma: no cover - numba
    """One pass per block: step from the block's range, shift all but its max and min weight."""
    out = np.empty_like(x)
    for b0 in range(0, x.shape[0], block):
        hi = x[b0]
        lo = x[b0]
        ihi = b0
        ilo = b0
        for i in range(b0, b0 + block):
            v = x[i]
            if v > hi:
                hi = v
                ihi = i
            if v < lo:
                lo = v
                ilo = i
        if sym:
            step = max(abs(hi), abs(lo)) / levels
        else:
            step = (max(hi, np.float32(0.0)) - min(lo, np.float32(0.0))) / levels
        amp = delta * step
        for i in range(b0, b0 + block):
            sign = np.float32(((bits[i >> 3] >> (7 - (i & 7))) & 1) * 2 - 1)
            out[i] = x[i] + amp * sign
        out[ihi] = x[ihi]
        out[ilo] = x[ilo]
    return out


def residual_scores(original: np.ndarray, leaked: np.ndarray) -> np.ndarray | None:
    """Scores ``c`` (float32, flat) of a leaked tensor against the original; None if empty.

    ``c_i = clip(r_i / u_i / m, -CLIP, CLIP)`` with ``r = leaked - original``, ``u`` the
    type-free block scale of the original and ``m`` 1.4826 × the median of ``|r/u|`` over (a fixed-stride sample of) the
    tensor (mean absolute value where the median is 0). Entries with a zero scale or a
    non-finite residual score 0. Depends on the two tensors only (never on a key).
    """
    x = np.asarray(original, dtype=np.float32)
    y = np.asarray(leaked, dtype=np.float32)
    rows, cols = x.shape
    unit = _expand(block_steps(x, _UNIT_RULE), cols)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = (y - x) / unit
    c[~np.isfinite(c)] = 0.0
    c = c.reshape(-1)
    stride = max(1, c.size // _SCALE_SAMPLE)
    a = np.abs(c[::stride])
    m = float(np.median(a))
    if m == 0.0:
        m = float(a.mean())
    if m == 0.0 or not math.isfinite(m):
        return None
    c *= np.float32(1.0 / (1.4826 * m))
    np.clip(c, -CLIP, CLIP, out=c)
    return c


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
