"""Model.geometry, the canonical names and layer_of: one description of a model's shape.

The GGUF geometry is read from metadata, the Hugging Face one from config.json; a model written
in the other format must describe the same shape, and both must agree with the tensor shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _fixtures_io import SMALL_DIM, SMALL_N_HEAD, SMALL_N_HEAD_KV, SMALL_VOCAB, write_small_gguf
from weightprint.io import (
    EMBED_NAME,
    FINAL_NORM_NAME,
    HEAD_NAME,
    Geometry,
    layer_of,
    open_model,
    split_layer,
    write_safetensors_shards,
)
from weightprint.io.geometry import geometry_from_config, geometry_from_gguf


def test_layer_of_and_split_layer() -> None:
    assert layer_of("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_of("transformer.h.3.attn.c_attn.weight") == 3
    assert layer_of("model.norm.weight") is None and layer_of(EMBED_NAME) is None
    assert layer_of("model.layers.x.mlp.weight") is None
    assert split_layer("model.layers.3.self_attn.q_proj.weight") == ("model.layers.", 3, "self_attn.q_proj.weight")
    assert split_layer(HEAD_NAME) is None


def test_small_gguf_geometry(tmp_path: Path) -> None:
    with open_model(write_small_gguf(tmp_path / "small.gguf")) as m:
        g = m.geometry
        assert m.geometry is g  # computed once
        assert (g.architecture, g.n_layers, g.hidden_size, g.context_length) == ("llama", 1, SMALL_DIM, 128)
        assert (g.n_heads, g.n_kv_heads, g.head_dim) == (SMALL_N_HEAD, SMALL_N_HEAD_KV, SMALL_DIM // SMALL_N_HEAD)
        assert g.intermediate_size == 96 and g.vocab_size == SMALL_VOCAB and g.n_experts == 0
        assert g.embed_name == EMBED_NAME and g.final_norm_name == FINAL_NORM_NAME
        assert g.head_name is None and g.tied_embeddings and not g.has_lm_head
        assert g.embedding_shape == (SMALL_VOCAB, SMALL_DIM) and not g.norm_shifted
        assert g.mix_params() == {"n_layers": 1, "n_expert": 0, "n_head": SMALL_N_HEAD, "n_head_kv": SMALL_N_HEAD_KV}


def test_per_layer_head_counts_take_layer_zero() -> None:
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 2, "gemma3.embedding_length": 8,
            "gemma3.attention.head_count": np.array([4, 2]), "gemma3.attention.head_count_kv": [1, 1]}
    g = geometry_from_gguf(meta, ())
    assert (g.n_heads, g.n_kv_heads, g.head_dim, g.norm_shifted) == (4, 1, 2, True)
    assert g.embed_name is None and g.hidden_size == 8


def test_config_geometry_defaults_and_embedding_width() -> None:
    g = geometry_from_config({"num_attention_heads": 4, "num_hidden_layers": 2}, "llama", ())
    assert g.n_kv_heads == 4 and g.hidden_size is None and g.head_dim is None
    nested = geometry_from_config({"model_type": "gemma3", "text_config": {"hidden_size": 16, "num_attention_heads": 2}},
                                  "gemma3", ())
    assert (nested.hidden_size, nested.head_dim, nested.norm_shifted) == (16, 8, True)


def test_safetensors_without_config_takes_width_from_embedding(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {EMBED_NAME: rng.standard_normal((10, 6)).astype(np.float32),
              "model.layers.0.mlp.up_proj.weight": rng.standard_normal((12, 6)).astype(np.float32),
              HEAD_NAME: rng.standard_normal((10, 6)).astype(np.float32)}
    [path] = write_safetensors_shards(tmp_path, [(n, a.shape, np.float32) for n, a in arrays.items()], arrays.__getitem__)
    with open_model(path) as m:
        g = m.geometry
    assert isinstance(g, Geometry)
    assert (g.hidden_size, g.embedding_shape, g.head_name, g.tied_embeddings) == (6, (10, 6), HEAD_NAME, False)
    assert g.n_layers is None and g.mix_params()["n_layers"] == 0


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_model_geometry_survives_conversion_to_hf(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The GGUF metadata and the config.json written from it describe the same shape."""
    path = request.getfixturevalue(which)
    with open_model(path) as m:
        g = m.geometry
        cfg = dict(m.config)
        infos = m.tensor_infos()
        q = m.info("model.layers.0.self_attn.q_proj.weight").shape
        up = m.info("model.layers.0.mlp.up_proj.weight").shape
    assert q == (g.n_heads * g.head_dim, g.hidden_size) and up == (g.intermediate_size, g.hidden_size)
    assert g.n_layers == 1 + max(layer_of(t.name) for t in infos if layer_of(t.name) is not None)
    assert geometry_from_config(cfg, g.architecture, infos) == g
