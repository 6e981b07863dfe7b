"""Exact derivation: is QUANT exactly SOURCE quantized (by llama.cpp) with QUANT's tensor types?

For every tensor of QUANT, take SOURCE's values in GGUF stored layout (q/k rotary order,
Gemma's ``norm + 1``), quantize them to the type QUANT stores for that tensor with
:func:`weightprint.quant.quantize` (bit-exact with llama.cpp's reference quantizer, no
importance matrix), and compare the bytes. No statistics are needed: equal bytes everywhere
is the answer "this file is exactly SOURCE quantized as X"; otherwise the result lists the
tensors that differ, the fraction of their blocks that differ and the relative L2 distance of
their values (a watermark or a fine-tune touches many tensors a little; a different source
touches all of them a lot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from weightprint.constants import QUANT_SIZES, FileType, QType
from weightprint.errors import WeightprintError
from weightprint.io.model import Model
from weightprint.results import VerdictResult, to_jsonable
from weightprint.io.open import open_or_borrow

__all__ = ["ExactResult", "TensorDifference", "exact_derivation"]


@dataclass(frozen=True)
class TensorDifference:
    """One tensor of QUANT that is not SOURCE requantized.

    Attributes
    ----------
    name : str
        Canonical (Hugging Face) name.
    qtype : str
        Type stored in QUANT.
    reason : str
        ``bytes differ``, ``shape differs``, ``missing in source`` or ``cannot requantize``.
    blocks_differing : int
        Quantization blocks whose bytes differ.
    n_blocks : int
    relative_l2 : float | None
        ``||deq(QUANT) - deq(requantized SOURCE)|| / ||deq(requantized SOURCE)||``.
    """

    name: str
    qtype: str
    reason: str
    blocks_differing: int = 0
    n_blocks: int = 0
    relative_l2: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self.__dict__)


@dataclass
class ExactResult(VerdictResult):
    """Answer of :func:`exact_derivation`.

    Attributes
    ----------
    source, quant : str
        The two files.
    exact : bool
        True when every tensor of QUANT equals SOURCE requantized byte for byte, and QUANT has
        no tensor that SOURCE lacks.
    reason : str
        One line with the numbers.
    file_type : str | None
        QUANT's ``general.file_type`` name (``Q4_K_M``...) when it has one.
    n_tensors, n_identical : int
    types : dict[str, int]
        Tensor count per stored type in QUANT.
    differing : list[TensorDifference]
        Tensors that are not SOURCE requantized (largest relative L2 first).
    missing_in_quant : list[str]
        Tensors of SOURCE that QUANT does not have.
    imatrix : bool
        QUANT records an importance matrix (its quantization then depends on calibration data
        that SOURCE alone cannot reproduce).
    seconds : float
    """

    source: str
    quant: str
    exact: bool
    reason: str
    file_type: str | None = None
    n_tensors: int = 0
    n_identical: int = 0
    types: dict[str, int] = field(default_factory=dict)
    differing: list[TensorDifference] = field(default_factory=list)
    missing_in_quant: list[str] = field(default_factory=list)
    imatrix: bool = False
    seconds: float = 0.0

    EVIDENCE_VERDICTS = frozenset({"exact"})

    @property
    def verdict(self) -> str:
        """``exact`` (QUANT is SOURCE quantized by llama.cpp, byte for byte) or ``not exact``."""
        return "exact" if self.exact else "not exact"

    def summary(self) -> str:
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["verdict"] = self.verdict
        d["differing"] = [x.to_dict() for x in self.differing]
        return to_jsonable(d)


def _as_bytes(raw: np.ndarray, rows: int) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.uint8).reshape(rows, -1)


def _file_type_name(model: Model) -> str | None:
    v = (model.metadata or {}).get("general.file_type")
    try:
        return FileType(int(v)).name if v is not None else None
    except (ValueError, TypeError):
        return None


def exact_derivation(source: str | Path | Model, quant: str | Path | Model) -> ExactResult:
    """Requantize SOURCE with QUANT's per-tensor types and compare the bytes tensor by tensor.

    Parameters
    ----------
    source : str | Path | Model
        The claimed source (F32/F16/BF16 GGUF, safetensors or HF directory; any readable model).
    quant : str | Path | Model
        A GGUF file.

    Returns
    -------
    ExactResult
        ``exact`` and, otherwise, the tensors that differ and by how much.

    Raises
    ------
    WeightprintError
        A file cannot be read, or QUANT is not a GGUF file.

    Examples
    --------
    >>> r = exact_derivation("smollm2-f16.gguf", "smollm2-q4_k_m.gguf")  # doctest: +SKIP
    >>> r.exact, r.reason  # doctest: +SKIP
    (True, '272 of 272 tensors equal SOURCE quantized as Q4_K_M, byte for byte')
    """
    from weightprint.io.names import layout_config_from_gguf
    from weightprint.quant import dequantize, quantize, supports_quantize

    t0 = time.perf_counter()
    src, close_src = open_or_borrow(source)
    try:
        q, close_q = open_or_borrow(quant)
        try:
            if not q.ggml_types:
                raise WeightprintError(f"{q.path}: exact derivation needs a GGUF file as QUANT, got {q.format}")
            arch = q.architecture
            layout_config = layout_config_from_gguf(q.metadata, arch)
            for k in ("num_attention_heads", "num_key_value_heads"):
                if k not in layout_config and k in (src.config or {}):
                    layout_config[k] = src.config[k]
            result = ExactResult(source=str(src.path), quant=str(q.path), exact=False, reason="",
                                 file_type=_file_type_name(q))
            result.imatrix = any(str(k).startswith("quantize.imatrix") for k in (q.metadata or {}))
            src_names = set(src.tensor_names())
            q_names = q.tensor_names()
            result.missing_in_quant = sorted(src_names - set(q_names))
            diffs: list[TensorDifference] = []
            for name in q_names:
                info = q.info(name)
                qt = QType(info.qtype)
                result.n_tensors += 1
                result.types[qt.name] = result.types.get(qt.name, 0) + 1
                if name not in src_names:
                    diffs.append(TensorDifference(name, qt.name, "missing in source"))
                    continue
                values = src.gguf_layout_tensor(name, arch, layout_config)
                if tuple(values.shape) != tuple(info.shape):
                    diffs.append(TensorDifference(name, qt.name, f"shape differs ({list(values.shape)} vs {list(info.shape)})"))
                    continue
                if not supports_quantize(qt):
                    diffs.append(TensorDifference(name, qt.name, f"cannot requantize to {qt.name}"))
                    continue
                rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
                mine = quantize(values.reshape(rows, -1), qt, name=name).reshape(rows, -1)
                theirs = _as_bytes(q.raw(name), rows)
                if mine.shape == theirs.shape and np.array_equal(mine, theirs):
                    result.n_identical += 1
                    continue
                block_size, type_size = QUANT_SIZES[qt]
                if mine.shape != theirs.shape:
                    diffs.append(TensorDifference(name, qt.name, "byte size differs"))
                    continue
                blocks_mine = mine.reshape(-1, type_size)
                blocks_theirs = theirs.reshape(-1, type_size)
                bad = int(np.count_nonzero(np.any(blocks_mine != blocks_theirs, axis=1)))
                a = np.asarray(dequantize(mine, qt), dtype=np.float64)
                b = np.asarray(dequantize(theirs, qt), dtype=np.float64)
                den = float(np.linalg.norm(a))
                rel = float(np.linalg.norm(b - a) / den) if den > 0 else float(np.linalg.norm(b - a))
                diffs.append(TensorDifference(name, qt.name, "bytes differ", bad, blocks_mine.shape[0], rel))
        finally:
            if close_q:
                q.close()
    finally:
        if close_src:
            src.close()
    diffs.sort(key=lambda x: -(x.relative_l2 or 0.0))
    result.differing = diffs
    result.exact = not diffs
    label = result.file_type or "its stored types"
    if result.exact:
        result.reason = f"{result.n_identical} of {result.n_tensors} tensors equal SOURCE quantized as {label}, byte for byte"
        if result.missing_in_quant:
            result.reason += f" ({len(result.missing_in_quant)} SOURCE tensors absent from QUANT)"
    else:
        shown = ", ".join(
            f"{d.name} ({d.reason}" + (f", rel. L2 {d.relative_l2:.2g}" if d.relative_l2 is not None else "") + ")"
            for d in diffs[:3]
        )
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        result.reason = f"{len(diffs)} of {result.n_tensors} tensors differ from SOURCE quantized as {label}: {shown}{more}"
        if result.imatrix:
            result.reason += "; QUANT was made with an importance matrix, which SOURCE alone cannot reproduce"
    result.seconds = time.perf_counter() - t0
    return result
