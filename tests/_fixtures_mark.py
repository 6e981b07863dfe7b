"""Fixtures for the mark tests: a tiny llama GGUF, registries, and cached real-model copies.

Imported by tests/test_mark*.py (no conftest edits). Real-model artefacts are cached under
``cache_dir()/mark/<recipe hash>/`` and built once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

TINY_DIM = 256
TINY_HEADS = 4
TINY_KV = 2
TINY_FFN = 512
TINY_LAYERS = 2
TINY_VOCAB = 512


def tiny_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF name -> float32 values (stored layout) of a tiny llama model."""
    rng = np.random.default_rng(seed)
    d, hd = TINY_DIM, TINY_DIM // TINY_HEADS

    def w(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {"token_embd.weight": w(TINY_VOCAB, d)}
    for i in range(TINY_LAYERS):
        t[f"blk.{i}.attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[f"blk.{i}.attn_q.weight"] = w(d, d)
        t[f"blk.{i}.attn_k.weight"] = w(TINY_KV * hd, d)
        t[f"blk.{i}.attn_v.weight"] = w(TINY_KV * hd, d)
        t[f"blk.{i}.attn_output.weight"] = w(d, d)
        t[f"blk.{i}.ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
        t[f"blk.{i}.ffn_gate.weight"] = w(TINY_FFN, d)
        t[f"blk.{i}.ffn_up.weight"] = w(TINY_FFN, d)
        t[f"blk.{i}.ffn_down.weight"] = w(d, TINY_FFN)
    t["output_norm.weight"] = np.ones(d, np.float32)
    return t


def write_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """A tiny llama GGUF (F16 matrices, F32 norms) that `open_model` and `convert` accept."""
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny mark test model {seed}")
    writer.add_uint32("llama.block_count", TINY_LAYERS)
    writer.add_uint32("llama.context_length", 256)
    writer.add_uint32("llama.embedding_length", TINY_DIM)
    writer.add_uint32("llama.feed_forward_length", TINY_FFN)
    writer.add_uint32("llama.attention.head_count", TINY_HEADS)
    writer.add_uint32("llama.attention.head_count_kv", TINY_KV)
    writer.add_uint32("llama.rope.dimension_count", TINY_DIM // TINY_HEADS)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    writer.add_uint32("llama.vocab_size", TINY_VOCAB)
    writer.add_uint32("general.file_type", 1)
    tokens = [f"t{i}" for i in range(TINY_VOCAB)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * TINY_VOCAB)
    writer.add_token_merges(["t 1"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    for name, values in tiny_tensors(seed).items():
        if values.ndim == 1:
            writer.add_tensor(name, values)
        else:
            writer.add_tensor(name, values.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_test_key_file(path: Path, seed: str) -> Path:
    """A master key file with a secret derived from ``seed`` (tests only: reproducible keys)."""
    path = Path(path)
    secret = hashlib.sha256(f"weightprint-test-master|{seed}".encode()).hexdigest()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"weightprint-master-key-v1\n{secret}\n")
    return path


@contextlib.contextmanager
def deterministic_issuing(seed: str):
    """Make issue ids and key salts a function of ``seed`` and a counter (tests only).

    With a seeded master key this makes every copy's key, hence every test outcome, a fixed
    draw: the innocents' p-values are uniform draws, and a check such as "p > 1e-3 for every
    innocent" must not flake from one run to the next.
    """
    import uuid
    from unittest import mock

    counter = {"salt": 0, "uuid": 0}

    def salt() -> bytes:
        counter["salt"] += 1
        return hashlib.sha256(f"{seed}|salt|{counter['salt']}".encode()).digest()[:16]

    def uuid4() -> uuid.UUID:
        counter["uuid"] += 1
        return uuid.UUID(bytes=hashlib.sha256(f"{seed}|uuid|{counter['uuid']}".encode()).digest()[:16], version=4)

    with mock.patch("weightprint.mark.api.new_salt", salt), mock.patch("weightprint.mark.api.uuid.uuid4", uuid4):
        yield


def recipe_dir(recipe: dict[str, Any]) -> Path:
    """``cache_dir()/mark/<sha of recipe>`` (created)."""
    from weightprint.testing.models import cache_dir

    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    d = cache_dir() / "mark" / h
    d.mkdir(parents=True, exist_ok=True)
    return d




# --------------------------------------------------------------------------------------
# Real model: 8 recipients' Q4_K_M copies of SmolLM2 (dequantized to F16), cached
# --------------------------------------------------------------------------------------
SMOL_RECIPIENTS = [f"recipient-{i}" for i in range(8)]


def _locked(path: Path):
    import contextlib
    import fcntl

    @contextlib.contextmanager
    def lock():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    return lock()


def smol_issued() -> dict[str, Any]:
    """Build once per machine: SmolLM2 F16 source, a registry, 8 marked Q4_K_M copies, and an
    unmarked Q4_K_M copy. Returns paths and the issue results (as dicts)."""
    from weightprint.convert import convert
    from weightprint.mark import DEFAULT_DELTA, SCHEME_VERSION, init_registry, issue_copy
    from weightprint.testing.models import smollm2_path

    smol = smollm2_path()
    recipe = {"what": "smol-issued", "smol_size": smol.stat().st_size, "recipients": SMOL_RECIPIENTS,
              "type": "Q4_K_M", "delta": DEFAULT_DELTA, "scheme": SCHEME_VERSION, "v": 2,
              "keys": "seeded:smol"}
    d = recipe_dir(recipe)
    done = d / "done.json"
    with _locked(d / ".lock"):
        if not done.exists():
            for p in d.iterdir():
                if p.name != ".lock":
                    (p.unlink() if p.is_file() else __import__("shutil").rmtree(p))
            t0 = time.perf_counter()
            source = d / "smollm2-f16.gguf"
            convert(smol, source, file_type="F16")
            plain = d / "plain-q4km.gguf"
            tp = time.perf_counter()
            convert(source, plain, file_type="Q4_K_M")
            plain_seconds = time.perf_counter() - tp
            url = f"sqlite:///{d / 'registry.db'}"
            key = write_test_key_file(d / "master.key", "smol")
            init_registry(url, key)
            copies = {}
            with deterministic_issuing("smol"):
                for r in SMOL_RECIPIENTS:
                    res = issue_copy(source, r, "Q4_K_M", d / f"{r}.gguf", registry_url=url, key_file=key)
                    copies[r] = res.to_dict()
            info = {"source": str(source), "plain": str(plain), "url": url, "key_file": str(key),
                    "copies": copies, "plain_quantize_seconds": plain_seconds,
                    "build_seconds": time.perf_counter() - t0}
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, done)
    info = json.loads(done.read_text())
    info["dir"] = str(d)
    return info


def smol_attack(name: str, build) -> Path:
    """A cached attacked model ``<issued dir>/attacks/<name>`` built by ``build(out_path)``."""
    info = smol_issued()
    root = Path(info["dir"]) / "attacks"
    root.mkdir(exist_ok=True)
    out = root / name
    with _locked(root / f".{name}.lock"):
        if not out.exists():
            build(out)
    return out


# --------------------------------------------------------------------------------------
# Collusion: k copies combined weight by weight, lazily (a Model view; nothing written)
# --------------------------------------------------------------------------------------
COLLUSION_STRATEGIES = ("agree-keep/midpoint", "average", "majority", "random-pick")


def collude(values: list[np.ndarray], strategy: str, rng: np.random.Generator) -> np.ndarray:
    """One tensor of a colluded copy from the colluders' (dequantized) values of it.

    ``agree-keep/midpoint``: keep a weight where every copy agrees, else the midpoint of the
    extremes; ``average``: the mean; ``majority``: the value most copies hold (between the two
    extremes; a tie is broken at random); ``random-pick``: each weight from a random copy.
    """
    stack = np.stack([np.asarray(v, dtype=np.float32) for v in values])
    if strategy == "average":
        return stack.mean(axis=0)
    lo, hi = stack.min(axis=0), stack.max(axis=0)
    if strategy == "agree-keep/midpoint":
        return np.where(lo == hi, lo, (lo + hi) * np.float32(0.5))
    if strategy == "majority":
        k = stack.shape[0]
        n_hi = (stack == hi).sum(axis=0)
        tie = rng.random(lo.shape) < 0.5
        return np.where(2 * n_hi > k, hi, np.where(2 * n_hi < k, lo, np.where(tie, hi, lo)))
    if strategy == "random-pick":
        pick = rng.integers(0, stack.shape[0], size=lo.shape)
        return np.take_along_axis(stack, pick[None], axis=0)[0]
    raise ValueError(f"unknown collusion strategy {strategy!r}")


def collusion_model(models: list, strategy: str, seed: int = 0):
    """A lazy :class:`~weightprint.io.model.Model` whose tensors are :func:`collude` of ``models``'."""
    from weightprint.testing.symmetry import ModelView

    class Colluded(ModelView):
        def values(self, name, x):
            rng = np.random.default_rng([seed, int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")])
            return collude([x] + [m.tensor(name) for m in models[1:]], strategy, rng)

    return Colluded(models[0])
