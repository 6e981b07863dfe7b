"""Align a leaked model to the original before the residual is taken.

Three function-preserving edits are undone:

1. **renamed tensors** (another prefix, renumbered layers): a leaked tensor whose name is not in
   the original is matched to an unmatched original tensor of the same shape by a
   permutation-invariant fingerprint (sorted row and column norms);
2. **permuted MLP hidden units**: rows of ``gate_proj``/``up_proj`` and columns of ``down_proj``
   are matched to the original's by cosine similarity (argmax, Hungarian when argmax is not a
   permutation);
3. **permuted attention heads**: query heads (``q_proj`` row blocks with the matching
   ``o_proj`` column blocks) and key/value heads (``k_proj``/``v_proj`` row blocks) likewise.

Alignment looks at the original and the leak only, never at a key, so it cannot create
evidence for a recipient: under H0 the aligned residual is still independent of the
recipient's signs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from scipy.optimize import linear_sum_assignment

from weightprint.io.model import Model
from weightprint.mark.scheme import is_marked_tensor

_LAYER_RE = re.compile(r"^(.*\.layers\.)(\d+)\.(.*)$")
_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
_ATTN = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
         "self_attn.o_proj.weight")
_SAME_TENSOR_COS = 0.5  # below this, a same-name pair is re-paired by fingerprint
_IDENTITY_COS = 0.3  # below this, a row is not "the same row" (unrelated rows: |cos| ~ 0.03)


@dataclass
class AlignmentReport:
    """What alignment did (JSON-safe via ``to_dict``)."""

    n_tensors: int = 0
    n_weights: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    mlp_permuted_layers: list[int] = field(default_factory=list)
    head_permuted_layers: list[int] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    mean_tensor_cosine: float = float("nan")
    basis: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_tensors": self.n_tensors,
            "n_weights": self.n_weights,
            "renamed": dict(self.renamed),
            "mlp_permuted_layers": list(self.mlp_permuted_layers),
            "head_permuted_layers": list(self.head_permuted_layers),
            "missing": list(self.missing),
            "shape_mismatch": list(self.shape_mismatch),
            "mean_tensor_cosine": (None if math.isnan(self.mean_tensor_cosine)
                                   else round(self.mean_tensor_cosine, 6)),
            "basis": self.basis,
        }


def _normalize_rows(f: np.ndarray) -> np.ndarray:
    f = f.astype(np.float32, copy=True)
    f -= f.mean(axis=1, keepdims=True)
    n = np.linalg.norm(f, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return f / n


def match_rows(original: np.ndarray, leaked: np.ndarray) -> np.ndarray | None:
    """``perm`` with ``leaked[perm[i]]`` the row matching ``original[i]``; None for identity.

    Rows are compared by cosine similarity (after centring). Identity is kept when every row
    matches its own index; otherwise argmax over similarities, or the Hungarian assignment
    when argmax is not a permutation.
    """
    fo = _normalize_rows(original)
    fl = _normalize_rows(leaked)
    own = np.einsum("ij,ij->i", fo, fl)
    if own.min() > _IDENTITY_COS:
        return None
    sim = fo @ fl.T
    perm = sim.argmax(axis=1)
    if np.unique(perm).size != perm.size:
        _, perm = linear_sum_assignment(-sim)
    if np.array_equal(perm, np.arange(perm.size)):
        return None
    return perm.astype(np.int64)


def _fingerprint(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    rows = np.sort(np.linalg.norm(a, axis=1))
    cols = np.sort(np.linalg.norm(a, axis=0))
    f = np.concatenate([rows, cols]).astype(np.float64)
    return f / (np.linalg.norm(f) or 1.0)


def map_names(original: Model, leaked: Model, report: AlignmentReport) -> dict[str, str]:
    """Map original marked tensor names to leaked tensor names (same name, else fingerprint)."""
    o_shapes = {t.name: tuple(t.shape) for t in original.tensor_infos() if is_marked_tensor(t.name, tuple(t.shape))}
    l_shapes = {t.name: tuple(t.shape) for t in leaked.tensor_infos() if len(t.shape) == 2}
    mapping: dict[str, str] = {}
    for name, shape in o_shapes.items():
        if name in l_shapes:
            if l_shapes[name] == shape:
                mapping[name] = name
            else:
                report.shape_mismatch.append(name)
    used = set(mapping.values())
    orphans_l = [n for n in l_shapes if n not in used and n not in o_shapes]
    orphans_o = [n for n in o_shapes if n not in mapping and n not in report.shape_mismatch]
    if orphans_l and orphans_o:
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for n in orphans_o:
            by_shape.setdefault(o_shapes[n], []).append(n)
        fps_o: dict[str, np.ndarray] = {}
        for ln in orphans_l:
            cands = [n for n in by_shape.get(l_shapes[ln], []) if n not in mapping]
            if not cands:
                continue
            fl = _fingerprint(leaked.tensor(ln))
            best, best_d = None, np.inf
            for on in cands:
                if on not in fps_o:
                    fps_o[on] = _fingerprint(original.tensor(on))
                d = float(np.linalg.norm(fps_o[on] - fl))
                if d < best_d:
                    best, best_d = on, d
            if best is not None and best_d < 0.05:
                mapping[best] = ln
                report.renamed[ln] = best
    report.missing = [n for n in o_shapes if n not in mapping and n not in report.shape_mismatch]
    return mapping


def _layer_groups(names: list[str]) -> list[tuple[int | None, list[str]]]:
    groups: dict[tuple[str, int] | None, list[str]] = {}
    order: list[tuple[str, int] | None] = []
    for n in names:
        m = _LAYER_RE.match(n)
        key = (m.group(1), int(m.group(2))) if m else None
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(n)
    out: list[tuple[int | None, list[str]]] = []
    for key in order:
        if key is None:
            out.extend((None, [n]) for n in groups[key])
        else:
            out.append((key[1], groups[key]))
    return out


def _suffix(name: str) -> str:
    m = _LAYER_RE.match(name)
    return m.group(3) if m else name


def _heads(config: dict[str, Any], q_rows: int, k_rows: int) -> tuple[int, int, int] | None:
    n_head = config.get("num_attention_heads")
    n_kv = config.get("num_key_value_heads") or n_head
    if not n_head:
        return None
    head_dim = config.get("head_dim") or q_rows // int(n_head)
    if q_rows != int(n_head) * head_dim or k_rows != int(n_kv) * head_dim:
        return None
    return int(n_head), int(n_kv), int(head_dim)


def _align_layer(layer: int, x: dict[str, np.ndarray], y: dict[str, np.ndarray],
                 config: dict[str, Any], report: AlignmentReport) -> None:
    """Undo MLP-unit and head permutations of one layer, in place on ``y`` (keyed by suffix)."""
    if all(k in x for k in _MLP):
        g, u, d = _MLP
        fo = np.concatenate([x[g], x[u], x[d].T], axis=1)
        fl = np.concatenate([y[g], y[u], y[d].T], axis=1)
        perm = match_rows(fo, fl)
        if perm is not None:
            y[g], y[u], y[d] = y[g][perm], y[u][perm], y[d][:, perm]
            report.mlp_permuted_layers.append(layer)
    if all(k in x for k in _ATTN):
        q, k, v, o = _ATTN
        h = _heads(config, x[q].shape[0], x[k].shape[0])
        if h is None:
            return
        n_head, n_kv, hd = h
        dim = x[q].shape[1]

        def qfeat(t: dict[str, np.ndarray]) -> np.ndarray:
            qq = t[q].reshape(n_head, hd * dim)
            oo = t[o].reshape(-1, n_head, hd).transpose(1, 0, 2).reshape(n_head, -1)
            return np.concatenate([qq, oo], axis=1)

        def kvfeat(t: dict[str, np.ndarray]) -> np.ndarray:
            return np.concatenate([t[k].reshape(n_kv, -1), t[v].reshape(n_kv, -1)], axis=1)

        pq = match_rows(qfeat(x), qfeat(y))
        pkv = match_rows(kvfeat(x), kvfeat(y)) if n_kv > 1 else None
        if pq is not None:
            rows = (pq[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
            y[q] = y[q][rows]
            y[o] = y[o][:, rows]
        if pkv is not None:
            rows = (pkv[:, None] * hd + np.arange(hd)[None, :]).reshape(-1)
            y[k] = y[k][rows]
            y[v] = y[v][rows]
        if pq is not None or pkv is not None:
            report.head_permuted_layers.append(layer)


def _rematch(original: Model, leaked: Model, names: list[str], mapping: dict[str, str],
             report: AlignmentReport) -> dict[str, str]:
    """Re-pair tensors whose same-name partner turned out to be another tensor (layers renamed
    or reordered under canonical names): Hungarian matching on fingerprints, per shape."""
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for n in names:
        by_shape.setdefault(tuple(original.info(n).shape), []).append(n)
    remap: dict[str, str] = {}
    for group in by_shape.values():
        cands = [mapping[n] for n in group]
        fo = np.stack([_fingerprint(original.tensor(n)) for n in group])
        fl = np.stack([_fingerprint(leaked.tensor(c)) for c in cands])
        dist = np.linalg.norm(fo[:, None, :] - fl[None, :, :], axis=2)
        rows, cols = linear_sum_assignment(dist)
        for r, c in zip(rows, cols):
            remap[group[r]] = cands[c]
            if cands[c] != group[r]:
                report.renamed[cands[c]] = group[r]
    return remap


def aligned_pairs(original: Model, leaked: Model, report: AlignmentReport,
                  *, undo_permutations: bool = True) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(original_name, original_values, aligned_leaked_values)`` for every marked tensor
    that the leak shares with the original, one layer at a time (peak memory: one layer).

    A pair whose values are unrelated after alignment (cosine < 0.5: e.g. layers reordered
    under their canonical names) is set aside and re-paired by fingerprint at the end.
    """
    mapping = map_names(original, leaked, report)
    names = [n for n in original.tensor_names() if n in mapping]
    config = dict(getattr(original, "config", {}) or {})
    cos = [0.0, 0]
    deferred: list[str] = []

    def emit(group: list[str], layer: int | None, pairs: dict[str, str], defer: list[str] | None):
        x = {_suffix(n): original.tensor(n) for n in group}
        y = {_suffix(n): leaked.tensor(pairs[n]) for n in group}
        if undo_permutations and layer is not None:
            _align_layer(layer, x, y, config, report)
        for n in group:
            s = _suffix(n)
            xo, yl = x[s], y[s]
            xf, yf = xo.reshape(-1), yl.reshape(-1)
            den = math.sqrt(float(np.dot(xf, xf)) * float(np.dot(yf, yf))) or 1.0
            c = float(np.dot(xf, yf)) / den
            if defer is not None and c < _SAME_TENSOR_COS:
                defer.append(n)
                continue
            cos[0] += c
            cos[1] += 1
            report.n_tensors += 1
            report.n_weights += xo.size
            yield n, xo, yl

    for layer, group in _layer_groups(names):
        yield from emit(group, layer, mapping, deferred)
    if deferred:
        remap = _rematch(original, leaked, deferred, mapping, report)
        for layer, group in _layer_groups(deferred):
            yield from emit(group, layer, remap, None)
    report.mean_tensor_cosine = cos[0] / cos[1] if cos[1] else float("nan")
