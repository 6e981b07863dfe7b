"""Helpers for tests/test_mixes.py: llama.cpp-quantized files, cached under ``cache_dir()/mixes``.

- :func:`reference_types`: the tensor types of ``llama_quantize(src, ..., ftype)``, computed once per
  machine and cached as JSON, keyed by a recipe hash (source identity, file type, llama-cpp-python
  version); :func:`smollm2_f16`: SmolLM2 as F16, made by llama.cpp, cached.
- :func:`write_synthetic_llama`: a small llama-arch GGUF written with gguf-py's ``GGUFWriter``,
  with every row length a multiple of 256, so that the k-quant branches (not only the fallbacks)
  are exercised; minimal llama metadata and a tiny SentencePiece-style vocabulary.
- :func:`read_types`: per-tensor (name, shape, type) and metadata with our fast GGUF reader.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.constants import FileType, QType
from weightprint.testing.models import cache_dir

RECIPE_VERSION = "mixes-v2"


def _key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _source_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def mixes_dir() -> Path:
    d = cache_dir() / "mixes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def reference_types(src: Path, ftype: FileType, label: str) -> dict[str, QType]:
    """The per-tensor types llama.cpp writes when quantizing ``src`` to ``ftype``.

    Runs ``llama_quantize`` into a temporary file, reads the tensor types, deletes the file and
    caches the table as JSON (keyed by source identity, file type and llama-cpp-python version),
    so the reference costs one quantization per machine and no disk space for the outputs.
    """
    from weightprint.testing.llama_ref import llama_quantize

    recipe = {
        "v": RECIPE_VERSION,
        "src": _source_identity(src),
        "ftype": int(ftype),
        "llama_cpp": importlib.metadata.version("llama_cpp_python"),
    }
    table = mixes_dir() / f"{label}-{ftype.name}-{_key(recipe)}.json"
    if table.is_file():
        return {name: QType[t] for name, t in json.loads(table.read_text()).items()}
    out = mixes_dir() / f".{label}-{ftype.name}-{_key(recipe)}.gguf"
    try:
        llama_quantize(src, out, ftype)
        _, tensors = read_types(out)
    finally:
        out.unlink(missing_ok=True)
    types = {name: qtype for name, _, qtype in tensors}
    tmp = table.with_suffix(".tmp")
    tmp.write_text(json.dumps({name: t.name for name, t in types.items()}, indent=0))
    tmp.replace(table)
    return types


def smollm2_f16(source: Path) -> Path:
    """SmolLM2 dequantized to F16 by llama.cpp (``llama_quantize(..., FileType.F16)``), cached."""
    from weightprint.testing.llama_ref import llama_quantize

    recipe = {"v": RECIPE_VERSION, "src": _source_identity(source), "llama_cpp": importlib.metadata.version("llama_cpp_python")}
    target = mixes_dir() / f"smollm2-F16-{_key(recipe)}.gguf"
    if not target.is_file():
        llama_quantize(source, target, FileType.F16)
    return target


def read_types(path: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], QType]]]:
    """Metadata and ``(gguf name, numpy-order shape, type)`` of every tensor, in file order."""
    from weightprint.io.gguf_file import GGUFModel

    with GGUFModel(path) as model:
        metadata = dict(model.metadata)
        tensors = [(t.stored_name, tuple(t.shape), QType(t.qtype)) for t in model.tensor_infos()]
    return metadata, tensors


# --------------------------------------------------------------------------- synthetic model

SYNTH_DIM = 256
SYNTH_FFN = 512
SYNTH_VOCAB = 512
SYNTH_HEAD_DIM = 64
SYNTH_N_HEAD = SYNTH_DIM // SYNTH_HEAD_DIM  # 4


def synthetic_recipes() -> dict[str, dict[str, Any]]:
    """Two variants: tied embeddings + GQA 2 + 16 layers; untied output + GQA 4 + 8 layers.

    Both carry extra tensors that llama.cpp must handle by the rules, not by shape checks:
    a 2-D F16 ``position_embd.weight`` (kept), a 2-D ``ffn_gate_inp.weight`` (kept) and a
    2-D tensor with rows of 40 (``blk.0.extra_proj.weight``: no 32-block type fits -> F16), a 2-D
    ``blk.0.extra_scale`` (no ``weight`` suffix: kept) and ``xtra5`` (a 5-character name, which
    llama.cpp's ``rfind("weight") == size() - 6`` test lets through: quantized).
    """
    return {
        "tied": {"n_layers": 16, "n_head_kv": 2, "tied": True, "seed": 1},
        "untied": {"n_layers": 8, "n_head_kv": 1, "tied": False, "seed": 2},
    }


def write_synthetic_llama(path: Path, *, n_layers: int, n_head_kv: int, tied: bool, seed: int) -> None:
    """Write the synthetic llama GGUF (F16 matrices, F32 norms) to ``path`` (temp file + rename)."""
    import gguf

    rng = np.random.default_rng(seed)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16)

    def vec(n: int) -> np.ndarray:
        return (1.0 + 0.01 * rng.standard_normal(n)).astype(np.float32)

    kv_dim = n_head_kv * SYNTH_HEAD_DIM
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("weightprint-synthetic-mixes")
    writer.add_block_count(n_layers)
    writer.add_context_length(256)
    writer.add_embedding_length(SYNTH_DIM)
    writer.add_feed_forward_length(SYNTH_FFN)
    writer.add_head_count(SYNTH_N_HEAD)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(SYNTH_HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(SYNTH_VOCAB)
    writer.add_file_type(int(FileType.F16))
    # tiny SentencePiece-style vocabulary: <unk>, <s>, </s>, byte tokens, then pieces
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(SYNTH_VOCAB - len(tokens))]
    token_types = [2, 3, 3] + [6] * 256 + [1] * (SYNTH_VOCAB - 259)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(SYNTH_VOCAB - 259)])
    writer.add_token_types(token_types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    writer.add_tensor("token_embd.weight", mat(SYNTH_VOCAB, SYNTH_DIM))
    writer.add_tensor("position_embd.weight", mat(256, SYNTH_DIM))
    writer.add_tensor("output_norm.weight", vec(SYNTH_DIM))
    if not tied:
        writer.add_tensor("output.weight", mat(SYNTH_VOCAB, SYNTH_DIM))
    for i in range(n_layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", vec(SYNTH_DIM))
        writer.add_tensor(p + "attn_q.weight", mat(SYNTH_DIM, SYNTH_DIM))
        writer.add_tensor(p + "attn_k.weight", mat(kv_dim, SYNTH_DIM))
        writer.add_tensor(p + "attn_v.weight", mat(kv_dim, SYNTH_DIM))
        writer.add_tensor(p + "attn_output.weight", mat(SYNTH_DIM, SYNTH_DIM))
        writer.add_tensor(p + "ffn_norm.weight", vec(SYNTH_DIM))
        writer.add_tensor(p + "ffn_gate.weight", mat(SYNTH_FFN, SYNTH_DIM))
        writer.add_tensor(p + "ffn_up.weight", mat(SYNTH_FFN, SYNTH_DIM))
        writer.add_tensor(p + "ffn_down.weight", mat(SYNTH_DIM, SYNTH_FFN))
    writer.add_tensor("blk.0.ffn_gate_inp.weight", mat(4, SYNTH_DIM))
    writer.add_tensor("blk.0.extra_proj.weight", mat(8, 40))
    writer.add_tensor("blk.0.extra_scale", mat(8, SYNTH_DIM))  # 2-D, not "*weight": kept
    writer.add_tensor("xtra5", mat(8, SYNTH_DIM))  # 5 characters: llama.cpp's suffix test passes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)


def synthetic_llama(variant: str) -> tuple[Path, dict[str, Any]]:
    """The cached synthetic GGUF for ``variant`` (see :func:`synthetic_recipes`) and its recipe."""
    recipe = synthetic_recipes()[variant]
    key = _key({"v": RECIPE_VERSION, "gguf": importlib.metadata.version("gguf"), **recipe})
    path = mixes_dir() / f"synthetic-{variant}-{key}.gguf"
    if not path.is_file():
        write_synthetic_llama(path, **recipe)
    return path, recipe
