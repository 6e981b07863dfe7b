"""The tokenizer fast path: hashed SentencePiece merge search, one-shot JSON, id range checks.

The merge search (``weightprint.io.tokenizer._spm_merges``) is checked against the plain
definition below (every split of a normal token into two vocabulary pieces, ranked by the
merged token's score) on crafted vocabularies with duplicates, ties and user-defined pieces,
and on Gemma 3's 262k-token vocabulary; a single very long token must stay linear; the
tokenizer built from it must give the same ids on a varied corpus.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from weightprint.errors import ModelFormatError
from weightprint.io.model import TokenizerInfo
from weightprint.io.tokenizer import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    _spm_merges,
    tokenizer_info_from_hf,
)


def _merges(info: TokenizerInfo, types: np.ndarray, **kw: bool) -> list[list[str]]:
    """The search's merges as strings (it returns the ids of the two parts, ranked)."""
    left, right = _spm_merges(info, types, **kw)
    return [[info.tokens[a], info.tokens[b]] for a, b in zip(left.tolist(), right.tolist())]


def _definition(info: TokenizerInfo, types: np.ndarray) -> list[list[str]]:
    """Merges by definition, O(sum len^2): the behaviour the fast search must keep."""
    scores = np.asarray(info.scores, dtype=np.float64)
    vocab = {t: i for i, t in enumerate(info.tokens) if types[i] in (TOKEN_NORMAL, TOKEN_USER_DEFINED)}
    found = []
    for token, tid in vocab.items():
        if types[tid] != TOKEN_NORMAL or len(token) < 2:
            continue
        for k in range(1, len(token)):
            li, ri = vocab.get(token[:k]), vocab.get(token[k:])
            if li is not None and ri is not None:
                found.append((-scores[tid], tid, li, ri, token[:k], token[k:]))
    found.sort()
    return [[left, right] for *_, left, right in found]


def _info(tokens: list[str], types: list[int], scores: list[float]) -> TokenizerInfo:
    return TokenizerInfo(model="llama", pre="default", tokens=tokens, token_types=np.array(types, dtype=np.int32),
                         scores=np.array(scores, dtype=np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_merges_match_the_definition_on_crafted_vocabularies(seed: int) -> None:
    rng = np.random.default_rng(seed)
    alphabet = list("ab▁c") + ["日", "🤖", "\ud800"]  # a lone surrogate, as a lossy GGUF decode can leave
    tokens = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 7)))) for _ in range(400)]
    tokens += tokens[:30]  # repeated strings: the last id of a piece counts
    types = rng.choice([TOKEN_NORMAL] * 6 + [TOKEN_USER_DEFINED, TOKEN_CONTROL, TOKEN_BYTE], size=len(tokens)).tolist()
    scores = rng.integers(-5, 5, size=len(tokens)).astype(float).tolist()  # many ties
    info = _info(tokens, types, scores)
    expected = _definition(info, np.array(types))
    assert len(expected) > 50
    assert _merges(info, np.array(types)) == expected
    # without the repeated strings, the shortcut for distinct tokens gives the definition too
    first = list({t: i for i, t in reversed(list(enumerate(tokens)))}.values())
    unique = _info([tokens[i] for i in first], [types[i] for i in first], [scores[i] for i in first])
    u_types = np.asarray(unique.token_types)
    assert _merges(unique, u_types, distinct=True) == _definition(unique, u_types)


def _compiled(info: TokenizerInfo, types: np.ndarray) -> list[list[str]]:
    from weightprint.io._vocab_kernels import VocabTable

    left, right = _spm_merges(info, types, table=VocabTable(info.tokens))
    return [[info.tokens[a], info.tokens[b]] for a, b in zip(left.tolist(), right.tolist())]


@pytest.mark.parametrize("seed", range(6))
def test_compiled_merge_search_matches_the_definition(seed: int) -> None:
    """The compiled search (every real vocabulary's path) on the same kind of crafted
    vocabularies: repeated strings (the last id of a piece counts), ties, user-defined pieces."""
    rng = np.random.default_rng(100 + seed)
    alphabet = list("ab▁c") + ["日", "🤖", "\x00", '"']
    tokens = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 7)))) for _ in range(400)]
    tokens += tokens[:30]
    types = rng.choice([TOKEN_NORMAL] * 6 + [TOKEN_USER_DEFINED, TOKEN_CONTROL, TOKEN_BYTE], size=len(tokens)).tolist()
    scores = rng.integers(-5, 5, size=len(tokens)).astype(float).tolist()
    info = _info(tokens, types, scores)
    expected = _definition(info, np.array(types))
    assert len(expected) > 50
    assert _compiled(info, np.array(types)) == expected


