"""Function-preserving changes of residual basis, as a thief applies them for free.

Transforms of a decoder-only RMSNorm transformer (llama family) that leave what it computes
unchanged (up to float rounding). Of the residual basis:

- **sign flip**: every residual coordinate times -1 (embedding, readers' input columns,
  writers' output rows);
- **residual permutation**: the residual coordinates reordered (norm gains permuted too);
- **random rotation**: ``h -> h R`` for a Haar-random orthogonal ``R``; RMSNorm gains are
  folded into the layers that read the normalised stream (gains become 1) and a tied head is
  untied (``lm_head = E diag(g_final) R``), because a gain vector does not commute with ``R``.

:class:`TransformedModel` is a lazy :class:`~weightprint.io.model.Model` view (one tensor at a
time), so a transformed copy can be written by ``convert`` (GGUF of any type) or
``write_hf_dir``. :func:`transformed` builds and caches one on disk. The inverse map is what
:func:`weightprint.basis.recover_residual_map` recovers.

And inside each block, :func:`block_symmetries` (:class:`BlockSymmetries`): every MLP hidden unit's
``up`` row times ``c_u`` and its ``down`` column over ``c_u`` (SwiGLU is linear in ``up``);
each KV head's values times an invertible ``M_h`` and the output columns of its query heads
times ``M_h^-1``; each rotary frequency pair of a KV head's keys times ``Rot(theta) / c`` and of
its query heads times ``c Rot(theta)`` (a rotation-scaling of the pair commutes with RoPE and
``q^T k`` is unchanged). These change the column norms the lineage features are made of.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.basis import residual_role
from weightprint.constants import QType
from weightprint.errors import WeightprintError
from weightprint.io.model import Model, TensorInfo
from weightprint.io.names import EMBED_NAME, FINAL_NORM_NAME, HEAD_NAME, NORM_SHIFT_ARCHITECTURES

__all__ = [
    "KINDS",
    "BlockSymmetries",
    "ModelView",
    "TransformedModel",
    "block_symmetries",
    "random_orthogonal",
    "residual_transform",
    "transformed",
]

KINDS = ("sign_flip", "permute", "rotate")


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    """A Haar-random ``d x d`` orthogonal matrix (float64): QR of a Gaussian, signs fixed."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


