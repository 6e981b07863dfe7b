"""safetensors reader/writer, HF directories, config and tokenizer reconstruction.

Unit tests use tiny tensors and crafted files in ``tmp_path``; the ``slow`` tests write HF
directories from the real SmolLM2 / Gemma 3 GGUFs (cached under ``cache_dir()``) and load them
with ``transformers``, comparing token ids with llama.cpp's tokenizer.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightprint.errors import (
    MissingTokenizerError,
    ModelFormatError,
    SafetensorsFormatError,
    ShapeMismatchError,
    TensorNotFound,
    WeightprintError,
)
from weightprint.io.hf import HFModel, write_hf_dir
from weightprint.io.hf_config import architecture_from_hf, gguf_metadata_from_hf, hf_config_from_gguf
from weightprint.io.safetensors_file import (
    SafetensorsModel,
    bfloat16_to_float32,
    float32_to_bfloat16,
    write_safetensors_shards,
)
from weightprint.io.tokenizer import tokenizer_info_from_hf, tokenizer_json_from_info

from _fixtures_hf import TOKENIZER_TEXTS, auto_tokenizer, causal_lm, hf_dir_from_gguf, llama_token_ids


# --------------------------------------------------------------------------- helpers


def _craft(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def _sample_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((6, 4)).astype(np.float32),
        "model.norm.weight": rng.standard_normal(4).astype(np.float16),
        "b.f64": rng.standard_normal((2, 2)),
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i32": np.array([-1, 7], dtype=np.int32),
        "mask": np.array([True, False, True]),
        "bytes": np.arange(5, dtype=np.uint8),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def _write_all(out: Path, tensors: dict[str, np.ndarray], **kw) -> list[Path]:
    return write_safetensors_shards(out, [(k, v.shape, v.dtype) for k, v in tensors.items()], tensors.__getitem__, **kw)


# --------------------------------------------------------------------------- safetensors writer / reader


@pytest.mark.parametrize("chunk", [5, 1 << 22])
def test_writer_is_byte_identical_to_safetensors_library(tmp_path: Path, monkeypatch, chunk: int) -> None:
    from safetensors.numpy import save

    import weightprint.io.safetensors_file as sf

    monkeypatch.setattr(sf, "_CHUNK_ELEMENTS", chunk)  # conversions in pieces must not show
    tensors = _sample_tensors(np.random.default_rng(0))
    files = _write_all(tmp_path, tensors)
    assert [p.name for p in files] == ["model.safetensors"]
    assert files[0].read_bytes() == save(tensors, metadata={"format": "pt"})


def test_round_trip_through_reader_and_safetensors(tmp_path: Path) -> None:
    from safetensors import safe_open

    tensors = _sample_tensors(np.random.default_rng(1))
    (path,) = _write_all(tmp_path, tensors, metadata={"format": "pt", "source": "unit"})
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt", "source": "unit"}
        for name, value in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(name), value)
    with SafetensorsModel(path) as m:
        assert m.metadata == {"format": "pt", "source": "unit"}
        assert sorted(m.tensor_names()) == sorted(tensors)
        for name, value in tensors.items():
            assert m.raw(name).dtype == value.dtype
            np.testing.assert_array_equal(m.raw(name), value)
            np.testing.assert_array_equal(m.tensor(name, None), value)
        np.testing.assert_array_equal(m.tensor("model.norm.weight"), tensors["model.norm.weight"].astype(np.float32))
        info = m.info("model.layers.0.mlp.up_proj.weight")
        assert info.shape == (6, 4) and info.nbytes == 96 and info.qtype.name == "F32"
        assert m.dtype_name("mask") == "BOOL"
        with pytest.raises(TensorNotFound, match=r"^model.safetensors: no tensor `nope` \(8 tensors\)$"):
            m.tensor("nope")


def test_bfloat16_rounds_to_nearest_even_like_torch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    # ties, near-overflow and subnormals on purpose
    bits[:6] = [0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00008000, 0x80018000, 0x7F7F8000]
    values = bits.view(np.float32)
    ours = float32_to_bfloat16(values)
    ref = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values)
    assert np.count_nonzero(ours[finite] != ref[finite]) == 0
    assert np.isnan(bfloat16_to_float32(ours[~finite])).all()
    # and through the writer, readable by torch and by us (exact widening)
    x = rng.standard_normal((5, 7)).astype(np.float32)
    import weightprint.io.safetensors_file as sf

    sf._CHUNK_ELEMENTS, saved = 6, sf._CHUNK_ELEMENTS
    try:
        (path,) = write_safetensors_shards(tmp_path, [("x", x.shape, "bfloat16")], lambda name: x)
    finally:
        sf._CHUNK_ELEMENTS = saved
    from safetensors.torch import load_file

    loaded = load_file(path)["x"]
    assert loaded.dtype == torch.bfloat16
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(loaded.float().numpy(), expected)
    with SafetensorsModel(path) as m:
        np.testing.assert_array_equal(m.tensor("x"), expected)


def test_shards_and_index(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    tensors = {f"model.layers.{i}.w": np.full((10, 10), i, dtype=np.float32) for i in range(5)}
    calls: list[str] = []

    def data(name: str) -> np.ndarray:
        calls.append(name)
        return tensors[name]

    files = write_safetensors_shards(tmp_path, [(k, v.shape, "F16") for k, v in tensors.items()], data, max_shard_bytes=450)
    names = [p.name for p in files]
    assert names == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    assert sorted(calls) == sorted(tensors) and len(calls) == 5  # each tensor produced exactly once
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 200
    assert index["weight_map"]["model.layers.4.w"] == "model-00003-of-00003.safetensors"
    for shard in files[:3]:
        for name, value in load_file(shard).items():
            assert index["weight_map"][name] == shard.name
            np.testing.assert_array_equal(value, tensors[name].astype(np.float16))
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_writer_leaves_no_partial_output(tmp_path: Path) -> None:
    x = np.ones((2, 3), dtype=np.float32)

    def failing(name: str) -> np.ndarray:
        if name == "b":
            raise RuntimeError("source went away")
        return x

    with pytest.raises(RuntimeError, match="source went away"):
        write_safetensors_shards(tmp_path, [("a", (2, 3), "F32"), ("b", (2, 3), "F32"), ("c", (2, 3), "F32")], failing, max_shard_bytes=30)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ShapeMismatchError, match=r"^tensor `a`: data has shape \[2, 3\] but was declared as \[3, 2\]$"):
        write_safetensors_shards(tmp_path, [("a", (3, 2), "F32")], lambda name: x)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(WeightprintError, match=r"tensor `a` is listed twice$"):
        write_safetensors_shards(tmp_path, [("a", (2, 3), "F32"), ("a", (2, 3), "F32")], lambda name: x)
    with pytest.raises(WeightprintError, match=r"^unsupported safetensors dtype `Q4_K`"):
        write_safetensors_shards(tmp_path, [("a", (2, 3), "Q4_K")], lambda name: x)
    assert list(tmp_path.iterdir()) == []


_F32_2x3 = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}


@pytest.mark.parametrize(
    ("header", "data", "length", "message"),
    [
        (b"{}", b"", 100, "x.safetensors: header length 100 runs past the end of the file (10 bytes)"),
        (b"{\"a\": ", b"", None, "x.safetensors: header is not valid JSON (Expecting value at byte 6)"),
        (b"[1, 2]", b"", None, "x.safetensors: header is a JSON list, expected an object"),
        ({"a": {"dtype": "F8", "shape": [2], "data_offsets": [0, 2]}}, b"\0\0", None, "x.safetensors: tensor `a` has unknown dtype `F8`"),
        (
            {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}},
            bytes(24),
            None,
            "x.safetensors: tensor `a` declares shape [2, 3] (24 bytes as F32) but data_offsets span 20 bytes",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, bytes(8), None, "x.safetensors: tensor `a` has data_offsets out of order [8, 4]"),
        ({"a": _F32_2x3}, bytes(20), None, "x.safetensors: tensor `a` data_offsets [0, 24] run past the end of the data (20 bytes)"),
        (
            {"a": _F32_2x3, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}},
            bytes(24),
            None,
            "x.safetensors: tensors `a` [0, 24] and `b` [16, 24] overlap",
        ),
        (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}', b"\0\0", None, "x.safetensors: header declares `a` twice"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), None, "x.safetensors: tensor `a` has invalid shape [-1]"),
        ({"a": {"dtype": "F32", "shape": [1]}}, bytes(4), None, "x.safetensors: tensor `a` needs `dtype`, `shape` and `data_offsets`"),
        ({"__metadata__": {"format": 1}}, b"", None, "x.safetensors: `__metadata__` must map strings to strings"),
    ],
)
def test_malformed_headers_are_refused(tmp_path: Path, header, data: bytes, length, message: str) -> None:
    path = _craft(tmp_path / "x.safetensors", header, data, length=length)
    with pytest.raises(SafetensorsFormatError, match="^" + re.escape(message) + "$"):
        SafetensorsModel(path)


def test_short_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "x.safetensors").write_bytes(b"\1\2\3")
    with pytest.raises(SafetensorsFormatError, match=r"^x.safetensors: file is 3 bytes, too short for the 8-byte header length$"):
        SafetensorsModel(tmp_path / "x.safetensors")
    with pytest.raises(ModelFormatError, match=r"missing.safetensors: no such file or directory$"):
        SafetensorsModel(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------- HF directories (synthetic)


def _tiny_llama_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 16,
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }


def test_hf_dir_sharded_read_and_missing_shard(tmp_path: Path) -> None:
    tensors = {f"model.layers.{i}.w": np.full((4, 4), i, dtype=np.float32) for i in range(3)}
    d = tmp_path / "m"
    write_safetensors_shards(d, [(k, v.shape, "F32") for k, v in tensors.items()], tensors.__getitem__, max_shard_bytes=64)
    (d / "config.json").write_text(json.dumps(_tiny_llama_config()))
    with HFModel(d) as m:
        assert m.architecture == "llama" and len(m.tensor_infos()) == 3
        assert m.tokenizer is None and m.chat_template is None
        np.testing.assert_array_equal(m.tensor("model.layers.2.w"), tensors["model.layers.2.w"])
        assert m.info("model.layers.2.w").file.name == "model-00003-of-00003.safetensors"
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        ModelFormatError,
        match=r"^.*/m: 1 of 3 shards listed in model.safetensors.index.json are missing: model-00002-of-00003.safetensors$",
    ):
        HFModel(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFormatError, match=r"empty: no model.safetensors, model.safetensors.index.json or \*.safetensors weights$"):
        HFModel(empty)


def test_write_hf_dir_refuses_existing_dir_and_cleans_up(tmp_path: Path) -> None:
    src = tmp_path / "src"
    tensors = {"model.embed_tokens.weight": np.ones((16, 8), np.float32), "model.norm.weight": np.ones(8, np.float32)}
    write_safetensors_shards(src, [(k, v.shape, "F32") for k, v in tensors.items()], tensors.__getitem__)
    (src / "config.json").write_text(json.dumps(_tiny_llama_config()))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with HFModel(src) as m:
        with pytest.raises(WeightprintError, match=r"out: already exists and is not empty$"):
            write_hf_dir(m, out)

        def bad(name: str, values: np.ndarray) -> np.ndarray:
            return values.reshape(-1)[:3]

        with pytest.raises(WeightprintError, match=r"^tensor transform changed the shape of `model.embed_tokens.weight` from \[16, 8\] to \[3\]$"):
            write_hf_dir(m, tmp_path / "out2", tensor_transform=bad)
        assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))
        seen: list[tuple[int, int, str]] = []
        write_hf_dir(m, tmp_path / "out3", dtype="bfloat16", progress=lambda i, n, name: seen.append((i, n, name)))
    assert [s[:2] for s in seen] == [(1, 2), (2, 2)]
    with HFModel(tmp_path / "out3") as m3:
        assert m3.dtype_name("model.norm.weight") == "BF16"
        assert m3.config["tie_word_embeddings"] is True and m3.config["dtype"] == "bfloat16"


def test_hf_dir_errors_and_chat_templates(tmp_path: Path) -> None:
    from weightprint.io.tokenizer import read_chat_template

    d = tmp_path / "m"
    x = np.ones((16, 8), np.float32)
    write_safetensors_shards(d, [("model.embed_tokens.weight", x.shape, "F32")], lambda name: x)
    with SafetensorsModel(d / "model.safetensors") as st:  # a bare file has no config to write
        with pytest.raises(WeightprintError, match=r"model.safetensors: no model config to write a config.json from$"):
            write_hf_dir(st, tmp_path / "out")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"config.json: not valid JSON \(Expecting property name enclosed in double quotes at line 1 column 2\)$"):
        HFModel(d)
    (d / "config.json").write_text(json.dumps({**_tiny_llama_config(), "vocab_size": 12}))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    with HFModel(d) as m:
        assert m.chat_template == "D"
        write_hf_dir(m, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 16  # the weights decide
    (d / "chat_template.jinja").write_text("J")
    assert read_chat_template(d) == "J"


# --------------------------------------------------------------------------- config <-> GGUF metadata


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_config_metadata_round_trip(arch: str) -> None:
    metadata = {
        "general.architecture": arch,
        f"{arch}.block_count": 6,
        f"{arch}.embedding_length": 64,
        f"{arch}.feed_forward_length": 96,
        f"{arch}.attention.head_count": 4,
        f"{arch}.attention.head_count_kv": 2,
        f"{arch}.context_length": 2048,
        f"{arch}.rope.freq_base": np.float32(500000.0),
        f"{arch}.attention.layer_norm_rms_epsilon": np.float32(1e-6),
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(100)],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    if arch == "gemma3":
        metadata.update({"gemma3.attention.key_length": 32, "gemma3.attention.value_length": 32, "gemma3.attention.sliding_window": 128})
    config = hf_config_from_gguf(metadata)
    assert config["rms_norm_eps"] == 1e-6 and config["rope_theta"] == 500000.0
    assert config["vocab_size"] == 100 and config["num_key_value_heads"] == 2 and config["num_hidden_layers"] == 6
    assert architecture_from_hf(config) == arch
    back, types = gguf_metadata_from_hf(config, None, require_tokenizer=False)
    for key, value in metadata.items():
        if key.startswith("tokenizer."):
            continue
        assert back[key] == pytest.approx(value), key
        assert key in types
    if arch == "gemma3":
        assert config["layer_types"][5] == "full_attention" and config["layer_types"][:5] == ["sliding_attention"] * 5
        assert config["rope_parameters"]["sliding_attention"]["rope_theta"] == 10000.0
    transformers = pytest.importorskip("transformers")
    loaded = transformers.AutoConfig.for_model(**config)
    assert loaded.num_key_value_heads == 2


def test_config_errors() -> None:
    with pytest.raises(ModelFormatError, match=r"^GGUF metadata: no metadata key `general.architecture`, needed for config.json$"):
        hf_config_from_gguf({})
    with pytest.raises(ModelFormatError, match=r"^GGUF metadata: no metadata key `llama.embedding_length`, needed for config.json$"):
        hf_config_from_gguf({"general.architecture": "llama"})
    with pytest.raises(WeightprintError, match=r"^cannot build a config.json for architecture `bert`"):
        hf_config_from_gguf({"general.architecture": "bert"})
    with pytest.raises(WeightprintError, match=r"^cannot convert architecture \['BertModel'\]"):
        gguf_metadata_from_hf({"architectures": ["BertModel"], "model_type": "bert"}, None)
    config = hf_config_from_gguf({"general.architecture": "llama", "llama.embedding_length": 8, "llama.feed_forward_length": 8,
                                  "llama.block_count": 1, "llama.attention.head_count": 2, "llama.context_length": 64,
                                  "llama.vocab_size": 16, "llama.attention.layer_norm_rms_epsilon": 1e-5})
    config["_name_or_path"] = "/models/tiny"
    with pytest.raises(MissingTokenizerError, match=r"^/models/tiny: no tokenizer \(tokenizer.json\), which a GGUF file needs$"):
        gguf_metadata_from_hf(config, None)
    assert architecture_from_hf({"architectures": ["MistralForCausalLM"]}) == "mistral"


def test_missing_tokenizer_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingTokenizerError, match=r"nothing: no tokenizer.json$"):
        tokenizer_info_from_hf(tmp_path / "nothing")


# --------------------------------------------------------------------------- real models (slow)


@pytest.fixture(scope="session")
def smollm2_hf_f16(smollm2: Path) -> Path:
    return hf_dir_from_gguf(smollm2, "float16")


@pytest.fixture(scope="session")
def smollm2_hf_bf16(smollm2: Path) -> Path:
    """Sharded (100 MB shards), so that transformers' sharded loading is covered too."""
    return hf_dir_from_gguf(smollm2, "bfloat16", max_shard_bytes=100 * 10**6)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_smollm2_hf_dir_matches_gguf_and_loads_in_transformers(smollm2: Path, dtype: str, request) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from weightprint.io.gguf_file import GGUFModel

    d = request.getfixturevalue("smollm2_hf_f16" if dtype == "float16" else "smollm2_hf_bf16")
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    if dtype == "bfloat16":
        assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
        assert (d / "model.safetensors.index.json").is_file()
    else:
        assert shards == ["model.safetensors"]
    with GGUFModel(smollm2) as g, HFModel(d) as h:
        assert sorted(h.tensor_names()) == sorted(g.tensor_names())
        assert "lm_head.weight" not in h.tensor_names()
        for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.self_attn.k_proj.weight", "model.embed_tokens.weight", "model.norm.weight"):
            want = g.tensor(name)
            if dtype == "float16":
                want = want.astype(np.float16).astype(np.float32)
            else:
                want = bfloat16_to_float32(float32_to_bfloat16(want))
            np.testing.assert_array_equal(h.tensor(name), want, err_msg=name)
    model = causal_lm(d)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    tok = auto_tokenizer(d)
    assert tok.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_smollm2_tokenizer_ids_match_llama_cpp(smollm2: Path, smollm2_hf_f16: Path, llama_cpp_module) -> None:
    transformers = pytest.importorskip("transformers")
    tok = auto_tokenizer(smollm2_hf_f16)
    llm = llama_cpp_module.Llama(str(smollm2), vocab_only=True, verbose=False)
    chat = tok.apply_chat_template([{"role": "user", "content": "Ünïcödé 🤖?"}], tokenize=False, add_generation_prompt=True)
    mismatches = []
    for text in [*TOKENIZER_TEXTS, chat]:
        ours = tok(text, add_special_tokens=True)["input_ids"]
        ref = llama_token_ids(llm, text, add_bos=False)
        if ours != ref:
            mismatches.append((text, ours[:20], ref[:20]))
    assert mismatches == []
    # chat special tokens are single ids
    assert tok("<|im_start|>")["input_ids"] == [1]
    # and the inverse: tokenizer.json -> TokenizerInfo gives back the GGUF vocabulary
    from weightprint.io.gguf_file import GGUFModel

    info = tokenizer_info_from_hf(smollm2_hf_f16)
    with GGUFModel(smollm2) as g:
        ref_info = g.tokenizer
        assert info.model == "gpt2" and info.pre == "smollm"
        assert list(info.tokens) == list(ref_info.tokens)
        assert list(info.merges) == list(ref_info.merges)
        np.testing.assert_array_equal(info.token_types, ref_info.token_types)
        assert (info.bos_id, info.eos_id, info.add_bos) == (1, 2, False)


