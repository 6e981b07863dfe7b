"""GGUF reading/writing, the GGUF<->HF name map and ``open_model``.

Real-model tests (``slow``) compare :class:`GGUFModel` with gguf-py's own ``GGUFReader`` and
``gguf.quants.dequantize`` on SmolLM2 (llama, Q4_1) and Gemma 3 (gemma3, Q4_K_M). Crafted and
truncated files pin the error messages.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFValueType

from _fixtures_io import (
    SMALL_N_HEAD,
    SMALL_N_HEAD_KV,
    gguf_reader_reference,
    small_tensors,
    write_small_gguf,
)
from weightprint.constants import QType
from weightprint.errors import (
    GGUFFormatError,
    ModelFormatError,
    ShapeMismatchError,
    TensorNotFound,
    UnsupportedQuantType,
    WeightprintError,
)
from weightprint.io import (
    GGUFModel,
    StringArray,
    TensorSpec,
    copy_metadata_for_write,
    from_stored_layout,
    gguf_to_hf_name,
    hf_to_gguf_name,
    open_model,
    permute_qk,
    to_stored_layout,
    unpermute_qk,
    write_gguf,
)
from weightprint.io.names import (
    BLOCK_MAPS,
    NORM_SHIFT_ARCHITECTURES,
    QK_PERMUTED_ARCHITECTURES,
    needs_layout_change,
)


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` of llama.cpp's convert_hf_to_gguf.py, written out for reference."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="session")
def real_models(smollm2: Path, gemma3: Path) -> dict[str, Path]:
    return {"smollm2": smollm2, "gemma3": gemma3}


@pytest.fixture(scope="session")
def small_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_gguf(tmp_path_factory.mktemp("gguf") / "small.gguf")


# --------------------------------------------------------------------------- real models


def _our_types(model: GGUFModel, key: str) -> list[int]:
    """Our types in gguf-py's ``ReaderField.types`` form (nested arrays: the first item's types)."""
    from weightprint.io.gguf_file import _DTYPE_TO_VALUE_TYPE

    types = [model.metadata_types[key]]
    if key in model.metadata_element_types:
        types.append(model.metadata_element_types[key])
        value = model.metadata[key]
        while types[-1] == GGUFValueType.ARRAY and len(value):
            value = value[0]
            if isinstance(value, list):
                types.append(GGUFValueType.ARRAY)
            elif isinstance(value, StringArray):
                types.append(GGUFValueType.STRING)
            else:
                types.append(_DTYPE_TO_VALUE_TYPE[value.dtype.newbyteorder("=")])
    return [int(t) for t in types]


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, StringArray):
        return value.tolist()
    if isinstance(value, list):
        out = []
        for v in value:  # gguf-py flattens nested arrays
            v = _plain(v)
            out.extend(v if isinstance(v, list) else [v])
        return out
    return value


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_metadata_equals_gguf_reader(real_models, which):
    path = real_models[which]
    ref = gguf_reader_reference(path)
    with GGUFModel(path) as model:
        assert list(model.metadata) == list(ref["fields"])
        for key, (types, contents) in ref["fields"].items():
            assert _our_types(model, key) == types, key
            assert _plain(model.metadata[key]) == contents, key
        assert len(ref["fields"]) >= 30


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_tensor_infos_equal_gguf_reader(real_models, which):
    path = real_models[which]
    ref = gguf_reader_reference(path)
    with GGUFModel(path) as model:
        infos = model.tensor_infos()
        got = [(t.stored_name, t.shape, int(t.qtype), t.offset, t.nbytes) for t in infos]
        assert got == ref["tensors"]
        assert all(t.file == path for t in infos)
        arch = model.architecture
        assert [t.name for t in infos] == [gguf_to_hf_name(n, arch) for n, *_ in ref["tensors"]]


def _stored_digests(path: Path) -> dict[str, str]:
    """sha256 of gguf-py's float32 dequantization of every tensor, cached on disk per file."""
    import json

    from _fixtures_io import _reference_key
    from weightprint.testing.models import cache_dir

    target = cache_dir() / "test-io" / f"gguf-dequant-{path.name}-{_reference_key(path)}.json"
    if target.is_file():
        return json.loads(target.read_text())
    ref = gguf_reader_reference(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    digests = {}
    for name, shape, type_id, offset, nbytes in ref["tensors"]:
        qtype = QType(type_id)
        raw = np.asarray(data[offset:offset + nbytes]).reshape(-1, nbytes // int(np.prod(shape[:-1], dtype=np.int64)))
        values = np.asarray(gguf.quants.dequantize(raw, qtype), dtype=np.float32).reshape(shape)
        digests[name] = hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
    del data
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(digests))
    return digests


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_every_tensor_equals_gguf_dequantize(real_models, which):
    """stored_tensor() is bit-equal to gguf-py; tensor() is its HF layout per llama.cpp's converter."""
    path = real_models[which]
    digests = _stored_digests(path)
    with GGUFModel(path) as model:
        arch = model.architecture
        n_head = int(model.metadata[f"{arch}.attention.head_count"])
        n_head_kv = int(model.metadata[f"{arch}.attention.head_count_kv"])
        changed = 0
        for i, info in enumerate(model.tensor_infos()):
            stored = model.stored_tensor(info.name)
            assert hashlib.sha256(stored.tobytes()).hexdigest() == digests[info.stored_name], info.name
            if i % 8 and not needs_layout_change(info.name, arch):
                continue  # tensor() = stored_tensor() here; check a sample to save CI time
            hf = model.tensor(info.name)
            assert hf.dtype == np.float32 and hf.shape == info.shape
            if arch == "llama" and info.stored_name.startswith("blk.") and ".attn_q." in info.stored_name:
                np.testing.assert_array_equal(converter_permute(hf, n_head), stored)
                changed += 1
            elif arch == "llama" and ".attn_k." in info.stored_name:
                np.testing.assert_array_equal(converter_permute(hf, n_head_kv), stored)
                changed += 1
            elif arch == "gemma3" and info.stored_name.endswith("norm.weight"):
                np.testing.assert_allclose(hf.astype(np.float64) + 1.0, stored, rtol=0, atol=2e-7 * max(1.0, np.abs(stored).max()))
                assert not np.array_equal(hf, stored)
                changed += 1
            else:
                np.testing.assert_array_equal(hf, stored)
        n_blocks = int(model.metadata[f"{arch}.block_count"])
        expected = 2 * n_blocks if arch == "llama" else 6 * n_blocks + 1  # gemma3: 4 norms + q/k norm
        assert changed == expected


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_name_map_round_trips_every_real_tensor(real_models, which):
    with GGUFModel(real_models[which]) as model:
        arch = model.architecture
        tmap = gguf.get_tensor_name_map(_gguf_arch(arch), int(model.metadata[f"{arch}.block_count"]))
        for info in model.tensor_infos():
            assert info.name != info.stored_name, info.stored_name  # every real tensor is mapped
            assert hf_to_gguf_name(info.name, arch) == info.stored_name
            assert gguf_to_hf_name(info.stored_name, arch) == info.name
            assert tmap.get_name(info.name, try_suffixes=(".weight", ".bias")) == info.stored_name


@pytest.mark.slow
def test_real_tokenizer_and_template(real_models):
    with GGUFModel(real_models["smollm2"]) as m:
        tok = m.tokenizer
        assert (tok.model, tok.pre, tok.vocab_size) == ("gpt2", "smollm", 49152)
        assert tok.tokens[tok.bos_id] == "<|im_start|>" and len(tok.merges) == 48900
        assert "<|im_start|>" in m.chat_template and len(m.chat_template) == 368
        assert m.config["num_attention_heads"] == 9 and m.config["num_key_value_heads"] == 3
        assert m.n_parameters() == 134_515_008
    with GGUFModel(real_models["gemma3"]) as m:
        tok = m.tokenizer
        assert (tok.model, tok.vocab_size) == ("llama", 262144)
        assert tok.scores.shape == (262144,) and tok.token_types.dtype == np.int32
        assert m.chat_template is None
        assert m.n_parameters() == 268_098_176


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_copy_through_write_gguf_is_byte_identical(real_models, which, tmp_path):
    src = real_models[which]
    out = tmp_path / "copy.gguf"
    calls = []
    with GGUFModel(src) as model:
        metadata, types = copy_metadata_for_write(model)
        specs = [TensorSpec(t.stored_name, t.shape, t.qtype) for t in model.tensor_infos()]
        write_gguf(out, metadata=metadata, metadata_types=types, tensors=specs,
                   data=lambda s: (calls.append(s.stored_name), model.raw(s.stored_name))[1])
        assert calls == [s.stored_name for s in specs]  # once each, in order
        with GGUFModel(out) as copy:
            assert list(copy.metadata) == list(model.metadata)
            assert copy.metadata_types == model.metadata_types
            assert copy.tensor_infos()[5].name == model.tensor_infos()[5].name
    assert out.stat().st_size == src.stat().st_size
    assert _sha256(out) == _sha256(src)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.gguf"]  # no temp file left


def _sha256(path: Path) -> str:
    from weightprint.testing.models import file_sha256

    return file_sha256(path)


@pytest.mark.slow
@pytest.mark.llama
def test_llama_cpp_loads_our_copy_with_an_extra_key(real_models, tmp_path, llama_cpp_module):
    with GGUFModel(real_models["smollm2"]) as model:
        metadata, types = copy_metadata_for_write(model)
        metadata["weightprint.note"] = "copied"
        out = write_gguf(tmp_path / "extra.gguf", metadata=metadata, metadata_types=types,
                         tensors=[TensorSpec(t.stored_name, t.shape, t.qtype) for t in model.tensor_infos()],
                         data=lambda s: model.raw(s.stored_name))
    llm = llama_cpp_module.Llama(str(out), vocab_only=True, verbose=False)
    assert llm.n_vocab() == 49152
    assert llm.metadata.get("weightprint.note") == "copied"
    assert GGUFModel(out).metadata_types["weightprint.note"] == GGUFValueType.STRING


# --------------------------------------------------------------------------- name map and layout


def _gguf_arch(arch: str) -> gguf.MODEL_ARCH:
    by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
    return by_name.get(arch, gguf.MODEL_ARCH.LLAMA)  # llama.cpp writes mistral as llama


@pytest.mark.parametrize("arch", sorted(BLOCK_MAPS))
def test_name_map_agrees_with_gguf_py(arch):
    """Every name of ours that gguf-py knows for the architecture maps to the same GGUF name."""
    garch = _gguf_arch(arch)
    tmap = gguf.get_tensor_name_map(garch, 3)
    kinds = {gguf.TENSOR_NAMES[t].format(bid=2): t for t in gguf.MODEL_TENSORS[garch]}
    checked = 0
    for gg_part, hf_part in BLOCK_MAPS[arch].items():
        for suffix in (".weight", ".bias"):
            hf = f"model.layers.2.{hf_part}{suffix}"
            gg = f"blk.2.{gg_part}{suffix}"
            assert hf_to_gguf_name(hf, arch) == gg
            assert gguf_to_hf_name(gg, arch) == hf
        if f"blk.2.{gg_part}" in kinds:
            assert tmap.get_name(f"model.layers.2.{hf_part}") == f"blk.2.{gg_part}", hf_part
            checked += 1
    assert checked >= 9
    for hf, gg in [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight"),
                   ("lm_head.weight", "output.weight")]:
        assert hf_to_gguf_name(hf, arch) == gg and gguf_to_hf_name(gg, arch) == hf


def test_gemma3_sandwich_norms_round_trip():
    pairs = {
        "blk.4.attn_norm.weight": "model.layers.4.input_layernorm.weight",
        "blk.4.post_attention_norm.weight": "model.layers.4.post_attention_layernorm.weight",
        "blk.4.ffn_norm.weight": "model.layers.4.pre_feedforward_layernorm.weight",
        "blk.4.post_ffw_norm.weight": "model.layers.4.post_feedforward_layernorm.weight",
        "blk.4.attn_q_norm.weight": "model.layers.4.self_attn.q_norm.weight",
        "blk.4.attn_k_norm.weight": "model.layers.4.self_attn.k_norm.weight",
    }
    for gg, hf in pairs.items():
        assert gguf_to_hf_name(gg, "gemma3") == hf
        assert hf_to_gguf_name(hf, "gemma3") == gg
    assert gguf_to_hf_name("blk.4.ffn_norm.weight", "llama") == "model.layers.4.post_attention_layernorm.weight"


def test_unknown_names_pass_through():
    for name in ["rope_freqs.weight", "blk.0.unknown_thing.weight", "v.blk.0.attn_q.weight", "blk.x.attn_q.weight"]:
        assert gguf_to_hf_name(name, "llama") == name
        assert hf_to_gguf_name(name, "llama") == name


@pytest.mark.parametrize("shape", [(64, 16), (64,), (64, 3, 2)])
@pytest.mark.parametrize("n_head", [1, 2, 4, 8, 16])
def test_permute_matches_converter_and_inverts(shape, n_head):
    w = np.random.default_rng(n_head).standard_normal(shape).astype(np.float32)
    p = permute_qk(w, n_head)
    np.testing.assert_array_equal(p, converter_permute(w, n_head))
    np.testing.assert_array_equal(unpermute_qk(p, n_head), w)
    if n_head > 1:
        assert not np.array_equal(p, w)


def test_permute_rejects_rows_not_divisible():
    with pytest.raises(ShapeMismatchError, match=r"q/k tensor of shape \(30, 4\): 30 rows is not a multiple of 2 x 4 heads"):
        permute_qk(np.zeros((30, 4)), 4)


def test_archs_needing_layout_changes():
    assert QK_PERMUTED_ARCHITECTURES == {"llama", "mistral"}
    assert NORM_SHIFT_ARCHITECTURES >= {"gemma3"}
    assert not (QK_PERMUTED_ARCHITECTURES & {"qwen2", "qwen3", "gemma3"})


@pytest.mark.parametrize("arch", sorted(BLOCK_MAPS))
def test_stored_layout_round_trip(arch):
    config = {"num_attention_heads": 8, "num_key_value_heads": 2}
    rng = np.random.default_rng(1)
    tensors = {
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((64, 16)).astype(np.float32),
        "model.layers.0.self_attn.k_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
        "model.layers.0.self_attn.k_proj.bias": rng.standard_normal(16).astype(np.float32),
        "model.layers.0.input_layernorm.weight": rng.standard_normal(16).astype(np.float32),
        "model.layers.0.mlp.up_proj.weight": rng.standard_normal((32, 16)).astype(np.float32),
    }
    for name, w in tensors.items():
        stored = to_stored_layout(name, w, arch, config)
        back = from_stored_layout(name, stored, arch, config)
        assert back.dtype == w.dtype and back.shape == w.shape
        if "norm" in name:
            np.testing.assert_allclose(back, w, atol=1e-6)
        else:
            np.testing.assert_array_equal(back, w)
        changed = not np.array_equal(stored, w)
        qk = "_proj" in name and ("q_proj" in name or "k_proj" in name)
        expect = (arch in QK_PERMUTED_ARCHITECTURES and qk) or (arch in NORM_SHIFT_ARCHITECTURES and "norm" in name)
        assert changed == expect, name
    if arch in NORM_SHIFT_ARCHITECTURES:
        w = tensors["model.layers.0.input_layernorm.weight"]
        np.testing.assert_allclose(to_stored_layout("model.layers.0.input_layernorm.weight", w, arch, config), w + 1, atol=1e-6)
    if arch in QK_PERMUTED_ARCHITECTURES:
        k = tensors["model.layers.0.self_attn.k_proj.weight"]
        np.testing.assert_array_equal(to_stored_layout("model.layers.0.self_attn.k_proj.weight", k, arch, config),
                                      converter_permute(k, 2))  # k uses the key/value heads
        with pytest.raises(ShapeMismatchError, match="config has no `num_attention_heads`"):
            from_stored_layout("model.layers.0.self_attn.q_proj.weight", k, arch, {})


def test_per_layer_head_counts():
    w = np.arange(32 * 2, dtype=np.float32).reshape(32, 2)
    config = {"num_attention_heads": [4, 8], "num_key_value_heads": [2, 4]}
    np.testing.assert_array_equal(
        to_stored_layout("model.layers.1.self_attn.q_proj.weight", w, "llama", config), converter_permute(w, 8))


# --------------------------------------------------------------------------- small synthetic file


def test_small_file_matches_gguf_reader(small_gguf):
    ref = gguf_reader_reference(small_gguf)
    with open_model(small_gguf) as model:
        assert isinstance(model, GGUFModel)
        assert model.architecture == "llama" and model.version == 3 and model.alignment == 32
        for key, (types, contents) in ref["fields"].items():
            assert _our_types(model, key) == types, key
            assert _plain(model.metadata[key]) == contents, key
        assert [(t.stored_name, t.shape, int(t.qtype), t.offset, t.nbytes) for t in model.tensor_infos()] == ref["tensors"]
        assert model.metadata["test.uint64"] == 2**63 + 5 and model.metadata["test.int64"] == -(2**40)
        assert model.metadata["tokenizer.ggml.tokens"][-3:] == ["é", "<0x0A>", "日本"]
        assert model.tokenizer.merges == ["t o", "to k"] and model.chat_template == "{{ messages }}"
        expected = small_tensors()
        for info in model.tensor_infos():
            values, qtype = expected[info.stored_name]
            ref_stored = gguf.quants.dequantize(gguf.quants.quantize(values, qtype), qtype)
            np.testing.assert_array_equal(model.stored_tensor(info.name), ref_stored)
            hf = model.tensor(info.name, np.float64)
            assert hf.dtype == np.float64
            if info.stored_name == "blk.0.attn_q.weight":
                np.testing.assert_array_equal(converter_permute(hf, SMALL_N_HEAD), ref_stored)
            elif info.stored_name == "blk.0.attn_k.weight":
                np.testing.assert_array_equal(converter_permute(hf, SMALL_N_HEAD_KV), ref_stored)
            else:
                np.testing.assert_array_equal(hf, ref_stored)
        raw = model.raw("model.layers.0.self_attn.q_proj.weight")
        assert raw.dtype == np.uint8 and raw.shape == (64, 64 // 32 * 18) and not raw.flags.writeable
        assert model.raw("model.layers.0.self_attn.v_proj.weight").dtype == np.float16
        assert model.info("blk.0.attn_q.weight") is model.info("model.layers.0.self_attn.q_proj.weight")
        with pytest.raises(TensorNotFound, match=r"small\.gguf: no tensor `model\.nope`"):
            model.tensor("model.nope")


def test_bf16_and_alignment(tmp_path):
    bits = (np.arange(64, dtype=np.float32) / 7).view(np.uint32) >> 16
    path = tmp_path / "bf16.gguf"
    write_gguf(path, metadata={"general.architecture": "qwen2", "general.alignment": 64},
               metadata_types=None,
               tensors=[TensorSpec("blk.0.attn_q.weight", (2, 32), QType.BF16), TensorSpec("x", (3,), QType.F32)],
               data=lambda s: bits.astype(np.uint16) if s.qtype == QType.BF16 else np.ones(3, np.float32))
    with GGUFModel(path) as m:
        assert m.alignment == 64 and m.metadata_types["general.alignment"] == GGUFValueType.UINT32
        assert all(t.offset % 64 == 0 for t in m.tensor_infos())
        np.testing.assert_array_equal(m.tensor("model.layers.0.self_attn.q_proj.weight"),
                                      (bits << 16).view(np.float32).reshape(2, 32))  # qwen2: no permutation
        assert m.raw("x").dtype == np.float32
    reader = gguf.GGUFReader(path)
    assert [int(t.data_offset) for t in reader.tensors] == [t.offset for t in GGUFModel(path).tensor_infos()]


def test_writer_infers_and_checks_types(tmp_path):
    path = tmp_path / "types.gguf"
    metadata = {
        "general.architecture": "llama",
        "a.int": 7, "a.big": 2**40, "a.neg": -5, "a.float": 0.25, "a.bool": False, "a.str": "",
        "a.np_u16": np.uint16(9), "a.arr_i8": np.array([-1, 2], np.int8), "a.strs": ["x", "", "é"],
        "a.ints": [1, 2, 3], "a.empty_f32": np.zeros(0, np.float32), "a.u32": 5,
    }
    write_gguf(path, metadata=metadata, metadata_types={"a.u32": GGUFValueType.UINT32},
               tensors=[], data=lambda s: None)
    with GGUFModel(path) as m:
        t, e = m.metadata_types, m.metadata_element_types
        assert t["a.int"] == GGUFValueType.INT32 and t["a.big"] == GGUFValueType.INT64
        assert t["a.float"] == GGUFValueType.FLOAT32 and t["a.bool"] == GGUFValueType.BOOL
        assert t["a.np_u16"] == GGUFValueType.UINT16 and t["a.u32"] == GGUFValueType.UINT32
        assert e["a.arr_i8"] == GGUFValueType.INT8 and e["a.strs"] == GGUFValueType.STRING
        assert e["a.ints"] == GGUFValueType.INT32 and e["a.empty_f32"] == GGUFValueType.FLOAT32
        assert m.metadata["a.str"] == "" and m.metadata["a.strs"] == ["x", "", "é"]
        assert m.metadata["a.big"] == 2**40 and m.metadata["a.neg"] == -5
        assert m.tensor_infos() == []
    with pytest.raises(WeightprintError, match=r"cannot write metadata key `k` \(.*300.*\)|cannot write metadata key `k`"):
        write_gguf(tmp_path / "bad.gguf", metadata={"k": 300}, metadata_types={"k": GGUFValueType.UINT8},
                   tensors=[], data=lambda s: None)
    assert not (tmp_path / "bad.gguf").exists()


def test_writer_validates_before_writing_and_cleans_up(tmp_path):
    out = tmp_path / "out.gguf"
    spec = TensorSpec("a", (2, 32), QType.Q8_0)
    with pytest.raises(WeightprintError, match=r"out\.gguf: duplicate tensor `a`"):
        write_gguf(out, metadata={}, metadata_types=None, tensors=[spec, spec], data=lambda s: None)
    with pytest.raises(ShapeMismatchError, match=r"tensor `b` row length 40 is not a multiple of Q8_0 block size 32"):
        write_gguf(out, metadata={}, metadata_types=None, tensors=[TensorSpec("b", (2, 40), QType.Q8_0)], data=lambda s: None)
    with pytest.raises(ShapeMismatchError, match=r"data for tensor `a` has 10 bytes, expected 68 \(Q8_0 \(2, 32\)\)"):
        write_gguf(out, metadata={}, metadata_types=None, tensors=[spec], data=lambda s: np.zeros(10, np.uint8))

    def boom(s):
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        write_gguf(out, metadata={}, metadata_types=None, tensors=[spec], data=boom)
    assert list(tmp_path.iterdir()) == []
    progress = []
    write_gguf(out, metadata={}, metadata_types=None, tensors=[spec, TensorSpec("c", (4,), QType.F32)],
               data=lambda s: np.zeros(s.nbytes, np.uint8), progress=lambda i, n, what: progress.append((i, n, what)))
    assert progress == [(1, 2, spec.stored_name), (2, 2, "c")]
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_string_array_is_lazy_and_compares_like_a_list(small_gguf):
    with GGUFModel(small_gguf) as m:
        tokens = m.metadata["tokenizer.ggml.tokens"]
        assert isinstance(tokens, StringArray) and tokens._cache is None
        assert tokens[0] == "tok0" and tokens[-1] == "日本" and tokens[1:3] == ["tok1", "tok2"]
        assert tokens._cache is None
        with pytest.raises(IndexError):
            tokens[40]
        assert tokens == [f"tok{i}" for i in range(37)] + ["é", "<0x0A>", "日本"]
        assert tokens != ["tok0"]
        assert "StringArray(['tok0', 'tok1', 'tok2', ...], n=40)" == repr(tokens)
        merges = m.metadata["tokenizer.ggml.merges"]
    assert merges == ["t o", "to k"]  # still readable after close()
    with pytest.raises(WeightprintError, match=r"small\.gguf: model is closed"):
        m.raw("model.norm.weight")


# --------------------------------------------------------------------------- crafted files


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv_u32(key: str, value: int) -> bytes:
    return _s(key) + struct.pack("<II", 4, value)


def _tensor_info(name: str, ne: list[int], type_id: int, offset: int) -> bytes:
    return _s(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", type_id, offset)


def _gguf_bytes(kvs: list[bytes], infos: list[bytes], data: bytes = b"", *, version: int = 3,
                n_kv: int | None = None, n_tensors: int | None = None, alignment: int = 32) -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % alignment)
    return head + data


def _write(tmp_path: Path, content: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


F32_INFO = _tensor_info("w", [4, 2], 0, 0)
F32_DATA = np.arange(8, dtype=np.float32).tobytes()


def test_crafted_valid_file_opens(tmp_path):
    path = _write(tmp_path, _gguf_bytes([_kv_u32("x.y", 3)], [F32_INFO], F32_DATA))
    with GGUFModel(path) as m:
        np.testing.assert_array_equal(m.tensor("w"), np.arange(8, dtype=np.float32).reshape(2, 4))
        assert m.architecture == "unknown" and m.tokenizer is None


CRAFTED_ERRORS = [
    ("wrong magic", b"GGML" + b"\0" * 40, GGUFFormatError, r"model\.gguf: not a GGUF file \(magic b'GGML', expected b'GGUF'\)"),
    ("empty", b"", GGUFFormatError, r"model\.gguf: empty file, not a GGUF"),
    ("short", b"GGU", GGUFFormatError, r"model\.gguf: truncated GGUF header at byte 4 \(file is 3 bytes\)"),
    ("version 1", _gguf_bytes([], [], version=1), GGUFFormatError, r"model\.gguf: unsupported GGUF version 1; supported: 2, 3"),
    ("big endian", _gguf_bytes([], [], version=3 << 24), GGUFFormatError,
     r"unsupported GGUF version 50331648 \(big-endian GGUF is not supported\)"),
    ("absurd kv count", _gguf_bytes([], [], n_kv=10**12), GGUFFormatError,
     r"model\.gguf: header claims 1000000000000 metadata keys and 0 tensors but file is only 32 bytes"),
    ("key past eof", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**6) + b"abc", GGUFFormatError,
     r"model\.gguf: metadata key of 1000000 bytes at byte 24 runs past end of file \(35 bytes\)"),
    ("unknown value type", _gguf_bytes([_s("k") + struct.pack("<I", 13) + b"\0" * 8], []), GGUFFormatError,
     r"model\.gguf: metadata key `k` has unknown value type 13 at byte 33"),
    ("array past eof", _gguf_bytes([_s("arr") + struct.pack("<IIQ", 9, 6, 10**9)], []), GGUFFormatError,
     r"model\.gguf: array `arr` of 1000000000 FLOAT32 at byte 43 runs past end of file \(64 bytes\)"),
    ("string array past eof", _gguf_bytes([_s("toks") + struct.pack("<IIQ", 9, 8, 2) + _s("a") + struct.pack("<Q", 500)], []),
     GGUFFormatError, r"model\.gguf: string array `toks` of 2 items runs past end of file \(96 bytes\)"),
    ("bad utf-8 key", _gguf_bytes([_s(b"\xff\xfe") + struct.pack("<IB", 0, 1)], []), GGUFFormatError,
     r"model\.gguf: metadata key at byte 24 is not valid UTF-8"),
    ("duplicate key", _gguf_bytes([_kv_u32("k", 1), _kv_u32("k", 2)], []), GGUFFormatError,
     r"model\.gguf: duplicate metadata key `k` at byte 41"),
    ("bad alignment", _gguf_bytes([_kv_u32("general.alignment", 24)], []), GGUFFormatError,
     r"model\.gguf: `general\.alignment` is 24, expected a power of two"),
    ("too many dims", _gguf_bytes([], [_tensor_info("w", [1, 1, 1, 1, 1], 0, 0)], b"\0" * 32), GGUFFormatError,
     r"model\.gguf: tensor `w` has 5 dimensions \(at most 4\)"),
    ("unknown tensor type", _gguf_bytes([], [_tensor_info("w", [32], 99, 0)], b"\0" * 32), UnsupportedQuantType,
     r"model\.gguf: tensor `w` has unknown GGML type id 99"),
    ("duplicate tensor", _gguf_bytes([], [F32_INFO, F32_INFO], F32_DATA), GGUFFormatError,
     r"model\.gguf: duplicate tensor `w` at byte 65"),
    ("data past eof", _gguf_bytes([], [_tensor_info("w", [4, 100], 0, 0)], F32_DATA), GGUFFormatError,
     r"model\.gguf: tensor `w` data \[96, 1696\) runs past end of file \(128 bytes\)"),
    ("offset past eof", _gguf_bytes([], [_tensor_info("w", [4, 2], 0, 2**62)], F32_DATA), GGUFFormatError,
     r"model\.gguf: tensor `w` data \[4611686018427388000, 4611686018427388032\) runs past end of file \(128 bytes\)"),
    ("misaligned", _gguf_bytes([], [_tensor_info("w", [4], 0, 4)], F32_DATA), GGUFFormatError,
     r"model\.gguf: tensor `w` offset 4 is not a multiple of alignment 32"),
    ("not a block multiple", _gguf_bytes([], [_tensor_info("w", [40, 2], 8, 0)], b"\0" * 96), GGUFFormatError,
     r"model\.gguf: tensor `w` row length 40 is not a multiple of Q8_0 block size 32"),
    ("two names, one HF name", _gguf_bytes([_s("general.architecture") + struct.pack("<I", 8) + _s("llama")],
                                           [_tensor_info("output.weight", [4], 0, 0),
                                            _tensor_info("lm_head.weight", [4], 0, 32)], b"\0" * 64), GGUFFormatError,
     r"model\.gguf: tensors `output\.weight` and `lm_head\.weight` both map to `lm_head\.weight`"),
]


@pytest.mark.parametrize("content, error, message", [c[1:] for c in CRAFTED_ERRORS], ids=[c[0] for c in CRAFTED_ERRORS])
def test_crafted_bad_files(tmp_path, content, error, message):
    path = _write(tmp_path, content)
    with pytest.raises(error, match=message):
        GGUFModel(path)
    with pytest.raises(WeightprintError, match=message):
        open_model(path)


def test_bad_utf8_in_string_array_raises_on_access(tmp_path):
    content = _gguf_bytes([_s("tokenizer.ggml.model") + struct.pack("<I", 8) + _s("gpt2"),
                           _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _s("ok") + _s(b"\xc3")], [])
    with GGUFModel(_write(tmp_path, content)) as m:
        assert m.metadata["tokenizer.ggml.tokens"][0] == "ok"
        with pytest.raises(GGUFFormatError, match=r"model\.gguf: `tokenizer\.ggml\.tokens`: item 1 is not valid UTF-8"):
            m.tokenizer


def test_item_starting_inside_a_character_is_bad_utf8(tmp_path):
    """Two items that are one character split in two: their bytes joined are valid UTF-8, each
    alone is not (the one-decode check must see where items start)."""
    content = _gguf_bytes([_s("tokenizer.ggml.model") + struct.pack("<I", 8) + _s("gpt2"),
                           _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _s("ok") + _s(b"\xc3") + _s(b"\xa9")], [])
    with GGUFModel(_write(tmp_path, content)) as m:
        with pytest.raises(GGUFFormatError, match=r"`tokenizer\.ggml\.tokens`: item 1 is not valid UTF-8"):
            m.tokenizer


def test_wrongly_typed_tokenizer_key(tmp_path):
    content = _gguf_bytes([_s("tokenizer.ggml.model") + struct.pack("<I", 8) + _s("gpt2"),
                           _s("tokenizer.ggml.bos_token_id") + struct.pack("<I", 8) + _s("one")], [])
    with GGUFModel(_write(tmp_path, content)) as m:
        with pytest.raises(GGUFFormatError, match=r"`tokenizer\.ggml\.bos_token_id` is the string .one., expected an integer"):
            m.tokenizer


def test_truncated_copies_of_a_small_gguf(small_gguf, tmp_path):
    content = small_gguf.read_bytes()
    data_offset = GGUFModel(small_gguf).data_offset
    rng = np.random.default_rng(20261127)
    cuts = sorted(set(rng.integers(0, data_offset, 7).tolist()) | set(rng.integers(data_offset, len(content), 3).tolist()))
    assert len(cuts) >= 8
    for cut in cuts:
        path = _write(tmp_path, content[:cut], f"cut{cut}.gguf")
        if cut == 0:
            expected = r"empty file, not a GGUF"
        elif cut < data_offset:
            expected = rf"cut{cut}\.gguf: (truncated GGUF header at byte \d+ \(file is {cut} bytes\)|.* runs past end of file \({cut} bytes\))"
        else:
            expected = rf"cut{cut}\.gguf: tensor `[\w.]+` data \[\d+, \d+\) runs past end of file \({cut} bytes\)"
        with pytest.raises(GGUFFormatError, match=expected):
            GGUFModel(path)


# --------------------------------------------------------------------------- open_model


def test_open_model_errors(tmp_path):
    with pytest.raises(ModelFormatError, match=r"nothing\.gguf: no such file or directory$"):
        open_model(tmp_path / "nothing.gguf")
    empty_dir = tmp_path / "hf"
    empty_dir.mkdir()
    (empty_dir / "config.json").write_text("{}")
    with pytest.raises(ModelFormatError, match=r"hf: no \*\.safetensors weights found$"):
        open_model(empty_dir)
    junk = _write(tmp_path, b"PK\x03\x04" + b"\0" * 30, "model.bin")
    with pytest.raises(ModelFormatError, match=r"model\.bin: not a GGUF or safetensors file \(magic b'PK\\x03\\x04'\)$"):
        open_model(junk)
    tiny = _write(tmp_path, b"", "empty.bin")
    with pytest.raises(ModelFormatError, match=r"empty\.bin: not a GGUF or safetensors file \(magic b''\)"):
        open_model(tiny)


def test_open_model_dispatches_on_magic_not_extension(small_gguf, tmp_path):
    renamed = tmp_path / "weights.bin"
    shutil.copyfile(small_gguf, renamed)
    with open_model(renamed) as m:
        assert isinstance(m, GGUFModel) and m.format == "gguf"
    with open_model(str(small_gguf)) as m:
        assert m.path == small_gguf


def test_open_model_safetensors(tmp_path):
    pytest.importorskip("weightprint.io.safetensors_file")
    from safetensors.numpy import save_file

    path = tmp_path / "w.safetensors"
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(path))
    with open_model(path) as m:
        assert m.format == "safetensors"
        np.testing.assert_array_equal(m.tensor("model.norm.weight"), np.ones(4, np.float32))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_open_model_unreadable(tmp_path):
    path = _write(tmp_path, b"GGUF")
    path.chmod(0)
    with pytest.raises(ModelFormatError, match=r"model\.gguf: cannot read \(Permission denied\)"):
        open_model(path)


def test_open_model_hf_directory(tmp_path):
    pytest.importorskip("weightprint.io.hf")
    import json

    from safetensors.numpy import save_file

    directory = tmp_path / "hf"
    directory.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4,
              "num_attention_heads": 1, "num_key_value_heads": 1, "num_hidden_layers": 0, "vocab_size": 3}
    (directory / "config.json").write_text(json.dumps(config))
    save_file({"model.norm.weight": np.ones(4, np.float32)}, str(directory / "model.safetensors"))
    with open_model(directory) as m:
        assert m.format == "hf" and m.tensor_names() == ["model.norm.weight"]
