"""Compact model fingerprints: everything the lineage test needs, without the weights.

A :class:`Fingerprint` holds, per decoder layer, the rank profile of each residual-coordinate
feature (see :mod:`weightprint.lineage.features`), the order-free layer descriptors used for
layer alignment, the embedding rows of a small deterministic sample of tokens (chosen by a
hash of the token *string*, so two models with overlapping vocabularies pick overlapping
samples whatever their token ids), MinHash signatures of the vocabulary and merges, and the
config summary and chat-template family.

Stored fingerprints quantize the rank profiles to 4 bits (16 levels, two per byte) and size
the token sample so that the whole blob stays within ``1 MB per 1e9 parameters``.

An optional *basis sketch* (``compact(basis_sketch=True)``) adds the embedding rows of
``ceil(1.5 d)`` sample tokens as 2-bit rank profiles (each coordinate's quartile over those
tokens): enough for a database search to recover a rotation of the suspect's residual basis
(orthogonal Procrustes, :func:`weightprint.lineage.recover.map_from_sketch`), at
``0.375 d^2`` bytes on top of the budget.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.chat_templates import chat_template_family, template_sha256
from weightprint.errors import WeightprintError
from weightprint.io.model import Model
from weightprint.lineage.evidence import config_summary, minhash
from weightprint.lineage.features import (
    ModelFeatures,
    extract_features,
    hidden_size_of,
    token_hashes,
)
from weightprint.lineage.stats import rank_transform

__all__ = [
    "FORMAT_VERSION",
    "Fingerprint",
    "build_fingerprint",
    "basis_sketch_bytes",
    "fingerprint_budget_bytes",
    "shared_token_pairs",
]

FORMAT_VERSION = 1
BYTES_PER_PARAMETER_BUDGET = 1_000_000 / 1e9  # 1 MB per 1B parameters
STORED_LEVELS = 16
MIN_STORED_TOKENS = 32
MAX_STORED_TOKENS = 1024
BASIS_SKETCH_RATIO = 1.5  # sketch tokens per residual coordinate: the fit needs more rows than d
BASIS_LEVELS = 4  # 2 bits per sketch entry


def basis_sketch_tokens(hidden_size: int) -> int:
    """Tokens in a basis sketch: ``ceil(1.5 d)``."""
    return int(math.ceil(BASIS_SKETCH_RATIO * hidden_size))


def basis_sketch_bytes(hidden_size: int) -> int:
    """What a basis sketch adds to a stored fingerprint (2 bits per entry, plus its token strings)."""
    n = basis_sketch_tokens(hidden_size)
    return n * hidden_size * 2 // 8 + n * 16


def fingerprint_budget_bytes(n_parameters: int) -> int:
    """The size budget of a stored fingerprint: 1 MB per 1e9 parameters (at least 16 KB)."""
    return max(16_384, int(n_parameters * BYTES_PER_PARAMETER_BUDGET))


@dataclass
class Fingerprint:
    """White-box summary of one model.

    Attributes
    ----------
    label : str
        Name of the model (file name or a user label).
    hidden_size : int
    n_parameters : int
    config : dict
        Config summary (architecture, sizes) for the config diff.
    layer_roles : list[list[str]]
        Feature roles of each layer, in the order of ``layer_features`` rows.
    layer_features : list[numpy.ndarray]
        Per layer ``(n_roles, hidden_size)`` float32 rank profiles in ``(0, 1)``.
    descriptors : list[numpy.ndarray]
        Per layer ``(n_roles, 6)`` order-free descriptors.
    global_features : dict[str, numpy.ndarray]
        ``final_norm`` rank profile.
    tokens : list[str]
        Token strings of the embedding sample.
    embedding : numpy.ndarray | None
        ``(len(tokens), hidden_size)`` row-standardized embedding rows (float32).
    head : numpy.ndarray | None
        Same for an untied output head.
    tied_embeddings : bool
    vocab_size : int
    tokenizer_model : str | None
    vocab_minhash, merges_minhash : numpy.ndarray | None
    chat_template_family : str
    chat_template_sha256 : str | None
    levels : int
        0 for full precision, else the number of quantization levels of the stored profiles.
    basis_tokens : list[str]
        Token strings of the basis sketch (empty without one).
    basis_rows : numpy.ndarray | None
        ``(len(basis_tokens), hidden_size)`` rank profile over those tokens of each coordinate of
        the row-standardized embedding rows (stored at :data:`BASIS_LEVELS` levels).
    """

    label: str
    hidden_size: int
    n_parameters: int
    config: dict[str, Any] = field(default_factory=dict)
    layer_roles: list[list[str]] = field(default_factory=list)
    layer_features: list[np.ndarray] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    global_features: dict[str, np.ndarray] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None
    head: np.ndarray | None = None
    tied_embeddings: bool = True
    vocab_size: int = 0
    tokenizer_model: str | None = None
    vocab_minhash: np.ndarray | None = None
    merges_minhash: np.ndarray | None = None
    chat_template_family: str = "none"
    chat_template_sha256: str | None = None
    levels: int = 0
    basis_tokens: list[str] = field(default_factory=list)
    basis_rows: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layer_features)

    def descriptor_dicts(self) -> list[dict[str, np.ndarray]]:
        return [dict(zip(roles, desc)) for roles, desc in zip(self.layer_roles, self.descriptors)]

    def feature_dicts(self) -> list[dict[str, np.ndarray]]:
        return [dict(zip(roles, feats)) for roles, feats in zip(self.layer_roles, self.layer_features)]

    # ------------------------------------------------------------------ storage
    def compact(self, *, max_bytes: int | None = None, basis_sketch: bool = False) -> "Fingerprint":
        """A stored-size copy: 4-bit profiles and a token sample that fits ``max_bytes``.

        ``max_bytes`` defaults to :func:`fingerprint_budget_bytes` of ``n_parameters``.
        ``basis_sketch`` adds the 2-bit basis sketch (:func:`basis_sketch_bytes`, on top of
        ``max_bytes``); it needs an embedding sample of at least :func:`basis_sketch_tokens` rows.
        """
        budget = fingerprint_budget_bytes(self.n_parameters) if max_bytes is None else int(max_bytes)
        d = self.hidden_size
        n_rows = sum(f.shape[0] for f in self.layer_features) + len(self.global_features)
        fixed = n_rows * d // 2 + sum(x.size * 2 for x in self.descriptors) + 4096
        per_token = d // 2 * (2 if self.head is not None else 1) + 8
        m = (int(budget * 0.92) - fixed) // per_token
        m = max(0, min(m, MAX_STORED_TOKENS, len(self.tokens)))
        if m < MIN_STORED_TOKENS:
            m = min(len(self.tokens), MIN_STORED_TOKENS)
        q = _quantize_profile
        out = Fingerprint(
            label=self.label,
            hidden_size=d,
            n_parameters=self.n_parameters,
            config=dict(self.config),
            layer_roles=[list(r) for r in self.layer_roles],
            layer_features=[q(f) for f in self.layer_features],
            descriptors=[np.asarray(x, dtype=np.float16).astype(np.float32) for x in self.descriptors],
            global_features={k: q(v[None, :])[0] for k, v in self.global_features.items()},
            tokens=list(self.tokens[:m]),
            embedding=None if self.embedding is None else q(rank_transform(self.embedding[:m], axis=0).T).T,
            head=None if self.head is None else q(rank_transform(self.head[:m], axis=0).T).T,
            tied_embeddings=self.tied_embeddings,
            vocab_size=self.vocab_size,
            tokenizer_model=self.tokenizer_model,
            vocab_minhash=self.vocab_minhash,
            merges_minhash=self.merges_minhash,
            chat_template_family=self.chat_template_family,
            chat_template_sha256=self.chat_template_sha256,
            levels=STORED_LEVELS,
        )
        if basis_sketch:
            n_b = basis_sketch_tokens(d)
            if self.embedding is None or len(self.tokens) < n_b:
                raise WeightprintError(
                    f"{self.label}: a basis sketch needs the embedding rows of {n_b} sample tokens, "
                    f"the fingerprint has {0 if self.embedding is None else len(self.tokens)}"
                )
            out.basis_tokens = list(self.tokens[:n_b])
            out.basis_rows = _quantize_profile(rank_transform(self.embedding[:n_b], axis=0), BASIS_LEVELS)
            budget += basis_sketch_bytes(d)
        while len(out.tokens) > 8 and len(out.to_bytes()) > budget:
            n = int(len(out.tokens) * 0.85)
            out.tokens = out.tokens[:n]
            out.embedding = None if out.embedding is None else out.embedding[:n]
            out.head = None if out.head is None else out.head[:n]
        return out

    def to_bytes(self) -> bytes:
        """Serialize (stored fingerprints: 4-bit profiles packed two per byte)."""
        levels = self.levels
        arrays: dict[str, np.ndarray] = {}

        def put(key: str, x: np.ndarray) -> None:
            arrays[key] = _pack(x) if levels else np.asarray(x, dtype=np.float32)

        for i, f in enumerate(self.layer_features):
            put(f"layer{i}", f)
            arrays[f"desc{i}"] = np.asarray(self.descriptors[i], dtype=np.float16)
        for k, v in self.global_features.items():
            put(f"global_{k}", v[None, :])
        if self.embedding is not None:
            put("embedding", self.embedding)
        if self.head is not None:
            put("head", self.head)
        if self.basis_rows is not None:
            arrays["basis_rows"] = (_pack(self.basis_rows, BASIS_LEVELS) if levels
                                    else np.asarray(self.basis_rows, dtype=np.float32))
        if self.vocab_minhash is not None:
            arrays["vocab_minhash"] = self.vocab_minhash
        if self.merges_minhash is not None:
            arrays["merges_minhash"] = self.merges_minhash
        header = {
            "format_version": FORMAT_VERSION,
            "label": self.label,
            "hidden_size": self.hidden_size,
            "n_parameters": self.n_parameters,
            "config": self.config,
            "layer_roles": self.layer_roles,
            "layer_shapes": [list(f.shape) for f in self.layer_features],
            "global_keys": list(self.global_features),
            "tokens": self.tokens,
            "embedding_shape": None if self.embedding is None else list(self.embedding.shape),
            "head_shape": None if self.head is None else list(self.head.shape),
            "tied_embeddings": self.tied_embeddings,
            "vocab_size": self.vocab_size,
            "tokenizer_model": self.tokenizer_model,
            "chat_template_family": self.chat_template_family,
            "chat_template_sha256": self.chat_template_sha256,
            "levels": levels,
            "basis_tokens": self.basis_tokens,
            "basis_shape": None if self.basis_rows is None else list(self.basis_rows.shape),
        }
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, *, source: str = "fingerprint") -> "Fingerprint":
        """Inverse of :meth:`to_bytes`; raises :class:`WeightprintError` on a malformed blob."""
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode("utf-8"))
                arrays = {k: z[k] for k in z.files if k != "header"}
        except (ValueError, OSError, KeyError, json.JSONDecodeError, EOFError) as e:
            raise WeightprintError(f"{source}: not a weightprint fingerprint ({type(e).__name__}: {e})") from e
        if header.get("format_version") != FORMAT_VERSION:
            raise WeightprintError(
                f"{source}: fingerprint format {header.get('format_version')} is not supported (expected {FORMAT_VERSION})"
            )
        levels = int(header["levels"])

        def get(key: str, shape: list[int]) -> np.ndarray:
            x = arrays[key]
            return _unpack(x, tuple(shape), levels) if levels else x.astype(np.float32).reshape(shape)

        d = int(header["hidden_size"])
        feats = [get(f"layer{i}", s) for i, s in enumerate(header["layer_shapes"])]
        descs = [arrays[f"desc{i}"].astype(np.float32) for i in range(len(feats))]
        glob = {k: get(f"global_{k}", [1, d])[0] for k in header["global_keys"]}
        basis_shape = header.get("basis_shape")
        basis_rows = None
        if basis_shape is not None:
            x = arrays["basis_rows"]
            basis_rows = (_unpack(x, tuple(basis_shape), BASIS_LEVELS) if levels
                          else x.astype(np.float32).reshape(basis_shape))
        return cls(
            label=header["label"],
            hidden_size=d,
            n_parameters=int(header["n_parameters"]),
            config=header["config"],
            layer_roles=header["layer_roles"],
            layer_features=feats,
            descriptors=descs,
            global_features=glob,
            tokens=header["tokens"],
            embedding=None if header["embedding_shape"] is None else get("embedding", header["embedding_shape"]),
            head=None if header["head_shape"] is None else get("head", header["head_shape"]),
            tied_embeddings=bool(header["tied_embeddings"]),
            vocab_size=int(header["vocab_size"]),
            tokenizer_model=header["tokenizer_model"],
            vocab_minhash=arrays.get("vocab_minhash"),
            merges_minhash=arrays.get("merges_minhash"),
            chat_template_family=header["chat_template_family"],
            chat_template_sha256=header["chat_template_sha256"],
            levels=levels,
            basis_tokens=list(header.get("basis_tokens") or []),
            basis_rows=basis_rows,
        )


def _quantize_profile(x: np.ndarray, levels: int = STORED_LEVELS) -> np.ndarray:
    """Rank profiles in (0, 1) -> bin centres of ``levels`` equal bins (float32)."""
    b = np.clip(np.floor(np.asarray(x, dtype=np.float32) * levels), 0, levels - 1)
    return ((b + 0.5) / levels).astype(np.float32)


def _bits(levels: int) -> int:
    if levels not in (4, 16):
        raise WeightprintError(f"fingerprint: {levels} quantization levels are not supported (4 or 16)")
    return 2 if levels == 4 else 4


def _pack(x: np.ndarray, levels: int = STORED_LEVELS) -> np.ndarray:
    """Bin indices of ``x`` in (0, 1), ``log2(levels)`` bits each, packed low bits first."""
    bits = _bits(levels)
    per = 8 // bits
    b = np.clip(np.floor(np.asarray(x, dtype=np.float32).reshape(-1) * levels), 0, levels - 1).astype(np.uint8)
    if b.size % per:
        b = np.concatenate([b, np.zeros(per - b.size % per, np.uint8)])
    b = b.reshape(-1, per)
    out = np.zeros(b.shape[0], dtype=np.uint8)
    for k in range(per):
        out |= (b[:, k] << (bits * k)).astype(np.uint8)
    return out


def _unpack(p: np.ndarray, shape: tuple[int, ...], levels: int) -> np.ndarray:
    bits = _bits(levels)
    per = 8 // bits
    p = np.asarray(p, dtype=np.uint8)
    b = np.empty((p.size, per), dtype=np.uint8)
    for k in range(per):
        b[:, k] = (p >> (bits * k)) & (levels - 1)
    n = math.prod(shape)
    return ((b.reshape(-1)[:n].astype(np.float32) + 0.5) / levels).reshape(shape)


def shared_token_pairs(tokens_a: list[str], tokens_b: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(ia, ib)`` of the tokens of ``tokens_a`` that ``tokens_b`` has too, matched by
    string, in ``tokens_a``'s order (a repeated string in ``tokens_b``: its last position)."""
    index_b = {t: k for k, t in enumerate(tokens_b)}
    ia = [k for k, t in enumerate(tokens_a) if t in index_b]
    return np.array(ia, dtype=np.int64), np.array([index_b[tokens_a[k]] for k in ia], dtype=np.int64)


