"""Dequantize-only types (IQ*, TQ*, MXFP4, NVFP4), delegated to gguf-py's public ``dequantize``.

These kernels declare ``supports_quantize = False``; :func:`weightprint.quant.quantize` refuses
them with :class:`~weightprint.errors.UnsupportedQuantType` before any work is done. Their block
layouts are those of llama.cpp's ``ggml-common.h`` (see gguf-py ``gguf/quants.py``).
"""

from __future__ import annotations

import numpy as np
from gguf.quants import dequantize as gguf_dequantize

from weightprint.constants import QType
from weightprint.errors import UnsupportedQuantType
from weightprint.quant.base import QuantKernel

_DEQUANTIZE_ONLY = (
    "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
    "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS", "MXFP4", "NVFP4",
)


def _make(qtype: QType) -> type[QuantKernel]:
    def dequantize_blocks(cls: type[QuantKernel], data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        try:
            flat = gguf_dequantize(np.ascontiguousarray(data, dtype=np.uint8), cls.qtype)
        except NotImplementedError as e:  # a gguf-py other than the pinned one
            raise UnsupportedQuantType(f"cannot dequantize {cls.qtype.name}: gguf-py does not implement it") from e
        values = np.asarray(flat, dtype=np.float32).reshape(-1, cls.block_size)
        if out is None:
            return values
        out[...] = values
        return out

    namespace = {
        "__doc__": f"{qtype.name}: dequantize only, through gguf-py (block layout as llama.cpp's ggml-common.h)",
        "supports_quantize": False,
        "dequantize_blocks": classmethod(dequantize_blocks),
        "__module__": __name__,
    }
    return type(qtype.name, (QuantKernel,), namespace, qtype=qtype)


KERNELS: dict[QType, type[QuantKernel]] = {}
for _name in _DEQUANTIZE_ONLY:  # all implemented by the pinned gguf-py (pyproject: gguf==0.19.0)
    KERNELS[QType[_name]] = _make(QType[_name])
    globals()[_name] = KERNELS[QType[_name]]