@pytest.mark.slow
def test_gemma3_hf_dir_loads_and_tokenizes_like_llama_cpp(gemma3: Path, llama_cpp_module) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = hf_dir_from_gguf(gemma3, "bfloat16")
    config = json.loads((d / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and config["sliding_window"] == 512
    model = causal_lm(d)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    # Gemma's RMSNorm multiplies by (1 + w): the stored +1 of llama.cpp must be undone
    from weightprint.io.gguf_file import GGUFModel

    with HFModel(d) as h, GGUFModel(gemma3) as g:
        for name in ("model.norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"):
            stored = g.stored_tensor(name)
            np.testing.assert_array_equal(h.tensor(name), bfloat16_to_float32(float32_to_bfloat16(stored - 1.0)))
    tok = auto_tokenizer(d)
    llm = llama_cpp_module.Llama(str(gemma3), vocab_only=True, verbose=False)
    mismatches = []
    for text in TOKENIZER_TEXTS:
        ours = tok(text)["input_ids"]
        ref = llama_token_ids(llm, text, add_bos=True)
        if ours != ref:
            mismatches.append((text, ours[:20], ref[:20]))
    assert mismatches == []
    assert tok("<start_of_turn>", add_special_tokens=False)["input_ids"] == [llm.tokenize(b"<start_of_turn>", add_bos=False, special=True)[0]]
    # inverse: tokenizer.json -> TokenizerInfo (SentencePiece scores from merge ranks) -> tokenizer.json
    # tokenizes the same way
    from tokenizers import Tokenizer

    info = tokenizer_info_from_hf(d)
    assert info.model == "llama" and info.add_bos is True and info.bos_id == 2
    rebuilt = Tokenizer.from_str(json.dumps(tokenizer_json_from_info(info, add_space_prefix=False)))
    for text in TOKENIZER_TEXTS[:5]:
        assert rebuilt.encode(text).ids == tok(text)["input_ids"], text


# --------------------------------------------------------------------------- property: corrupted files

_VALID = None


def _valid_file_bytes() -> bytes:
    global _VALID
    if _VALID is None:
        from safetensors.numpy import save

        _VALID = save(
            {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16), "c": np.arange(3, dtype=np.int64)},
            metadata={"format": "pt"},
        )
    return _VALID


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=399), st.integers(min_value=0, max_value=255)), max_size=4),
)
def test_corrupted_files_fail_cleanly(tmp_path: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    """H0: any truncation or byte change either still parses into readable tensors or raises
    SafetensorsFormatError; nothing else (no IndexError, no UnicodeError, no crash in numpy)."""
    data = bytearray(_valid_file_bytes())
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    data = data[: min(cut, len(data))] if cut < len(data) else data
    path = tmp_path / "f.safetensors"
    path.write_bytes(bytes(data))
    try:
        m = SafetensorsModel(path)
    except SafetensorsFormatError as e:
        assert str(e).startswith("f.safetensors: ") and "\n" not in str(e) and not str(e).endswith(".")
        return
    with m:
        for info in m.tensor_infos():
            assert m.raw(info.name).nbytes == info.nbytes
            m.tensor(info.name, None)


# --------------------------------------------------------------------------- other tokenizer flavours (slow)

_FLAVOUR_TEXTS = [*TOKENIZER_TEXTS, "hello world  123456789 x", "I'M SHOUTING, don't you'LL see", "a\r\nb\n\n\nc"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "overrides"),
    [
        ("smollm2", {"tokenizer.ggml.pre": "llama-bpe"}),
        ("smollm2", {"tokenizer.ggml.pre": "qwen2"}),
        ("smollm2", {"tokenizer.ggml.pre": "gpt-2"}),
        ("gemma3", {"tokenizer.ggml.add_space_prefix": True, "general.architecture": "llama"}),  # Llama-2-style SPM
    ],
    ids=["llama-bpe", "qwen2", "gpt-2", "spm-space-prefix"],
)
def test_tokenizer_flavours_match_llama_cpp(source: str, overrides: dict, tmp_path: Path, request, llama_cpp_module) -> None:
    """A real vocabulary relabelled with another pre-tokenizer (or SentencePiece with a space
    prefix): our tokenizer.json must split and merge exactly as llama.cpp does for that label."""
    from gguf import GGUFValueType
    from tokenizers import Tokenizer

    from weightprint.io.gguf_file import GGUFModel, copy_metadata_for_write, tokenizer_from_gguf_metadata, write_gguf

    with GGUFModel(request.getfixturevalue(source)) as m:
        meta, types = copy_metadata_for_write(m)
    for key, value in overrides.items():
        meta[key] = value
        types[key] = GGUFValueType.BOOL if isinstance(value, bool) else GGUFValueType.STRING
    vocab_only = write_gguf(tmp_path / "vocab.gguf", metadata=meta, metadata_types=types, tensors=[], data=lambda spec: None)
    llm = llama_cpp_module.Llama(str(vocab_only), vocab_only=True, verbose=False)
    info = tokenizer_from_gguf_metadata(meta)
    tok = Tokenizer.from_str(json.dumps(tokenizer_json_from_info(info, add_space_prefix=meta.get("tokenizer.ggml.add_space_prefix"))))
    mismatches = []
    for text in _FLAVOUR_TEXTS:
        ours = tok.encode(text).ids
        ref = llama_token_ids(llm, text, add_bos=bool(info.add_bos))
        if ours != ref:
            mismatches.append((text, ours[:15], ref[:15]))
    assert mismatches == []


