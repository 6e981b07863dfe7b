"""The one decoder of stored tensor data: dequantize_raw, Model.stored_tensor, Model.read_rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _fixtures_io import write_small_gguf
from weightprint.constants import QType
from weightprint.io import EMBED_NAME, dequantize_raw, open_model, write_safetensors_shards
from weightprint.io.names import layout_config_from_gguf


def test_dequantize_raw_accepts_stored_dtype_or_bytes() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    for qtype, stored in ((QType.F32, x), (QType.F16, x.astype(np.float16)),
                          (QType.BF16, (x.view(np.uint32) >> 16).astype(np.uint16))):
        typed = dequantize_raw(stored, qtype, x.shape)
        as_bytes = dequantize_raw(stored.view(np.uint8), qtype, x.shape)
        assert typed.dtype == np.float32 and np.array_equal(typed, as_bytes)
        assert np.allclose(typed, x, rtol=1e-2, atol=1e-2)


def test_small_gguf_rows_and_layouts(tmp_path: Path) -> None:
    with open_model(write_small_gguf(tmp_path / "small.gguf")) as m:
        ids = np.array([5, 0, 39, 5])
        for name in (EMBED_NAME, "model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.up_proj.weight"):
            rows = np.arange(m.info(name).shape[0])
            pick = ids[ids < len(rows)]
            np.testing.assert_array_equal(m.read_rows(name, pick), m.tensor(name)[pick])
        # q is rotary-permuted on disk: stored_tensor keeps that, gguf_layout_tensor gives it back
        q = "model.layers.0.self_attn.q_proj.weight"
        layout = layout_config_from_gguf(m.metadata, "llama")
        assert not np.array_equal(m.stored_tensor(q), m.tensor(q))
        np.testing.assert_array_equal(m.gguf_layout_tensor(q, "llama", layout), m.stored_tensor(q))
        other = m.gguf_layout_tensor(q, "qwen2", layout)  # qwen2 stores q unpermuted
        np.testing.assert_array_equal(other, m.tensor(q))


def test_safetensors_rows_match_tensor(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((20, 6)).astype(np.float32)
    [path] = write_safetensors_shards(tmp_path, [(EMBED_NAME, emb.shape, "bfloat16")], lambda _n: emb)
    with open_model(path) as m:
        ids = np.array([19, 3, 3, 0])
        np.testing.assert_array_equal(m.read_rows(EMBED_NAME, ids), m.tensor(EMBED_NAME)[ids])
        np.testing.assert_array_equal(m.stored_tensor(EMBED_NAME), m.tensor(EMBED_NAME))


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_embedding_rows(which: str, request: pytest.FixtureRequest) -> None:
    with open_model(request.getfixturevalue(which)) as m:
        name = m.geometry.embed_name
        ids = np.random.default_rng(0).choice(m.geometry.embedding_shape[0], 64, replace=False)
        np.testing.assert_array_equal(m.read_rows(name, ids), m.tensor(name)[ids])
