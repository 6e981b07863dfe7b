"""Property tests (hypothesis): round-trip error bounds and block independence of every quantizer.

H0 per type: for any finite input, ``|dequantize(quantize(x)) - x|`` stays within the type's
bound (derived from its block formula for the legacy types, from its super-block absolute maximum
for the k-quants). Alternative: some input breaks the bound (hypothesis shrinks it to a minimal
example).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weightprint.constants import QType
from weightprint.quant import QUANTIZABLE, dequantize, kernel, quantize

TYPES = sorted(QUANTIZABLE, key=int)
# max error / absolute maximum of the 256-weight super-block (k-quants)
K_BOUNDS = {QType.Q2_K: 0.75, QType.Q3_K: 0.4, QType.Q4_K: 0.2, QType.Q5_K: 0.1, QType.Q6_K: 0.04}
EPS16 = 2.0**-11  # fp16 relative rounding


def _bound(qt: QType, x: np.ndarray, slack: float) -> np.ndarray:
    """Per-weight error bound for ``x`` (rows of 256), broadcast to x's shape."""
    if qt == QType.F32:
        return np.zeros_like(x)
    if qt == QType.F16:
        return np.abs(x) * EPS16 + 2.0**-25
    if qt == QType.BF16:
        return np.abs(x) * 2.0**-8 + 2.0**-133  # subnormal spacing of bfloat16
    if qt in K_BOUNDS:
        sb = x.reshape(-1, 256)
        amax = np.abs(sb).max(axis=1, keepdims=True)
        # fp16 super-block scales below 2**-14 are subnormal: absolute error up to 2**-25 each,
        # multiplied by a sub-block scale (< 128) and a quant (<= 32)
        slack = slack + 128 * 32 * 2.0**-25
        return np.broadcast_to(K_BOUNDS[qt] * amax + slack, sb.shape).reshape(x.shape)
    b = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(b).max(axis=1, keepdims=True)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    rng_, absmin = hi - lo, np.abs(lo)
    if qt == QType.Q8_0:
        bound = amax * (0.5 / 127 + EPS16)
    elif qt == QType.Q4_0:
        bound = amax / 8 * (1 + 2 * EPS16 * 8)
    elif qt == QType.Q5_0:
        bound = amax / 16 * (1 + 2 * EPS16 * 16)
    elif qt == QType.Q4_1:
        bound = rng_ / 15 * (0.5 + 15 * EPS16) + absmin * 2 * EPS16
    elif qt == QType.Q5_1:
        bound = rng_ / 31 * (0.5 + 31 * EPS16) + absmin * 2 * EPS16
    else:  # pragma: no cover - a new quantizable type needs a bound here
        raise AssertionError(f"no bound for {qt.name}")
    return np.broadcast_to(bound * 1.001 + slack, b.shape).reshape(x.shape)


SCALES = st.sampled_from([2.0**-8, 1.0, 2.0**8, 2.0**12])
ARRAYS = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 3), st.just(256)),
    elements=st.floats(-1, 1, width=32),
)


@pytest.mark.parametrize("qt", TYPES, ids=lambda q: q.name)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=ARRAYS, scale=SCALES)
def test_round_trip_error_bound(qt: QType, x: np.ndarray, scale: float) -> None:
    x = (x * np.float32(scale)).astype(np.float32)
    y = dequantize(quantize(x, qt), qt)
    assert y.shape == x.shape and y.dtype == np.float32
    slack = 4e-6 + 1e-4 * scale  # fp16 scales lose absolute precision below 2**-14
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    bound = _bound(qt, x, slack)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{qt.name}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


@pytest.mark.parametrize("qt", TYPES, ids=lambda q: q.name)
@settings(max_examples=10, deadline=None)
@given(x=ARRAYS)
def test_rows_and_blocks_are_independent(qt: QType, x: np.ndarray) -> None:
    """Quantizing rows one by one, or the flat tensor, gives the same bytes as the whole tensor."""
    whole = quantize(x, qt)
    for i in range(x.shape[0]):
        assert np.array_equal(quantize(x[i], qt), whole[i])
    assert np.array_equal(quantize(x.reshape(-1), qt), whole.reshape(-1))


def test_error_shrinks_with_bits() -> None:
    """On Gaussian weights the RMS error is ordered Q2_K > Q3_K > Q4_K > Q5_K > Q6_K > Q8_0 > F16."""
    x = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"]
    rmse = [float(np.sqrt(np.mean((dequantize(quantize(x, t), t) - x) ** 2))) for t in order]
    assert all(a > b for a, b in zip(rmse, rmse[1:])), dict(zip(order, rmse))


def test_q8_0_is_sign_symmetric() -> None:
    """Q8_0 rounds half away from zero, so quantize(-x) is the negated quants with the same scale."""
    x = np.random.default_rng(4).standard_normal((4, 64)).astype(np.float32)
    a = quantize(x, QType.Q8_0).reshape(-1, 34)
    b = quantize(-x, QType.Q8_0).reshape(-1, 34)
    assert np.array_equal(a[:, :2], b[:, :2])
    assert np.array_equal(a[:, 2:].view(np.int8), -b[:, 2:].view(np.int8))
    assert kernel(QType.Q8_0).type_size == 34
