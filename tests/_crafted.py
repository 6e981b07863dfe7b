"""A generated corpus of crafted (malicious or broken) model inputs, one per hardening case.

``build_corpus(root)`` writes every case under ``root`` and returns :class:`Case` records: a
GGUF or safetensors file, a Hugging Face directory, or a special path (FIFO, dangling symlink,
device). Each case names its class (``gguf-header``, ``gguf-meta``, ``safetensors``, ``hf-config``,
``hf-index``, ``hf-json``, ``paths``, ``amplification``) and what a correct reader does with it:
``ok`` (exit 0) or ``error`` (exit 2, one line). Nothing here is a binary blob in the repository:
every file is written from these recipes, in well under a second.

The bench script ``bench/bench_crafted.py`` runs the same corpus in subprocesses under
``ulimit -v 4G`` to measure time and RSS; ``bench/fuzz_atheris.py`` uses the valid cases as seeds.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from gguf import GGUFValueType as T

__all__ = ["Case", "build_corpus", "gguf_bytes", "base_meta", "base_tensors", "safetensors_bytes", "write_hf_dir_files"]

DIM, HEADS, KV, FFN, VOCAB = 8, 2, 1, 16, 16


@dataclass
class Case:
    """One crafted input: ``path`` (file or directory), its class and the expected outcome."""

    name: str
    kind: str  # class of the case
    path: Path
    expect: str = "error"  # "ok" or "error"
    commands: tuple[str, ...] = ("inspect", "convert-hf")
    note: str = ""
    heavy: bool = False  # big file: run in the bench (and the RSS sample), not every in-process test
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- GGUF encoding

_FMT = {T.UINT8: "<B", T.INT8: "<b", T.UINT16: "<H", T.INT16: "<h", T.UINT32: "<I", T.INT32: "<i",
        T.FLOAT32: "<f", T.BOOL: "<?", T.UINT64: "<Q", T.INT64: "<q", T.FLOAT64: "<d"}


def _s(x: str | bytes) -> bytes:
    b = x.encode("utf-8") if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def _val(t: T, v: Any) -> bytes:
    if t == T.STRING:
        return _s(v)
    if t == T.ARRAY:
        et, items = v
        if isinstance(items, bytes):  # pre-encoded body
            return struct.pack("<IQ", et, len(items) // max(1, struct.calcsize(_FMT.get(et, "<B")))) + items
        return struct.pack("<IQ", et, len(items)) + b"".join(_val(et, i) for i in items)
    return struct.pack(_FMT[t], v)


def gguf_bytes(meta: dict[str, tuple[T, Any]], tensors: list[tuple[str, tuple[int, ...], int, int]], data: bytes,
               *, alignment: int = 32, version: int = 3, n_kv: int | None = None, n_tensors: int | None = None,
               raw_kv: bytes = b"") -> bytes:
    """A GGUF file: ``meta`` key -> (type, value), tensors ``(name, ne, ggml type, offset)``, then data."""
    kv = b"".join(_s(k) + struct.pack("<I", t) + _val(t, v) for k, (t, v) in meta.items()) + raw_kv
    infos = b"".join(_s(n) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", qt, off)
                     for n, ne, qt, off in tensors)
    head = (b"GGUF" + struct.pack("<I", version) + struct.pack("<Q", len(tensors) if n_tensors is None else n_tensors)
            + struct.pack("<Q", len(meta) + (1 if raw_kv else 0) if n_kv is None else n_kv) + kv + infos)
    pad = -len(head) % alignment if 0 < alignment <= 1 << 20 else 0
    return head + b"\0" * pad + data


def base_meta(arch: str = "llama") -> dict[str, tuple[T, Any]]:
    a = arch
    tokens = [f"t{i}" for i in range(VOCAB - 2)] + ["a", "b"]
    return {
        "general.architecture": (T.STRING, a),
        "general.name": (T.STRING, "crafted"),
        f"{a}.block_count": (T.UINT32, 1),
        f"{a}.embedding_length": (T.UINT32, DIM),
        f"{a}.context_length": (T.UINT32, 64),
        f"{a}.feed_forward_length": (T.UINT32, FFN),
        f"{a}.attention.head_count": (T.UINT32, HEADS),
        f"{a}.attention.head_count_kv": (T.UINT32, KV),
        f"{a}.attention.layer_norm_rms_epsilon": (T.FLOAT32, 1e-5),
        f"{a}.rope.freq_base": (T.FLOAT32, 10000.0),
        "general.file_type": (T.UINT32, 0),
        "tokenizer.ggml.model": (T.STRING, "gpt2"),
        "tokenizer.ggml.pre": (T.STRING, "default"),
        "tokenizer.ggml.tokens": (T.ARRAY, (T.STRING, tokens)),
        "tokenizer.ggml.token_type": (T.ARRAY, (T.INT32, [1] * VOCAB)),
        "tokenizer.ggml.merges": (T.ARRAY, (T.STRING, ["a b"])),
        "tokenizer.ggml.bos_token_id": (T.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (T.UINT32, 2),
        "tokenizer.chat_template": (T.STRING, "{{ messages }}"),
    }


def base_tensors(arch: str = "llama") -> list[tuple[str, tuple[int, ...]]]:
    """GGUF names and numpy shapes (F32) of the tiny model."""
    hd = DIM // HEADS
    out = [("token_embd.weight", (VOCAB, DIM))]
    out += [("blk.0.attn_norm.weight", (DIM,)), ("blk.0.attn_q.weight", (DIM, DIM)), ("blk.0.attn_k.weight", (KV * hd, DIM)),
            ("blk.0.attn_v.weight", (KV * hd, DIM)), ("blk.0.attn_output.weight", (DIM, DIM)),
            ("blk.0.ffn_norm.weight", (DIM,)), ("blk.0.ffn_gate.weight", (FFN, DIM)), ("blk.0.ffn_up.weight", (FFN, DIM)),
            ("blk.0.ffn_down.weight", (DIM, FFN))]
    if arch == "gemma3":
        out += [("blk.0.attn_q_norm.weight", (hd,)), ("blk.0.attn_k_norm.weight", (hd,)),
                ("blk.0.post_attention_norm.weight", (DIM,)), ("blk.0.post_ffw_norm.weight", (DIM,))]
    out.append(("output_norm.weight", (DIM,)))
    return out


def _layout(shapes: list[tuple[str, tuple[int, ...]]], alignment: int = 32, values: Callable[[str, tuple], np.ndarray] | None = None,
            ) -> tuple[list[tuple[str, tuple[int, ...], int, int]], bytes]:
    rng = np.random.default_rng(0)
    infos, chunks, off = [], [], 0
    for name, shape in shapes:
        arr = values(name, shape) if values else (rng.standard_normal(shape) * 0.1).astype(np.float32)
        b = np.ascontiguousarray(arr, dtype=np.float32).tobytes()
        infos.append((name, tuple(reversed(shape)), 0, off))
        pad = -len(b) % alignment
        chunks.append(b + b"\0" * pad)
        off += len(b) + pad
    return infos, b"".join(chunks)


def tiny_gguf(meta_edit: Callable[[dict], None] | None = None, *, arch: str = "llama", alignment: int = 32,
              tensor_edit: Callable[[list], None] | None = None, values: Callable | None = None, **kw: Any) -> bytes:
    meta = base_meta(arch)
    if arch == "gemma3":
        meta["gemma3.attention.key_length"] = (T.UINT32, DIM // HEADS)
        meta["tokenizer.ggml.model"] = (T.STRING, "llama")
        meta["tokenizer.ggml.scores"] = (T.ARRAY, (T.FLOAT32, [0.0] * VOCAB))
        del meta["tokenizer.ggml.merges"]
    if alignment != 32:
        meta["general.alignment"] = (T.UINT32, alignment)
    if meta_edit:
        meta_edit(meta)
    infos, data = _layout(base_tensors(arch), alignment if 0 < alignment <= 1 << 16 and not alignment & (alignment - 1) else 32,
                          values)
    if tensor_edit:
        tensor_edit(infos)
    return gguf_bytes(meta, infos, data, alignment=alignment, **kw)


# --------------------------------------------------------------------------- safetensors


def safetensors_bytes(tensors: dict[str, np.ndarray] | None = None, *, header: bytes | None = None,
                      header_obj: Any = None, data: bytes | None = None, n_override: int | None = None) -> bytes:
    if header is None:
        if header_obj is None:
            header_obj, chunks, off = {"__metadata__": {"format": "pt"}}, [], 0
            dt = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int32"): "I32"}
            for name, arr in (tensors or {}).items():
                b = arr.tobytes()
                header_obj[name] = {"dtype": dt[arr.dtype], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
                chunks.append(b)
                off += len(b)
            data = b"".join(chunks) if data is None else data
        header = json.dumps(header_obj).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header) if n_override is None else n_override) + header + (data or b"")


def _hf_tensors(n_layers: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    hd = DIM // HEADS
    f = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)  # noqa: E731
    out = {"model.embed_tokens.weight": f(VOCAB, DIM), "model.norm.weight": f(DIM)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": f(DIM), p + "self_attn.q_proj.weight": f(DIM, DIM),
                    p + "self_attn.k_proj.weight": f(KV * hd, DIM), p + "self_attn.v_proj.weight": f(KV * hd, DIM),
                    p + "self_attn.o_proj.weight": f(DIM, DIM), p + "post_attention_layernorm.weight": f(DIM),
                    p + "mlp.gate_proj.weight": f(FFN, DIM), p + "mlp.up_proj.weight": f(FFN, DIM),
                    p + "mlp.down_proj.weight": f(DIM, FFN)})
    return out


def base_config() -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": DIM, "intermediate_size": FFN,
            "num_hidden_layers": 1, "num_attention_heads": HEADS, "num_key_value_heads": KV, "vocab_size": VOCAB,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True}


def base_tokenizer() -> dict[str, Any]:
    vocab = {f"t{i}": i for i in range(VOCAB - 2)} | {"a": VOCAB - 2, "b": VOCAB - 1}
    return {"version": "1.0", "added_tokens": [{"id": 1, "content": "t1", "special": True, "single_word": False,
                                                 "lstrip": False, "rstrip": False, "normalized": False}],
            "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                                  "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]}}


def write_hf_dir_files(d: Path, *, config: Any = None, config_raw: bytes | None = None, tensors: dict | None = None,
                       weights_raw: bytes | None = None, tokenizer: Any = None, tokenizer_raw: bytes | None = None,
                       tokenizer_config_raw: bytes | None = None, index: Any = None, index_raw: bytes | None = None,
                       shards: dict[str, bytes] | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if config_raw is not None:
        (d / "config.json").write_bytes(config_raw)
    else:
        (d / "config.json").write_text(json.dumps(base_config() if config is None else config))
    if tokenizer_raw is not None:
        (d / "tokenizer.json").write_bytes(tokenizer_raw)
    elif tokenizer is not False:
        (d / "tokenizer.json").write_text(json.dumps(base_tokenizer() if tokenizer is None else tokenizer))
    if tokenizer_config_raw is not None:
        (d / "tokenizer_config.json").write_bytes(tokenizer_config_raw)
    if index is not None or index_raw is not None:
        (d / "model.safetensors.index.json").write_bytes(index_raw if index_raw is not None else json.dumps(index).encode())
        for name, content in (shards or {}).items():
            (d / name).write_bytes(content)
    elif weights_raw is not None:
        (d / "model.safetensors").write_bytes(weights_raw)
    else:
        (d / "model.safetensors").write_bytes(safetensors_bytes(_hf_tensors() if tensors is None else tensors))
    return d


# --------------------------------------------------------------------------- HF directories as one byte string

# The fuzzer's HF-directory input: repeated ``name index (1 byte) | length (u32 LE) | bytes`` records.
HF_NAMES = ["config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "chat_template.jinja"]


def pack_dir(files: dict[str, bytes]) -> bytes:
    out = b""
    for name, content in files.items():
        out += bytes([HF_NAMES.index(name)]) + struct.pack("<I", len(content)) + content
    return out


def unpack_dir(data: bytes, directory: Path) -> None:
    pos = 0
    while pos + 5 <= len(data):
        idx = data[pos] % len(HF_NAMES)
        (n,) = struct.unpack_from("<I", data, pos + 1)
        pos += 5
        (directory / HF_NAMES[idx]).write_bytes(data[pos:pos + n])
        pos += n


# --------------------------------------------------------------------------- the corpus


def million_vocab_gguf(*, spm: bool) -> bytes:
    """A tiny model whose vocabulary is just under the string cap (2^20 - 1 tokens): byte-level BPE
    without merges (``spm=False``), or SentencePiece with scores and merges to rebuild (``spm=True``:
    ``▁t<i>`` plus the pieces ``▁``, ``t``, ``▁t`` and the digits, so that 1M merges exist)."""
    n = (1 << 20) - 1

    def edit(m: dict) -> None:
        m.pop("tokenizer.ggml.token_type")
        m.pop("tokenizer.ggml.merges")
        if not spm:
            m["tokenizer.ggml.tokens"] = (T.ARRAY, (T.STRING, [f"t{i}" for i in range(n)]))
            return
        pieces = ["\u2581", "t", "\u2581t", *"0123456789"] + [f"\u2581t{i}" for i in range(n - 13)]
        m["tokenizer.ggml.tokens"] = (T.ARRAY, (T.STRING, pieces))
        m["tokenizer.ggml.scores"] = (T.ARRAY, (T.FLOAT32, [-float(i) for i in range(n)]))
        m["tokenizer.ggml.model"] = (T.STRING, "llama")

    return tiny_gguf(edit)


def _nested_empty_string_arrays(n: int) -> bytes:
    """The body of an array of ``n`` empty string arrays (element type STRING, count 0)."""
    return struct.pack("<IQ", T.ARRAY, n) + struct.pack("<IQ", T.STRING, 0) * n


def build_corpus(root: Path, *, heavy: bool = False) -> list[Case]:  # noqa: C901 - a list of recipes
    """Write every crafted case under ``root``; ``heavy`` adds the large amplification files."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def gguf(name: str, content: bytes, kind: str, expect: str = "error", **kw: Any) -> None:
        p = root / f"{name}.gguf"
        p.write_bytes(content)
        cases.append(Case(name, kind, p, expect, **kw))

    def meta(name: str, edit: Callable[[dict], None], expect: str = "error", arch: str = "llama", **kw: Any) -> None:
        gguf(name, tiny_gguf(edit, arch=arch), "gguf-meta", expect, **kw)

    def st(name: str, content: bytes, expect: str = "error", kind: str = "safetensors", **kw: Any) -> None:
        p = root / f"{name}.safetensors"
        p.write_bytes(content)
        cases.append(Case(name, kind, p, expect, **kw))

    def hf(name: str, kind: str, expect: str = "error", **files: Any) -> Path:
        d = write_hf_dir_files(root / name, **files)
        cases.append(Case(name, kind, d, expect))
        return d

    # ---- valid baselines
    good = tiny_gguf()
    gguf("ok-llama", good, "baseline", "ok", commands=("inspect", "convert-hf", "convert-gguf", "fingerprint"))
    gguf("ok-gemma3", tiny_gguf(arch="gemma3"), "baseline", "ok")
    gguf("ok-align-64", tiny_gguf(alignment=64), "baseline", "ok")
    st("ok-safetensors", safetensors_bytes(_hf_tensors()), "ok", kind="baseline", commands=("inspect",))
    hf("ok-hf", "baseline", "ok")

    # ---- GGUF header (byte-level, CVE-style)
    for cut in (0, 3, 4, 8, 16, 23, 24, 40, 100, len(good) // 2, len(good) - 1):
        gguf(f"gguf-cut-{cut}", good[:cut], "gguf-header")
    gguf("gguf-bad-magic", b"GGUX" + good[4:], "gguf-header")
    for v in (0, 1, 4, 0x03000000, 0xFFFFFFFF):
        gguf(f"gguf-version-{v}", good[:4] + struct.pack("<I", v) + good[8:], "gguf-header")
    gguf("gguf-n-tensors-huge", good[:8] + struct.pack("<Q", 2**63) + good[16:], "gguf-header")
    gguf("gguf-n-kv-huge", good[:16] + struct.pack("<Q", 2**64 - 1) + good[24:], "gguf-header")
    gguf("gguf-n-kv-short", good[:16] + struct.pack("<Q", 3) + good[24:], "gguf-header")
    gguf("gguf-key-len-huge", good[:24] + struct.pack("<Q", 2**62) + good[32:], "gguf-header")
    gguf("gguf-unknown-type", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<I", 99)), "gguf-header")
    gguf("gguf-array-count-huge", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<IIQ", T.ARRAY, T.UINT8, 2**63)), "gguf-header")
    gguf("gguf-string-array-lengths-huge", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<IIQQ", T.ARRAY, T.STRING, 2, 2**63)),
         "gguf-header")
    deep = struct.pack("<I", T.ARRAY) + b"".join(struct.pack("<IQ", T.ARRAY, 1) for _ in range(20)) + struct.pack("<IQ", T.UINT8, 0)
    gguf("gguf-nesting-20", gguf_bytes({}, [], b"", raw_kv=_s("x") + deep), "gguf-header")
    gguf("gguf-nested-over-cap", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<I", T.ARRAY) + _nested_empty_string_arrays(70_000)),
         "amplification")
    gguf("gguf-bad-utf8-key", gguf_bytes({}, [], b"", raw_kv=_s(b"\xff\xfe") + struct.pack("<I", T.UINT8) + b"\0"), "gguf-header")
    gguf("gguf-dup-key", gguf_bytes({}, [], b"", raw_kv=(_s("k") + struct.pack("<IB", T.UINT8, 1)) * 2, n_kv=2), "gguf-header")
    gguf("gguf-key-with-newline", tiny_gguf(lambda m: m.__setitem__("evil\nkey\x1b[31m", (T.UINT8, 1))), "gguf-header", "ok")

    def tens(edit: Callable[[list], None]) -> bytes:
        return tiny_gguf(tensor_edit=edit)

    def set_t(i: int, **kw: Any) -> Callable[[list], None]:
        def f(infos: list) -> None:
            name, ne, qt, off = infos[i]
            infos[i] = (kw.get("name", name), kw.get("ne", ne), kw.get("qt", qt), kw.get("off", off))
        return f

    gguf("gguf-tensor-5-dims", tens(set_t(0, ne=(8, 16, 1, 1, 1))), "gguf-header")
    gguf("gguf-tensor-ne-overflow", tens(set_t(0, ne=(2**63, 2**63))), "gguf-header")
    gguf("gguf-tensor-ne-zero", tens(set_t(0, ne=(0, 16))), "gguf-header", "any")
    # atheris finding: a zero dimension makes the tensor empty, so byte-size checks passed it, and
    # numpy then refused the other dimension (ValueError "Maximum allowed dimension exceeded")
    gguf("fuzz-gguf-zero-and-huge-dim", tens(set_t(2, ne=(2**64 - 248, 0))), "gguf-header")
    gguf("fuzz-gguf-zero-and-huge-dims-3", tens(set_t(2, ne=(0, 2**40, 2**40))), "gguf-header")
    gguf("gguf-tensor-offset-misaligned", tens(set_t(1, off=3)), "gguf-header")
    gguf("gguf-tensor-offset-past-eof", tens(set_t(1, off=2**40)), "gguf-header")
    gguf("gguf-tensor-offset-wraps", tens(set_t(1, off=2**64 - 32)), "gguf-header")
    gguf("gguf-tensor-unknown-type", tens(set_t(1, qt=99)), "gguf-header")
    gguf("gguf-tensor-type-no-size", tens(set_t(1, qt=4)), "gguf-header")
    gguf("gguf-tensor-q4-row-not-block", tens(set_t(1, qt=2)), "gguf-header")
    gguf("gguf-tensor-overlap", tens(set_t(2, off=0)), "gguf-header")
    gguf("gguf-tensor-dup-name", tens(set_t(2, name="token_embd.weight")), "gguf-header")
    gguf("gguf-tensor-same-hf-name", tens(set_t(2, name="model.embed_tokens.weight")), "gguf-header")
    gguf("gguf-tensor-name-newline", tens(set_t(2, name="blk.0.attn\nq.weight")), "gguf-header", "ok")
    gguf("gguf-tensor-name-bad-utf8", tens(set_t(2, name="x")).replace(b"\x01\x00\x00\x00\x00\x00\x00\x00x", b"\x01\x00\x00\x00\x00\x00\x00\x00\xff"),
         "gguf-header")
    gguf("gguf-tensor-layer-huge", tens(set_t(2, name="blk.4294967295.attn_q.weight")), "gguf-header")
    for a in (0, 3, 2**17, 2**31):
        gguf(f"gguf-align-{a}", tiny_gguf(alignment=a), "gguf-header")
    gguf("gguf-align-wrong-type", tiny_gguf(lambda m: m.__setitem__("general.alignment", (T.UINT64, 32))), "gguf-header")

    # ---- GGUF semantic metadata
    A = "llama."
    for i, (key, t, v) in enumerate([
        ("block_count", T.UINT32, 0), ("block_count", T.UINT32, 2**32 - 1), ("block_count", T.UINT32, 2),
        ("block_count", T.STRING, "30"), ("block_count", T.FLOAT32, 1.5), ("block_count", T.ARRAY, (T.UINT32, [1, 1])),
        ("block_count", T.INT32, -1), ("block_count", T.BOOL, True),
        ("embedding_length", T.UINT32, 0), ("embedding_length", T.UINT64, 2**63), ("embedding_length", T.STRING, "eight"),
        ("embedding_length", T.UINT32, 7),
        ("attention.head_count", T.UINT32, 0), ("attention.head_count", T.UINT32, 3), ("attention.head_count", T.STRING, "2"),
        ("attention.head_count", T.ARRAY, (T.UINT32, [0])), ("attention.head_count", T.ARRAY, (T.STRING, ["2"])),
        ("attention.head_count", T.ARRAY, (T.UINT32, [])), ("attention.head_count", T.FLOAT64, float("inf")),
        ("attention.head_count_kv", T.UINT32, 0), ("attention.head_count_kv", T.UINT32, 3), ("attention.head_count_kv", T.INT64, -2**62),
        ("attention.key_length", T.UINT32, 0), ("attention.key_length", T.UINT32, 2**31),
        ("feed_forward_length", T.UINT32, 0), ("feed_forward_length", T.STRING, "16"), ("feed_forward_length", T.ARRAY, (T.UINT32, [16, 2**31])),
        ("context_length", T.STRING, "64"), ("context_length", T.UINT64, 2**64 - 1), ("context_length", T.FLOAT32, float("nan")),
        ("attention.layer_norm_rms_epsilon", T.FLOAT32, float("inf")), ("attention.layer_norm_rms_epsilon", T.FLOAT32, float("nan")),
        ("attention.layer_norm_rms_epsilon", T.STRING, "1e-5"), ("attention.layer_norm_rms_epsilon", T.FLOAT32, -1.0),
        ("rope.freq_base", T.FLOAT32, float("inf")), ("rope.freq_base", T.FLOAT32, 0.0), ("rope.freq_base", T.STRING, "1e4"),
        ("rope.freq_base", T.ARRAY, (T.FLOAT32, [1.0, 2.0])), ("rope.scaling.type", T.UINT8, 1),
        ("rope.scaling.factor", T.FLOAT32, float("inf")), ("attention.sliding_window", T.STRING, "x"),
        ("expert_count", T.UINT32, 2**31), ("vocab_size", T.STRING, "16"),
    ]):
        label = f"{i}-{key}-{t.name}-{v if not isinstance(v, tuple) else 'arr' + str(len(v[1]))}".replace(".", "_").replace("/", "_")
        unread = key in ("rope.scaling.factor", "attention.sliding_window", "vocab_size")  # llama: not read by convert
        meta(f"meta-{label}"[:90], lambda m, key=key, t=t, v=v: m.__setitem__(A + key, (t, v)), expect="any" if unread else "error")
    meta("meta-rope-yarn-bad", lambda m: m.update({A + "rope.scaling.type": (T.STRING, "yarn"),
                                                   A + "rope.scaling.factor": (T.FLOAT32, 2.0),
                                                   A + "rope.scaling.original_context_length": (T.STRING, "x")}))
    for key in ("embedding_length", "attention.head_count", "block_count", "attention.layer_norm_rms_epsilon"):
        meta(f"meta-missing-{key}", lambda m, key=key: m.pop(A + key), expect="error",
             note="inspect works without it; convert --to hf needs it")
    meta("meta-arch-int", lambda m: m.__setitem__("general.architecture", (T.UINT32, 7)))
    meta("meta-arch-unknown", lambda m: m.__setitem__("general.architecture", (T.STRING, "bert")), expect="error")
    meta("meta-arch-missing", lambda m: m.pop("general.architecture"), expect="error")
    meta("meta-name-array", lambda m: m.__setitem__("general.name", (T.ARRAY, (T.STRING, ["a", "b"]))), commands=("inspect",))
    meta("meta-file-type-string", lambda m: m.__setitem__("general.file_type", (T.STRING, "F32")), commands=("inspect",))
    meta("meta-file-type-huge", lambda m: m.__setitem__("general.file_type", (T.UINT32, 2**31)), expect="ok",
         commands=("inspect",))
    G = "gemma3."
    meta("meta-gemma3-block-count-huge", lambda m: m.__setitem__(G + "block_count", (T.UINT32, 2**32 - 1)), arch="gemma3")
    meta("meta-gemma3-sliding-window-huge", lambda m: m.__setitem__(G + "attention.sliding_window", (T.UINT64, 2**63)), arch="gemma3")
    meta("meta-gemma3-softcap-string", lambda m: m.__setitem__(G + "final_logit_softcapping", (T.STRING, "30")), arch="gemma3")
    # tokenizer keys
    TK = "tokenizer.ggml."
    for i, (key, t, v) in enumerate([
        ("bos_token_id", T.UINT64, 2**40), ("bos_token_id", T.INT32, -1), ("bos_token_id", T.STRING, "1"),
        ("bos_token_id", T.UINT32, VOCAB), ("eos_token_id", T.FLOAT32, 2.0), ("padding_token_id", T.UINT64, 2**40),
        ("padding_token_id", T.INT64, -(2**40)), ("unknown_token_id", T.UINT32, 2**32 - 1),
        ("tokens", T.ARRAY, (T.UINT32, list(range(VOCAB)))), ("tokens", T.STRING, "abc"),
        ("tokens", T.ARRAY, (T.STRING, [])), ("tokens", T.ARRAY, (T.STRING, ["a"] * VOCAB)),
        ("token_type", T.ARRAY, (T.INT32, [1] * 3)), ("token_type", T.STRING, "x"), ("token_type", T.ARRAY, (T.INT32, [99] * VOCAB)),
        ("token_type", T.ARRAY, (T.INT32, [-5] * VOCAB)),
        ("scores", T.ARRAY, (T.FLOAT32, [0.0] * 3)), ("scores", T.ARRAY, (T.FLOAT32, [float("nan")] * VOCAB)),
        ("scores", T.ARRAY, (T.STRING, ["x"] * VOCAB)),
        ("merges", T.ARRAY, (T.UINT8, [1, 2])), ("merges", T.ARRAY, (T.STRING, ["nospace", "a b c", " "])),
        ("model", T.UINT32, 3), ("model", T.STRING, "bert"), ("model", T.STRING, "llama"), ("pre", T.ARRAY, (T.STRING, ["x"])),
        ("add_bos_token", T.STRING, "yes"), ("add_bos_token", T.UINT8, 7),
    ]):
        label = f"{i}-{key}-{t.name}-{v if not isinstance(v, tuple) else 'arr' + str(len(v[1]))}".replace(".", "_")
        meta(f"tok-{label}"[:90], lambda m, key=key, t=t, v=v: m.__setitem__(TK + key, (t, v)), expect="any")
    meta("tok-token-bad-utf8", lambda m: m.__setitem__(TK + "tokens", (T.ARRAY, (T.STRING, [b"\xff"] * VOCAB))))
    meta("tok-long-spm-token", lambda m: (m.__setitem__(TK + "model", (T.STRING, "llama")),
                                         m.__setitem__(TK + "tokens", (T.ARRAY, (T.STRING, ["x" * 5000] + [f"t{i}" for i in range(VOCAB - 1)]))),
                                         m.__setitem__(TK + "scores", (T.ARRAY, (T.FLOAT32, [0.0] * VOCAB)))), expect="any",
         note="quadratic SentencePiece merge search (io/tokenizer.py, owned by the performance work)")
    meta("tpl-not-string", lambda m: m.__setitem__("tokenizer.chat_template", (T.ARRAY, (T.UINT8, [1]))), expect="ok")

    # ---- F16 overflow: both converters must refuse it alike
    big = lambda name, shape: np.full(shape, 1e6 if name == "blk.0.attn_q.weight" else 0.01, np.float32)  # noqa: E731
    gguf("f16-overflow", tiny_gguf(values=big), "silent", "error", commands=("convert-hf", "convert-gguf"))
    gguf("nonfinite-weights", tiny_gguf(values=lambda n, s: np.full(s, np.inf if n == "blk.0.ffn_up.weight" else 0.01, np.float32)),
         "silent", "error", commands=("convert-hf", "convert-gguf"))

    # ---- safetensors
    t = _hf_tensors()
    st("st-empty", b"")
    st("st-short", b"\1\2\3")
    st("st-header-len-huge", struct.pack("<Q", 2**63) + b"{}")
    st("st-header-len-past-eof", struct.pack("<Q", 1000) + b"{}      ")
    st("st-header-len-over-cap", struct.pack("<Q", 100_000_001) + b"{}")
    st("st-not-json", safetensors_bytes(header=b"{not json"))
    st("st-not-utf8", safetensors_bytes(header=b'{"\xff": 1}'))
    st("st-top-list", safetensors_bytes(header=b"[1, 2]"))
    st("st-deep", safetensors_bytes(header=b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    st("st-many-empty-lists", safetensors_bytes(header=b'{"a":[' + b"[]," * 2_200_000 + b"[]]}"), kind="amplification")
    st("st-many-values", safetensors_bytes(header=b'{"a":[' + b"0," * 4_200_000 + b"0]}"), kind="amplification")
    st("st-huge-int", safetensors_bytes(header=b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'))
    st("st-nan-literal", safetensors_bytes(header=b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', data=b"\0" * 4))
    st("st-dup-key", safetensors_bytes(header=b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}',
                                       data=b"\0" * 4))

    def entry(**kw: Any) -> bytes:
        spec = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} | kw
        return safetensors_bytes(header_obj={"model.norm.weight": spec}, data=b"\0" * 8)

    for i, kw in enumerate([{"dtype": "F8"}, {"dtype": 3}, {"dtype": ["F32"]}, {"shape": [-1]}, {"shape": ["2"]}, {"shape": [2.0]},
                            {"shape": 2}, {"shape": [1] * 64}, {"shape": [2**40, 2**40]}, {"data_offsets": [8, 0]},
                            {"data_offsets": [0, 2**70]}, {"data_offsets": [0]}, {"data_offsets": "0-8"}, {"data_offsets": [True, 8]},
                            {"shape": [3]}]):
        st(f"st-entry-{i}-{'-'.join(kw)}", entry(**kw))
    st("fuzz-st-zero-and-huge-dim", safetensors_bytes(header_obj={"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}))
    st("fuzz-st-zero-and-huge-dims-3", safetensors_bytes(header_obj={"w": {"dtype": "F32", "shape": [2**46, 2**38, 0],
                                                                             "data_offsets": [0, 0]}}))
    st("st-entry-missing-fields", safetensors_bytes(header_obj={"w": {"dtype": "F32"}}))
    st("st-entry-not-object", safetensors_bytes(header_obj={"w": [1, 2]}))
    st("st-metadata-not-str", safetensors_bytes(header_obj={"__metadata__": {"a": 1}}))
    st("st-metadata-list", safetensors_bytes(header_obj={"__metadata__": [1]}))
    st("st-overlap", safetensors_bytes(header_obj={"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                                   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, data=b"\0" * 12))
    st("st-name-newline", safetensors_bytes({"evil\nname\x1b[2J": np.zeros(2, np.float32)}), "ok", commands=("inspect",))
    st("st-name-long", safetensors_bytes({"n" * 200_000: np.zeros(2, np.float32)}), "ok", commands=("inspect",))
    st("st-f16-overflow", safetensors_bytes(t | {"model.layers.0.mlp.up_proj.weight": np.full((FFN, DIM), 1e6, np.float32)}),
       "any", commands=("inspect",))

    # ---- HF directories: config.json
    cfg_cases: list[tuple[str, Any]] = [
        ("hidden-string", {"hidden_size": "eight"}), ("hidden-list", {"hidden_size": [8]}), ("hidden-float", {"hidden_size": 8.5}),
        ("hidden-zero", {"hidden_size": 0}), ("hidden-neg", {"hidden_size": -8}), ("hidden-huge", {"hidden_size": 10**30}),
        ("hidden-bool", {"hidden_size": True}), ("heads-zero", {"num_attention_heads": 0}), ("heads-3", {"num_attention_heads": 3}),
        ("kv-3", {"num_key_value_heads": 3}), ("kv-zero", {"num_key_value_heads": 0}), ("kv-string", {"num_key_value_heads": "1"}),
        ("layers-huge", {"num_hidden_layers": 2**32 - 1}), ("layers-2", {"num_hidden_layers": 2}),
        ("layers-string", {"num_hidden_layers": "1"}), ("layers-null", {"num_hidden_layers": None}),
        ("vocab-neg", {"vocab_size": -1}), ("ffn-dict", {"intermediate_size": {"a": 1}}),
        ("ctx-huge", {"max_position_embeddings": 10**20}), ("eps-string", {"rms_norm_eps": "1e-5"}),
        ("eps-inf", {"rms_norm_eps": float("inf")}), ("eps-nan", {"rms_norm_eps": float("nan")}),
        ("rope-string", {"rope_theta": "1e4"}), ("rope-inf", {"rope_theta": float("inf")}),
        ("rope-scaling-string", {"rope_scaling": "linear"}), ("rope-scaling-factor-str", {"rope_scaling": {"rope_type": "linear", "factor": "2"}}),
        ("rope-scaling-type-list", {"rope_scaling": {"rope_type": ["linear"], "factor": 2}}),
        ("rope-params-theta-str", {"rope_parameters": {"rope_type": "default", "rope_theta": "x"}}),
        ("architectures-int", {"architectures": 5}), ("architectures-dicts", {"architectures": [{"a": 1}]}),
        ("model-type-list", {"model_type": ["llama"], "architectures": None}), ("text-config-list", {"text_config": [1]}),
        ("text-config-bad", {"text_config": {"hidden_size": "x"}}), ("head-dim-zero", {"head_dim": 0}),
        ("sliding-window-str", {"sliding_window": "x", "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}),
        ("name-or-path-list", {"_name_or_path": [1, 2]}), ("bos-huge", {"bos_token_id": 2**40}),
    ]
    for name, patch in cfg_cases:
        cfg = base_config() | patch
        hf(f"cfg-{name}", "hf-config", "any", config=cfg)
        cases[-1].commands = ("inspect", "convert-hf", "convert-gguf")
    hf("cfg-top-list", "hf-json", config_raw=b"[1, 2, 3]")
    hf("cfg-not-json", "hf-json", config_raw=b"{nope")
    hf("cfg-not-utf8", "hf-json", config_raw=b'{"model_type": "\xff\xfe"}')
    hf("cfg-deep", "hf-json", config_raw=b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    hf("cfg-huge", "hf-json", config_raw=b'{"a": "' + b"x" * (5 << 20) + b'"}')
    hf("cfg-many-lists", "amplification", config_raw=b'{"a": [' + b"[]," * 1_000_000 + b"[]]}")
    hf("cfg-huge-int", "hf-json", config_raw=b'{"hidden_size": ' + b"9" * 5000 + b"}")
    hf("cfg-empty", "hf-json", config_raw=b"")
    # tokenizer files (io/tokenizer.py reads them)
    hf("tokjson-not-json", "hf-json", "any", tokenizer_raw=b"{nope")
    hf("tokjson-not-utf8", "hf-json", "any", tokenizer_raw=b'{"model": "\xff"}')
    hf("tokjson-list", "hf-json", "any", tokenizer_raw=b"[]")
    hf("tokjson-deep", "hf-json", "any", tokenizer_raw=b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    hf("tokjson-model-list", "hf-json", "any", tokenizer={"model": [1]})
    hf("tokjson-vocab-list", "hf-json", "any", tokenizer=base_tokenizer() | {"model": {"type": "BPE", "vocab": [1, 2], "merges": []}})
    hf("tokjson-vocab-neg-id", "hf-json", "any",
       tokenizer=base_tokenizer() | {"model": {"type": "BPE", "vocab": {"x": -1, "y": 0}, "merges": []}})
    hf("tokjson-vocab-huge-id", "hf-json", "any",
       tokenizer=base_tokenizer() | {"model": {"type": "BPE", "vocab": {"x": 2**40, "y": 0}, "merges": []}})
    hf("tokjson-vocab-str-id", "hf-json", "any",
       tokenizer=base_tokenizer() | {"model": {"type": "BPE", "vocab": {"x": "1"}, "merges": []}})
    hf("tokjson-added-bad", "hf-json", "any", tokenizer=base_tokenizer() | {"added_tokens": [{"id": -3, "content": 5}]})
    hf("tokjson-added-not-list", "hf-json", "any", tokenizer=base_tokenizer() | {"added_tokens": {"a": 1}})
    hf("tokjson-merges-ints", "hf-json", "any", tokenizer=base_tokenizer() | {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [1, 2]}})
    hf("tokcfg-not-json", "hf-json", "any", tokenizer_config_raw=b"{nope")
    hf("tokcfg-bos-list", "hf-json", "any", tokenizer_config_raw=json.dumps({"bos_token": [1], "chat_template": 5}).encode())
    hf("tokcfg-template-list", "hf-json", "any", tokenizer_config_raw=json.dumps({"chat_template": [{"name": 1}]}).encode())

    # ---- index.json and shard names
    shard = safetensors_bytes(t)
    wm = {k: "model-00001-of-00001.safetensors" for k in t}
    hf("idx-ok", "baseline", "ok", index={"weight_map": wm}, shards={"model-00001-of-00001.safetensors": shard})
    hf("idx-not-json", "hf-index", index_raw=b"{nope", shards={})
    hf("idx-list", "hf-index", index=[1], shards={})
    hf("idx-weight-map-list", "hf-index", index={"weight_map": [1]}, shards={})
    hf("idx-weight-map-empty", "hf-index", index={"weight_map": {}}, shards={})
    hf("idx-shard-int", "hf-index", index={"weight_map": {"a": 5}}, shards={})
    hf("idx-shard-list", "hf-index", index={"weight_map": {"a": ["x"]}}, shards={})
    for i, bad in enumerate(["../outside.safetensors", "/etc/passwd", "sub/x.safetensors", "..", ".", "", "a\0b",
                             "..\\x.safetensors", "x" * 5000]):
        hf(f"idx-shard-name-{i}", "paths", index={"weight_map": {"model.norm.weight": bad}}, shards={})
    (root / "outside.safetensors").write_bytes(shard)
    d = hf("idx-shard-symlink-out", "paths", index={"weight_map": {k: "link.safetensors" for k in t}}, shards={})
    os.symlink(root / "outside.safetensors", d / "link.safetensors")
    d = hf("idx-shard-symlink-in", "baseline", "ok", index={"weight_map": {k: "link.safetensors" for k in t}},
           shards={"real.safetensors": shard})
    os.symlink("real.safetensors", d / "link.safetensors")
    hf("idx-missing-shard", "hf-index", index={"weight_map": wm}, shards={})
    hf("idx-wrong-shard", "hf-index", index={"weight_map": {k: "a.safetensors" for k in t}},
       shards={"a.safetensors": safetensors_bytes({"x": np.zeros(2, np.float32)})})
    hf("idx-dup-tensor", "hf-index", index={"weight_map": {k: ("a.safetensors" if i % 2 else "b.safetensors") for i, k in enumerate(t)}},
       shards={"a.safetensors": shard, "b.safetensors": shard})
    hf("idx-huge", "hf-index", index_raw=b'{"weight_map": {"a": "' + b"x" * (65 << 20) + b'"}}', shards={})

    # ---- special paths
    fifo = root / "fifo.gguf"
    os.mkfifo(fifo)
    cases.append(Case("path-fifo-model", "paths", fifo))
    link = root / "dangling.gguf"
    os.symlink(root / "does-not-exist.gguf", link)
    cases.append(Case("path-dangling-symlink", "paths", link))
    loop = root / "loop.gguf"
    os.symlink(loop, loop)
    cases.append(Case("path-symlink-loop", "paths", loop))
    cases.append(Case("path-dev-null", "paths", Path("/dev/null")))
    cases.append(Case("path-dev-zero", "paths", Path("/dev/zero")))
    cases.append(Case("path-missing", "paths", root / "missing.gguf"))
    (root / "dir.gguf").mkdir()
    cases.append(Case("path-dir-named-gguf", "paths", root / "dir.gguf"))
    d = hf("path-hf-fifo-weights", "paths", weights_raw=b"")
    (d / "model.safetensors").unlink()
    os.mkfifo(d / "model.safetensors")
    d = hf("path-hf-fifo-config", "paths")
    (d / "config.json").unlink()
    os.mkfifo(d / "config.json")
    d = hf("path-hf-fifo-tokenizer", "paths")
    (d / "tokenizer.json").unlink()
    os.mkfifo(d / "tokenizer.json")
    d = hf("path-hf-dangling-weights", "paths")
    (d / "model.safetensors").unlink()
    os.symlink(d / "gone.safetensors", d / "model.safetensors")
    d = hf("path-hf-dir-weights", "paths")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").mkdir()
    (d / "model.safetensors" / "x.safetensors").write_bytes(b"")
    d = hf("path-hf-config-dir", "paths")
    (d / "config.json").unlink()
    (d / "config.json").mkdir()

    if heavy:  # the issue's measured amplifications, at full size
        gguf("heavy-gguf-million-nested", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<I", T.ARRAY)
                                                     + _nested_empty_string_arrays(1_000_000)), "amplification", heavy=True)
        gguf("heavy-gguf-strings-over-cap", gguf_bytes({}, [], b"", raw_kv=_s("x") + struct.pack("<IIQ", T.ARRAY, T.STRING, (1 << 20) + 1)
                                                       + b"\0" * 8 * ((1 << 20) + 1)), "amplification", heavy=True)
        st("heavy-st-30m-empty-lists", safetensors_bytes(header=b'{"a":[' + b"[]," * (30 << 20) + b"[]]}"), kind="amplification",
           heavy=True)  # 94 MB: under the 100 MB header cap, refused by the bracket count
        gguf("heavy-gguf-vocab-at-cap", million_vocab_gguf(spm=False), "amplification", "ok", heavy=True, commands=("inspect",))
        # the same byte-level vocabulary through convert: refused (it has no merges, and no room for
        # them under the cap) before a million-entry vocabulary is built
        gguf("heavy-gguf-vocab-at-cap-convert", million_vocab_gguf(spm=False), "amplification", "error", heavy=True,
             commands=("convert-hf",))
        # a SentencePiece vocabulary at the cap: inspected and converted (merges rebuilt from the scores)
        gguf("heavy-gguf-spm-vocab-at-cap", million_vocab_gguf(spm=True), "amplification", "ok", heavy=True)
    return cases
