"""Tokenizers: GGUF ``tokenizer.ggml.*`` facts (:class:`TokenizerInfo`) <-> Hugging Face files.

Two GGUF tokenizer models are covered:

- ``gpt2``: byte-level BPE (SmolLM2, Llama 3, Qwen 2). The vocabulary and merges go into a
  ``tokenizers`` BPE model; the pre-tokenizer is chosen from ``tokenizer.ggml.pre`` with the
  same split regex that llama.cpp uses for that name (``smollm``: single digits, then the GPT-2
  byte-level regex).
- ``llama``: SentencePiece BPE (Gemma 3, Llama 2, Mistral). GGUF keeps scores, not merges;
  llama.cpp merges the adjacent pair whose result has the highest score. We rebuild merges
  ranked by that score (as transformers' ``SentencePieceExtractor`` does), with byte fallback
  to the ``<0x..>`` tokens, so a ``tokenizers`` BPE reproduces llama.cpp's ids.

Control tokens (GGUF type 3) become special added tokens, user-defined tokens (type 4) plain
added tokens; both are matched in raw text before the model runs, as in llama.cpp with
``special=True``.
"""

from __future__ import annotations

import json
import operator
import os
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from weightprint.errors import MissingTokenizerError, ModelFormatError, WeightprintError
from weightprint.io.model import TokenizerInfo
from weightprint.io.gguf_file import DECODE_ONCE_STRINGS

if TYPE_CHECKING:
    from weightprint.io._vocab_kernels import VocabTable

__all__ = [
    "tokenizer_json_from_info",
    "tokenizer_config_from_info",
    "special_tokens_map_from_info",
    "tokenizer_info_from_hf",
    "read_chat_template",
    "TOKEN_NORMAL",
    "TOKEN_UNKNOWN",
    "TOKEN_CONTROL",
    "TOKEN_USER_DEFINED",
    "TOKEN_UNUSED",
    "TOKEN_BYTE",
]

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer split regexes (llama-vocab.cpp), by tokenizer.ggml.pre
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r"}
_LLAMA3_LIKE = {"llama-bpe", "llama3", "falcon3", "pixtral", "dbrx", "smaug-bpe"}
_QWEN2_LIKE = {"qwen2", "deepseek-r1-qwen", "megrez"}


def _byte_level(use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def _split(regex: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _bpe_pre_tokenizer(pre: str | None) -> dict[str, Any]:
    if pre in _DIGITS_THEN_GPT2:
        return {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, _byte_level(True)],
        }
    if pre in _LLAMA3_LIKE:
        return {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_REGEX), _byte_level(False)]}
    if pre in _QWEN2_LIKE:
        return {"type": "Sequence", "pretokenizers": [_split(_QWEN2_REGEX), _byte_level(False)]}
    # "default", "gpt-2", "gpt2" and names we do not know: the GPT-2 regex (llama.cpp's default)
    return _byte_level(True)


def _pre_from_pre_tokenizer(pre_tok: dict[str, Any] | None) -> str:
    """Name a HF byte-level pre-tokenizer the way llama.cpp's ``tokenizer.ggml.pre`` does."""
    if not pre_tok:
        return "default"
    parts = pre_tok.get("pretokenizers", [pre_tok]) if pre_tok.get("type") == "Sequence" else [pre_tok]
    kinds = [p.get("type") for p in parts]
    if "Digits" in kinds and kinds[-1] == "ByteLevel":
        return "smollm"
    for p in parts:
        if p.get("type") == "Split":
            regex = (p.get("pattern") or {}).get("Regex", "")
            if r"\p{N}{1,3}" in regex:
                return "llama-bpe"
            if r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|" in regex:
                return "qwen2"
    return "gpt-2"


# --------------------------------------------------------------------------- info -> HF


