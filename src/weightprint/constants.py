"""The one source of truth for quantization types, their block layouts and file-type mixes.

``QType`` is gguf-py's :class:`gguf.GGMLQuantizationType` (on-disk ids, gaps kept), and
``QUANT_SIZES`` maps each type to ``(block_size, type_size)`` in bytes.
"""

from __future__ import annotations

from enum import IntEnum

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QType = GGMLQuantizationType
QUANT_SIZES: dict[QType, tuple[int, int]] = dict(GGML_QUANT_SIZES)

QK_K = 256  # super-block size of the k-quants

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file


class FileType(IntEnum):
    """llama.cpp ``llama_ftype`` values: a whole-file quantization recipe ("mix").

    The numbers are llama.cpp's; ``--type`` on the CLI takes the names.
    """

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q8_0 = 7
    Q5_0 = 8
    Q5_1 = 9
    Q2_K = 10
    Q3_K_S = 11
    Q3_K_M = 12
    Q3_K_L = 13
    Q4_K_S = 14
    Q4_K_M = 15
    Q5_K_S = 16
    Q5_K_M = 17
    Q6_K = 18
    BF16 = 32


# The base tensor type of each file type (before llama.cpp's per-tensor overrides).
FILE_TYPE_BASE: dict[FileType, QType] = {
    FileType.F32: QType.F32,
    FileType.F16: QType.F16,
    FileType.BF16: QType.BF16,
    FileType.Q4_0: QType.Q4_0,
    FileType.Q4_1: QType.Q4_1,
    FileType.Q5_0: QType.Q5_0,
    FileType.Q5_1: QType.Q5_1,
    FileType.Q8_0: QType.Q8_0,
    FileType.Q2_K: QType.Q2_K,
    FileType.Q3_K_S: QType.Q3_K,
    FileType.Q3_K_M: QType.Q3_K,
    FileType.Q3_K_L: QType.Q3_K,
    FileType.Q4_K_S: QType.Q4_K,
    FileType.Q4_K_M: QType.Q4_K,
    FileType.Q5_K_S: QType.Q5_K,
    FileType.Q5_K_M: QType.Q5_K,
    FileType.Q6_K: QType.Q6_K,
}


def parse_file_type(name: str) -> FileType:
    """Parse a ``--type`` name such as ``Q4_K_M``, ``q8_0`` or ``f16``.

    A bare k-quant tensor type (``Q4_K``) means its ``_M`` mix where one exists
    (``Q3_K``/``Q4_K``/``Q5_K``), as in llama.cpp's ``llama-quantize``.
    """
    from weightprint.errors import UnsupportedQuantType

    key = name.strip().upper().replace("-", "_")
    aliases = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
    key = aliases.get(key, key)
    try:
        return FileType[key]
    except KeyError:
        known = ", ".join(ft.name for ft in FileType)
        raise UnsupportedQuantType(f"unknown quantization type `{name}`; known: {known}") from None


def parse_qtype(name: str | int) -> QType:
    """Parse a tensor type by name (``Q4_K``) or on-disk id (``12``)."""
    from weightprint.errors import UnsupportedQuantType

    if isinstance(name, int):
        try:
            return QType(name)
        except ValueError:
            raise UnsupportedQuantType(f"unknown GGML tensor type id {name}") from None
    try:
        return QType[name.strip().upper()]
    except KeyError:
        raise UnsupportedQuantType(f"unknown GGML tensor type `{name}`") from None

#: default band width of the watermark's keyed rounding (``weightprint.mark.scheme``), in levels
DEFAULT_MARK_DELTA = 0.003