def test_compiled_merge_search_is_the_same_on_two_threads() -> None:
    """Split over threads by code points, the search gives the same splits in the same order."""
    from weightprint.io._vocab_kernels import VocabTable, spm_merge_search

    rng = np.random.default_rng(5)
    tokens = ["".join(rng.choice(list("abcde"), size=int(rng.integers(1, 9)))) for _ in range(30_000)]
    table = VocabTable(tokens)
    ids = np.arange(len(tokens))
    one = spm_merge_search(table.cps, table.starts, table.lens, ids, ids, threads=1)
    two = spm_merge_search(table.cps, table.starts, table.lens, ids, ids, threads=2)
    assert len(one[0]) > 10_000
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


def test_vocab_table_first_ids_and_json_literals() -> None:
    """First occurrences as a dict keeps them; literals byte for byte as ``json.dumps`` writes
    them (every ASCII control character, quotes, backslashes, non-ASCII kept)."""
    from json.encoder import encode_basestring

    from weightprint.io._vocab_kernels import VocabTable

    tokens = ["a", "", "b", "a", "", "日本", "é", "b", "🤖"] + [chr(c) for c in range(0x80)] + ['x"\\y\u2028']
    table = VocabTable(tokens)
    expected_first = sorted({t: i for i, t in reversed(list(enumerate(tokens)))}.values())
    assert table.first_ids().tolist() == expected_first
    buf, off = table.literals()
    got = [bytes(buf[off[i]:off[i + 1]]).decode("utf-8") for i in range(len(tokens))]
    assert got == [encode_basestring(t) for t in tokens]


def test_no_merges_and_missing_scores() -> None:
    info = _info(["a", "b", ""], [TOKEN_NORMAL] * 3, [0.0, 0.0, 0.0])
    assert _merges(info, np.array([TOKEN_NORMAL] * 3)) == []
    info.scores = None
    with pytest.raises(ModelFormatError, match="no scores"):
        _spm_merges(info, np.array([TOKEN_NORMAL] * 3))


def test_one_long_token_stays_linear() -> None:
    """A crafted 400k-character piece: the definition would copy ~8e10 characters."""
    n = 400_000
    tokens = ["a", "b", "a" * (n - 1), "a" * n, "a" * (n // 2) + "b", "a" * (n // 2)]
    info = _info(tokens, [TOKEN_NORMAL] * len(tokens), [0.0, 0.0, -1.0, -2.0, -3.0, -4.0])
    t0 = time.perf_counter()
    merges = _merges(info, np.array([TOKEN_NORMAL] * len(tokens)))
    assert time.perf_counter() - t0 < 20  # seconds even on a loaded 2-core machine; quadratic takes hours
    assert [(len(a), len(b)) for a, b in merges] == [(1, n - 1), (n - 1, 1), (n // 2, n // 2), (n // 2, 1)]
    t0 = time.perf_counter()
    assert _compiled(info, np.array([TOKEN_NORMAL] * len(tokens))) == merges
    assert time.perf_counter() - t0 < 20


@pytest.mark.slow
def test_gemma3_merges_unchanged(gemma3: Path) -> None:
    """Same merges in the same order as the definition, so the same tokenizer.json and ids
    (test_io_hf compares those ids with llama.cpp's)."""
    from weightprint.io import open_model

    from weightprint.io._vocab_kernels import VocabTable

    info = open_model(gemma3).tokenizer
    types = np.asarray(info.token_types, dtype=np.int32)
    fast = _merges(info, types)
    assert len(fast) > 500_000
    assert fast == _definition(info, types)
    assert _compiled(info, types) == fast  # the compiled search, on the file's bytes
    # the table read from the GGUF bytes is the table of the decoded strings
    from_bytes, from_strings = VocabTable(info.tokens), VocabTable(list(info.tokens))
    for name in ("cps", "starts", "lens", "utf8", "byte_off"):
        assert np.array_equal(getattr(from_bytes, name), getattr(from_strings, name)), name


def _hf_tokenizer(tmp_path: Path, vocab: dict, added: list) -> Path:
    tj = {"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": added}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "vocab, added, match",
    [
        ({"a": 0, "b": 2**40}, [], "token id 1099511627776 is not an integer"),
        ({"a": 0, "b": 50_000}, [], "token id 50000 is far beyond the 2 tokens"),
        ({"a": 0}, [{"id": 2**40, "content": "<s>"}], "token id 1099511627776"),
        ({"a": 0}, [{"id": -1, "content": "<s>"}], "token id -1"),
        ({"a": "x"}, [], "token id 'x'"),
        ({"a": 0}, [{"id": 1}], "added token 1 has no string `content`"),
    ],
)
def test_token_ids_are_range_checked(tmp_path: Path, vocab: dict, added: list, match: str) -> None:
    with pytest.raises(ModelFormatError, match=match):
        tokenizer_info_from_hf(_hf_tokenizer(tmp_path, vocab, added))


def test_sparse_ids_within_bounds_still_load(tmp_path: Path) -> None:
    info = tokenizer_info_from_hf(_hf_tokenizer(tmp_path, {"a": 0, "b": 5}, [{"id": 9, "content": "<s>", "special": True}]))
    assert len(info.tokens) == 10 and info.tokens[5] == "b" and info.tokens[9] == "<s>"