def _types(info: TokenizerInfo) -> np.ndarray:
    if info.token_types is not None:
        types = np.asarray(info.token_types, dtype=np.int32)
        if len(types) != len(info.tokens):
            raise ModelFormatError(
                f"tokenizer has {len(info.tokens)} tokens but {len(types)} token types"
            )
        return types
    return np.full(len(info.tokens), TOKEN_NORMAL, dtype=np.int32)


def _added_tokens(info: TokenizerInfo, types: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for i in np.nonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED) | (types == TOKEN_UNKNOWN))[0]:
        i = int(i)
        out.append(
            {
                "id": i,
                "content": info.tokens[i],
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": bool(types[i] != TOKEN_USER_DEFINED),
            }
        )
    return out


# The merge search (:func:`_spm_merges`): polynomial hashes modulo two 31-bit primes.
_HASH_PRIMES = (2147483647, 2147483629)
#: code points handled per numpy pass of the merge search
_CHUNK = 1 << 16
#: vocabulary entries or merges per streamed write of tokenizer.json
_WRITE_CHUNK = 1 << 14
_VOCAB_MARK = "\x00weightprint:vocab\x00"
_MERGES_MARK = "\x00weightprint:merges\x00"


def _powers(base: int, p: int, n: int) -> np.ndarray:
    """``base ** j mod p`` for ``j < n`` (uint64), by doubling."""
    out = np.ones(max(n, 1), dtype=np.uint64)
    filled = 1
    while filled < n:
        step = min(filled, n - filled)
        mult = np.uint64(int(out[filled - 1]) * base % p)
        out[filled : filled + step] = out[:step] * mult % np.uint64(p)
        filled += step
    return out


def _segment_arange(lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(n) for n in lengths])`` without a Python loop."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)


class _ChunkHashes:
    """Polynomial hashes of substrings of a run of tokens (two 31-bit primes, random bases).

    ``key(a, b, start)`` hashes the code points ``[a, b)`` of the run, ``start`` being the offset
    of their token, so that equal strings get equal keys wherever they are.
    """

    def __init__(self, cps: np.ndarray, lens: np.ndarray, bases: list[int], max_len: int) -> None:
        self.cps = cps.astype(np.uint64)
        pos = _segment_arange(lens)
        self.prefix, self.inverse = [], []
        for p, base in zip(_HASH_PRIMES, bases):
            terms = self.cps % np.uint64(p) * _powers(base, p, max_len)[pos] % np.uint64(p)
            self.prefix.append(np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)]))
            self.inverse.append(_powers(pow(base, -1, p), p, max_len))

    def key(self, a: np.ndarray, b: np.ndarray, start: np.ndarray) -> np.ndarray:
        out = np.zeros(len(a), dtype=np.uint64)
        for p, s, inv in zip(_HASH_PRIMES, self.prefix, self.inverse):
            # sum_j c_j B^(j - start) over [a, b), shifted to start at power 0
            h = (s[b] - s[a]) % np.uint64(p) * inv[a - start] % np.uint64(p)
            out = out << np.uint64(31) | h
        return out


def _hash_table(keys: np.ndarray, values: np.ndarray):
    """A function ``(query keys) -> values``, -1 where absent: buckets by the low bits of the key.

    Vectorized open hashing: keys grouped by bucket, each query scans its bucket (a handful of
    entries at load <= 1/2) in a few array passes; cheaper than a binary search per query.
    Bucket bookkeeping is int32 (keys and values stay below 2^31): 4 bytes a slot.
    """
    size = 1 << max(4, int(2 * len(keys)).bit_length())
    mask = np.uint64(size - 1)
    slot = (keys & mask).astype(np.int32)
    order = np.argsort(slot, kind="stable").astype(np.int32)
    counts = np.bincount(slot, minlength=size).astype(np.int32)
    starts = (np.cumsum(counts, dtype=np.int64) - counts).astype(np.int32)
    del slot
    table_keys, table_values = keys[order], values[order].astype(np.int32)
    del order
    depth = int(counts.max()) if len(keys) else 0

    def lookup(query: np.ndarray) -> np.ndarray:
        out = np.full(len(query), -1, dtype=np.int64)
        q_slot = (query & mask).astype(np.int64)
        first, n = starts[q_slot].astype(np.int64), counts[q_slot]
        todo = np.nonzero(n > 0)[0]
        for d in range(depth):
            at = first[todo] + d
            hit = table_keys[at] == query[todo]
            out[todo[hit]] = table_values[at[hit]]
            todo = todo[~hit & (n[todo] > d + 1)]
            if len(todo) == 0:
                break
        return out

    return lookup


