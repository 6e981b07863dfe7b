"""Mixture-of-experts GGUF files (llama.cpp's Mixtral: arch `llama` with `expert_count`).

llama.cpp stacks a layer's experts into one 3-D tensor (`blk.N.ffn_{gate,up,down}_exps.weight`);
weightprint exposes them as Mixtral's per-expert tensors and stacks them again when writing.
Checked against gguf-py's writer and reader, llama.cpp's quantizer (byte-identical mixes) and
llama.cpp's inference (an upcycled MoE with identical experts computes the dense model's logits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from weightprint.constants import FileType
from weightprint.convert import convert
from weightprint.io import open_model

DIM, FFN, N_EXPERT, N_LAYERS, VOCAB = 256, 512, 8, 2, 384


def write_moe_gguf(path: Path, *, seed: int = 0) -> Path:
    """A small Mixtral-style GGUF written with gguf-py's own ``GGUFWriter`` (F16 matrices)."""
    import gguf

    rng = np.random.default_rng(seed)

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("weightprint-synthetic-moe")
    w.add_block_count(N_LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(DIM // 4)
    w.add_rope_freq_base(10000.0)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(2)
    w.add_file_type(int(FileType.F16))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(VOCAB - len(tokens))]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * 259 + [-float(i) for i in range(VOCAB - 259)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_tensor("token_embd.weight", mat(VOCAB, DIM))
    w.add_tensor("output_norm.weight", np.ones(DIM, np.float32))
    w.add_tensor("output.weight", mat(VOCAB, DIM))
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(DIM, np.float32))
        w.add_tensor(p + "attn_q.weight", mat(DIM, DIM))
        w.add_tensor(p + "attn_k.weight", mat(DIM // 2, DIM))
        w.add_tensor(p + "attn_v.weight", mat(DIM // 2, DIM))
        w.add_tensor(p + "attn_output.weight", mat(DIM, DIM))
        w.add_tensor(p + "ffn_norm.weight", np.ones(DIM, np.float32))
        w.add_tensor(p + "ffn_gate_inp.weight", mat(N_EXPERT, DIM).astype(np.float32))
        w.add_tensor(p + "ffn_gate_exps.weight", mat(N_EXPERT, FFN, DIM))
        w.add_tensor(p + "ffn_up_exps.weight", mat(N_EXPERT, FFN, DIM))
        w.add_tensor(p + "ffn_down_exps.weight", mat(N_EXPERT, DIM, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def moe_gguf(tmp_path_factory) -> Path:
    return write_moe_gguf(tmp_path_factory.mktemp("moe") / "moe-f16.gguf")


def _tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), bytes(np.asarray(t.data).tobytes()))
            for t in r.tensors}


def test_experts_are_read_as_mixtral_tensors(moe_gguf):
    import gguf

    ref = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(moe_gguf)).tensors}
    with open_model(moe_gguf) as m:
        names = m.tensor_names()
        assert m.geometry.n_experts == N_EXPERT
        for layer in range(N_LAYERS):
            for stack, part, shape in (("ffn_gate_exps", "w1", (FFN, DIM)), ("ffn_up_exps", "w3", (FFN, DIM)),
                                       ("ffn_down_exps", "w2", (DIM, FFN))):
                for e in range(N_EXPERT):
                    name = f"model.layers.{layer}.block_sparse_moe.experts.{e}.{part}.weight"
                    assert m.info(name).shape == shape
                    np.testing.assert_array_equal(m.tensor(name), ref[f"blk.{layer}.{stack}.weight"][e].astype(np.float32))
            assert f"model.layers.{layer}.block_sparse_moe.gate.weight" in names
        cfg = m.config
    assert cfg["model_type"] == "mixtral" and cfg["architectures"] == ["MixtralForCausalLM"]
    assert cfg["num_local_experts"] == N_EXPERT and cfg["num_experts_per_tok"] == 2


@pytest.mark.parametrize("ftype", [FileType.F16, FileType.Q8_0, FileType.Q4_K_M, FileType.Q2_K, FileType.Q6_K])
def test_moe_quantization_is_byte_identical_to_llama_cpp(moe_gguf, tmp_path, ftype):
    """Stacked experts re-stacked, and llama.cpp's expert rules (n_expert == 8) in the mixes."""
    from weightprint.testing.llama_ref import llama_quantize

    ours = convert(moe_gguf, tmp_path / "ours.gguf", file_type=ftype.name)
    theirs = llama_quantize(moe_gguf, tmp_path / "theirs.gguf", ftype)
    a, b = _tensors(tmp_path / "ours.gguf"), _tensors(theirs)
    assert set(a) == set(b)
    for name in b:
        assert a[name][:2] == b[name][:2], (name, a[name][:2], b[name][:2])
        assert a[name][2] == b[name][2], name
    assert ours.n_tensors == 3 + N_LAYERS * (7 + 3 * N_EXPERT)


def test_mismatched_experts_are_refused(tmp_path):
    from weightprint.convert import gguf_tensor_groups
    from weightprint.errors import ShapeMismatchError

    class Fake:
        path = "fake"
        architecture = "llama"

        def tensor_infos(self):
            from weightprint.constants import QType
            from weightprint.io.model import TensorInfo

            return [TensorInfo(f"model.layers.0.block_sparse_moe.experts.{e}.w1.weight", "x", shape, QType.F32, 0, 0, None)
                    for e, shape in ((0, (4, 8)), (2, (4, 8)))]

    with pytest.raises(ShapeMismatchError, match=r"experts of `blk.0.ffn_gate_exps.weight` are \[0, 2\]"):
        gguf_tensor_groups(Fake())


@pytest.fixture(scope="module")
def upcycled(tmp_path_factory):
    from weightprint.testing.derive import tiny_llama_pair
    from weightprint.testing.recipes import upcycle_moe

    d = tmp_path_factory.mktemp("upcycled")
    dense, _ = tiny_llama_pair(7001, steps=150, threads=1, n_layers=4)
    moe = upcycle_moe(dense, d / "moe-hf", n_experts=4, top_k=2)
    convert(dense, d / "dense.gguf", file_type="F32")
    convert(moe, d / "moe.gguf", file_type="F32")
    return {"dense_hf": dense, "moe_hf": moe, "dense": d / "dense.gguf", "moe": d / "moe.gguf", "dir": d}


def test_upcycled_moe_gguf_computes_the_dense_models_logits(upcycled, llama_cpp_module):
    """Every expert a copy of the dense MLP: whatever the router picks, llama.cpp must give the
    dense model's logits -- names, shapes, stacking and metadata as llama.cpp expects them."""
    out = []
    for key in ("dense", "moe"):
        llm = llama_cpp_module.Llama(str(upcycled[key]), logits_all=True, n_ctx=64, n_threads=1, verbose=False)
        ids = list(range(5, 45))
        llm.eval(ids)
        out.append(np.array(llm.scores[:len(ids)], dtype=np.float64))
    assert np.abs(out[0] - out[1]).max() < 1e-4 * np.abs(out[0]).max()


def test_moe_gguf_round_trips_to_a_mixtral_directory(upcycled):
    back = convert(upcycled["moe"], upcycled["dir"] / "back-hf", to="hf", dtype="float32")
    cfg = json.loads((Path(back.output) / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["num_local_experts"] == 4 and cfg["num_experts_per_tok"] == 2
    with open_model(upcycled["moe_hf"]) as a, open_model(back.output) as b:
        assert sorted(a.tensor_names()) == sorted(b.tensor_names())
        for name in a.tensor_names():
            np.testing.assert_array_equal(a.tensor(name), b.tensor(name), err_msg=name)


def test_lineage_reads_an_upcycled_moe_gguf(upcycled):
    from weightprint.lineage import compare_models

    r = compare_models(upcycled["dense"], upcycled["moe"])
    assert r.verdict == "derived" and r.log10_pvalue < -8, r.reason
    assert "4 experts per layer where A has a dense MLP" in r.reason


@pytest.mark.parametrize("part", ["w1", "w2", "w3"])
def test_expert_names_agree_with_gguf_py(part):
    """Our stacking map against gguf-py's TensorNameMap (which names the merged experts
    ``block_sparse_moe.experts.wK``), and the router's name."""
    import gguf

    from weightprint.io.names import expert_names, expert_stack_of, gguf_to_hf_name, hf_to_gguf_name

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 4)
    theirs = tmap.get_name(f"model.layers.3.block_sparse_moe.experts.{part}.weight", try_suffixes=(".weight",))
    stack, e = expert_stack_of(f"model.layers.3.block_sparse_moe.experts.5.{part}.weight")
    assert (stack, e) == (theirs, 5)
    assert expert_names(stack, 6)[5] == f"model.layers.3.block_sparse_moe.experts.5.{part}.weight"
    router = tmap.get_name("model.layers.3.block_sparse_moe.gate.weight", try_suffixes=(".weight",))
    assert hf_to_gguf_name("model.layers.3.block_sparse_moe.gate.weight", "llama") == router
    assert gguf_to_hf_name(router, "llama") == "model.layers.3.block_sparse_moe.gate.weight"


def test_inspect_names_the_experts(moe_gguf):
    from weightprint.inspect_model import inspect_model

    r = inspect_model(moe_gguf)
    assert r.n_experts == N_EXPERT and ("experts", f"{N_EXPERT} per layer") in r.facts()
    assert r.n_tensors == 3 + N_LAYERS * (7 + 3 * N_EXPERT)
