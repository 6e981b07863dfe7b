"""Helpers for the GGUF io tests (imported by test_io_gguf.py and test_gguf_fuzz.py).

- :func:`gguf_reader_reference`: what gguf-py's (slow) ``GGUFReader`` says about a file, cached on
  disk under ``cache_dir()`` keyed by the file's identity and the gguf-py version.
- :func:`write_small_gguf`: a small synthetic llama GGUF written with gguf-py's own ``GGUFWriter``
  (independent of our writer), with string/numeric/bool/nested metadata and F32/F16/Q8_0/Q4_0 tensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.testing.models import cache_dir

SMALL_N_HEAD = 4
SMALL_N_HEAD_KV = 2
SMALL_DIM = 64
SMALL_VOCAB = 40


def _reference_key(path: Path) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|gguf-{importlib.metadata.version('gguf')}|v1"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def gguf_reader_reference(path: Path) -> dict[str, Any]:
    """``{"fields": {key: (types, contents)}, "tensors": [(name, shape, type, offset, nbytes)]}``.

    ``types`` are gguf-py's ``ReaderField.types`` as ints, ``contents`` its ``contents()``
    (string arrays as lists, numeric arrays as lists); tensor shapes are in numpy order.
    """
    path = Path(path)
    target = cache_dir() / "test-io" / f"gguf-reader-{path.name}-{_reference_key(path)}.pkl"
    if target.is_file():
        with open(target, "rb") as f:
            return pickle.load(f)
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        fields[field.name] = ([int(t) for t in field.types], field.contents())
    tensors = [
        (t.name, tuple(int(d) for d in reversed(t.shape.tolist())), int(t.tensor_type), int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    ]
    ref = {"fields": fields, "tensors": tensors}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(ref, f)
    tmp.replace(target)
    return ref


def small_tensors(seed: int = 0) -> dict[str, tuple[np.ndarray, Any]]:
    """GGUF name -> (float values in *stored* layout, qtype) for the small synthetic model."""
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    d, hd = SMALL_DIM, SMALL_DIM // SMALL_N_HEAD
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "token_embd.weight": (f(SMALL_VOCAB, d), Q.Q8_0),
        "blk.0.attn_norm.weight": (f(d), Q.F32),
        "blk.0.attn_q.weight": (f(d, d), Q.Q4_0),
        "blk.0.attn_k.weight": (f(SMALL_N_HEAD_KV * hd, d), Q.Q8_0),
        "blk.0.attn_v.weight": (f(SMALL_N_HEAD_KV * hd, d), Q.F16),
        "blk.0.attn_output.weight": (f(d, d), Q.F32),
        "blk.0.ffn_norm.weight": (f(d), Q.F32),
        "blk.0.ffn_up.weight": (f(96, d), Q.Q4_1),
        "output_norm.weight": (f(d), Q.F32),
    }


def write_small_gguf(path: Path, *, seed: int = 0, alignment: int | None = None) -> Path:
    """A small llama GGUF written by gguf-py's GGUFWriter."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test model")
    writer.add_uint32("llama.block_count", 1)
    writer.add_uint32("llama.embedding_length", SMALL_DIM)
    writer.add_uint32("llama.context_length", 128)
    writer.add_uint32("llama.feed_forward_length", 96)
    writer.add_uint32("llama.attention.head_count", SMALL_N_HEAD)
    writer.add_uint32("llama.attention.head_count_kv", SMALL_N_HEAD_KV)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_float64("test.float64", 0.1)
    writer.add_int8("test.int8", -3)
    writer.add_int64("test.int64", -(2**40))
    writer.add_uint64("test.uint64", 2**63 + 5)
    writer.add_bool("test.bool", True)
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_array("test.floats", [0.5, 1.5, -2.0])
    if alignment is not None:
        writer.add_uint32("general.alignment", alignment)
    tokens = [f"tok{i}" for i in range(SMALL_VOCAB - 3)] + ["é", "<0x0A>", "日本"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * SMALL_VOCAB)
    writer.add_token_merges(["t o", "to k"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    for name, (values, qtype) in small_tensors(seed).items():
        data = gguf.quants.quantize(values, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
