"""Recover the change of residual basis between two models (shared by mark and lineage).

A decoder-only transformer with RMSNorm computes the same function after any orthogonal
change of basis of its residual stream, once the norms' gains are folded into the layers that
read the normalised stream. A thief can apply such a change for free; to compare a suspect
``B`` with an original ``A`` weight by weight, we first recover the map and bring ``B``'s
tensors back into ``A``'s basis.

The math
--------
Write residual vectors as rows. ``B``'s residual stream is ``h_B = s * h_A R`` for an
orthogonal ``R`` (``d x d``) and a scale ``s > 0`` (RMSNorm is scale-invariant). With ``g_A``,
``g_B`` the effective gains of the RMSNorm before a reading layer (Gemma's ``1 + w``), the
tensors of ``B`` relate to ``A``'s as follows (Hugging Face layout, ``(out, in)``):

====================================  ==================================  ============================================
role                                  ``B`` from ``A``                    ``A`` from ``B`` (:meth:`ResidualMap.to_a`)
====================================  ==================================  ============================================
embedding                             ``E_B = s E_A R``                   ``E_A = E_B R^T / s``
reader (q/k/v, gate/up, the head)     ``W_B diag(g_B) = W_A diag(g_A) R``  ``W_A = W_B diag(g_B) R^T diag(1/g_A)``
writer (o_proj, down_proj)            ``W_B = s R^T W_A``                 ``W_A = R W_B / s``
norm gain (signed permutation ``P``)  ``g_B = g_A P``                     ``g_A = g_B P^T`` (rotations: left as is)
====================================  ==================================  ============================================

A reader's input axis is axis 1, a writer's output axis is axis 0; the embedding and the head
hold residual vectors in their rows (axis 1). A rotated model has its gains folded into its
readers (``g_B = 1``), so readers are compared in the norm-folded form and unfolded with
``A``'s gains. Under a signed permutation the gains need no folding: they are unfolded only
when ``B``'s gain is constant (folded); gains that merely drifted (fine-tuning) or belong to
another layer (layers reordered under their names) are left alone, since rescaling by them
would add error rather than remove it.

Recovery uses the embedding rows of tokens both models share *by string* (so a reordered
vocabulary does not matter). The shared tokens are split at random into a fit set and a
held-out set.

- **Signed permutation.** Column ``j`` of ``E_B`` is compared with every column of ``E_A`` by
  cosine; when each ``B`` column has one partner ``perm[j]`` with ``|cos| > 0.5`` and these
  partners form a permutation, the candidate is ``R[perm[j], j] = sign(cos)``.
- **Orthogonal.** Orthogonal Procrustes: ``R = U V^T`` from the SVD ``E_A^T E_B = U S V^T``
  (fit set), ``s = trace(S) / ||E_A||^2``; optionally refined by the same Procrustes step on
  the cross-products of ``DEFAULT_REFINE_TENSORS`` reader and writer matrices spread over the
  layers (rows matched under the first estimate, which also survives permuted MLP units):
  millions of equations added to the vocabulary's tens of thousands.

The signed permutation is kept when its held-out residual is no worse than the Procrustes
fit's (it is a special case, so on a genuinely permuted model it fits as well with no
estimation noise); ``kind`` then names it more precisely (``identity``, ``sign flip``,
``permutation``, ``signed permutation``). ``fit_quality`` is the held-out relative residual
``||E_B - s E_A R|| / ||E_B||`` on tokens not used for the fit: about the quantization noise
of the copies for a true map, near 1 for unrelated models.

The recovery looks at the two models only: it uses no key and no secret, so a test whose
null hypothesis is "these key-derived signs are independent of the suspect" stays valid
when the suspect is first mapped by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

from weightprint.errors import NotComparableError
from weightprint.io.model import Model, TensorInfo
from weightprint.io.names import (
    EMBED_NAME,
    FINAL_NORM_NAME,
    HEAD_NAME,
    NORM_SHIFT_ARCHITECTURES,
    split_layer,
)

__all__ = ["ResidualMap", "MappedModel", "recover_residual_map", "residual_role"]

KINDS = ("identity", "sign flip", "permutation", "signed permutation", "orthogonal")
_PERM_MIN_COS = 0.5
_PERM_ACCEPT_COS = 0.95  # weakest matched |cos| at which a signed permutation is taken without the orthogonal fit
_FIT_BLOCK = 1024  # shared-token rows of each embedding read at a time for the fit
_SCALE_SNAP = 1e-3  # |s - 1| below this is taken as s = 1 (estimation noise, not a thief's scale)
_MAX_FIT_TOKENS = 8192
_MAX_HELDOUT_TOKENS = 2048
DEFAULT_REFINE_TENSORS = 24  # reader/writer matrices used to refine a rotation (spread over the layers)
_READERS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")
_WRITERS = ("o_proj.weight", "down_proj.weight", "o_proj.bias", "down_proj.bias")
_PER_HEAD_NORMS = ("q_norm.weight", "k_norm.weight")


def residual_role(name: str, shape: tuple[int, ...], hidden: int, names: set[str] | frozenset[str] = frozenset()
                  ) -> tuple[str, str | None]:
    """``(role, norm)`` of a tensor with respect to the residual stream.

    ``role`` is ``embed`` (residual on axis 1, no norm before it), ``read`` (axis 1, after
    the norm named ``norm``), ``write`` (axis 0; a bias is a vector), ``norm`` (a gain vector of
    the residual) or ``other`` (no residual axis: per-head norms, q/k/v biases, 1-D scalars).
    ``names`` (the model's tensor names) tells a Gemma-2/3 ``pre_feedforward_layernorm`` from
    a llama ``post_attention_layernorm`` before the MLP.
    """
    if name == EMBED_NAME:
        return "embed", None
    if name == HEAD_NAME:
        return "read", FINAL_NORM_NAME
    if name == FINAL_NORM_NAME:
        return "norm", None
    parts = split_layer(name)
    if parts is None:
        return "other", None
    prefix, layer, rest = parts
    base = f"{prefix}{layer}."
    if rest.endswith(_PER_HEAD_NORMS):
        return "other", None
    if rest.endswith("norm.weight"):
        return ("norm", None) if len(shape) == 1 and shape[0] == hidden else ("other", None)
    if len(shape) == 2 and rest.endswith(_READERS) and shape[1] == hidden:
        if rest.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            return "read", base + "input_layernorm.weight"
        pre_ff = base + "pre_feedforward_layernorm.weight"
        return "read", pre_ff if pre_ff in names else base + "post_attention_layernorm.weight"
    if rest.endswith(_WRITERS) and shape and shape[0] == hidden:
        return "write", None
    return "other", None


def _split_layer_base(name: str) -> str:
    parts = split_layer(name)
    return f"{parts[0]}{parts[1]}." if parts else ""


def _gains(model: Model, hidden: int) -> dict[str, np.ndarray]:
    """Effective RMSNorm gains (``w``, or ``1 + w`` for Gemma) of every residual norm, float64."""
    shift = 1.0 if model.architecture in NORM_SHIFT_ARCHITECTURES else 0.0
    names = set(model.tensor_names())
    out = {}
    for t in model.tensor_infos():
        role, _ = residual_role(t.name, tuple(t.shape), hidden, names)
        if role == "norm":
            out[t.name] = model.tensor(t.name).astype(np.float64) + shift
    return out


def _shared_rows(a: Model, b: Model, rows_a: int, rows_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(ia, ib)`` of embedding rows of tokens both models have, matched by string."""
    ta = a.tokenizer.tokens if a.tokenizer is not None else None
    tb = b.tokenizer.tokens if b.tokenizer is not None else None
    if ta and tb:
        where_b: dict[str, int] = {}
        for j, s in enumerate(tb[:rows_b]):
            where_b.setdefault(s, j)
        pairs = [(i, where_b[s]) for i, s in enumerate(ta[:rows_a]) if s in where_b]
        if pairs:
            ia, ib = np.array(pairs, dtype=np.int64).T
            return ia, ib
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n = min(rows_a, rows_b)  # no vocabulary to match by: same ids
    return np.arange(n), np.arange(n)


def _rel_residual(xa: np.ndarray, xb: np.ndarray, r: np.ndarray, s: float) -> float:
    den = float(np.linalg.norm(xb))
    fit = (xa @ r.astype(np.float32)) * np.float32(s)
    return float(np.linalg.norm(xb - fit)) / den if den > 0 else math.inf


def _procrustes(m: np.ndarray) -> np.ndarray:
    """The orthogonal ``R`` maximising ``trace(R^T m)`` (``U V^T`` of ``m``'s SVD), float64.

    The SVD runs in float32 (LAPACK ``gesdd`` on a copy it may overwrite): at a 7B model's width
    (4096) float64 took 25 s and ~1 GB of workspace, float32 14 s and ~450 MB; the map is applied
    to float32 weights either way."""
    import scipy.linalg

    scale = float(np.abs(m).max()) or 1.0
    u, _, vt = scipy.linalg.svd((m / scale).astype(np.float32), full_matrices=False, overwrite_a=True,
                                check_finite=False, lapack_driver="gesdd")
    return (u @ vt).astype(np.float64)


def _signed_permutation(m: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """``(perm, signs, weakest |cos|)`` with ``xb[:, j] ~ signs[j] * xa[:, perm[j]]``, or None,
    from ``m = xa^T xb`` and the columns' squared norms."""
    na = np.sqrt(sq_a)
    nb = np.sqrt(sq_b)
    na[na == 0] = 1.0
    nb[nb == 0] = 1.0
    cos = m / na[:, None] / nb[None, :]
    best = np.abs(cos).argmax(axis=0)
    if np.unique(best).size != best.size:
        _, cols = linear_sum_assignment(-np.abs(cos).T)
        best = cols
    strength = np.abs(cos[best, np.arange(best.size)])
    if strength.min() < _PERM_MIN_COS:
        return None
    signs = np.sign(cos[best, np.arange(best.size)])
    signs[signs == 0] = 1.0
    return best.astype(np.int64), signs.astype(np.float32), float(strength.min())


def _perm_matrix(perm: np.ndarray, signs: np.ndarray) -> np.ndarray:
    d = perm.size
    r = np.zeros((d, d), dtype=np.float64)
    r[perm, np.arange(d)] = signs
    return r


def _match_rows(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """``idx`` with ``xb[idx[i]]`` the row of ``xb`` most like ``xa[i]`` (cosine, Hungarian if needed)."""
    fa = xa / np.maximum(np.linalg.norm(xa, axis=1, keepdims=True), 1e-30)
    fb = xb / np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-30)
    own = np.einsum("ij,ij->i", fa, fb)
    if own.min() > 0.3:
        return np.arange(xa.shape[0])
    sim = fa @ fb.T
    idx = sim.argmax(axis=1)
    if np.unique(idx).size != idx.size:
        _, idx = linear_sum_assignment(-sim)
    return idx


@dataclass
class ResidualMap:
    """The map between a suspect ``B``'s residual basis and an original ``A``'s: ``h_B = s h_A R``.

    Attributes
    ----------
    kind : str
        ``identity``, ``sign flip``, ``permutation``, ``signed permutation`` or ``orthogonal``.
    matrix : numpy.ndarray
        ``R`` (``d x d``, float64, orthogonal).
    perm, signs : numpy.ndarray or None
        For the permutation kinds: ``B``'s coordinate ``j`` is ``signs[j]`` times ``A``'s
        coordinate ``perm[j]`` (``R[perm[j], j] = signs[j]``).
    scale : float
        ``s`` (1 unless the suspect's residual stream was rescaled).
    fit_quality : float
        Held-out relative residual of the embedding fit (small: a true map; ~1: unrelated).
    identity_residual : float
        The same residual for the identity map, for comparison.
    n_fit, n_heldout : int
        Shared tokens used to fit and to check.
    refined : bool
        Whether an orthogonal map was refined on the layers' weights.
    """

    kind: str
    matrix: np.ndarray
    perm: np.ndarray | None
    signs: np.ndarray | None
    scale: float
    fit_quality: float
    identity_residual: float
    n_fit: int
    n_heldout: int
    hidden: int
    gains_a: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    gains_b: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    names_b: frozenset[str] = field(default_factory=frozenset, repr=False)
    refined: bool = False

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity" and self.scale == 1.0 and not self.folded

    @property
    def folded(self) -> bool:
        """Whether ``B``'s norm gains differ from ``A``'s (mapped): folded into its readers."""
        return self._folds()

    def _folds(self) -> bool:
        """Whether some reader needs its norm gains re-scaled (B's gains folded into its readers)."""
        return any(self._norm_folded(name) for name in self.gains_b)

    def _norm_folded(self, norm: str | None) -> bool:
        """Whether ``B``'s norm ``norm`` was folded into the layers that read it.

        Always under a rotation (the gains cannot stay elementwise); under a signed permutation
        only when ``B``'s gain is constant and differs from ``A``'s: gains that merely drifted
        (fine-tuning) or belong to another layer (layers reordered under their names) are left
        alone, since rescaling by them would add error rather than remove it.
        """
        gb = self.gains_b.get(norm) if norm else None
        ga = self.gains_a.get(norm) if norm else None
        if gb is None or ga is None or gb.shape != ga.shape:
            return False
        if self.perm is None:
            return True
        return bool(np.ptp(gb) == 0) and not np.array_equal(self._unpermute(gb), ga)

    def _unpermute(self, v: np.ndarray) -> np.ndarray:
        """A residual vector of B's basis with its coordinates put back in A's order (no signs)."""
        if self.perm is None:
            return v
        out = np.empty_like(v)
        out[self.perm] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scale": self.scale,
            "fit_quality": self.fit_quality,
            "identity_residual": self.identity_residual,
            "n_fit": self.n_fit,
            "n_heldout": self.n_heldout,
            "refined": self.refined,
            "folded_norms": self.folded,
            "hidden": self.hidden,
        }

    # -- mapping B tensors into A's basis -------------------------------------------------
    def _rows_to_a(self, x: np.ndarray) -> np.ndarray:
        """``x R^T`` for row vectors of B's basis (the residual on the last axis)."""
        if self.perm is not None:
            out = np.empty_like(x)
            out[..., self.perm] = x * self.signs
            return out
        return x @ self._r32.T

    @property
    def _r32(self) -> np.ndarray:
        r = getattr(self, "_r32_cache", None)
        if r is None:
            r = self._r32_cache = np.ascontiguousarray(self.matrix, dtype=np.float32)
        return r

    def _cols_to_a(self, x: np.ndarray) -> np.ndarray:
        """``R x`` for column vectors of B's basis (the residual on axis 0)."""
        if self.perm is not None:
            out = np.empty_like(x)
            s = self.signs.reshape((-1,) + (1,) * (x.ndim - 1))
            out[self.perm] = x * s
            return out
        return self._r32 @ x

    def to_a(self, name: str, array: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """``B``'s tensor ``name`` (canonical HF name and layout) expressed in ``A``'s basis.

        Readers are unfolded with ``A``'s gains (``W_B diag(g_B) R^T diag(1/g_A)``); a norm gain
        is un-permuted for the permutation kinds and returned unchanged for a rotation (its
        effect is folded into the readers). Tensors without a residual axis come back as they are.
        ``shape``: the whole tensor's, when ``array`` is a block of rows of an embedding or a
        reader (mapped row by row).
        """
        x = np.asarray(array, dtype=np.float32)
        role, norm = residual_role(name, tuple(x.shape) if shape is None else tuple(shape), self.hidden, self.names_b)
        if role == "other":
            return x
        if role == "norm":
            return self._unpermute(x) if self.perm is not None else x
        if role == "embed":
            y = self._rows_to_a(x)
            return y if self.scale == 1.0 else (y / np.float32(self.scale)).astype(np.float32)
        if role == "write":
            y = self._cols_to_a(x)
            return y if self.scale == 1.0 else (y / np.float32(self.scale)).astype(np.float32)
        if not self._norm_folded(norm):
            return self._rows_to_a(x)  # a pure coordinate change (exact for signed permutations)
        gb, ga = self.gains_b[norm], self.gains_a[norm]
        y = self._rows_to_a(x * gb[None, :].astype(np.float32))
        inv = np.where(np.abs(ga) > 1e-12, 1.0 / np.where(ga == 0, 1.0, ga), 0.0).astype(np.float32)
        return y * inv[None, :]

    def mapped(self, b: Model) -> Model:
        """``b`` seen in ``A``'s basis: a :class:`Model` whose ``tensor(name)`` is ``to_a(name, b.tensor(name))``."""
        return b if self.is_identity else MappedModel(b, self)


def row_wise_shape(model: Model, name: str, hidden: int, names: frozenset[str] | set[str]) -> tuple[int, ...] | None:
    """The shape of ``name`` when a change of residual basis acts on each of its rows alone (the
    embedding and the readers, residual on the last axis), else None."""
    shape = tuple(int(d) for d in model.info(name).shape)
    role, _ = residual_role(name, shape, hidden, names)
    return shape if role in ("embed", "read") and len(shape) == 2 else None


class RowMapped:
    """Row-wise reads of a view of ``inner`` through a change of residual basis: where the map
    acts on each row alone (``_row_wise(name)`` gives the tensor's shape), rows and row blocks
    are read from ``inner`` and mapped (``_map_rows``), so no embedding or reader is held whole;
    other tensors fall back to :class:`Model`'s (slices of ``tensor``)."""

    def read_rows(self, name: str, ids: Any) -> np.ndarray:
        shape = self._row_wise(name)
        if shape is None:
            return Model.read_rows(self, name, ids)
        return np.asarray(self._map_rows(name, self.inner.read_rows(name, ids), shape), dtype=np.float32)

    def row_blocks(self, name: str, max_elements: int = 1 << 22) -> Iterator[np.ndarray]:
        shape = self._row_wise(name)
        if shape is None:
            yield from Model.row_blocks(self, name, max_elements)
            return
        for block in self.inner.row_blocks(name, max_elements):
            yield np.asarray(self._map_rows(name, block, shape), dtype=np.float32)


class MappedModel(RowMapped, Model):
    """A lazy view of a model through a :class:`ResidualMap` (one tensor at a time)."""

    def __init__(self, inner: Model, rmap: ResidualMap) -> None:
        self.inner = inner
        self.rmap = rmap
        self.path = inner.path
        self.format = inner.format
        self.architecture = inner.architecture
        self.metadata = inner.metadata
        self.config = inner.config
        self.tokenizer = inner.tokenizer
        self.chat_template = inner.chat_template

    def tensor_infos(self) -> list[TensorInfo]:
        return self.inner.tensor_infos()

    def info(self, name: str) -> TensorInfo:
        return self.inner.info(name)

    def raw(self, name: str) -> np.ndarray:
        return self.inner.raw(name)

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        return self.rmap.to_a(name, self.inner.tensor(name, np.float32)).astype(dtype, copy=False)

    def _row_wise(self, name: str) -> tuple[int, ...] | None:
        return row_wise_shape(self, name, self.rmap.hidden, self.rmap.names_b)

    def _map_rows(self, name: str, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return self.rmap.to_a(name, rows, shape)

    def release(self, name: str) -> None:
        self.inner.release(name)

    def close(self) -> None:
        pass  # the caller owns ``inner``


def _reader_writer_pairs(a: Model, b: Model, hidden: int, ga: dict[str, np.ndarray], gb: dict[str, np.ndarray],
                         scale: float, limit: int | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(X_A, X_B)`` with ``X_B ~ X_A R`` for reader and writer matrices both models hold
    (at most ``limit``, spread evenly over the model; all when None)."""
    names_a = set(a.tensor_names())
    names_b = set(b.tensor_names())
    chosen = []
    for t in a.tensor_infos():
        if t.name not in names_b or t.name == EMBED_NAME or len(t.shape) != 2:
            continue
        role, norm = residual_role(t.name, tuple(t.shape), hidden, names_a)
        if role in ("read", "write") and tuple(b.info(t.name).shape) == tuple(t.shape):
            chosen.append((t.name, role, norm))
    if limit is not None and len(chosen) > limit:
        pick = np.unique(np.linspace(0, len(chosen) - 1, limit).round().astype(int))
        chosen = [chosen[i] for i in pick]
    for name, role, norm in chosen:
        xa = a.tensor(name)
        xb = b.tensor(name)
        if role == "read":
            if norm in ga and norm in gb:
                xa = xa * ga[norm][None, :].astype(np.float32)
                xb = xb * gb[norm][None, :].astype(np.float32)
            yield xa, xb
        else:
            yield np.ascontiguousarray(xa.T), np.ascontiguousarray(xb.T) / np.float32(scale)


def recover_residual_map(a: Model, b: Model, *, rng: np.random.Generator | int | None = None,
                         refine: bool | int = True) -> ResidualMap:
    """Recover the change of residual basis from original ``a`` to suspect ``b`` (no key used).

    Parameters
    ----------
    a, b : Model
        The original and the suspect (any format; canonical HF names).
    rng : numpy.random.Generator or int, *optional*
        Chooses the fit / held-out split of the shared tokens (seed 0 when None: the same
        models give the same map).
    refine : bool or int, *optional*, defaults to True
        Refine an orthogonal map on reader and writer matrices: ``True`` uses
        ``DEFAULT_REFINE_TENSORS`` of them spread over the layers, an int that many, ``False``
        none; signed permutations need no refinement.

    Returns
    -------
    ResidualMap

    Raises
    ------
    NotComparableError
        Either model has no input embedding, their widths differ, or they share too few tokens.
    """
    rng = np.random.default_rng(0 if rng is None else rng)
    names_a, names_b = set(a.tensor_names()), set(b.tensor_names())
    if EMBED_NAME not in names_a or EMBED_NAME not in names_b:
        missing = a.path if EMBED_NAME not in names_a else b.path
        raise NotComparableError(f"{missing}: no input embedding ({EMBED_NAME}) to recover the residual basis from")
    sa, sb = tuple(a.info(EMBED_NAME).shape), tuple(b.info(EMBED_NAME).shape)
    if len(sa) != 2 or len(sb) != 2 or sa[1] != sb[1]:
        raise NotComparableError(f"{b.path}: embedding of shape {sb} is not comparable with {a.path}'s {sa}")
    hidden = int(sa[1])
    ia, ib = _shared_rows(a, b, sa[0], sb[0])
    if ia.size < 2 * hidden:
        raise NotComparableError(
            f"{b.path}: shares {ia.size} tokens with {a.path}, fewer than the {2 * hidden} needed to recover the basis"
        )
    order = rng.permutation(ia.size)
    n_fit = min(_MAX_FIT_TOKENS, max(hidden, (ia.size * 3) // 4))
    fit, held = order[:n_fit], order[n_fit:n_fit + _MAX_HELDOUT_TOKENS]
    # Only the rows used are read, and the fit rows a block at a time: what the fit needs is
    # m = xa^T xb and column sums of squares (a 7B embedding is 512 MB as float32, per model).
    ha = a.read_rows(EMBED_NAME, ia[held])
    hb = b.read_rows(EMBED_NAME, ib[held])
    m = np.zeros((hidden, hidden), dtype=np.float64)
    sq_a = np.zeros(hidden, dtype=np.float64)
    sq_b = np.zeros(hidden, dtype=np.float64)
    block = _FIT_BLOCK if (a.rows_from_file and b.rows_from_file) else fit.size  # else: one read of each
    for c in range(0, fit.size, block):
        xa = a.read_rows(EMBED_NAME, ia[fit[c:c + block]])
        xb = b.read_rows(EMBED_NAME, ib[fit[c:c + block]])
        m += (xa.T @ xb).astype(np.float64)
        sq_a += np.einsum("ij,ij->j", xa, xa, dtype=np.float64)
        sq_b += np.einsum("ij,ij->j", xb, xb, dtype=np.float64)
        del xa, xb
    sum_sq_a = float(sq_a.sum())
    identity_res = float(np.linalg.norm(hb - ha)) / max(float(np.linalg.norm(hb)), 1e-300)

    sp = _signed_permutation(m, sq_a, sq_b)
    perm = signs = None
    if sp is not None and sp[2] >= _PERM_ACCEPT_COS:
        # every coordinate of B is one of A's (|cos| >= 0.95): the orthogonal fit would find
        # the same map; its SVD (cubic in the width) is skipped
        perm, signs = sp[0], sp[1]
        r = _perm_matrix(perm, signs)
        s = float(np.trace(r.T @ m)) / sum_sq_a
        res = _rel_residual(ha, hb, r, s)
    else:
        r_orth = _procrustes(m)
        s_orth = float(np.trace(r_orth.T @ m)) / sum_sq_a
        res_orth = _rel_residual(ha, hb, r_orth, s_orth)
        r, s, res = r_orth, s_orth, res_orth
        if sp is not None:
            r_p = _perm_matrix(sp[0], sp[1])
            s_p = float(np.trace(r_p.T @ m)) / sum_sq_a
            res_p = _rel_residual(ha, hb, r_p, s_p)
            if res_p <= res_orth * 1.01 + 1e-9:
                perm, signs = sp[0], sp[1]
                r, s, res = r_p, s_p, res_p
    if abs(s - 1.0) < _SCALE_SNAP:
        s = 1.0
    ga, gb = _gains(a, hidden), _gains(b, hidden)
    refined = False
    if perm is None and refine is not False and refine != 0:
        m2 = m.copy()
        limit = DEFAULT_REFINE_TENSORS if refine is True else int(refine)
        r32 = r.astype(np.float32)
        for pa, pb in _reader_writer_pairs(a, b, hidden, ga, gb, s, limit):
            idx = _match_rows(pa @ r32, pb)
            m2 += (pa.T @ pb[idx]).astype(np.float64)
        r = _procrustes(m2)
        res = _rel_residual(ha, hb, r, s)
        refined = True
    if perm is not None:
        ident = np.arange(hidden)
        if np.array_equal(perm, ident):
            kind = "identity" if np.all(signs > 0) else ("sign flip" if np.all(signs < 0) else "signed permutation")
        else:
            kind = "permutation" if np.all(signs > 0) else "signed permutation"
    else:
        kind = "orthogonal"
    return ResidualMap(kind, r, perm, signs, float(s), float(res), float(identity_res), int(fit.size),
                       int(held.size), hidden, ga, gb, frozenset(names_b), refined)
