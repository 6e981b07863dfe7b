"""The watermark: key-chosen rounding inside the quantizer, a Tardos code over the steered weights.

Embedding (scheme ``wp-round-v3``)
----------------------------------
For every marked tensor (a weight matrix with at least ``MIN_ELEMENTS`` entries) the copy's
key seeds a ChaCha20 stream that gives one byte ``u_i`` per entry (HF layout, row major); the
registry's *code key* (derived from the master secret, the same for every copy) seeds another
stream that gives each entry a bias threshold ``k_i`` in 1..255, distributed as the arcsine
law (the quantiles ``256 sin^2(pi/2 (j + 1/2) / 256)`` rounded): ``p_i = k_i / 256``. The copy's
symbol at entry ``i`` is ``X_i = [u_i < k_i]``, so ``P(X_i = 1) = p_i`` exactly, independently
across copies given the biases. That is the symmetric Tardos code (Tardos 2003; Skoric et al.
2008) with a cutoff ``t = 1/256``.

The tensor is quantized to its target type by llama.cpp's algorithm, unchanged except for
the last step, the rounding of each weight's level coordinate ``v_i`` (its value in units of
the block's step, after the block's scale and minimum are fixed): when ``v_i`` lies within
``delta`` of a rounding boundary, strictly off the exact tie, the weight takes the upper
neighbouring level for ``X_i = 1`` and the lower one for ``X_i = 0``
(:func:`weightprint.quant.base.keyed_level`). These are the *candidate* weights: a fraction
about ``2 delta`` of a fixed-scale type's weights, half of which llama.cpp would have rounded
the other way. Scales, minimums, ties and all other weights are llama.cpp's.

Float targets (F16/BF16/F32) are issued on the Q8_0 grid: *every* weight of a marked tensor
is the dequantized value of its keyed Q8_0 quantization, so the copy alone does not tell the
candidates from the other weights (all sit on the grid).

Detection (non-blind)
---------------------
The candidates and their two levels depend only on the original ``x``, the copy's target type
per tensor and ``delta`` (never on a key): quantizing ``x`` with every direction up and with
every direction down gives ``y_up`` and ``y_dn``, which differ exactly at the candidates. For a
leak ``y`` aligned to the original, each candidate scores where ``y`` sits between its two
levels::

    c_i = clip((y_i - (y_up_i + y_dn_i) / 2) / ((y_up_i - y_dn_i) / 2), -1, 1)

(``+1`` at the upper level, ``-1`` at the lower) and the copy's statistic is the symmetric
Tardos score with soft symbols::

    T = sum_i c_i h_i,    h_i = (X_i - p_i) / sqrt(p_i (1 - p_i))

H0: the leak was not produced from this copy. Then the copy's symbols are independent of
``c`` given the biases (they come from a key the leak never saw), so conditionally on ``c``
and ``p`` the terms ``c_i h_i`` are independent, with mean 0, variance ``c_i^2`` and
``c_i h_i <= b = max_i |c_i| max(sqrt((1-p_i)/p_i), sqrt(p_i/(1-p_i)))``. With
``V = sum c_i^2`` and ``T = t``, each of these bounds ``P(T >= t)``:

- Bernstein: ``exp(-t^2 / (2 (V + b t / 3)))``;
- Hoeffding: ``exp(-2 t^2 / sum_i c_i^2 / (p_i (1 - p_i)))`` (term ranges ``|c_i| / sqrt(p_i(1-p_i))``);
- Berry-Esseen: ``1 - Phi(t / sqrt V) + 0.56 sum_i |c_i|^3 E|h_i|^3 / V^(3/2)`` (Shevtsova's
  constant; ``E|h|^3 = ((1-p)^2 + p^2) / sqrt(p (1-p))``).

The p-value is the smallest: valid whatever the leak, close to uniform under H0 above ~1e-2
and astronomically small when the copy is the source. With ``p_i = 1/2`` everywhere this is
the earlier fair-sign scheme; the biases are what defeats collusion: ``k`` colluders who keep
the weights where their copies agree and blur the rest still share a total expected score of
at least ``2/pi`` per candidate whatever they do where they differ, so each is accused with
``z ~ sqrt(n) / k`` rather than ``sqrt(n 2^(1-k))`` (docs/watermark.md has the measurements).
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

SCHEME_VERSION = "wp-round-v3"
DEFAULT_DELTA = DEFAULT_MARK_DELTA
MIN_ELEMENTS = 4096
BERRY_ESSEEN_C = 0.56
CODE_LEVELS = 256
#: bias thresholds ``k`` (``p = k / 256``): the 256 quantiles of the arcsine law on [0, 1], rounded, cut to 1..255
BIAS_THRESHOLDS: np.ndarray = np.clip(
    np.rint(CODE_LEVELS * np.sin(np.pi / 2 * (np.arange(CODE_LEVELS) + 0.5) / CODE_LEVELS) ** 2), 1, CODE_LEVELS - 1
).astype(np.uint8)
BIAS_THRESHOLDS.setflags(write=False)
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


def key_stream(key: CopyKey, name: str, n: int) -> np.ndarray:
    """``n`` bytes (uint8) of the ChaCha20 stream seeded by ``key`` for tensor ``name``."""
    enc = Cipher(algorithms.ChaCha20(key.tensor_seed(name), b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(enc.update(bytes(int(n))), dtype=np.uint8)


def bias_thresholds(code_key: CopyKey, name: str, n: int) -> np.ndarray:
    """The Tardos bias thresholds ``k_i`` (uint8, 1..255, ``p_i = k_i / 256``) of tensor ``name``."""
    return BIAS_THRESHOLDS[key_stream(code_key, name, n)]


def symbols(key: CopyKey, code_key: CopyKey, name: str, n: int) -> np.ndarray:
    """The copy's code symbols ``X_i = [u_i < k_i]`` (bool, length ``n``) of tensor ``name``."""
    return key_stream(key, name, n) < bias_thresholds(code_key, name, n)


