"""Align the decoder layers of two models (dropped, duplicated or inserted layers).

Layers are matched by a monotone alignment (Needleman-Wunsch) on *order-free* layer
descriptors: quantiles of each per-coordinate feature, which do not change when the
residual coordinates are permuted. The alignment is therefore a function of what the null
permutation leaves invariant, and the permutation test that follows stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LayerAlignment", "align_layers", "descriptor_distance"]


@dataclass(frozen=True)
class LayerAlignment:
    """A monotone matching of A's layers to B's.

    Attributes
    ----------
    pairs : list[tuple[int, int]]
        Matched ``(layer of A, layer of B)``, increasing in both.
    distances : list[float]
        Descriptor distance of each matched pair (0 = identical order-free statistics).
    unmatched_a, unmatched_b : list[int]
        Layers left out on each side (a dropped layer shows up in ``unmatched_a``).
    """

    pairs: list[tuple[int, int]]
    distances: list[float]
    unmatched_a: list[int]
    unmatched_b: list[int]

    def to_dict(self) -> dict:
        return {
            "pairs": [list(p) for p in self.pairs],
            "distances": [float(x) for x in self.distances],
            "unmatched_a": list(self.unmatched_a),
            "unmatched_b": list(self.unmatched_b),
        }


def descriptor_distance(desc_a: dict[str, np.ndarray], desc_b: dict[str, np.ndarray]) -> float:
    """Mean absolute difference of the descriptors of the roles both layers have (inf if none)."""
    common = sorted(set(desc_a) & set(desc_b))
    if not common:
        return float("inf")
    return float(np.mean([np.mean(np.abs(desc_a[r] - desc_b[r])) for r in common]))


def _stack(descriptors: list[dict[str, np.ndarray]], roles: list[str], width: int) -> np.ndarray:
    out = np.full((len(descriptors), len(roles), width), np.nan)
    pos = {r: k for k, r in enumerate(roles)}
    for i, desc in enumerate(descriptors):
        for r, v in desc.items():
            out[i, pos[r]] = v
    return out


def distance_matrix(
    descriptors_a: list[dict[str, np.ndarray]], descriptors_b: list[dict[str, np.ndarray]]
) -> np.ndarray:
    """``(n_a, n_b)`` matrix of :func:`descriptor_distance` values, vectorised."""
    roles = sorted({r for d in descriptors_a for r in d} | {r for d in descriptors_b for r in d})
    widths = {v.shape[-1] for d in (*descriptors_a, *descriptors_b) for v in d.values()}
    if not roles or len(widths) != 1:
        return np.array([[descriptor_distance(x, y) for y in descriptors_b] for x in descriptors_a])
    w = widths.pop()
    sa = _stack(descriptors_a, roles, w)
    sb = _stack(descriptors_b, roles, w)
    diff = np.abs(sa[:, None] - sb[None, :]).mean(axis=-1)  # (na, nb, roles), NaN where a role is missing
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(diff).sum(axis=-1)
        dist = np.where(counts > 0, np.nansum(diff, axis=-1) / np.maximum(counts, 1), np.inf)
    return dist


def align_layers(
    descriptors_a: list[dict[str, np.ndarray]],
    descriptors_b: list[dict[str, np.ndarray]],
) -> LayerAlignment:
    """Best monotone alignment of two layer stacks by descriptor distance.

    Matching layers ``i`` and ``j`` costs their distance; leaving a layer out costs the
    median of all pairwise distances (what an unrelated pairing would cost), so two stacks of
    equal depth are re-paired only when a pairing costs more than two unrelated ones.
    """
    na, nb = len(descriptors_a), len(descriptors_b)
    if na == 0 or nb == 0:
        return LayerAlignment([], [], list(range(na)), list(range(nb)))
    dist = distance_matrix(descriptors_a, descriptors_b)
    finite = dist[np.isfinite(dist)]
    if finite.size == 0:
        return LayerAlignment([], [], list(range(na)), list(range(nb)))
    gap = float(np.median(finite)) + 1e-12
    big = float(finite.max()) * 10 + 1.0
    cost_m = np.where(np.isfinite(dist), dist, big)
    cost = cost_m.tolist()
    score = [[0.0] * (nb + 1) for _ in range(na + 1)]
    move = [[0] * (nb + 1) for _ in range(na + 1)]  # 0 match, 1 skip a, 2 skip b
    for i in range(1, na + 1):
        score[i][0] = i * gap
        move[i][0] = 1
    for j in range(1, nb + 1):
        score[0][j] = j * gap
        move[0][j] = 2
    for i in range(1, na + 1):
        prev, cur, ci = score[i - 1], score[i], cost[i - 1]
        mi = move[i]
        for j in range(1, nb + 1):
            m = prev[j - 1] + ci[j - 1]
            sa = prev[j] + gap
            sb = cur[j - 1] + gap
            if m <= sa and m <= sb:
                cur[j], mi[j] = m, 0
            elif sa <= sb:
                cur[j], mi[j] = sa, 1
            else:
                cur[j], mi[j] = sb, 2
    pairs: list[tuple[int, int]] = []
    i, j = na, nb
    while i > 0 or j > 0:
        k = move[i][j]
        if k == 0:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif k == 1:
            i -= 1
        else:
            j -= 1
    pairs.reverse()
    pairs = [p for p in pairs if np.isfinite(dist[p])]
    ma = {p[0] for p in pairs}
    mb = {p[1] for p in pairs}
    return LayerAlignment(
        pairs=pairs,
        distances=[float(dist[p]) for p in pairs],
        unmatched_a=[i for i in range(na) if i not in ma],
        unmatched_b=[j for j in range(nb) if j not in mb],
    )