def sample_tokens(tokens: list[str], *, limit: int, among: set[str] | None = None) -> list[str]:
    """Up to ``limit`` distinct token strings in increasing BLAKE2b-hash order (deterministic).

    Only tokens in ``among`` are considered when it is given (e.g. the shared vocabulary).
    """
    seen: dict[str, None] = {}
    for t in tokens:
        if t and (among is None or t in among):
            seen.setdefault(t, None)
    cand = list(seen)
    if not cand:
        return []
    order = np.argsort(token_hashes(cand), kind="stable")[:limit]
    return [cand[i] for i in order]


def _standardize_rows(x: np.ndarray) -> np.ndarray:
    """Each row centred and scaled to unit standard deviation (float32), a block of rows at a
    time (the float64 temporaries of 4096 rows of a 7B embedding would be ~130 MB each)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=np.float32)
    step = max(1, (1 << 20) // max(x.shape[-1], 1))
    for start in range(0, x.shape[0], step):
        b = np.asarray(x[start:start + step], dtype=np.float64)
        b = b - b.mean(axis=1, keepdims=True)
        sd = b.std(axis=1, keepdims=True)
        sd[sd == 0] = 1.0
        out[start:start + step] = b / sd
    return out


def build_fingerprint(
    model: Model,
    *,
    tokens: list[str] | None = None,
    max_tokens: int = 2048,
    label: str | None = None,
    weights: bool = True,
    gains: dict[str, np.ndarray] | None = None,
    norm_features: bool = True,
    metadata: bool = True,
) -> Fingerprint:
    """Compute the full-precision fingerprint of ``model``, streaming its tensors.

    Parameters
    ----------
    model : Model
        An opened model.
    tokens : list[str], *optional*
        Token strings whose embedding rows to keep (those missing from the vocabulary are
        skipped). Defaults to the ``max_tokens`` vocabulary strings of smallest hash.
    max_tokens : int, *optional*, defaults to 2048
        Size of the default token sample.
    label : str, *optional*
        Name stored in the fingerprint; defaults to the file name.
    weights : bool, *optional*, defaults to True
        False skips every tensor (metadata, config and tokenizer evidence only).
    gains, norm_features : *optional*
        Passed to :func:`~weightprint.lineage.features.extract_features` (a suspect seen in a
        reference's residual basis with its norms folded).
    metadata : bool, *optional*, defaults to True
        False skips the tokenizer MinHashes and the chat template (a second fingerprint of the
        same model, e.g. in another residual basis, needs only the weights).
    """
    if weights:
        feats = extract_features(model, gains=gains, norm_features=norm_features)
    else:
        from weightprint.errors import NotComparableError

        d0 = hidden_size_of(model)
        if d0 is None:
            raise NotComparableError(f"{model.path}: cannot tell the hidden size (no config and no embedding)")
        feats = ModelFeatures(hidden_size=d0, n_parameters=model.n_parameters())
    d = feats.hidden_size
    tok = model.tokenizer if metadata else None
    vocab = list(tok.tokens) if tok is not None else []
    fp = Fingerprint(label=label or Path(str(model.path)).name, hidden_size=d, n_parameters=feats.n_parameters)
    fp.config = config_summary(model, hidden_size=d, n_layers=len(feats.layers))
    for layer, desc in zip(feats.layers, feats.descriptors):
        roles = sorted(layer)
        fp.layer_roles.append(roles)
        fp.layer_features.append(rank_transform(np.stack([layer[r] for r in roles]), axis=1))
        fp.descriptors.append(np.stack([desc[r] for r in roles]))
    fp.global_features = {k: rank_transform(v[None, :], axis=1)[0] for k, v in feats.global_features.items()}
    fp.tied_embeddings = feats.head_name is None
    fp.vocab_size = len(vocab)
    if tok is not None:
        fp.tokenizer_model = tok.model
        fp.vocab_minhash = minhash(vocab)
        fp.merges_minhash = minhash(list(tok.merges)) if tok.merges else None
    if metadata:
        fp.chat_template_family = chat_template_family(model.chat_template)
        fp.chat_template_sha256 = template_sha256(model.chat_template)
    if vocab and feats.embed_name is not None and weights:
        if tokens is None:
            chosen = sample_tokens(vocab, limit=max_tokens)
        else:
            present = set(vocab)
            chosen = [t for t in dict.fromkeys(tokens) if t in present]
        if chosen:
            index: dict[str, int] = {}
            for i, t in enumerate(vocab):
                index.setdefault(t, i)
            ids = np.array([index[t] for t in chosen], dtype=np.int64)
            n_rows = model.info(feats.embed_name).shape[0]
            keep = ids < n_rows
            ids = ids[keep]
            chosen = [t for t, k in zip(chosen, keep) if k]
            fp.tokens = chosen
            fp.embedding = _standardize_rows(model.read_rows(feats.embed_name, ids))
            if feats.head_name is not None and model.info(feats.head_name).shape[0] > int(ids.max(initial=0)):
                fp.head = _standardize_rows(model.read_rows(feats.head_name, ids))
    return fp
