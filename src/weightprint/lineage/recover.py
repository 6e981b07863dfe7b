"""B in A's residual basis, for the recovered-basis lineage test (see ``docs/lineage.md``).

- :func:`recover_basis` -- B's fingerprint after undoing a change of residual basis that
  :func:`weightprint.basis.recover_residual_map` recovers (signed permutation, rotation with
  folded norms), and the map it found;
- :func:`recover_width` -- A's fingerprint restricted to the residual channels that a
  width-pruned B kept;
- :func:`map_from_sketch` -- the same as :func:`recover_basis` for a database search, where A
  is only a stored fingerprint with a basis sketch (2-bit embedding rows of ``1.5 d`` tokens).

Split out of ``compare.py``, which runs the tests on what these return.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightprint.basis import RowMapped
from weightprint.io.model import Model
from weightprint.lineage.fingerprint import Fingerprint, build_fingerprint, shared_token_pairs
from weightprint.lineage.stats import correlation_matrix, standardize_columns, token_gram_correlation

__all__ = ["SKETCH_MIN_CORR", "SKETCH_MIN_GRAM", "WIDTH_MATCH_MIN_CORR", "map_from_sketch", "recover_basis", "recover_width"]


def recover_basis(ma: Model, mb: Model, fa: Fingerprint) -> tuple[Fingerprint | None, dict[str, Any] | None]:
    """B's fingerprint in A's residual basis, and the recovered map (None, None when impossible).

    An identity or pure sign-flip map changes no layer feature (norms), so no second
    fingerprint is needed: the identity-basis test already is the test in the recovered basis.
    """
    from weightprint.basis import recover_residual_map
    from weightprint.errors import NotComparableError

    if not fa.layer_features:
        return None, None
    try:
        rmap = recover_residual_map(ma, mb, refine=False)
    except NotComparableError as e:
        return None, {"kind": None, "not_recovered": str(e)}
    basis = rmap.to_dict()
    if rmap.kind in ("identity", "sign flip") and rmap.scale == 1.0 and not rmap.folded:
        return None, basis
    if rmap.perm is None:
        # A rotation: B's effective readers and writers rotated back (the norms are folded away).
        fb = build_fingerprint(_RotatedBack(mb, rmap), tokens=[], norm_features=False, metadata=False)
    else:
        # A signed permutation: B's readers come back unfolded with A's gains when B's gains
        # differ from A's; weighting them by A's gains again leaves B's own effective reader.
        fb = build_fingerprint(rmap.mapped(mb), tokens=[], gains=rmap.gains_a if rmap.folded else None,
                               metadata=False)
    return fb, basis


SKETCH_MIN_CORR = 0.3  # held-out median corr below which a sketch fit is taken as no map (H0: ~0)
#: token Gram correlation (basis-free) below which no map is fitted at all: a copy under any change
#: of basis measures 0.86 through the 2-bit sketch, SmolLM2 vs Gemma 3 0.32, independent tiny
#: llamas at most 0.37 (the fit costs an SVD of d x d per reference; this gate costs nothing)
SKETCH_MIN_GRAM = 0.6
SKETCH_HELDOUT = 0.2  # share of the sketch tokens kept out of the fit
SKETCH_SNAP = 0.5  # every column of the fitted map has an entry above this: taken as a signed permutation


def map_from_sketch(ref: Fingerprint, suspect: Fingerprint, mb: Model) -> tuple[Fingerprint | None, dict[str, Any]]:
    """B's fingerprint in the reference's residual basis, recovered from A's basis sketch.

    ``suspect`` must hold B's row-standardized embedding rows of (some of) ``ref.basis_tokens``
    (``build_fingerprint(mb, tokens=...)``). The map is orthogonal Procrustes between A's 2-bit
    rank profiles and B's rows, column-centred, fitted on 80% of the shared sketch tokens; its
    quality is the median over A's coordinates of the correlation, on the held-out 20%, between
    A's profile and B's rows mapped into A's basis. Under H0 the fit explains nothing out of
    sample (median correlation ~0); below :data:`SKETCH_MIN_CORR` no map is claimed. Before any
    fit, the basis-free token Gram correlation (:func:`token_gram_correlation`) must reach
    :data:`SKETCH_MIN_GRAM`, which spares the SVD for unrelated references. The map
    decides only *where* the layer-feature test looks: its p-value is the recovered-basis test's,
    calibrated like :func:`recover_basis`'s (``docs/lineage.md``).
    """
    from weightprint.basis import ResidualMap, _gains, _perm_matrix, _procrustes

    d = ref.hidden_size
    out: dict[str, Any] = {"kind": None, "method": "orthogonal Procrustes on the stored 2-bit basis sketch"}
    if ref.basis_rows is None or suspect.embedding is None:
        return None, {**out, "not_recovered": "no basis sketch"}
    ia, ib = shared_token_pairs(ref.basis_tokens, suspect.tokens)
    n_held = max(1, int(ia.size * SKETCH_HELDOUT))
    if ia.size - n_held < d:
        return None, {**out, "not_recovered": f"{ia.size} shared sketch tokens: too few to fit a {d} x {d} map"}
    qa = ref.basis_rows[ia].astype(np.float64) - 0.5
    zb = suspect.embedding[ib].astype(np.float64)
    gram = token_gram_correlation(qa, zb)
    out["token_gram_corr"] = gram
    if not gram >= SKETCH_MIN_GRAM:
        out["not_recovered"] = f"token Gram correlation {gram:.2f} < {SKETCH_MIN_GRAM}: no shared embedding geometry"
        return None, out
    n_fit = int(ia.size) - n_held
    zb = zb - zb[:n_fit].mean(axis=0)
    r = _procrustes(qa[:n_fit].T @ zb[:n_fit])  # zb ~ qa R: rows of B are A's rows times R
    kind = "orthogonal"
    col = np.arange(d)
    best = np.abs(r).argmax(axis=0)
    if np.unique(best).size == d and np.abs(r[best, col]).min() > SKETCH_SNAP:
        # every coordinate of B has one partner in A: the map is a signed permutation, exactly
        signs = np.sign(r[best, col])
        r = _perm_matrix(best, signs.astype(np.float32))
        kind = "permutation" if np.all(signs > 0) else "signed permutation"
    # per coordinate of A: correlation of its held-out profile with B's rows mapped into A's basis
    corr = (standardize_columns(qa[n_fit:]) * standardize_columns(zb[n_fit:] @ r.T)).mean(axis=0)
    quality = float(np.median(corr))
    out.update({"fit_corr": quality, "n_fit": int(n_fit), "n_heldout": int(n_held)})
    if not quality >= SKETCH_MIN_CORR:
        out["not_recovered"] = f"the sketch fit explains nothing held out (median corr {quality:.2f} < {SKETCH_MIN_CORR})"
        return None, out
    out["kind"] = kind
    out["folded_norms"] = kind == "orthogonal"
    rmap = ResidualMap(kind, r, None, None, 1.0, float("nan"), float("nan"), int(n_fit), int(n_held), d,
                       {}, _gains(mb, d), frozenset(mb.tensor_names()))
    fb = build_fingerprint(_RotatedBack(mb, rmap), tokens=[], norm_features=False, metadata=False)
    return fb, out


WIDTH_MATCH_MIN_CORR = 0.5  # median |corr| of matched embedding columns below which no injection is claimed


def recover_width(fa: Fingerprint, fb: Fingerprint) -> tuple[Fingerprint | None, dict[str, Any]]:
    """A's fingerprint restricted to the residual coordinates a narrower (width-pruned) B kept.

    Each of B's coordinates is matched to one of A's by the ``|corr|`` of their embedding columns
    over the shared sample tokens (Hungarian, rectangular); when the median matched ``|corr|``
    reaches :data:`WIDTH_MATCH_MIN_CORR`, A's layer features are restricted to the matched
    coordinates, in B's order. Only B narrower than A is handled (channels dropped, not added).
    """
    from scipy.optimize import linear_sum_assignment

    if fa.embedding is None or fb.embedding is None or not fa.layer_features or not fb.layer_features:
        return None, {"kind": None, "not_recovered": "no embedding sample to match the residual coordinates"}
    if fb.hidden_size > fa.hidden_size:
        return None, {"kind": None, "not_recovered": "B is wider than A: only dropped residual channels are recovered"}
    ia, ib = shared_token_pairs(fa.tokens, fb.tokens)
    if ia.size < 2 * fa.hidden_size:
        return None, {"kind": None, "not_recovered": f"{ia.size} shared sample tokens, fewer than 2 x {fa.hidden_size}"}
    c = np.abs(correlation_matrix(fa.embedding[ia], fb.embedding[ib]))  # (d_a, d_b)
    rows, cols = linear_sum_assignment(-c.T.astype(np.float64))  # rows: B's coordinates, cols: A's
    perm = np.empty(fb.hidden_size, dtype=np.int64)
    perm[rows] = cols
    strength = float(np.median(c[perm, np.arange(fb.hidden_size)]))
    basis = {"kind": "width pruned", "kept": int(fb.hidden_size), "of": int(fa.hidden_size),
             "median_matched_abs_corr": strength, "n_tokens": int(ia.size)}
    if strength < WIDTH_MATCH_MIN_CORR:
        basis["not_recovered"] = (f"no residual coordinate of A matches B's (median matched |corr| {strength:.2f} "
                                  f"< {WIDTH_MATCH_MIN_CORR})")
        return None, basis
    sub = Fingerprint(
        label=fa.label, hidden_size=fb.hidden_size, n_parameters=fa.n_parameters, config=dict(fa.config),
        layer_roles=[list(r) for r in fa.layer_roles], layer_features=[f[:, perm] for f in fa.layer_features],
        descriptors=fa.descriptors, global_features={k: v[perm] for k, v in fa.global_features.items()},
        levels=fa.levels,
    )
    return sub, basis


class _RotatedBack(RowMapped, Model):
    """B's *effective* weights in A's basis for an orthogonal map ``h_B = s h_A R`` (float32, lazy).

    Readers: ``W_B diag(g_B) R^T`` (B's own gains folded in, nothing of A); writers ``R W_B / s``;
    other tensors as stored. Only the column/row norms of these are used, so float32 suffices.
    """

    def __init__(self, inner: Model, rmap: Any) -> None:
        self.inner = inner
        self.path, self.format, self.architecture = inner.path, inner.format, inner.architecture
        self.metadata, self.config, self.tokenizer, self.chat_template = inner.metadata, inner.config, None, None
        self._r = np.asarray(rmap.matrix, dtype=np.float32)
        self._scale = np.float32(rmap.scale)
        self._gains = {k: np.asarray(v, dtype=np.float32) for k, v in rmap.gains_b.items()}
        self._hidden = int(rmap.hidden)
        self._names = frozenset(inner.tensor_names())

    def tensor_infos(self) -> list:
        return self.inner.tensor_infos()

    def info(self, name: str) -> Any:
        return self.inner.info(name)

    def raw(self, name: str) -> np.ndarray:
        raise NotImplementedError("a rotated view has no stored bytes")

    def release(self, name: str) -> None:
        self.inner.release(name)

    def close(self) -> None:
        pass

    def _map(self, name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        from weightprint.basis import residual_role

        role, norm = residual_role(name, shape, self._hidden, self._names)
        if role == "read" and x.ndim == 2:
            g = self._gains.get(norm) if norm else None
            return (x * g[None, :] if g is not None else x) @ self._r.T
        if role == "write" and x.ndim == 2:
            return (self._r @ x) / self._scale
        if role == "embed":
            return (x @ self._r.T) / self._scale
        return x

    def tensor(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        x = np.asarray(self.inner.tensor(name), dtype=np.float32)
        return np.asarray(self._map(name, x, tuple(x.shape)), dtype=dtype)

    def _row_wise(self, name: str) -> tuple[int, ...] | None:
        from weightprint.basis import row_wise_shape

        return row_wise_shape(self, name, self._hidden, self._names)

    def _map_rows(self, name: str, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return self._map(name, rows, shape)