@numba.njit(cache=True, nogil=True)
def _directions_kernel(u: np.ndarray, b: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    for i in range(u.shape[0]):
        out[i] = 1 if u[i] < table[b[i]] else -1


def _directions(key: CopyKey, code_key: CopyKey, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The copy's rounding directions (int8: +1 up for ``X = 1``, -1 down) in its Hugging Face ``shape``."""
    n = int(np.prod(shape))
    out = np.empty(n, dtype=np.int8)
    _directions_kernel(key_stream(key, name, n), key_stream(code_key, name, n), BIAS_THRESHOLDS, out)
    return out.reshape(shape)


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


def embed_tensor(name: str, values: np.ndarray, qtype: QType | None, key: CopyKey, code_key: CopyKey,
                 *, delta: float = DEFAULT_DELTA) -> np.ndarray | KeyedRounding:
    """Mark one tensor of a copy whose target type for it is ``qtype``.

    Returns the values unchanged for tensors the scheme does not mark (1-D, norms, small,
    no grid); a :class:`~weightprint.quant.KeyedRounding` (the copy's directions) for a grid
    target, which the quantizer applies; for a float target, the dequantized keyed Q8_0
    quantization of the whole tensor (every weight on the grid, candidates hidden among them).

    Parameters
    ----------
    name : str
        Canonical (Hugging Face) tensor name; it selects the tensor's sign stream.
    values : numpy.ndarray
        float32 values in Hugging Face layout.
    qtype : QType or None
        The tensor's target storage type; None means a float target.
    key : CopyKey
        The copy's key (its code symbols).
    code_key : CopyKey
        The registry's code key (the Tardos biases, shared by every copy).
    delta : float, *optional*, defaults to ``DEFAULT_DELTA``
        Width of the steered band around each rounding boundary, in level units.
    """
    if not is_marked_tensor(name, values.shape):
        return values
    grid = grid_type(qtype, int(values.shape[-1]))
    if grid is None:
        return values
    x = np.asarray(values, dtype=np.float32)
    dirs = _directions(key, code_key, name, x.shape)
    if qtype is not None and qtype not in _FLOAT_TYPES:
        return KeyedRounding(x, dirs, float(delta))
    return dequantize(quantize(x, grid, rounding=dirs, delta=float(delta)), grid, shape=x.shape)


def candidate_scores(original: np.ndarray, leaked: np.ndarray, grid: QType, delta: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, c)``: the flat indices of the original's candidates on ``grid`` and the leak's scores there.

    ``c_i = clip((y_i - mid_i) / half_i, -1, 1)`` (float64; ``mid``, ``half``: centre and
    half-distance of the up and down levels), 0 where the leak is not finite. Depends on the
    original, the leak, the grid and ``delta`` only (never on a key).
    """
    up, dn = level_pair(original, grid, delta)
    up = up.reshape(-1)
    dn = dn.reshape(-1)
    idx = np.flatnonzero(up != dn)
    if idx.size == 0:
        return idx, np.zeros(0, np.float64)
    y = np.asarray(leaked, dtype=np.float32).reshape(-1)[idx].astype(np.float64)
    u = up[idx].astype(np.float64)
    d = dn[idx].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        v = (y - (u + d) * 0.5) / ((u - d) * 0.5)
    v[~np.isfinite(v)] = 0.0
    np.clip(v, -1.0, 1.0, out=v)
    return idx, v


@dataclass
class CodeTable:
    """One tensor's candidates with their scores and biases: what every copy's score is made of.

    A copy's statistic on the tensor is ``base + sum(gain[X])`` over its symbols ``X`` at
    ``idx`` (``base = sum c_i h0_i``, ``gain = c_i (h1_i - h0_i)``), so scoring a key costs one
    stream, one gather and one masked sum. The power sums depend on ``c`` and the biases only.
    """

    name: str
    size: int
    idx: np.ndarray
    thresholds: np.ndarray
    base: float
    gain: np.ndarray
    sum_sq: float
    sum_cube: float
    bound: float
    range_sq: float

    @property
    def n(self) -> int:
        return int(self.idx.size)


def code_table(name: str, size: int, idx: np.ndarray, c: np.ndarray, code_key: CopyKey) -> CodeTable:
    """The :class:`CodeTable` of tensor ``name`` (``size`` weights) at candidates ``idx`` with scores ``c``."""
    k = bias_thresholds(code_key, name, size)[idx]
    p = k.astype(np.float64) / CODE_LEVELS
    q = 1.0 - p
    h1 = np.sqrt(q / p)
    h0 = -np.sqrt(p / q)
    c = np.asarray(c, dtype=np.float64)
    a = np.abs(c)
    e3 = (q * q + p * p) / np.sqrt(p * q)
    return CodeTable(
        name=name, size=int(size), idx=idx, thresholds=k, base=float(np.dot(c, h0)), gain=c * (h1 - h0),
        sum_sq=float(np.dot(c, c)), sum_cube=float(np.dot(a * a * a, e3)),
        bound=float(np.max(a * np.maximum(h1, -h0))) if c.size else 0.0,
        range_sq=float(np.dot(c * c, 1.0 / (p * q))),
    )


def tardos_score(table: CodeTable, stream: np.ndarray) -> float:
    """``sum_i c_i h_i`` of one copy, given its key stream for the tensor (:func:`key_stream`)."""
    x = stream[table.idx] < table.thresholds
    return table.base + float(table.gain[x].sum())


@dataclass
class Accumulator:
    """Running sums of one copy's statistic over tensors: T, V, the Berry-Esseen and range sums, b, n."""

    statistic: float = 0.0
    sum_sq: float = 0.0
    sum_cube: float = 0.0
    bound: float = 0.0
    range_sq: float = 0.0
    n: int = 0
    per_tensor: dict[str, float] = field(default_factory=dict)

    def add(self, t: float, table: CodeTable) -> None:
        self.statistic += t
        self.sum_sq += table.sum_sq
        self.sum_cube += table.sum_cube
        self.bound = max(self.bound, table.bound)
        self.range_sq += table.range_sq
        self.n += table.n
        if table.sum_sq > 0:
            self.per_tensor[table.name] = self.per_tensor.get(table.name, 0.0) + t / math.sqrt(table.sum_sq)

    @property
    def z(self) -> float:
        return self.statistic / math.sqrt(self.sum_sq) if self.sum_sq > 0 else 0.0

    def log10_pvalue(self) -> float:
        return log10_pvalue(self.statistic, self.sum_sq, self.sum_cube, self.bound, self.range_sq)


def log10_pvalue(statistic: float, sum_sq: float, sum_cube: float, bound: float, range_sq: float) -> float:
    """log10 of min(Bernstein, Hoeffding, normal tail + Berry-Esseen) for ``P(T >= t)``.

    Each is an upper bound on the tail of a sum of independent zero-mean terms with variances
    ``c_i^2`` (sum ``sum_sq``), one-sided bound ``bound``, squared ranges summing to ``range_sq``
    and third absolute moments summing to ``sum_cube``; their minimum is a valid p-value for H0.
    """
    if sum_sq <= 0:
        return 0.0
    t = statistic
    z = t / math.sqrt(sum_sq)
    bern = hoef = 0.0
    if t > 0:
        bern = -(t * t) / (2.0 * (sum_sq + bound * t / 3.0)) / LN10
        hoef = -2.0 * t * t / range_sq / LN10 if range_sq > 0 else 0.0
    be = BERRY_ESSEEN_C * sum_cube / sum_sq ** 1.5
    normal_tail = float(special.ndtr(-z))
    berry = math.log10(min(1.0, normal_tail + be)) if normal_tail + be > 0 else -math.inf
    return float(min(0.0, bern, hoef, berry))