class ModelView(Model):
    """A lazy view of ``inner``: its names, shapes and metadata, each tensor passed through
    :meth:`values` when fetched (one at a time). Subclasses override :meth:`values`."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        for attr in ("path", "format", "architecture", "metadata", "chat_template", "tokenizer"):
            setattr(self, attr, getattr(inner, attr))
        self.config = dict(inner.config or {})

    def tensor_infos(self) -> list[TensorInfo]:
        return self.inner.tensor_infos()

    def info(self, name: str) -> TensorInfo:
        return self.inner.info(name)

    def raw(self, name: str) -> np.ndarray:
        raise WeightprintError(f"{self.path}: a view has no stored bytes for `{name}`")

    def release(self, name: str) -> None:
        self.inner.release(name)

    def close(self) -> None:
        pass  # the caller owns ``inner``

    def values(self, name: str, x: np.ndarray) -> np.ndarray:
        return x

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        return np.asarray(self.values(name, self.inner.tensor(name)), dtype=dtype)


class TransformedModel(ModelView):
    """``model`` with its residual basis changed by ``h -> h R`` (lazy, one tensor at a time).

    Parameters
    ----------
    inner : Model
        The source (canonical HF names).
    matrix : numpy.ndarray, optional
        ``R`` (``d x d`` orthogonal). Give either ``matrix`` or ``perm``/``signs``.
    perm, signs : numpy.ndarray, optional
        A signed permutation: new coordinate ``j`` is ``signs[j]`` times old coordinate ``perm[j]``.
    fold_norms : bool
        Fold the RMSNorm gains into the reading layers (gains set to 1); required for a
        rotation, optional for a signed permutation (then the gains are permuted).
    """

    def __init__(self, inner: Model, *, matrix: np.ndarray | None = None, perm: np.ndarray | None = None,
                 signs: np.ndarray | None = None, fold_norms: bool = False) -> None:
        super().__init__(inner)
        self.hidden = int(inner.info(EMBED_NAME).shape[1])
        if perm is not None:
            self.perm = np.asarray(perm, dtype=np.int64)
            self.signs = np.ones(self.hidden, np.float32) if signs is None else np.asarray(signs, np.float32)
            self.matrix = None
        elif matrix is not None:
            if not fold_norms:
                raise WeightprintError("a rotation of the residual basis needs fold_norms=True to preserve the function")
            self.perm = self.signs = None
            self.matrix = np.asarray(matrix, dtype=np.float64)
            self._r32 = np.ascontiguousarray(self.matrix, dtype=np.float32)  # float32 products: fast, ~1e-7 relative
        else:
            raise WeightprintError("give a matrix or a permutation")
        self.fold = bool(fold_norms)
        self.shift = 1.0 if inner.architecture in NORM_SHIFT_ARCHITECTURES else 0.0
        self._names = set(inner.tensor_names())
        infos = list(inner.tensor_infos())
        self.untie = self.fold and HEAD_NAME not in self._names
        if self.untie:
            e = inner.info(EMBED_NAME)
            infos.append(TensorInfo(HEAD_NAME, HEAD_NAME, tuple(e.shape), QType.F32, 0, e.n_elements * 4, e.file))
            self.config["tie_word_embeddings"] = False
        self._infos = infos
        self._by = {t.name: t for t in infos}

    def tensor_infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        if name in self._by:
            return self._by[name]
        return self.inner.info(name)

    def release(self, name: str) -> None:
        if name in self._names:
            self.inner.release(name)

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """``x R`` (residual on the last axis)."""
        if self.perm is not None:
            return (x[..., self.perm] * self.signs).astype(np.float32)
        return x @ self._r32

    def _cols(self, x: np.ndarray) -> np.ndarray:
        """``R^T x`` (residual on axis 0)."""
        if self.perm is not None:
            s = self.signs.reshape((-1,) + (1,) * (x.ndim - 1))
            return (x[self.perm] * s).astype(np.float32)
        return self._r32.T @ x

    def _gain(self, norm: str | None) -> np.ndarray | None:
        if norm is None or norm not in self._names:
            return None
        return self.inner.tensor(norm).astype(np.float64) + self.shift

    def tensor(self, name: str, dtype: np.dtype | type = np.float32) -> np.ndarray:
        if name == HEAD_NAME and self.untie:
            x, role, norm = self.inner.tensor(EMBED_NAME), "read", FINAL_NORM_NAME
        else:
            x = self.inner.tensor(name)
            role, norm = residual_role(name, tuple(x.shape), self.hidden, self._names)
        if role == "embed":
            y = self._rows(x)
        elif role == "write":
            y = self._cols(x)
        elif role == "read":
            g = self._gain(norm) if self.fold else None
            y = self._rows(x if g is None else x * g[None, :].astype(np.float32))
        elif role == "norm":
            if self.fold:
                y = np.full(x.shape, 1.0 - self.shift, np.float32)
            else:
                y = x[self.perm]
        else:
            y = x
        return np.asarray(y, dtype=dtype)


class BlockSymmetries(ModelView):
    """``inner`` with the function-preserving changes inside each block (see the module docstring).

    ``spread`` bounds the factors: MLP unit scales in ``[1/(2 spread), 2 spread]``, singular
    values of ``M_h`` and the rotary-pair scales in ``[1/spread, spread]`` (log-uniform).
    Canonical HF layout (rotary pairs ``(i, i + head_dim/2)``); grouped-query heads share their
    KV head's transforms.
    """

    def __init__(self, inner: Model, *, seed: int = 0, spread: float = 2.0,
                 mlp: bool = True, values: bool = True, rotary: bool = True) -> None:
        super().__init__(inner)
        c = self.config
        self.n_heads = int(c["num_attention_heads"])
        self.n_kv = int(c.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // self.n_heads)
        self.seed, self.spread = int(seed), float(spread)
        self.mlp, self.vo, self.qk = mlp, values, rotary

    def _rng(self, layer: int, what: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, layer, what])

    def _mixers(self, layer: int) -> list[np.ndarray]:
        r, hd, lo = self._rng(layer, 2), self.head_dim, np.log(self.spread)
        out = []
        for _ in range(self.n_kv):
            u, _ = np.linalg.qr(r.standard_normal((hd, hd)))
            v, _ = np.linalg.qr(r.standard_normal((hd, hd)))
            out.append(u @ np.diag(np.exp(r.uniform(-lo, lo, hd))) @ v.T)
        return out

    def values(self, name: str, x: np.ndarray) -> np.ndarray:
        from weightprint.io.names import split_layer

        parts = split_layer(name)
        if parts is None or np.ndim(x) != 2:
            return x
        layer, role = parts[1], parts[2]
        x = np.asarray(x, dtype=np.float64)
        hd, group = self.head_dim, self.n_heads // self.n_kv
        if self.mlp and role in ("mlp.up_proj.weight", "mlp.down_proj.weight"):
            lo = np.log(2 * self.spread)
            units = x.shape[0] if role == "mlp.up_proj.weight" else x.shape[1]
            c = np.exp(self._rng(layer, 1).uniform(-lo, lo, units))
            return x * c[:, None] if role == "mlp.up_proj.weight" else x / c[None, :]
        if self.vo and role in ("self_attn.v_proj.weight", "self_attn.o_proj.weight"):
            mix = self._mixers(layer)
            y = x.copy()
            if role == "self_attn.v_proj.weight":
                for h in range(self.n_kv):
                    y[h * hd:(h + 1) * hd] = mix[h] @ x[h * hd:(h + 1) * hd]
            else:
                inv = [np.linalg.inv(m) for m in mix]
                for q in range(self.n_heads):
                    y[:, q * hd:(q + 1) * hd] = x[:, q * hd:(q + 1) * hd] @ inv[q // group]
            return y
        if self.qk and role in ("self_attn.q_proj.weight", "self_attn.k_proj.weight"):
            r, half, lo = self._rng(layer, 3), hd // 2, np.log(self.spread)
            scale = np.exp(r.uniform(-lo, lo, (self.n_kv, half)))
            theta = r.uniform(-np.pi, np.pi, (self.n_kv, half))
            query = role == "self_attn.q_proj.weight"
            y = x.copy()
            for h in range(self.n_heads if query else self.n_kv):
                kv = h // group if query else h
                c = (scale[kv] if query else 1.0 / scale[kv])[:, None]
                co, si = np.cos(theta[kv])[:, None], np.sin(theta[kv])[:, None]
                a, b = x[h * hd:h * hd + half], x[h * hd + half:(h + 1) * hd]
                y[h * hd:h * hd + half] = c * (co * a - si * b)
                y[h * hd + half:(h + 1) * hd] = c * (si * a + co * b)
            return y
        return x


def block_symmetries(model: Model, seed: int = 0, **kwargs: Any) -> BlockSymmetries:
    """``model`` with MLP unit scaling, V/O per-head mixing and Q/K rotary-pair scaling (lazy)."""
    return BlockSymmetries(model, seed=seed, **kwargs)


def residual_transform(model: Model, kind: str, seed: int = 0) -> TransformedModel:
    """``model`` under one of :data:`KINDS`: ``sign_flip``, ``permute`` (seeded) or ``rotate`` (seeded, norms folded)."""
    d = int(model.info(EMBED_NAME).shape[1])
    if kind == "sign_flip":
        return TransformedModel(model, perm=np.arange(d), signs=-np.ones(d, np.float32))
    if kind == "permute":
        return TransformedModel(model, perm=np.random.default_rng(seed).permutation(d))
    if kind == "rotate":
        if model.architecture in NORM_SHIFT_ARCHITECTURES and model.architecture != "gemma":
            raise WeightprintError(f"{model.path}: a rotation does not preserve {model.architecture}'s sandwich norms")
        return TransformedModel(model, matrix=random_orthogonal(d, seed), fold_norms=True)
    raise WeightprintError(f"unknown residual transform `{kind}`; known: {', '.join(KINDS)}")


def _source_id(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def transformed(source: str | Path, kind: str, seed: int = 0, *, file_type: str = "F32") -> Path:
    """Build once per machine (cached under ``cache_dir()/symmetry``) a GGUF of ``source``
    under the residual transform ``kind``, written as ``file_type`` by weightprint's converter."""
    from weightprint.convert import convert
    from weightprint.io import open_model
    from weightprint.testing.models import cache_dir

    source = Path(source)
    ident = json.dumps({"source": _source_id(source), "kind": kind, "seed": seed, "file_type": file_type, "v": 1},
                       sort_keys=True)
    key = hashlib.sha256(ident.encode()).hexdigest()[:20]
    root = cache_dir() / "symmetry"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{key}.gguf"
    if final.exists():
        return final
    with open(root / f".{key}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not final.exists():
                tmpdir = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
                try:
                    with open_model(source) as m:
                        convert(residual_transform(m, kind, seed), tmpdir / "out.gguf", file_type=file_type)
                    os.replace(tmpdir / "out.gguf", final)
                finally:
                    shutil.rmtree(tmpdir, ignore_errors=True)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return final


def describe(model: Any) -> dict[str, Any]:
    """JSON-safe facts of a :class:`TransformedModel` (for bench records)."""
    return {"fold_norms": model.fold, "untied_head": model.untie,
            "kind": "rotation" if model.matrix is not None else "signed permutation"}