# --------------------------------------------------------------------------- directories written by transformers


def test_reads_and_rewrites_a_save_pretrained_directory(tmp_path: Path) -> None:
    """A tiny random Llama saved by transformers (bf16, 2 shards) -> HFModel -> write_hf_dir
    (float32) -> transformers: same tensors, same logits."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{k: v for k, v in _tiny_llama_config().items() if k not in ("architectures", "model_type")})
    config.tie_word_embeddings = False
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size=1000)
    (src / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    with HFModel(src) as m:
        assert m.architecture == "llama" and m.chat_template == "{{ messages[0]['content'] }}"
        assert len(list(src.glob("*.safetensors"))) >= 2
        assert sorted(m.tensor_names()) == sorted(state)
        for name, value in state.items():
            assert m.dtype_name(name) == "BF16"
            np.testing.assert_array_equal(m.tensor(name), value, err_msg=name)
        out = write_hf_dir(m, tmp_path / "out", dtype="float32")
    assert (out / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    again = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert again.config.tie_word_embeddings is False
    ids = torch.tensor([[1, 5, 7, 3, 2]])
    with torch.no_grad():
        np.testing.assert_allclose(again(ids).logits.numpy(), model.float()(ids).logits.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("source", "dtype"), [("smollm2", "float16"), ("gemma3", "bfloat16")])
def test_hf_tokenizer_back_to_gguf_tokenizes_like_the_original(source: str, dtype: str, tmp_path: Path, request, llama_cpp_module) -> None:
    """HF dir -> gguf_metadata_from_hf (tokenizer.json -> TokenizerInfo) -> vocab-only GGUF:
    llama.cpp must tokenize as it does with the original GGUF (SentencePiece: scores rebuilt
    from merge ranks)."""
    from weightprint.io.gguf_file import write_gguf

    gguf = request.getfixturevalue(source)
    d = hf_dir_from_gguf(gguf, dtype)
    with HFModel(d) as h:
        meta, types = gguf_metadata_from_hf(h.config, h.tokenizer, h.chat_template)
    assert meta["general.architecture"] == ("llama" if source == "smollm2" else "gemma3")
    if source == "smollm2":
        assert meta["tokenizer.chat_template"].startswith("{% for message in messages %}")
    rebuilt = write_gguf(tmp_path / "vocab.gguf", metadata=meta, metadata_types=types, tensors=[], data=lambda spec: None)
    ours = llama_cpp_module.Llama(str(rebuilt), vocab_only=True, verbose=False)
    ref = llama_cpp_module.Llama(str(gguf), vocab_only=True, verbose=False)
    add_bos = source == "gemma3"
    assert meta["tokenizer.ggml.add_bos_token"] is add_bos
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == ((2, 1) if add_bos else (1, 2))
    mismatches = [
        text for text in _FLAVOUR_TEXTS if llama_token_ids(ours, text, add_bos=add_bos) != llama_token_ids(ref, text, add_bos=add_bos)
    ]
    assert mismatches == []
