"""Keyed rounding in the quantizers: the watermark's only change to llama.cpp's algorithms."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _fixtures_mark import write_tiny_llama  # noqa: E402

from weightprint.constants import QType  # noqa: E402
from weightprint.errors import ShapeMismatchError, UnsupportedQuantType, WeightprintError  # noqa: E402
from weightprint.quant import KeyedRounding, dequantize, quantize  # noqa: E402
from weightprint.quant.base import TIE_EPS  # noqa: E402

GRID = [QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1,
        QType.Q2_K, QType.Q3_K, QType.Q4_K, QType.Q5_K, QType.Q6_K]


def _x(shape=(32, 512), seed=0):
    x = (np.random.default_rng(seed).standard_normal(shape) * 0.02).astype(np.float32)
    x[0, :256] = 0.0  # a constant super-block
    x[1, 5] = 0.5  # an outlier
    return x


@pytest.mark.parametrize("qtype", GRID)
def test_no_directions_is_llama_cpp(qtype):
    x = _x()
    plain = quantize(x, qtype)
    assert np.array_equal(quantize(x, qtype, rounding=np.zeros(x.shape, np.int8), delta=0.2), plain)
    # a direction outside the band changes nothing either: delta tiny
    assert np.array_equal(quantize(x, qtype, rounding=np.ones(x.shape, np.int8), delta=TIE_EPS / 2), plain)


@pytest.mark.parametrize("qtype", GRID)
def test_directions_move_single_weights_by_one_level(qtype):
    x = _x()
    shape = x.shape
    deq = lambda q: dequantize(q, qtype, shape)  # noqa: E731
    plain = deq(quantize(x, qtype))
    rng = np.random.default_rng(1)
    dirs = rng.choice(np.array([-1, 1], np.int8), size=shape)
    up = deq(quantize(x, qtype, rounding=np.ones(shape, np.int8), delta=0.1))
    dn = deq(quantize(x, qtype, rounding=-np.ones(shape, np.int8), delta=0.1))
    mixed = deq(quantize(x, qtype, rounding=dirs, delta=0.1))
    cand = up != dn
    assert 0.02 < cand.mean() < 0.25
    assert np.array_equal(mixed, np.where(cand, np.where(dirs > 0, up, dn), plain))
    assert ((plain == up) | (plain == dn)).all()
    # the two levels are neighbours: their distance is the smallest nonzero gap of the block's grid
    gap = np.abs(up - dn)[cand]
    assert (gap > 0).all()
    assert not cand[0, :256].any()  # constant block: nothing to steer


def test_candidates_are_the_band_around_boundaries_q8_0():
    """Numpy statement of the candidate set for Q8_0: TIE_EPS < |frac(x/d) - 1/2| < delta."""
    x = _x((16, 256), seed=4)
    delta = 0.05
    up = dequantize(quantize(x, QType.Q8_0, rounding=np.ones(x.shape, np.int8), delta=delta), QType.Q8_0, x.shape)
    dn = dequantize(quantize(x, QType.Q8_0, rounding=-np.ones(x.shape, np.int8), delta=delta), QType.Q8_0, x.shape)
    b = x.reshape(-1, 32)
    d = (np.abs(b).max(axis=1) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (b * idv[:, None]).astype(np.float32).astype(np.float64)
    dist = np.abs(v - np.floor(v) - 0.5)
    want = (dist < delta) & (dist >= TIE_EPS) & (np.floor(v) >= -127) & (np.floor(v) + 1 <= 127)
    assert np.array_equal((up != dn).reshape(-1, 32), want)


def test_keyed_rounding_errors():
    x = _x((4, 256))
    with pytest.raises(UnsupportedQuantType, match="F16 has no rounding grid"):
        quantize(x, QType.F16, rounding=np.ones(x.shape, np.int8), delta=0.1)
    with pytest.raises(ShapeMismatchError, match="rounding directions of shape"):
        quantize(x, QType.Q4_K, rounding=np.ones((4, 128), np.int8), delta=0.1)
    with pytest.raises(ValueError, match="outside"):
        quantize(x, QType.Q4_K, rounding=np.ones(x.shape, np.int8), delta=0.5)


def test_convert_applies_keyed_rounding_in_hugging_face_layout(tmp_path):
    """A transform's directions follow its values through the q/k row permutation of llama GGUFs."""
    from weightprint.convert import convert
    from weightprint.io import open_model

    src = write_tiny_llama(tmp_path / "tiny.gguf")
    names = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
             "model.layers.0.mlp.up_proj.weight")
    want = {}

    def transform(name, values, qtype):
        if name not in names:
            return values
        dirs = np.random.default_rng(len(name)).choice(np.array([-1, 1], np.int8), size=values.shape)
        q = quantize(values, qtype, rounding=dirs, delta=0.2)
        want[name] = dequantize(q, qtype, values.shape)
        assert not np.array_equal(want[name], dequantize(quantize(values, qtype), qtype, values.shape))
        return KeyedRounding(values, dirs, 0.2)

    out = tmp_path / "out.gguf"
    convert(src, out, file_type="Q4_K_M", tensor_transform=transform)
    with open_model(out) as m:
        for name in names:
            np.testing.assert_array_equal(m.tensor(name, np.float32), want[name])
    def keyed(name, values, qtype):
        return KeyedRounding(values, np.ones(values.shape, np.int8), 0.2) if name in names else values

    with pytest.raises(WeightprintError, match="keyed rounding needs a quantized GGUF target, not float16"):
        convert(src, tmp_path / "hf", to="hf", tensor_transform=keyed)
    assert not (tmp_path / "hf").exists()
