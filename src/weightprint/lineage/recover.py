"""B in A's residual basis, for the recovered-basis lineage test (see ``docs/lineage.md``).

- :func:`recover_basis` -- B's fingerprint after undoing a change of residual basis that
  :func:`weightprint.basis.recover_residual_map` recovers (signed permutation, rotation with
  folded norms), and the map it found;
- :func:`recover_width` -- A's fingerprint restricted to the residual channels that a
  width-pruned B kept.

Split out of ``compare.py``, which runs the tests on what these return.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightprint.basis import RowMapped
from weightprint.io.model import Model
from weightprint.lineage.fingerprint import Fingerprint, build_fingerprint
from weightprint.lineage.stats import correlation_matrix

__all__ = ["WIDTH_MATCH_MIN_CORR", "recover_basis", "recover_width"]


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
    index_b = {t: k for k, t in enumerate(fb.tokens)}
    pairs = [(k, index_b[t]) for k, t in enumerate(fa.tokens) if t in index_b]
    if len(pairs) < 2 * fa.hidden_size:
        return None, {"kind": None, "not_recovered": f"{len(pairs)} shared sample tokens, fewer than 2 x {fa.hidden_size}"}
    ia, ib = (np.array(x) for x in zip(*pairs))
    c = np.abs(correlation_matrix(fa.embedding[ia], fb.embedding[ib]))  # (d_a, d_b)
    rows, cols = linear_sum_assignment(-c.T.astype(np.float64))  # rows: B's coordinates, cols: A's
    perm = np.empty(fb.hidden_size, dtype=np.int64)
    perm[rows] = cols
    strength = float(np.median(c[perm, np.arange(fb.hidden_size)]))
    basis = {"kind": "width pruned", "kept": int(fb.hidden_size), "of": int(fa.hidden_size),
             "median_matched_abs_corr": strength, "n_tokens": len(pairs)}
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