def _token_chunks(lens: np.ndarray, ids: np.ndarray) -> Iterator[np.ndarray]:
    """``ids`` in consecutive runs of about ``_CHUNK`` code points (at least one token each)."""
    cum = np.cumsum(lens[ids])
    lo = 0
    while lo < len(ids):
        done = int(cum[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cum, done + _CHUNK, side="right")))
        yield ids[lo:hi]
        lo = hi


def _code_points(tokens: Sequence[str]) -> np.ndarray:
    """The code points of ``tokens`` laid end to end (uint32)."""
    return np.frombuffer("".join(tokens).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _run(tokens: Sequence[str], lens: np.ndarray, ids: np.ndarray, bases: list[int], max_len: int) -> tuple[_ChunkHashes, np.ndarray]:
    """The hashes of the tokens ``ids`` laid end to end, and each one's offset in that run."""
    chunk_lens = lens[ids]
    cps = _code_points(_take(tokens, ids))
    return _ChunkHashes(cps, chunk_lens, bases, max_len), np.cumsum(chunk_lens) - chunk_lens


def _take(tokens: Sequence[str], ids: np.ndarray) -> list[str]:
    """``[tokens[i] for i in ids]``, in one pass (a lazy GGUF vocabulary decodes them in bulk)."""
    take = getattr(tokens, "take", None)
    if take is not None:
        return take(ids)
    if len(ids) == 0:
        return []
    got = operator.itemgetter(*ids.tolist())(tokens)
    return [got] if len(ids) == 1 else list(got)


def _spm_merges(info: TokenizerInfo, types: np.ndarray, *, distinct: bool = False,
                table: VocabTable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Merges for a SentencePiece BPE vocabulary, ranked by the score of the merged piece, as the
    ids of their left and right parts (decoded a chunk at a time by the writer).

    Every split ``token[:k] | token[k:]`` of a normal token into two vocabulary pieces (normal
    or user-defined; a repeated string means its last id) is a merge; merges are ordered by
    descending score of the merged token, then by the ids of the token and its two parts.

    With the vocabulary laid out as a :class:`VocabTable` (every real model's, up to
    ``DECODE_ONCE_STRINGS`` strings), the search is one compiled pass
    (:func:`~weightprint.io._vocab_kernels.spm_merge_search`). Otherwise it hashes every split
    of every token (polynomial hashes over code points), so it costs O(total length) numpy work
    instead of O(sum of len^2) string slicing (a single crafted million-character token stays
    linear), and works through the vocabulary a run of tokens at a
    time, so its memory is a few bytes a token whatever the vocabulary's size. Every hash hit is
    then checked exactly, so the merges do not depend on the random bases.
    """
    if info.scores is None:
        raise ModelFormatError("SentencePiece tokenizer has no scores to rebuild merges from")
    tokens = info.tokens
    scores = np.asarray(info.scores, dtype=np.float64)
    if len(scores) < len(tokens):
        raise ModelFormatError(f"tokenizer has {len(tokens)} tokens but {len(scores)} scores")
    if table is not None:  # the compiled search: a repeated string's later id takes over by itself
        piece = ((types == TOKEN_NORMAL) | (types == TOKEN_USER_DEFINED)) & (table.lens > 0)
        members = np.nonzero(piece)[0]
        merged = np.nonzero((types == TOKEN_NORMAL) & (table.lens >= 2))[0]
        from weightprint.io._vocab_kernels import spm_merge_search
        from weightprint.quant import num_threads

        tid, li, ri = spm_merge_search(table.cps, table.starts, table.lens, members, merged, threads=num_threads())
        rank = np.argsort(-scores[tid], kind="stable")  # ties stay by (token, left, right) id
        return li[rank], ri[rank]
    if distinct:  # no token string repeats (the caller checked): every piece stands for itself
        members = np.nonzero((types == TOKEN_NORMAL) | (types == TOKEN_USER_DEFINED))[0].astype(np.int64)
    else:
        vocab = {t: i for i, t in enumerate(tokens) if types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
        members = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
        del vocab
    lens = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    members = members.astype(np.int32)  # ids < 2^20 (the string cap): 4 bytes each
    members = members[lens[members] > 0]
    merged = members[(types[members] == TOKEN_NORMAL) & (lens[members] >= 2)]
    if len(merged) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    max_len = int(lens.max())
    rng = np.random.default_rng()
    for _attempt in range(8):
        bases = [int(rng.integers(256, p - 1)) for p in _HASH_PRIMES]
        member_keys = np.empty(len(members), dtype=np.uint64)
        at = 0
        for ids in _token_chunks(lens, members):
            run, offsets = _run(tokens, lens, ids, bases, max_len)
            member_keys[at : at + len(ids)] = run.key(offsets, offsets + lens[ids], offsets)
            at += len(ids)
        ordered = np.sort(member_keys)
        if not (ordered[1:] == ordered[:-1]).any():
            break
    else:  # eight colliding draws of 62-bit hashes: not a real vocabulary
        raise ModelFormatError("SentencePiece vocabulary defeats the merge search (hash collisions)")
    del ordered
    lookup = _hash_table(member_keys, members)
    del member_keys

    # every split point k = 1 .. len - 1 of every merged token: the left part first, then the
    # right part of the splits whose left part is a piece
    found_t, found_l, found_r = [], [], []
    for ids in _token_chunks(lens, merged):
        run, offsets = _run(tokens, lens, ids, bases, max_len)
        splits = lens[ids] - 1
        which = np.repeat(np.arange(len(ids)), splits)  # position of the merged token in the run
        k = _segment_arange(splits) + 1
        start = offsets[which]
        li = lookup(run.key(start, start + k, start))
        hit = (li >= 0) & (lens[np.maximum(li, 0)] == k)
        which, k, li, start = which[hit], k[hit], li[hit], start[hit]
        ri = lookup(run.key(start + k, start + lens[ids[which]], start))
        hit = (ri >= 0) & (lens[np.maximum(ri, 0)] == lens[ids[which]] - k)
        found_t.append(ids[which[hit]])
        found_l.append(li[hit])
        found_r.append(ri[hit])
    tid, li, ri = (np.concatenate(f).astype(np.int32) for f in (found_t, found_l, found_r))
    del found_t, found_l, found_r, lookup
    # exact check of each hit: the parts spell the merged token (hash collisions are dropped)
    ok = np.zeros(len(tid), dtype=bool)
    for c in range(0, len(tid), _WRITE_CHUNK):
        sl = slice(c, c + _WRITE_CHUNK)
        ok[sl] = [t == a + b for t, a, b in zip(_take(tokens, tid[sl]), _take(tokens, li[sl]), _take(tokens, ri[sl]))]
    tid, li, ri = tid[ok], li[ok], ri[ok]
    rank = np.lexsort((ri, li, tid, -scores[tid]))
    return li[rank], ri[rank]


def _tokenizer_json_skeleton(info: TokenizerInfo, add_space_prefix: bool | None
                             ) -> tuple[dict[str, Any], Sequence[int], Any, VocabTable | None]:
    """``(tokenizer.json with marker strings for its vocabulary and merges, the ids of the
    vocabulary's entries (a repeated string at its first id), the SentencePiece merges or None,
    the vocabulary as a VocabTable)``;
    see :func:`tokenizer_json_from_info`. The table is built for a vocabulary of at most
    ``DECODE_ONCE_STRINGS`` strings (every real model's); a larger, crafted one is worked
    through a chunk at a time without loading the compiler (~120 MB of resident memory for
    numba and LLVM)."""
    # what would refuse the tokenizer is checked before the vocabulary is built (a million-token
    # vocabulary costs ~100 MB of Python strings and dict entries)
    if info.model not in ("gpt2", "llama"):
        raise WeightprintError(f"cannot build a tokenizer.json for GGUF tokenizer model `{info.model}`; supported: gpt2, llama")
    if info.model == "gpt2" and info.merges is None:
        raise ModelFormatError("byte-level BPE tokenizer has no merges (`tokenizer.ggml.merges`)")
    types = _types(info)
    added = _added_tokens(info, types)
    table = None
    if len(info.tokens) <= DECODE_ONCE_STRINGS:
        from weightprint.io._vocab_kernels import VocabTable

        table = VocabTable(info.tokens)
        ids: range | Sequence[int] = table.first_ids()
        distinct = len(ids) == len(info.tokens)
    else:
        distinct = _distinct(info.tokens)
        ids = _first_ids(info.tokens, distinct)
    spm_merges = _spm_merges(info, types, distinct=distinct, table=table) if info.model == "llama" else None
    # the vocabulary and merges go in as markers, filled by the caller (a dict, or streamed text)
    vocab, merges = _VOCAB_MARK, _MERGES_MARK
    post = None
    if info.add_bos and info.bos_id is not None:
        bos = info.tokens[info.bos_id]
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [info.bos_id], "tokens": [bos]}},
        }
    if info.model == "gpt2":
        tj = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": None,
            "pre_tokenizer": _bpe_pre_tokenizer(info.pre),
            "post_processor": post,
            "decoder": _byte_level(True),
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": info.pre in _LLAMA3_LIKE,
                "vocab": vocab,
                "merges": merges,
            },
        }
        return tj, ids, spm_merges, table
    if info.model == "llama":
        prefix = True if add_space_prefix is None else bool(add_space_prefix)
        norm_steps: list[dict[str, Any]] = []
        if prefix:
            norm_steps.append({"type": "Prepend", "prepend": "▁"})
        norm_steps.append({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
        decoders: list[dict[str, Any]] = [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if prefix:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        unk = info.tokens[info.unk_id] if info.unk_id is not None else None
        tj = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": norm_steps},
            "pre_tokenizer": None,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": unk,
                "continuing_subword_prefix": None,
                "end_of_word_suffix": None,
                "fuse_unk": True,
                "byte_fallback": True,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": merges,
            },
        }
        return tj, ids, spm_merges, table
    raise AssertionError(info.model)  # checked above


def _distinct(tokens: Sequence[str]) -> bool:
    """Whether no token string repeats: sorted string hashes first (8 bytes a token), a set only
    when two hashes collide."""
    h = np.sort(np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)))
    if not (h[1:] == h[:-1]).any():
        return True
    return len(set(tokens)) == len(tokens)


def _first_ids(tokens: Sequence[str], distinct: bool) -> range | list[int]:
    """Ids of the vocabulary's entries in order: a repeated token string keeps its first id, as
    llama.cpp's text->id map does."""
    if distinct:
        return range(len(tokens))
    seen: set[str] = set()
    out = []
    for i, t in enumerate(tokens):
        if t not in seen:
            seen.add(t)
            out.append(i)
    return out


def _merge_parts(info: TokenizerInfo, spm_merges: tuple[np.ndarray, np.ndarray] | None) -> Iterator[Sequence[str]]:
    """The merges as ``[left, right]`` pairs, a chunk decoded at a time."""
    if spm_merges is not None:
        left, right = spm_merges
        for c in range(0, len(left), _WRITE_CHUNK):
            yield from zip(_take(info.tokens, left[c:c + _WRITE_CHUNK]), _take(info.tokens, right[c:c + _WRITE_CHUNK]))
    else:
        for m in info.merges or []:
            yield m.split(" ", 1)


def tokenizer_json_from_info(info: TokenizerInfo, *, add_space_prefix: bool | None = None) -> dict[str, Any]:
    """A Hugging Face ``tokenizer.json`` (as a dict) that tokenizes as llama.cpp does.

    Parameters
    ----------
    info : TokenizerInfo
        ``model`` must be ``gpt2`` (byte-level BPE, needs ``merges``) or ``llama``
        (SentencePiece, needs ``scores``).
    add_space_prefix : bool, optional
        SentencePiece only: prepend ``▁`` to the text (GGUF ``tokenizer.ggml.add_space_prefix``;
        defaults to True, llama.cpp's default).

    Raises
    ------
    WeightprintError
        For another tokenizer model.
    ModelFormatError
        When merges (gpt2) or scores (llama) are missing.
    """
    tj, ids, spm_merges, _ = _tokenizer_json_skeleton(info, add_space_prefix)
    tokens = info.tokens
    tj["model"]["vocab"] = {tokens[i]: i for i in map(int, ids)}
    tj["model"]["merges"] = [list(m) for m in _merge_parts(info, spm_merges)]
    return tj


def write_tokenizer_json(info: TokenizerInfo, path: str | os.PathLike[str], *, add_space_prefix: bool | None = None) -> None:
    """Write :func:`tokenizer_json_from_info`'s ``tokenizer.json`` to ``path``, the same text as
    ``json.dumps(..., ensure_ascii=False)``, with the vocabulary and merges streamed a chunk at a
    time: no dict of the vocabulary, no whole-file string (a million-token vocabulary stays
    within tens of MB)."""
    from json.encoder import encode_basestring  # json.dumps' own (C) string encoder

    tj, ids, spm_merges, table = _tokenizer_json_skeleton(info, add_space_prefix)
    text = json.dumps(tj, ensure_ascii=False)
    head, rest = text.split(json.dumps(_VOCAB_MARK), 1)
    middle, tail = rest.split(json.dumps(_MERGES_MARK), 1)
    tokens = info.tokens
    lists = _JsonLists(tokens, table)
    with open(path, "wb") as f:
        f.write(head.encode("utf-8"))
        f.write(b"{")
        for c in range(0, len(ids), _WRITE_CHUNK):
            f.write((b", " if c else b"") + lists.entries(np.asarray(ids[c:c + _WRITE_CHUNK], dtype=np.int64)))
        f.write(b"}")
        f.write(middle.encode("utf-8"))
        f.write(b"[")
        if spm_merges is not None:
            left, right = spm_merges
            for c in range(0, len(left), _WRITE_CHUNK):
                f.write((b", " if c else b"") + lists.pairs(left[c:c + _WRITE_CHUNK], right[c:c + _WRITE_CHUNK]))
        else:
            first = True
            batch: list[str] = []
            for parts in _merge_parts(info, None):
                batch.append("[" + ", ".join([encode_basestring(x) for x in parts]) + "]")
                if len(batch) == _WRITE_CHUNK:
                    f.write(((", " if not first else "") + ", ".join(batch)).encode("utf-8"))
                    first, batch = False, []
            if batch:
                f.write(((", " if not first else "") + ", ".join(batch)).encode("utf-8"))
        f.write(b"]")
        f.write(tail.encode("utf-8"))


class _JsonLists:
    """The JSON text of chunks of the vocabulary (``"token": id, ...``) and of the merges
    (``["left", "right"], ...``), as UTF-8 bytes.

    With a :class:`VocabTable` (a vocabulary of at most ``DECODE_ONCE_STRINGS``, every real
    model's) all string literals are encoded once and the chunks are assembled by compiled
    kernels (:mod:`weightprint.io._vocab_kernels`); a larger, crafted vocabulary is formatted in
    Python a chunk at a time."""

    def __init__(self, tokens: Sequence[str], table: VocabTable | None) -> None:
        from json.encoder import encode_basestring

        self._tokens = tokens
        self._quote = encode_basestring
        self._literals = table.literals() if table is not None else None

    def entries(self, ids: np.ndarray) -> bytes:
        if self._literals is not None:
            from weightprint.io._vocab_kernels import vocab_entries

            return vocab_entries(*self._literals, ids, ids).tobytes()
        q = self._quote
        return ", ".join([f"{q(t)}: {i}" for t, i in zip(_take(self._tokens, ids), ids.tolist())]).encode("utf-8")

    def pairs(self, left: np.ndarray, right: np.ndarray) -> bytes:
        left, right = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
        if self._literals is not None:
            from weightprint.io._vocab_kernels import merge_pairs

            return merge_pairs(*self._literals, left, right).tobytes()
        q = self._quote
        return ", ".join([f"[{q(a)}, {q(b)}]" for a, b in zip(_take(self._tokens, left), _take(self._tokens, right))]
                         ).encode("utf-8")


def _token(info: TokenizerInfo, i: int | None) -> str | None:
    if i is None or not 0 <= i < len(info.tokens):
        return None
    return info.tokens[i]


def special_tokens_map_from_info(info: TokenizerInfo) -> dict[str, Any]:
    """``special_tokens_map.json``: bos/eos/unk/pad token strings."""
    out: dict[str, Any] = {}
    for key, i in (("bos_token", info.bos_id), ("eos_token", info.eos_id), ("unk_token", info.unk_id), ("pad_token", info.pad_id)):
        tok = _token(info, i)
        if tok is not None:
            out[key] = tok
    return out


def tokenizer_config_from_info(info: TokenizerInfo, chat_template: str | None = None, *, model_max_length: int | None = None) -> dict[str, Any]:
    """``tokenizer_config.json`` for :func:`tokenizer_json_from_info`'s tokenizer."""
    types = _types(info)
    decoder = {}
    for entry in _added_tokens(info, types):
        decoder[str(entry["id"])] = {k: entry[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(info.add_bos),
        "add_eos_token": bool(info.add_eos),
        "added_tokens_decoder": decoder,
        "clean_up_tokenization_spaces": False,
    }
    config.update(special_tokens_map_from_info(info))
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    if chat_template:
        config["chat_template"] = chat_template
    return config


# --------------------------------------------------------------------------- HF -> info


def read_chat_template(directory: str | os.PathLike[str]) -> str | None:
    """The chat template of a HF directory: ``chat_template.jinja``, else ``tokenizer_config.json``."""
    d = Path(directory)
    jinja = d / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = d / "tokenizer_config.json"
    if cfg.is_file():
        try:
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        except json.JSONDecodeError as e:
            raise ModelFormatError(f"{cfg}: not valid JSON ({e.msg} at byte {e.pos})") from e
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        return template if isinstance(template, str) else None
    return None


def _token_id(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ModelFormatError(f"{path}: token id {value!r} is not an integer in [0, 2^31)")
    return value


def tokenizer_info_from_hf(directory: str | os.PathLike[str]) -> TokenizerInfo:
    """A :class:`TokenizerInfo` (GGUF view) from a HF directory's ``tokenizer.json``.

    Byte-level BPE becomes GGUF ``gpt2`` (merges kept, ``pre`` named after the
    pre-tokenizer); a BPE with byte fallback and ``▁`` becomes GGUF ``llama`` with scores
    ``-(rank + 1)`` of the first merge that makes each token (0 for single characters, below
    every merge for pieces that no merge makes), so that llama.cpp's score-driven merging
    replays the merge order.

    Raises
    ------
    MissingTokenizerError
        If the directory has no ``tokenizer.json``.
    ModelFormatError
        If it is not valid JSON, or its model is not BPE.
    """
    d = Path(directory)
    path = d / "tokenizer.json"
    if not path.is_file():
        raise MissingTokenizerError(f"{d}: no tokenizer.json", hint="copy the tokenizer files of the base model into the directory")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{path}: not valid JSON ({e.msg} at byte {e.pos})") from e
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ModelFormatError(f"{path}: tokenizer model `{model.get('type')}` is not supported (BPE only)")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {_token_id(a.get("id") if isinstance(a, dict) else None, path): a for a in tj.get("added_tokens") or []}
    for i, a in added.items():
        if not isinstance(a.get("content"), str):
            raise ModelFormatError(f"{path}: added token {i} has no string `content`")
        vocab.setdefault(a["content"], i)
    for i in vocab.values():
        _token_id(i, path)
    n = max(vocab.values(), default=-1) + 1
    # ids index a padded token list: a stray id far beyond the vocabulary must not size it
    if n > 2 * len(vocab) + 1024:
        raise ModelFormatError(
            f"{path}: token id {n - 1} is far beyond the {len(vocab)} tokens of the vocabulary"
        )
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = np.full(n, TOKEN_UNUSED, dtype=np.int32)
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = TOKEN_NORMAL
    for i, a in added.items():
        types[i] = TOKEN_CONTROL if a.get("special") else TOKEN_USER_DEFINED
    merges_raw = model.get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges_raw]

    cfg_path = d / "tokenizer_config.json"
    cfg: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ModelFormatError(f"{cfg_path}: not valid JSON ({e.msg} at byte {e.pos})") from e

    def special_id(key: str) -> int | None:
        value = cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return vocab.get(value) if isinstance(value, str) else None

    spm = bool(model.get("byte_fallback")) or "▁" in json.dumps(tj.get("normalizer"), ensure_ascii=False)
    bos_id = special_id("bos_token")
    post = tj.get("post_processor") or {}
    add_bos = cfg.get("add_bos_token")
    if add_bos is None:
        add_bos = bos_id is not None and json.dumps(post).find(json.dumps(tokens[bos_id])) >= 0 if bos_id is not None else False
    info = TokenizerInfo(
        model="llama" if spm else "gpt2",
        pre="default" if spm else _pre_from_pre_tokenizer(tj.get("pre_tokenizer")),
        tokens=tokens,
        token_types=types,
        merges=None if spm else merges,
        bos_id=bos_id,
        eos_id=special_id("eos_token"),
        unk_id=special_id("unk_token") if not spm else vocab.get(model.get("unk_token") or "", special_id("unk_token")),
        pad_id=special_id("pad_token"),
        add_bos=bool(add_bos),
        add_eos=bool(cfg.get("add_eos_token", False)),
    )
    if spm:
        scores = np.zeros(n, dtype=np.float32)
        made: dict[str, int] = {}
        for rank, m in enumerate(merges_raw):
            left, right = (m.split(" ", 1) if isinstance(m, str) else m)
            made.setdefault(left + right, rank)
        unmade = -float(len(merges_raw) + 1)  # multi-character pieces no merge produces: merge last
        for tok, i in vocab.items():
            if tok in made:
                scores[i] = -float(made[tok] + 1)
            elif len(tok) > 1:
                scores[i] = unmade
            if len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):
                types[i] = TOKEN_BYTE
        for i in added:
            scores[i] = -1000.0 if types[i] == TOKEN_CONTROL else 0.0
        if info.unk_id is not None:
            types[info.unk_id] = TOKEN_UNKNOWN
        info.scores = scores
    return info
