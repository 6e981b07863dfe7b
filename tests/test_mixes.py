"""Per-tensor type rules ("mixes") against llama.cpp's own ``llama_model_quantize``.

H0 of the reference tests: for every tensor of the model, :func:`choose_tensor_types` names the
type that llama.cpp writes. Alternative: at least one tensor differs (the test fails and lists
the differing tensors). The references are computed by running llama.cpp (llama-cpp-python
0.3.36) once per machine and cached as JSON tables under ``cache_dir()/mixes``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from weightprint.constants import FileType, QType
from weightprint.errors import ShapeMismatchError, UnsupportedQuantType, WeightprintError
from weightprint.io.geometry import mix_hyperparameters
from weightprint.quant.mixes import (
    choose_tensor_types,
    tensor_allows_quantization,
    tensor_type_plan,
)
from weightprint.testing.llama_ref import llama_available

sys.path.insert(0, str(Path(__file__).parent))
import _fixtures_mixes as fx  # noqa: E402

needs_llama = pytest.mark.skipif(
    not llama_available(),
    reason="llama-cpp-python is not installed: the reference types come from llama.cpp itself",
)

QUANTIZED_FILE_TYPES = [
    FileType.Q4_0, FileType.Q4_1, FileType.Q5_0, FileType.Q5_1, FileType.Q8_0, FileType.Q2_K,
    FileType.Q3_K_S, FileType.Q3_K_M, FileType.Q3_K_L, FileType.Q4_K_S, FileType.Q4_K_M,
    FileType.Q5_K_S, FileType.Q5_K_M, FileType.Q6_K,
]


def _assert_same_types(label: str, source: Path, ftype: FileType, label_key: str) -> None:
    metadata, tensors = fx.read_types(source)
    hyper = mix_hyperparameters(metadata)
    arch = hyper.pop("arch")
    expected = fx.reference_types(source, ftype, label_key)
    got = choose_tensor_types(arch, tensors, ftype, **hyper)
    assert set(got) == set(expected), f"{label}: tensor names differ"
    wrong = {name: (got[name].name, expected[name].name) for name in expected if got[name] != expected[name]}
    assert not wrong, f"{label} {ftype.name}: {len(wrong)} of {len(expected)} tensors differ (ours, llama.cpp): {wrong}"


# --------------------------------------------------------------------------- against llama.cpp


@pytest.fixture(scope="session")
def smollm2_f16_path(smollm2) -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    return fx.smollm2_f16(smollm2)


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("ftype", QUANTIZED_FILE_TYPES + [FileType.F16, FileType.BF16, FileType.F32], ids=lambda f: f.name)
def test_smollm2_types_match_llama_cpp(smollm2_f16_path: Path, ftype: FileType) -> None:
    """SmolLM2 (llama, dim 576: k-quants fall back for all but ffn_down) from F16."""
    _assert_same_types("SmolLM2 F16", smollm2_f16_path, ftype, "smollm2-f16")


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize(
    "ftype", [FileType.Q4_K_M, FileType.Q5_K_M, FileType.Q8_0, FileType.Q3_K_M, FileType.Q2_K], ids=lambda f: f.name
)
def test_gemma3_requantize_types_match_llama_cpp(gemma3: Path, ftype: FileType) -> None:
    """Gemma 3 270M (gemma3, GQA 4) requantized from its Q4_K_M file."""
    _assert_same_types("Gemma 3 Q4_K_M", gemma3, ftype, "gemma3")


@needs_llama
@pytest.mark.parametrize("variant", sorted(fx.synthetic_recipes()))
@pytest.mark.parametrize("ftype", list(FileType), ids=lambda f: f.name)
def test_synthetic_llama_types_match_llama_cpp(variant: str, ftype: FileType) -> None:
    """Rows that are multiples of 256: the k-quant branches themselves, not their fallbacks."""
    path, _ = fx.synthetic_llama(variant)
    _assert_same_types(f"synthetic {variant}", path, ftype, f"synthetic-{variant}")


@needs_llama
def test_synthetic_reference_exercises_kquant_branches() -> None:
    """Guard against a vacuous comparison: the synthetic references do contain the raised types."""
    path, _ = fx.synthetic_llama("tied")
    q4km = fx.reference_types(path, FileType.Q4_K_M, "synthetic-tied")
    assert q4km["token_embd.weight"] == QType.Q6_K  # tied embeddings -> output rule
    assert q4km["blk.0.attn_v.weight"] == QType.Q6_K and q4km["blk.2.attn_v.weight"] == QType.Q4_K
    assert q4km["blk.0.extra_proj.weight"] == QType.F16  # rows of 40: no 32-block type fits
    assert q4km["position_embd.weight"] == QType.F16  # kept as stored
    assert q4km["blk.0.extra_scale"] == QType.F16 and q4km["xtra5"] == QType.Q4_K
    path, _ = fx.synthetic_llama("untied")
    q2k = fx.reference_types(path, FileType.Q2_K, "synthetic-untied")
    assert q2k["blk.3.attn_v.weight"] == QType.Q4_K  # GQA 4
    assert q2k["output.weight"] == QType.Q6_K and q2k["token_embd.weight"] == QType.Q2_K


# --------------------------------------------------------------------------- rules, no llama.cpp


def _dense_llama(n_layers: int, dim: int = 256, ffn: int = 512, *, tied: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    tensors = [("token_embd.weight", (512, dim)), ("output_norm.weight", (dim,))]
    if not tied:
        tensors.append(("output.weight", (512, dim)))
    for i in range(n_layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (dim,)), (p + "attn_q.weight", (dim, dim)), (p + "attn_k.weight", (64, dim)),
            (p + "attn_v.weight", (64, dim)), (p + "attn_output.weight", (dim, dim)), (p + "ffn_norm.weight", (dim,)),
            (p + "ffn_gate.weight", (ffn, dim)), (p + "ffn_up.weight", (ffn, dim)), (p + "ffn_down.weight", (dim, ffn)),
        ]
    return tensors


def test_more_bits_layers_follow_numeric_layer_order() -> None:
    """Q4_K_M attn_v/ffn_down: first and last eighth and every third layer, counted 0,1,2,...,10
    (llama.cpp sorts by layer number, so blk.10 comes after blk.9, not after blk.1)."""
    types = choose_tensor_types("llama", _dense_llama(16), FileType.Q4_K_M, n_layers=16)
    more = [i for i in range(16) if types[f"blk.{i}.attn_v.weight"] == QType.Q6_K]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]
    assert [i for i in range(16) if types[f"blk.{i}.ffn_down.weight"] == QType.Q6_K] == more
    assert list(types)[:2] == ["output_norm.weight", "token_embd.weight"]


def test_output_and_fallbacks() -> None:
    plan = tensor_type_plan("llama", _dense_llama(2, dim=576, ffn=1536, tied=False), FileType.Q4_K_M, n_layers=2)
    assert plan.types["output.weight"] == QType.Q8_0  # 576 % 256 != 0
    assert plan.types["token_embd.weight"] == QType.Q5_0  # untied: base type, then fallback
    assert plan.types["blk.0.attn_q.weight"] == QType.Q5_0
    assert plan.types["blk.0.ffn_down.weight"] == QType.Q4_K  # rows of 1536 fit the k-quants
    assert plan.types["blk.1.ffn_down.weight"] == QType.Q6_K  # last eighth of 2 layers: more bits
    assert plan.types["blk.0.attn_norm.weight"] == QType.F32
    assert "blk.0.ffn_down.weight" not in plan.fallbacks and "blk.0.attn_q.weight" in plan.fallbacks
    odd = choose_tensor_types("llama", [("blk.0.x.weight", (8, 40))], FileType.Q6_K, n_layers=1)
    assert odd["blk.0.x.weight"] == QType.F16


def test_one_dimensional_and_kept_tensors_keep_source_type() -> None:
    tensors = [
        ("blk.0.attn_norm.weight", (256,), QType.F16),
        ("blk.0.attn_q.bias", (1, 256), QType.F32),  # (1, n) is 1-D for ggml
        ("position_embd.weight", (64, 256), QType.F16),
        ("blk.0.ffn_gate_inp.weight", (8, 256), QType.F32),
        ("blk.0.attn_q.weight", (256, 256), QType.Q4_K),
    ]
    types = choose_tensor_types("llama", tensors, FileType.F32, n_layers=1)
    assert [types[n].name for n, *_ in tensors] == ["F16", "F32", "F16", "F32", "F32"]
    assert not tensor_allows_quantization("llama", "blk.0.attn_q.bias", (256, 256))


def test_moe_layers_from_names_and_expert_rules() -> None:
    tensors = [("blk.0.ffn_down_exps.weight", (8, 256, 512)), ("blk.0.attn_v.weight", (64, 256))]
    types = choose_tensor_types("llama", tensors, FileType.Q4_K_M, n_layers=1, n_expert=8)
    assert types["blk.0.attn_v.weight"] == QType.Q8_0 and types["blk.0.ffn_down_exps.weight"] == QType.Q6_K
    with pytest.raises(WeightprintError, match=r"^tensor `blk.3.ffn_up_exps.weight`: layer 3 is outside \[0, 2\)$"):
        choose_tensor_types("llama", [("blk.3.ffn_up_exps.weight", (8, 256, 512))], FileType.Q4_0, n_layers=2, n_expert=8)


def test_input_errors() -> None:
    with pytest.raises(UnsupportedQuantType, match="^file type 5 is not covered by the mixes; known: F32, F16"):
        choose_tensor_types("llama", [], 5, n_layers=1)
    with pytest.raises(WeightprintError, match=r"^`n_layers` must be a positive integer, got 0$"):
        choose_tensor_types("llama", [], FileType.Q4_0, n_layers=0)
    with pytest.raises(WeightprintError, match="^tensor `a.weight` is listed twice$"):
        choose_tensor_types("llama", [("a.weight", (2, 32)), ("a.weight", (2, 32))], FileType.Q4_0, n_layers=1)
    with pytest.raises(ShapeMismatchError, match=r"^tensor `a.weight`: shape \(0, 32\) must have 1 to 4 positive sizes$"):
        choose_tensor_types("llama", [("a.weight", (0, 32))], FileType.Q4_0, n_layers=1)
    with pytest.raises(WeightprintError, match="needs the head counts"):
        choose_tensor_types("llama", [("blk.0.attn_v.weight", (64, 256))], FileType.Q2_K, n_layers=1)
    assert choose_tensor_types(
        "llama", [("blk.0.attn_v.weight", (64, 256))], FileType.Q2_K, n_layers=1, n_head=4, n_head_kv=1
    ) == {"blk.0.attn_v.weight": QType.Q4_K}


def test_mix_hyperparameters() -> None:
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 18, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": [1, 1]}
    assert mix_hyperparameters(meta) == {"arch": "gemma3", "n_layers": 18, "n_expert": 0, "n_head": 4, "n_head_kv": 1}
    with pytest.raises(WeightprintError, match="^metadata has no `llama.block_count`$"):
        mix_hyperparameters({"general.architecture": "llama"})


# --------------------------------------------------------------------------- llama_ref and requantizing


@needs_llama
def test_requantize_same_type_copies_bytes_and_keeps_rules(tmp_path: Path) -> None:
    """Requantizing a Q4_K_M file to Q4_K_M copies every tensor byte for byte; to Q8_0 the types
    still follow the rules on names and shapes, whatever the source types."""
    from weightprint.io.gguf_file import GGUFModel
    from weightprint.testing.llama_ref import llama_quantize

    path, _ = fx.synthetic_llama("untied")
    first = llama_quantize(path, tmp_path / "a.gguf", FileType.Q4_K_M)
    again = llama_quantize(first, tmp_path / "b.gguf", FileType.Q4_K_M)
    with GGUFModel(first) as a, GGUFModel(again) as b:
        assert [(t.stored_name, t.qtype) for t in a.tensor_infos()] == [(t.stored_name, t.qtype) for t in b.tensor_infos()]
        for t in a.tensor_infos():
            assert bytes(a.raw(t.name)) == bytes(b.raw(t.name)), t.stored_name
    q8 = llama_quantize(first, tmp_path / "c.gguf", FileType.Q8_0)
    metadata, src = fx.read_types(first)
    _, got = fx.read_types(q8)
    hyper = mix_hyperparameters(metadata)
    arch = hyper.pop("arch")
    ours = choose_tensor_types(arch, src, FileType.Q8_0, **hyper)
    assert {n: q for n, _, q in got} == ours


@needs_llama
def test_llama_quantize_errors(tmp_path: Path) -> None:
    from weightprint.errors import BackendError
    from weightprint.testing.llama_ref import llama_quantize

    path, _ = fx.synthetic_llama("untied")
    first = llama_quantize(path, tmp_path / "a.gguf", FileType.Q4_0)
    # output.weight (Q6_K, first in llama.cpp order) is the first tensor that would change type
    with pytest.raises(BackendError, match=r"to Q8_0 \(return code 1\): llama_model_quantize: failed to quantize: requantizing from type q6_K is disabled$"):
        llama_quantize(first, tmp_path / "b.gguf", FileType.Q8_0, allow_requantize=False)
    assert not (tmp_path / "b.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]  # no temp file left behind
    with pytest.raises(BackendError, match=r"\(return code 1\): llama_model_quantize: failed to quantize: invalid output file type 99"):
        llama_quantize(path, tmp_path / "c.gguf", 99)
    with pytest.raises(FileNotFoundError):
        llama_quantize(tmp_path / "missing.gguf", tmp_path / "d.gguf", FileType.Q4_0)


def test_llama_quantize_without_llama_cpp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from weightprint.errors import BackendError
    from weightprint.testing.llama_ref import llama_quantize

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if not installed
    assert not llama_available()
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF")
    with pytest.raises(BackendError, match=r"^llama-cpp-python \(`llama_cpp`\) is not installed$"):
        llama_quantize(src, tmp_path / "out.gguf", FileType.Q4_0)
