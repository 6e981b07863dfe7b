"""A real model under another model's tokenizer: the same-tokenizer *unrelated* model for nulls.

Black-box statistics that compare next tokens are easiest to fool by two models that share a
tokenizer: they agree on the frequent tokens whatever their weights. The only real models here
are SmolLM2 and Gemma 3, which share nothing. :func:`transplant_tokenizer` gives Gemma 3 SmolLM2's
vocabulary without training (zero-shot tokenizer transfer, as in FOCUS or "zero-shot tokenizer
transfer" heuristics): each token of the new vocabulary gets the mean of the embedding rows of
its pieces under the model's own tokenizer (tied input and output), so a token that exists in
both vocabularies (" the", " Paris") keeps its exact row. The result is Gemma 3's weights --
independent of SmolLM2 -- speaking SmolLM2's token ids: a realistic unrelated model for the nulls
of ``compare`` (``bench/bench_compare.py``, ``tests/test_behave_*``).

Only the tokenizer metadata and ``token_embd`` change; every other tensor is copied byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType

from weightprint.errors import WeightprintError
from weightprint.io.gguf_file import GGUFModel, copy_metadata_for_write
from weightprint.io.gguf_writer import TensorSpec, write_gguf
from weightprint.quant import quantize
from weightprint.testing.hfdir import _write_info

__all__ = ["byte_level_decoder", "token_bytes", "transplant_recipe", "transplant_tokenizer"]


def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable character -> byte (the inverse of ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def token_bytes(tokens: Any, model: str) -> list[bytes | None]:
    """The bytes each token stands for (``None`` for control tokens): byte-level BPE (``gpt2``)
    strings through :func:`byte_level_decoder`, SentencePiece (``llama``) with ``▁`` as a space and
    ``<0xXX>`` byte tokens."""
    out: list[bytes | None] = []
    if model == "gpt2":
        dec = byte_level_decoder()
        for t in tokens:
            try:
                out.append(bytes(dec[c] for c in t))
            except KeyError:
                out.append(None)
    elif model == "llama":
        for t in tokens:
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                out.append(bytes([int(t[3:5], 16)]))
            else:
                out.append(t.replace("\u2581", " ").encode("utf-8"))
    else:
        raise WeightprintError(f"token_bytes: tokenizer model `{model}` is not supported")
    return out


def _pieces(data: bytes, tokenize, byte_ids: dict[int, int]) -> list[int]:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return [byte_ids[b] for b in data if b in byte_ids]
    return list(tokenize(data))


def transplant_tokenizer(source: str | Path, tokenizer_source: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``out/model.gguf``: ``source``'s weights under ``tokenizer_source``'s vocabulary.

    Each new token's embedding row is the mean of ``source``'s rows for the pieces its bytes
    tokenize to under ``source``'s own tokenizer (llama.cpp's, vocabulary only); control tokens of
    the new vocabulary map to ``source``'s BOS, end-of-turn and start-of-turn rows. ``source``'s
    BOS is kept: the new file adds its BOS row (as the new vocabulary's unknown/``<|endoftext|>``
    id) in front of every prompt, as ``source`` was trained. Returns measured facts: the share of
    new tokens that exist one to one in the old vocabulary.
    """
    from llama_cpp import Llama

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = GGUFModel(source)
    tok = GGUFModel(tokenizer_source)
    try:
        meta, types = copy_metadata_for_write(src)
        tmeta, ttypes = copy_metadata_for_write(tok)
        old_model = str(meta.get("tokenizer.ggml.model"))
        new_model = str(tmeta.get("tokenizer.ggml.model"))
        old_tokens = list(meta["tokenizer.ggml.tokens"])
        old_ids = {t: i for i, t in enumerate(old_tokens)}
        byte_ids = {b[0]: i for i, b in enumerate(token_bytes(old_tokens, old_model))
                    if b is not None and len(b) == 1 and old_tokens[i].startswith("<0x")}
        new_tokens = list(tmeta["tokenizer.ggml.tokens"])
        new_types = np.asarray(tmeta["tokenizer.ggml.token_type"])
        new_bytes = token_bytes(new_tokens, new_model)
        vocab = Llama(model_path=str(source), vocab_only=True, verbose=False)

        def tokenize(data: bytes) -> list[int]:
            return vocab.tokenize(data, add_bos=False, special=False)

        old_bos = int(meta["tokenizer.ggml.bos_token_id"])
        control = {"<|endoftext|>": old_bos, "<|im_start|>": old_ids.get("<start_of_turn>", old_bos),
                   "<|im_end|>": old_ids.get("<end_of_turn>", int(meta["tokenizer.ggml.eos_token_id"]))}
        emb_name = "model.embed_tokens.weight"
        emb_info = src.info(emb_name)
        d = emb_info.shape[1]
        rows = np.zeros((len(new_tokens), d), dtype=np.float32)
        one_to_one = 0
        for i, (t, b) in enumerate(zip(new_tokens, new_bytes)):
            if t in control:
                ids = [control[t]]
            elif new_types[i] != 1 or not b:  # control/unused tokens of the new vocabulary
                ids = [old_bos]
            else:
                ids = _pieces(b, tokenize, byte_ids) or [old_bos]
            one_to_one += len(ids) == 1 and new_types[i] == 1
            rows[i] = src.read_rows(emb_name, np.asarray(ids)).mean(axis=0)
        del vocab
        for k in [k for k in meta if k.startswith("tokenizer.")]:
            meta.pop(k)
            types.pop(k, None)
        for k, v in tmeta.items():
            if k.startswith("tokenizer.") and k != "tokenizer.chat_template":
                meta[k] = v
                if k in ttypes:
                    types[k] = ttypes[k]
        # the new unknown/<|endoftext|> id, whose row is source's BOS row, goes in front of every prompt
        meta["tokenizer.ggml.bos_token_id"] = int(tmeta.get("tokenizer.ggml.unknown_token_id", 0))
        types["tokenizer.ggml.bos_token_id"] = GGUFValueType.UINT32  # llama.cpp reads it as u32
        meta["tokenizer.ggml.add_bos_token"] = True
        types["tokenizer.ggml.add_bos_token"] = GGUFValueType.BOOL
        specs, names = [], {}
        for info in src.tensor_infos():
            shape = (len(new_tokens), d) if info.name == emb_name else tuple(info.shape)
            specs.append(TensorSpec(info.stored_name, shape, info.qtype))
            names[info.stored_name] = info.name

        def data(spec: TensorSpec) -> np.ndarray:
            if names[spec.stored_name] == emb_name:
                return quantize(rows, spec.qtype, name=emb_name)
            return np.asarray(src.raw(names[spec.stored_name]))

        write_gguf(out / "model.gguf", metadata=meta, metadata_types=types, tensors=specs, data=data)
        return {"vocab": len(new_tokens), "one_to_one": float(one_to_one / max(int((new_types == 1).sum()), 1))}
    finally:
        src.close()
        tok.close()


def transplant_recipe(source: str | Path, out: str | Path, *, tokenizer_source: str | Path) -> None:
    """The ``transplant`` recipe of :func:`~weightprint.testing.cache.derived`."""
    facts = transplant_tokenizer(source, tokenizer_source, out)
    _write_info(Path(out), {"recipe": "transplant", "source": str(source), "params": {"tokenizer_source": str(tokenizer_source)},
                            "result": facts})
